"""Evaluation data as `imagerec evaluate` measures it: the run's split re-created, classes in the model's order,
and the task's metrics over it (engine.evaluate_split). Shared by the `evaluate` verb and the report."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader

from imagerec.config import MAX_IMAGE_PIXELS, build_config, merge
from imagerec.data.formats import load_index
from imagerec.data.index import DataIndex
from imagerec.data.split import apply_split_record, drawn_by_run
from imagerec.data.targets import Objects, Sample
from imagerec.engine.evaluate import SplitScores, evaluate_split
from imagerec.errors import UserError
from imagerec.models import model_device
from imagerec.progress import counting
from imagerec.records import ModelInfo
from imagerec.runs import RunDir
from imagerec.tasks.base import Task
from imagerec.tasks.build import check_task_data, data_format


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


def evaluation_index(run: RunDir, data: str | Path, *, split: str, classes: list[str]) -> DataIndex:
    """`data` as `evaluate` measures it: read in the run's data format, with the run's recorded split re-created
    when it is the data the run was trained on (other flat data is evaluated whole, as `split`), and targets in
    the model's class order (`classes`)."""
    saved = {k: v for k, v in run.read_config().items() if k != "resolved"}
    cfg = build_config(merge(saved, {"data": {"path": str(data)}}))
    index = load_index(data, format=data_format(cfg))
    check_task_data(cfg, index)  # a run of one task given data of another: one sentence naming both
    record = run.read_split()
    same_data = Path(run.read_config()["data"]["path"]).resolve() == Path(data).resolve()
    if same_data and drawn_by_run(index, record):
        apply_split_record(index, record)
    elif "all" in index.splits:
        index.splits = {split: index.splits.pop("all")}  # a flat folder of new data is evaluated whole
    if not index.samples(split):
        raise UserError(f"{data}: no images in split {split!r} (found splits: {', '.join(index.splits)})")
    _remap(index, classes, Path(data))
    return index


def measure(
    task: Task,
    model: nn.Module,
    info: ModelInfo,
    index: DataIndex,
    split: str,
    *,
    batch: int | None = None,
    keep_outputs: bool = False,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
    console: Console | None = None,
) -> SplitScores:
    """The task's metrics of `model` (in evaluation mode, on its device) on `split` of `index`, and with
    `keep_outputs` each image's output in the split's order (what the report draws). Image files whose header
    claims more than `max_image_pixels` are refused unread. With a `console`, a progress bar is shown on it."""
    dataset = task.dataset(
        index.samples(split), info=info, augment=None, cache=False, coding=index.masks,
        max_image_pixels=max_image_pixels,
    )  # fmt: skip
    loader = DataLoader(dataset, batch_size=batch or task.default_batch, collate_fn=task.collate())
    device = model_device(model)
    with counting(console, f"evaluate ({split} split)", len(dataset)) as advance:
        return evaluate_split(task, model, loader, device=device, keep_outputs=keep_outputs, progress=advance)
