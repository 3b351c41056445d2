"""The public verbs: train, evaluate, load. The CLI is a thin layer over these."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.utilities.apply_func import move_data_to_device
from rich.console import Console
from torch.utils.data import DataLoader

from imagerec.config import SECTIONS, RunConfig, TrainConfig, build_config, merge, read_yaml
from imagerec.data.formats import load_index
from imagerec.data.index import DataIndex, Objects, Sample
from imagerec.data.split import apply_split_record
from imagerec.errors import UserError
from imagerec.models.detection import EVAL_SCORE_THRESHOLD
from imagerec.outputs.predict import Predictor, load
from imagerec.runs import RunDir, open_run, write_json
from imagerec.tasks.build import data_format
from imagerec.tasks.detection import DetectionTask
from imagerec.training import Run

__all__ = ["Run", "evaluate", "load", "train"]


def _section_of(key: str) -> str:
    """The config section (data, model, train) that owns option `key`; field names are unique across them."""
    for section, fields in SECTIONS.items():
        if key in fields.model_fields:
            return section
    raise TypeError(f"unknown training option {key!r}")


def resolve_config(data: str | Path | None, *, config: str | Path | None = None, **options: Any) -> RunConfig:
    """Merge a YAML config file with keyword options (options win) into a validated RunConfig."""
    values = read_yaml(Path(config)) if config else {}
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
    return build_config(values)


def train(
    data: str | Path | None = None,
    *,
    config: str | Path | None = None,
    resume: str | Path | None = None,
    console: Console | None = None,
    **options: Any,
) -> Run:
    """Train a model on `data` and evaluate it on the test split; returns the Run.

    Options are the fields of DataConfig, ModelConfig and TrainConfig (e.g. `model="resnet18", epochs=10`).
    `resume` continues an interrupted run from its last finished epoch (optionally with more `epochs`).
    """
    from imagerec.training import TrainingSession

    console = console or Console(soft_wrap=True)  # long lines stay whole in logs and CI output
    if resume is not None:
        run = open_run(resume)
        saved = {k: v for k, v in run.read_config().items() if k != "resolved"}
        if saved.get("model", {}).get("head", "network") != "network":
            raise UserError(
                f"{run.path}: a --head {saved['model']['head']} run is fitted in one go, with no epochs to resume; "
                "start a new run"
            )
        extra = {k: v for k, v in options.items() if v is not None}
        fixed = sorted(k for k in extra if k not in TrainConfig.model_fields)
        if fixed:
            raise UserError(
                f"--resume continues {run.path} with its own data and model settings; drop {', '.join(fixed)} "
                "(only training options such as epochs and patience may change)"
            )
        cfg = build_config(merge(saved, {"train": extra}))
        return TrainingSession(cfg, console=console, resume=run).run()
    cfg = resolve_config(data, config=config, **options)
    if cfg.model.head != "network":  # scikit-learn on frozen embeddings: no training loop
        from imagerec.embedding_head import train_head

        return train_head(cfg, console)
    return TrainingSession(cfg, console=console).run()


def _remap(index: DataIndex, classes: list[str], data: Path) -> None:
    """Re-express `index` targets in the model's class order; unknown labels are an error."""
    lookup = {name: i for i, name in enumerate(classes)}
    unknown = [c for c in index.classes if c not in lookup]
    if unknown:
        raise UserError(
            f"{data}: label {unknown[0]!r} is not one of the model's classes ({', '.join(classes)}); "
            "evaluate on data with the classes the model was trained on"
        )
    if index.masks is not None:  # mask files encode classes by position: the lists must be the same
        if index.classes != list(classes):
            raise UserError(
                f"{data}: the masks' classes ({', '.join(index.classes)}) differ from the model's "
                f"({', '.join(classes)}); give a classes.yaml with the model's classes in its order"
            )
        return
    order = [lookup[c] for c in index.classes]

    def remapped(target: int | tuple[int, ...] | Objects) -> int | tuple[int, ...] | Objects:
        if isinstance(target, Objects):
            return replace(target, labels=tuple(order[t] for t in target.labels))
        return tuple(order[t] for t in target) if isinstance(target, tuple) else order[target]

    for split, samples in index.splits.items():
        index.splits[split] = [Sample(s.path, remapped(s.target)) for s in samples]
    index.classes = list(classes)


def evaluate(
    run: str | Path | RunDir, data: str | Path, *, split: str = "test", batch: int | None = None, device: str = "auto"
) -> dict[str, Any]:
    """Metrics of the run's best weights on `split` of `data`; also written to `evaluation/<split>.json`."""
    run_dir = run if isinstance(run, RunDir) else open_run(run)
    predictor = Predictor(run_dir, device=device)
    saved = {k: v for k, v in run_dir.read_config().items() if k != "resolved"}
    index = load_index(data, format=data_format(build_config(merge(saved, {"data": {"path": str(data)}}))))
    record = run_dir.read_split()
    if "all" in index.splits:
        same_data = Path(run_dir.read_config()["data"]["path"]).resolve() == Path(data).resolve()
        if record and same_data:
            apply_split_record(index, record)
        else:
            index.splits = {split: index.splits.pop("all")}  # a flat folder of new data is evaluated whole
    if not index.samples(split):
        raise UserError(f"{data}: no images in split {split!r} (found splits: {', '.join(index.splits)})")
    _remap(index, predictor.classes, Path(data))
    task, model = predictor.task, predictor.model
    if isinstance(task, DetectionTask):
        model.set_thresholds(score=EVAL_SCORE_THRESHOLD)
    if task.name == "segment" and not isinstance(task, DetectionTask):  # semantic: masks decode with the data's coding
        task.coding = index.masks
    dataset = task.dataset(index.samples(split), info=predictor.info, augment=None, cache=False)
    metrics = task.metrics()
    with torch.no_grad():
        for batch_ in DataLoader(dataset, batch_size=batch or task.default_batch, collate_fn=task.collate()):
            out = task.step(model, move_data_to_device(batch_, predictor.device))
            metrics.update(out["outputs"], out["targets"])
    result = {"split": split, "data": str(data), **metrics.compute()}
    write_json(run_dir.evaluation(split), result)
    return result
