"""The public verbs: train, evaluate, load. The CLI is a thin layer over these."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from typing_extensions import Unpack  # typing.Unpack for **kwargs needs Python 3.12

from imagerec.config import (
    MAX_IMAGE_PIXELS,
    SECTIONS,
    Method,
    RunConfig,
    Settings,
    TrainConfig,
    build_config,
    merge,
    read_yaml,
)
from imagerec.config import Task as TaskName
from imagerec.engine.evaluate import SplitScores
from imagerec.errors import UserError
from imagerec.evaluation import evaluation_index, measure
from imagerec.outputs.predict import Predictor, load
from imagerec.recipe import Choice, Plan, plan_recipe, profile
from imagerec.runs import Run, RunDir, open_run, write_json
from imagerec.tasks.build import check_settings, default_model, infer_task, pretrained_model, task_settings

__all__ = ["Plan", "Run", "evaluate", "load", "plan", "pretrain", "train"]

RUN_ONLY = ("resolved", "out")  # run.yaml keys that describe one run, not a recipe to repeat


def _section_of(key: str) -> str:
    """The config section (data, model, train) that owns option `key`; field names are unique across them."""
    for section, fields in SECTIONS.items():
        if key in fields.model_fields:
            return section
    raise TypeError(f"unknown training option {key!r}")


def _values(data: str | Path | None, config: str | Path | None, options: dict[str, Any]) -> dict[str, Any]:
    """The nested settings of a config file (less its run-only keys) and keyword options (which win)."""
    values = read_yaml(Path(config)) if config else {}
    values = {k: v for k, v in values.items() if k not in RUN_ONLY}
    nested: dict[str, Any] = {"data": {"path": data} if data is not None else {}}
    for key, value in options.items():
        if key in ("task", "out"):
            nested[key] = value
        elif key == "model":
            nested.setdefault("model", {})["name"] = value
        else:
            nested.setdefault(_section_of(key), {})[key] = value
    values = merge(values, nested)
    if "path" not in values.get("data", {}):
        raise UserError("no data given: pass the folder or CSV to train on")
    return values


def _resolve(data: str | Path | None, config: str | Path | None, options: dict[str, Any]) -> tuple[RunConfig, Plan]:
    """The validated config (task inferred and model defaulted where not given) and the start of its plan: what
    the user set, and the task's inference."""
    values = _values(data, config, options)
    given = {f"{section}.{key}" for section in SECTIONS for key in values.get(section, {})} - {"data.path"}
    choices = []
    if "task" not in values and Path(values["data"]["path"]).exists():  # a missing path is named when it is read
        task, why = infer_task(Path(values["data"]["path"]), values["data"].get("format", "auto"))
        values["task"] = task
        choices.append(Choice("task", task, f"inferred: {why} (--task to choose)"))
    cfg = build_config(values)
    if "model.name" not in given:
        derived = pretrained_model(cfg.task, cfg.model.weights)
        name, backbone = derived or (default_model(cfg.task), cfg.model.backbone)
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"name": name, "backbone": backbone})})
        if derived is not None:
            on = f" on its {backbone} backbone" if backbone else ""
            choices.append(Choice("model.name", name, f"the --weights pretraining run's architecture{on}"))
            given = given | {"model.name"}
    check_settings(cfg, task_settings(cfg.task, cfg.model.name), f"--task {cfg.task}")
    return cfg, Plan(cfg, choices, given)


def resolve_config(
    data: str | Path | None,
    *,
    config: str | Path | None = None,
    task: TaskName | None = None,
    out: str | Path | None = None,
    **options: Unpack[Settings],
) -> RunConfig:
    """Merge a YAML config file with keyword options (options win) into a validated RunConfig.

    A run's own run.yaml is a valid config: what it recorded as found and chosen (`resolved`) and its run
    directory (`out`) are left out, so the new run finds and chooses afresh in a directory of its own. The task is
    inferred from the data when not given; the recipe (`plan`) is not applied."""
    return _resolve(data, config, {"task": task, "out": out, **options})[0]


def plan(
    data: str | Path | None = None,
    *,
    config: str | Path | None = None,
    task: TaskName | None = None,
    out: str | Path | None = None,
    **options: Unpack[Settings],
) -> Plan:
    """What `train` with the same arguments would run: the config with every setting the user left open chosen
    from the data, and the reason for each choice (`imagerec train --dry-run`)."""
    from imagerec.training import accelerator, prepare_data, sampled_shapes

    cfg, start = _resolve(data, config, {"task": task, "out": out, **options})
    index, built = prepare_data(cfg)
    measured = profile(index, sampled_shapes(index))
    planned, chosen = plan_recipe(cfg, built, measured, given=start.given, cpu=accelerator(cfg.train) == "cpu")
    return Plan(planned, [*start.choices, *chosen], start.given, measured)


def train(
    data: str | Path | None = None,
    *,
    config: str | Path | None = None,
    task: TaskName | None = None,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    console: Console | None = None,
    **options: Unpack[Settings],
) -> Run:
    """Train a model on `data` and evaluate it on the test split; returns the Run.

    Options are the settings of DataConfig, ModelConfig and TrainConfig (`Settings`, e.g. `model="resnet18",
    epochs=10`); one that is no setting raises TypeError, and one that only another task reads is refused.
    `resume` continues an interrupted run from its last finished epoch (optionally with more `epochs`).
    """
    from imagerec.training import train_run

    console = console or Console(soft_wrap=True)  # long lines stay whole in logs and CI output
    if resume is not None:
        run = open_run(resume)
        saved = {k: v for k, v in run.read_config().items() if k != "resolved"}
        if "method" in saved:
            raise UserError(f"{run.path}: a pretraining run; continue it with imagerec pretrain --resume {run.path}")
        if saved.get("model", {}).get("head", "network") != "network":
            raise UserError(
                f"{run.path}: a --head {saved['model']['head']} run is fitted in one go, with no epochs to resume; "
                "start a new run"
            )
        cfg = build_config(_resumed(run, saved, {"task": task, "out": out, **options}))
        trained, scores = train_run(cfg, console=console, resume=run)
    else:
        _note_run_config(config, console)
        planned = plan(data, config=config, task=task, out=out, **options)
        cfg = planned.cfg
        if cfg.model.head != "network":  # scikit-learn on frozen embeddings: no training loop
            from imagerec.embedding_head import train_head

            return train_head(cfg, console)
        trained, scores = train_run(cfg, console=console, recipe=planned.choices)
    if trained.primary:
        report_after_training(trained, cfg, scores, console)
    return trained


def _resumed(run: RunDir, saved: dict[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """The saved settings of `run` with the training options given to `--resume` (the only ones that may change)."""
    extra = {k: v for k, v in options.items() if v is not None}
    if "time" in extra or "recipe" in extra:
        raise UserError(
            f"--time and --recipe plan a new run; to train {run.path} further pass --epochs with more epochs"
        )
    fixed = sorted(k for k in extra if k not in TrainConfig.model_fields)
    if fixed:
        raise UserError(
            f"--resume continues {run.path} with its own data and model settings; drop {', '.join(fixed)} "
            "(only training options such as epochs and patience may change)"
        )
    return merge(saved, {"train": extra})


def pretrain(
    data: str | Path | None = None,
    *,
    method: Method | None = None,
    config: str | Path | None = None,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    console: Console | None = None,
    **options: Unpack[Settings],
) -> Run:
    """Self-supervised pretraining of a backbone on the images of `data` (labels, if any, are ignored); returns the
    Run, whose directory `train(..., weights=run.path)` starts any task from.

    `method`: simclr (default), byol, dino, or mae for vision transformers. Options are those of `train` that
    apply (model, imgsz, batch, epochs, time, lr, seed, devices, …). `resume` continues an interrupted run.
    """
    from imagerec.config import PretrainConfig
    from imagerec.pretraining import DEFAULT_MODEL, pretrain_run

    console = console or Console(soft_wrap=True)
    if resume is not None:
        run = open_run(resume)
        saved = {k: v for k, v in run.read_config().items() if k != "resolved"}
        if "method" not in saved:
            raise UserError(f"{run.path}: not a pretraining run; continue it with imagerec train --resume {run.path}")
        if method is not None and method != saved["method"]:
            raise UserError(f"--resume continues {run.path} with --method {saved['method']}; drop --method {method}")
        cfg = build_config(_resumed(run, saved, {"out": out, **options}), PretrainConfig)
        pretrained = pretrain_run(cfg, console=console, resume=run)
    else:
        values = _values(data, config, {k: v for k, v in {"out": out, **options}.items() if v is not None})
        values.setdefault("model", {}).setdefault("name", DEFAULT_MODEL)
        if method is not None:
            values["method"] = method
        cfg = build_config(values, PretrainConfig)
        check_settings(cfg, (), "pretraining")
        pretrained = pretrain_run(cfg, console=console)
    if pretrained.primary:
        report_after_training(pretrained, cfg, None, console)
    return pretrained


def _note_run_config(config: str | Path | None, console: Console) -> None:
    ignored = [k for k in RUN_ONLY if config and k in read_yaml(Path(config))]
    if ignored:
        console.print(
            f"note: {config} is a run's record; its {' and '.join(ignored)} part is ignored (a new run directory, "
            "data and settings found afresh)", markup=False,
        )  # fmt: skip


def report_after_training(run: Run, cfg: RunConfig, scores: SplitScores | None, console: Console) -> None:
    """report.html in the run directory, from the scores training just measured (no second pass over the data);
    drawing it must never cost the run (a failure is a warning; the command line says where it is)."""
    from imagerec.outputs.report import write_report

    device = "cpu" if cfg.train.device == "cpu" else "auto"  # auto: the GPU training used, if there was one
    try:
        with console.status("writing report.html (curves, galleries, heatmaps)"):
            write_report(run.path, split=run.split or "test", evaluate=scores is not None, scores=scores, device=device)
    except Exception as error:  # a plotting bug or odd data must not lose a finished run
        message = f"warning: report.html not written: {type(error).__name__}: {error}"
        console.print(message, style="yellow", markup=False)


def evaluate(
    run: str | Path | RunDir,
    data: str | Path,
    *,
    split: str = "test",
    batch: int | None = None,
    device: str = "auto",
    max_image_pixels: int = MAX_IMAGE_PIXELS,
    console: Console | None = None,
) -> dict[str, Any]:
    """Metrics of the run's best weights on `split` of `data`; also written to `evaluation/<split>.json`. Image
    files whose header claims more than `max_image_pixels` are refused unread (decompression bombs). With a
    `console`, a progress bar is shown on it."""
    run_dir = run if isinstance(run, RunDir) else open_run(run)
    predictor = Predictor.from_run(run_dir, device=device)
    index = evaluation_index(run_dir, data, split=split, classes=predictor.classes)
    scores = measure(
        predictor.task, predictor.model, predictor.info, index, split, batch=batch, max_image_pixels=max_image_pixels,
        console=console,
    )  # fmt: skip
    result = {"split": split, "data": str(data), **scores.metrics}
    write_json(run_dir.evaluation(split), result)
    return result
