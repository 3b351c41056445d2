"""Choosing and building the task object: from a run config and its data (training), or from model.json (predict)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from imagerec.config import SECTIONS, RunConfig
from imagerec.data.index import DataIndex
from imagerec.data.targets import MaskFile, Objects
from imagerec.errors import UserError
from imagerec.records import ModelInfo
from imagerec.tasks.base import Task
from imagerec.tasks.classification import ClassificationTask, inverse_frequency_weights
from imagerec.tasks.detection import DetectionTask, InstanceSegmentationTask

TARGETS = {"classify": "class labels", "detect": "boxes", "segment": "masks"}


def is_instance_model(name: str) -> bool:
    """Whether `name` is an instance-segmentation model (Mask R-CNN): it trains on COCO objects, not mask files."""
    from imagerec.models.segmentation import is_instance_segmenter

    return is_instance_segmenter(name)


def data_format(cfg: RunConfig) -> str:
    """The reader to use: as configured, except that semantic segmentation prefers mask folders where a folder
    holds both (digit scenes have COCO JSON and masks/)."""
    if cfg.task != "segment" or cfg.data.format != "auto" or is_instance_model(cfg.model.name):
        return cfg.data.format
    from imagerec.data.formats.masks import is_masks

    return "masks" if is_masks(Path(cfg.data.path)) else "auto"


def pretrained_imgsz(cfg: RunConfig, pretrained: dict[str, Any] | None) -> int | None:
    """The input size pretrained weights were trained at, when they were trained for this task (a detector's
    size means nothing to a classifier)."""
    return pretrained["imgsz"] if pretrained is not None and pretrained.get("task") == cfg.task else None


TASKS = ("classify", "detect", "segment")


def task_settings(task: str, model: str) -> tuple[str, ...]:
    """The task-specific settings (config field names) a run of `task` with `model` reads."""
    if task == "segment" and is_instance_model(model):
        return InstanceSegmentationTask.settings
    return _task_class(task).settings


def unread_settings(reads: Sequence[str]) -> set[str]:
    """The task-specific settings (config field names) of other tasks than one that reads `reads`."""
    return {key for task in TASKS for key in _task_class(task).settings} - set(reads)


def check_settings(cfg: RunConfig, reads: Sequence[str], run: str) -> None:
    """Refuse a task-specific setting changed from its default that the run does not read (`reads`: its task's
    settings, none for pretraining; `run` names the run in the message): `--binary-head softmax` on a detector
    would otherwise be ignored in silence."""
    others = unread_settings(reads)
    for section, schema in SECTIONS.items():
        for key in sorted(others & set(schema.model_fields)):
            if getattr(getattr(cfg, section), key) != schema.model_fields[key].default:
                readers = " or ".join(t for t in TASKS if key in _task_class(t).settings)
                raise UserError(f"{key} (--{key.replace('_', '-')}) applies to --task {readers}; drop it for {run}")


def _kind(index: DataIndex) -> str:
    samples = index.all_samples()
    if any(isinstance(s.target, MaskFile) for s in samples):
        return "segment"
    return "detect" if any(isinstance(s.target, Objects) for s in samples) else "classify"


def infer_task(path: Path, format: str = "auto") -> tuple[str, str]:
    """The task the data's targets call for (masks: segment, boxes: detect, else classify), and why."""
    from imagerec.data.formats import load_index
    from imagerec.data.formats.masks import is_masks

    if format in ("auto", "masks") and is_masks(Path(path)):
        return "segment", "the data holds mask files"
    index = load_index(path, format=format)
    kind = _kind(index)
    return kind, f"the data ({index.format}) holds {TARGETS[kind]}"


def check_task_data(cfg: RunConfig, index: DataIndex) -> None:
    """The data must hold what the task learns from (boxes, masks, labels); say plainly when it does not."""
    kind = _kind(index)
    instance = cfg.task == "segment" and is_instance_model(cfg.model.name)
    wanted = "detect" if instance else cfg.task
    if kind != wanted:
        needs = "COCO objects with segmentation" if instance else TARGETS[wanted]
        raise UserError(
            f"{cfg.data.path}: --task {cfg.task}{f' --model {cfg.model.name}' if instance else ''} needs {needs}, "
            f"but this is {index.format} data with {TARGETS[kind]}; "
            f"it calls for --task {kind} (a run of that task); or point to data with {needs}"
        )
    if cfg.task == "classify":
        if cfg.model.head != "network" and index.multilabel:
            raise UserError(f"--head {cfg.model.head} fits single-label data; for multi-label data use --head network")
        return
    if kind == "detect":
        _check_classes_trained(cfg, index)


def _check_classes_trained(cfg: RunConfig, index: DataIndex) -> None:
    trained = index.counts("train")
    for split in ("val", "test"):
        unseen = [c for c, n, t in zip(index.classes, index.counts(split), trained, strict=True) if n and not t]
        if unseen:
            raise UserError(
                f"{cfg.data.path}: class {unseen[0]!r} has boxes in {split} but none in train, so the model could "
                "never learn it; add training examples or remove it from the evaluation data"
            )


def build_task(cfg: RunConfig, index: DataIndex) -> Task:
    """The task object for training `cfg` on `index`."""
    if cfg.task == "detect":
        return DetectionTask(index.classes, flip=cfg.data.flip)
    if cfg.task == "segment" and is_instance_model(cfg.model.name):
        return InstanceSegmentationTask(index.classes, flip=cfg.data.flip)
    if cfg.task == "segment":
        from imagerec.tasks.segmentation import SegmentationTask

        return SegmentationTask(
            index.classes, coding=index.masks, binary_head=cfg.model.binary_head, loss_name=cfg.train.loss,
            flip=cfg.data.flip,
        )  # fmt: skip
    if cfg.data.balanced_sampler and index.multilabel:
        raise UserError(
            f"{cfg.data.path}: balanced_sampler draws images by their one class, but this data is multi-label; "
            "drop balanced_sampler"
        )
    return ClassificationTask(
        index.classes,
        multilabel=index.multilabel,
        binary_head=cfg.model.binary_head,
        label_smoothing=cfg.train.label_smoothing,
        class_weights=inverse_frequency_weights(index.counts("train")) if cfg.train.class_weights else None,
        positive=positive_class(cfg, index),
    )


def positive_class(cfg: RunConfig, index: DataIndex) -> int | None:
    """The index of binary data's positive class: `model.positive`, else the class with fewer training images
    (the second on a tie), stated in the data notes; None for other data."""
    chosen, classes = cfg.model.positive, index.classes
    if len(classes) != 2 or index.multilabel:
        if chosen is not None:
            raise UserError(
                f"--positive {chosen}: a positive class applies to two-class single-label data, and "
                f"{cfg.data.path} has {'multi-label ' if index.multilabel else ''}classes {', '.join(classes)}"
            )
        return None
    if chosen is not None:
        if chosen not in classes:
            raise UserError(f"--positive {chosen}: not a class of {cfg.data.path}; choose one of {', '.join(classes)}")
        index.notes.append(f"positive class {chosen} (as configured)")
        return classes.index(chosen)
    counts = index.counts("train")
    positive = 0 if counts[0] < counts[1] else 1
    index.notes.append(
        f"positive class {classes[positive]}: the minority class in train ({counts[positive]} of {sum(counts)} "
        "images; ties: the second class); set model.positive or --positive to choose another"
    )
    return positive


def default_model(task: str) -> str:
    """The model `--task TASK` trains when no --model is given (semantic segmentation for `segment`)."""
    return _task_class(task).default_model


def task_defaults(task: str) -> dict[str, dict[str, Any]]:
    """The settings a task sets apart from the config's own defaults: its model and batch."""
    chosen = _task_class(task)
    return {"model": {"name": chosen.default_model}, "data": {"batch": chosen.default_batch}}


def _task_class(task: str) -> type:
    if task == "segment":
        from imagerec.tasks.segmentation import SegmentationTask

        return SegmentationTask
    return {"classify": ClassificationTask, "detect": DetectionTask}[task]


def pretrained_model(task: str, weights: str | None) -> tuple[str, str | None] | None:
    """(model, backbone) to train when `--weights` is a pretraining run and no `--model` is given: its architecture
    for classification, the default backbone-taking model on it for detection (fcos) and segmentation (smp_unet);
    None for other weights."""
    from imagerec.runs import open_run

    if not weights or not Path(weights).expanduser().is_dir():
        return None
    info = open_run(Path(weights).expanduser()).read_model_info()
    if not info.pretraining:
        return None
    return (info.model, None) if task == "classify" else ({"detect": "fcos"}.get(task, "smp_unet"), info.model)


def task_from_info(info: ModelInfo) -> Task:
    """The task object of a trained run, rebuilt from its model.json (for predict, evaluate and reports)."""
    return _FROM_INFO[info.kind](info).with_decision(info.decision)


def _segmentation_task(info: ModelInfo) -> Task:
    from imagerec.tasks.segmentation import SegmentationTask  # segmentation models load only for segmentation runs

    return SegmentationTask(info.classes, binary_head=info.binary_head, ignore_index=info.ignore_index)


_FROM_INFO: dict[str, Callable[[ModelInfo], Task]] = {
    "classify": lambda info: ClassificationTask(info.classes, multilabel=info.multilabel, binary_head=info.binary_head),
    "detect": lambda info: DetectionTask(info.classes),
    "instance": lambda info: InstanceSegmentationTask(info.classes),
    "segment": _segmentation_task,
}
