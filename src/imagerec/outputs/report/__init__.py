"""Run reports: one self-contained report.html, with its PNGs beside it, showing how a run trained and, on
evaluation data, where its model is right and wrong.

`build_context` gathers the run's files and, on a split of evaluation data, the Predictor's results and the
metrics `imagerec evaluate` measures; `report_sections` turns that into sections (the shared ones around the
task's); `html.render` writes the page. `write_report` does all three.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from imagerec.data.index import SPLIT_NAMES
from imagerec.errors import UserError
from imagerec.outputs.report.blocks import ReportContext, Section
from imagerec.runs import RunDir, open_run

__all__ = ["build_context", "report_sections", "write_report"]

TASK_MODULES = {"classify": "classification", "detect": "detection", "segment": "segmentation"}


def write_report(
    run: str | Path | RunDir,
    *,
    data: str | Path | None = None,
    split: str = "test",
    out: str | Path | None = None,
    device: str = "auto",
    evaluate: bool = True,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write report.html and its PNGs for `run` into `out` (default: the run directory); returns its path.

    The model is evaluated on `split` of `data`, by default the data the run was trained on (with its recorded
    split). `evaluate=False` leaves the evaluation out (training curves, schedule, speed and configuration only).
    `metrics`, what the caller has just measured on that split, saves detection and segmentation a pass over it;
    classification computes them from the probabilities its curves are drawn from, in the same pass.
    """
    from imagerec.outputs.report.html import render

    ctx = build_context(run, data=data, split=split, out=out, device=device, evaluate=evaluate, metrics=metrics)
    return render(ctx, report_sections(ctx))


def build_context(
    run: str | Path | RunDir,
    *,
    data: str | Path | None = None,
    split: str = "test",
    out: str | Path | None = None,
    device: str = "auto",
    evaluate: bool = True,
    metrics: dict[str, Any] | None = None,
    batch: int | None = None,
) -> ReportContext:
    """The run's files and, unless `evaluate` is False, its predictions and metrics on `split` of `data` (default:
    the run's own data and recorded split), in the samples' order."""
    from imagerec.outputs.report.common import read_history

    run_dir = run if isinstance(run, RunDir) else open_run(run)
    ctx = ReportContext(
        run=run_dir,
        info=run_dir.read_model_info(),
        config=run_dir.read_config(),
        history=read_history(run_dir),
        out=Path(out) if out is not None else run_dir.path,
    )
    if evaluate:
        _evaluate(ctx, data, split=split, device=device, metrics=metrics, batch=batch)
    return ctx


def report_sections(ctx: ReportContext) -> list[Section]:
    """The summary and training sections, the task's sections (none yet for a task whose module is not written),
    then the configuration."""
    from imagerec.outputs.report import common

    first, last = common.sections(ctx)
    try:
        module = importlib.import_module(f"imagerec.outputs.report.{TASK_MODULES[ctx.info['task']]}")
    except ModuleNotFoundError as error:
        if error.name != f"imagerec.outputs.report.{TASK_MODULES[ctx.info['task']]}":
            raise
        return first + last
    return first + module.sections(ctx) + last


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
    metrics: dict[str, Any] | None,
    batch: int | None,
) -> None:
    """Fill `ctx` with the split's samples, the Predictor's results for them and `imagerec evaluate`'s metrics."""
    from imagerec.evaluation import evaluation_index, measure
    from imagerec.outputs.predict import Predictor

    if split not in SPLIT_NAMES:
        raise UserError(f"--split {split}: choose one of {', '.join(SPLIT_NAMES)}")
    path = evaluation_data(ctx.run, data)
    predictor = Predictor(ctx.run, device=device)
    index = evaluation_index(ctx.run, path, split=split, classes=predictor.classes)
    ctx.predictor, ctx.index, ctx.split = predictor, index, split
    ctx.samples = list(index.samples(split))
    paths = [s.path for s in ctx.samples]
    batch = batch or predictor.task.default_batch
    if ctx.info["task"] == "classify":  # one pass: evaluate's metrics computed from the same probabilities
        probs = probabilities(predictor, paths, batch=batch)
        ctx.probabilities = probs.numpy()
        ctx.results = predictor.task.results(probs, [str(p) for p in paths], topk=len(predictor.classes))
        # Always from these probabilities (never the caller's `metrics`, which training may have measured under
        # mixed precision), so that the counts, curves and galleries describe the same predictions.
        measured = predictor.task.metrics()
        measured.update(probs, _targets(ctx.samples, len(predictor.classes)))
        ctx.metrics = {"split": split, "data": str(path), **measured.compute()}
        return
    from imagerec.models.detection import EVAL_SCORE_THRESHOLD
    from imagerec.tasks.detection import DetectionTask

    if metrics is None:  # first: measuring sets the thresholds and mask coding that evaluate uses
        metrics = {"split": split, "data": str(path), **measure(predictor, index, split, batch=batch)}
    ctx.metrics = metrics
    # Detection keeps boxes down to evaluate's score threshold, so that its curves can reach the measured mAP.
    options = {"conf": EVAL_SCORE_THRESHOLD} if isinstance(predictor.task, DetectionTask) else {}
    ctx.results = list(predictor.predict_iter(paths, batch=batch, **options))
    failed = next((r for r in ctx.results if r.error is not None), None)
    if failed is not None:
        raise UserError(failed.error)


def _targets(samples: list[Any], k: int) -> torch.Tensor:
    """Class indices, or N×K multi-hot for multi-label samples (as the classification dataset gives them)."""
    if samples and isinstance(samples[0].target, tuple):
        hot = torch.zeros(len(samples), k, dtype=torch.int64)
        for i, sample in enumerate(samples):
            hot[i, list(sample.target)] = 1
        return hot
    return torch.tensor([s.target for s in samples], dtype=torch.int64)


def probabilities(predictor: Any, paths: list[Path], *, batch: int) -> torch.Tensor:
    """N×K class probabilities of the images at `paths` (a classification run's Predictor), in order."""
    chunks = []
    for start in range(0, len(paths), batch):
        images = torch.stack([predictor.preprocess(p) for p in paths[start : start + batch]])
        chunks.append(predictor.probabilities(images))
    return torch.cat(chunks) if chunks else torch.zeros(0, len(predictor.classes))
