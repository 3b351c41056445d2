"""Run reports: one self-contained report.html, with its PNGs beside it, showing how a run trained and, on
evaluation data, where its model is right and wrong.

`build_context` gathers the run's files and, on a split of evaluation data, the results and metrics of one
scoring pass (`evaluation.measure`, what `imagerec evaluate` runs; after training, the scores training just
measured); `report_sections` turns that into sections (the shared ones around the task's); `html.render` writes
the page. `write_report` does all three.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from imagerec.data.index import SPLIT_NAMES
from imagerec.engine.evaluate import SplitScores
from imagerec.errors import UserError
from imagerec.outputs.report.blocks import ReportContext, Section
from imagerec.runs import RunDir, open_run
from imagerec.tasks.build import task_from_info

__all__ = ["build_context", "report_sections", "write_report"]

# The module whose `sections(ctx)` draws each task kind's part of the report.
TASK_MODULES = {"classify": "classification", "detect": "detection", "instance": "detection", "segment": "segmentation"}


def write_report(
    run: str | Path | RunDir,
    *,
    data: str | Path | None = None,
    split: str = "test",
    out: str | Path | None = None,
    device: str = "auto",
    evaluate: bool = True,
    scores: SplitScores | None = None,
) -> Path:
    """Write report.html and its PNGs for `run` into `out` (default: the run directory); returns its path.

    The model is evaluated on `split` of `data`, by default the data the run was trained on (with its recorded
    split). `evaluate=False` leaves the evaluation out (training curves, schedule, speed and configuration only).
    `scores`, what training has just measured on that split of its own data (with each image's outputs), are
    used instead of predicting again.
    """
    from imagerec.outputs.report.html import render

    ctx = build_context(run, data=data, split=split, out=out, device=device, evaluate=evaluate, scores=scores)
    return render(ctx, report_sections(ctx))


def build_context(
    run: str | Path | RunDir,
    *,
    data: str | Path | None = None,
    split: str = "test",
    out: str | Path | None = None,
    device: str = "auto",
    evaluate: bool = True,
    scores: SplitScores | None = None,
    batch: int | None = None,
) -> ReportContext:
    """The run's files and, unless `evaluate` is False, its predictions and metrics on `split` of `data` (default:
    the run's own data and recorded split), in the samples' order."""
    from imagerec.outputs.report.common import read_history

    run_dir = run if isinstance(run, RunDir) else open_run(run)
    info = run_dir.read_model_info()
    ctx = ReportContext(
        run=run_dir,
        info=info,
        task=task_from_info(info),
        config=run_dir.read_config(),
        resolved=run_dir.read_resolved(),
        history=read_history(run_dir),
        out=Path(out) if out is not None else run_dir.path,
    )
    if evaluate and not info.pretraining:  # a pretraining run has no classes: nothing to evaluate
        _evaluate(ctx, data, split=split, device=device, scores=scores, batch=batch)
    return ctx


def report_sections(ctx: ReportContext) -> list[Section]:
    """The summary and training sections, the task's sections (a pretraining run's: the embedding quality), the
    model card (drawn after them: it reports what they measured), then the configuration."""
    from imagerec.outputs.report import common
    from imagerec.outputs.report.card import card_section

    first, last = common.sections(ctx)
    name = "pretraining" if ctx.info.pretraining else TASK_MODULES[ctx.task.kind]
    module = importlib.import_module(f"imagerec.outputs.report.{name}")
    task_sections = module.sections(ctx)
    return first + task_sections + [card_section(ctx, module.PURPOSE)] + last


def evaluation_data(run: RunDir, data: str | Path | None) -> Path:
    """`data`, else the data the run was trained on; a UserError when there is neither."""
    if data is not None:
        path = Path(data).expanduser()
        if not path.exists():
            raise UserError(f"{path}: no such file or folder; --data takes an image folder or a CSV")
        return path
    recorded = run.read_config().get("data", {}).get("path")
    if not recorded:
        raise UserError(
            f"{run.path}: run.yaml records no training data; pass --data DATA to evaluate on, or --no-eval for "
            "the training sections alone"
        )
    if not Path(recorded).exists():
        raise UserError(
            f"{run.path}: the data it was trained on ({recorded}) is no longer there; pass --data DATA to evaluate "
            "on, or --no-eval for the training sections alone"
        )
    return Path(recorded)


def _evaluate(
    ctx: ReportContext,
    data: str | Path | None,
    *,
    split: str,
    device: str,
    scores: SplitScores | None,
    batch: int | None,
) -> None:
    """Fill `ctx` with the split's samples, each one's result and `imagerec evaluate`'s metrics: from `scores` when
    given (training's, on its own data), else from one scoring pass of the run's model."""
    from imagerec.evaluation import evaluation_index, measure
    from imagerec.outputs.predict import Predictor

    if split not in SPLIT_NAMES:
        raise UserError(f"--split {split}: choose one of {', '.join(SPLIT_NAMES)}")
    path = evaluation_data(ctx.run, data)
    predictor = Predictor.from_run(ctx.run, device=device)
    index = evaluation_index(ctx.run, path, split=split, classes=predictor.classes)
    ctx.predictor, ctx.index, ctx.split = predictor, index, split
    ctx.samples = list(index.samples(split))
    if scores is None:
        scores = measure(predictor.task, predictor.model, predictor.info, index, split, batch=batch, keep_outputs=True)
    ctx.metrics = {"split": split, "data": str(path), **scores.metrics}
    ctx.outputs = scores.outputs
    ctx.results = predictor.task.results(scores.outputs, [str(s.path) for s in ctx.samples])
