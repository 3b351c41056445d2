"""The check every export runs: the exported graph and eager PyTorch on the same real images, compared output by
output (largest absolute and relative difference), decision by decision (top-1 labels, matched boxes or pixels)
and by the task's metric."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision.ops import box_iou

from imagerec.data.index import DataIndex
from imagerec.errors import UserError
from imagerec.evaluation import evaluation_index
from imagerec.records import ModelInfo
from imagerec.runs import RunDir
from imagerec.tasks.base import Task

MATCH_IOU = 0.5  # an exported box matches an eager one of the same class overlapping it by more than this (or
# within a pixel of it)
AGREEMENT = {"top1": "top-1 agreement", "boxes": "box match", "pixels": "pixel agreement"}


@dataclass(frozen=True)
class Parity:
    """What the check measured on `images` images of `split`: the task's `metric` by eager PyTorch and by the
    export, the largest absolute and relative difference of outputs, and the share of decisions that agree."""

    images: int
    split: str
    metric: str
    eager: float
    exported: float
    max_abs: float
    max_rel: float
    agreement: float
    agreement_name: str

    @property
    def metric_drop(self) -> float:
        return self.eager - self.exported

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"metric_drop": self.metric_drop}

    def describe(self) -> str:
        return (
            f"{self.images} {self.split} images: max abs diff {self.max_abs:.2e}, max rel diff {self.max_rel:.2e}, "
            f"{self.agreement_name} {self.agreement:.2%}; {self.metric} {self.eager:.4f} eager vs "
            f"{self.exported:.4f} exported"
        )


def parity_index(run: RunDir, info: ModelInfo, check: str | Path | None) -> tuple[DataIndex, str]:
    """The images to check on: `check` (all of it, or its val split), else the run's own validation split."""
    data = check if check is not None else run.read_config().get("data", {}).get("path")
    if data is None or not Path(data).exists():
        raise UserError(
            f"{run.path}: the run's data ({data}) is not here to check the export on; pass --check DATA "
            "(images with the run's classes)"
        )
    return evaluation_index(run, data, split="val", classes=info.classes), "val"


class _Recorder(nn.Module):
    """A model that keeps its last raw output, so the check compares what the networks returned without running
    them twice."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.last = model, None

    def forward(self, x: Any) -> Any:
        self.last = self.model(x)
        return self.last


class _OneByOne(nn.Module):
    """A detector fed one image per call, as its exported graph is. Eager torchvision detectors pad a batch to its
    largest image, and what they find depends on that padding: on raccoon, fcos_lite scored map 0.227 in batches of
    validation photos and 0.123 one photo at a time (the export: 0.123)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Any) -> list[Any]:
        return [self.model([image])[0] for image in images]


class _Differences:
    """Running maxima of output differences and counts of agreeing decisions."""

    def __init__(self, agreement: str, conf: float) -> None:
        self.agreement, self.conf = agreement, conf
        self.max_abs = self.max_rel = 0.0
        self.agree = self.total = 0

    def outputs(self, eager: Any, exported: Any) -> None:
        if isinstance(eager, torch.Tensor):
            self._tensors(eager.float(), exported.float())
            return
        for e, x in zip(eager, exported, strict=True):  # detectors: one dict per image
            self._boxes(e, x)

    def decisions(self, eager: torch.Tensor, exported: torch.Tensor) -> None:
        """Step outputs of batch tasks: class probabilities (top-1) or class maps (pixels)."""
        if self.agreement == "top1":
            eager, exported = eager.argmax(dim=1), exported.argmax(dim=1)
        self.agree += int((eager == exported).sum())
        self.total += eager.numel()

    def _tensors(self, eager: torch.Tensor, exported: torch.Tensor) -> None:
        diff = float((eager - exported).abs().max()) if eager.numel() else 0.0
        self.max_abs = max(self.max_abs, diff)
        self.max_rel = max(self.max_rel, diff / max(float(eager.abs().max()) if eager.numel() else 0.0, 1e-12))

    def _boxes(self, eager: dict[str, torch.Tensor], exported: dict[str, torch.Tensor]) -> None:
        """Greedy matching, best eager box first, of the boxes predict would show (score ≥ `conf`); matched pairs'
        score and box differences (boxes in hundreds of pixels, so one scale serves scores and boxes)."""
        keep_e, keep_x = eager["scores"] >= self.conf, exported["scores"] >= self.conf
        boxes_e, boxes_x = eager["boxes"][keep_e], exported["boxes"][keep_x].float()
        labels_e, labels_x = eager["labels"][keep_e], exported["labels"][keep_x]
        scores_e, scores_x = eager["scores"][keep_e], exported["scores"][keep_x].float()
        iou = box_iou(boxes_e, boxes_x) if len(boxes_e) and len(boxes_x) else torch.zeros(len(boxes_e), len(boxes_x))
        # Boxes of no area (clipped at the border) have no IoU, even with themselves: within a pixel is a match.
        close = (boxes_e[:, None] - boxes_x[None]).abs().amax(dim=-1) <= 1.0 if iou.numel() else iou.bool()
        iou = torch.where(close, torch.ones_like(iou), iou.nan_to_num(0.0))
        iou[labels_e[:, None] != labels_x[None, :]] = 0
        taken: set[int] = set()
        for i in scores_e.argsort(descending=True).tolist():
            # The best overlap, and among equal overlaps (identical boxes) the closest score.
            candidates = [(float(iou[i, j]), -abs(float(scores_e[i] - scores_x[j])), j)
                          for j in range(len(boxes_x)) if j not in taken]  # fmt: skip
            best, _, j = max(candidates, default=(0.0, 0.0, -1))
            if best > MATCH_IOU:
                taken.add(j)
                self._tensors(scores_e[i : i + 1], scores_x[j : j + 1])
                self._tensors(boxes_e[i] / 100, boxes_x[j] / 100)
        self.agree += len(taken)
        self.total += max(len(boxes_e), len(boxes_x))

    @property
    def share(self) -> float:
        return self.agree / self.total if self.total else 1.0


@torch.no_grad()
def check_parity(
    task: Task, eager: nn.Module, exported: nn.Module, info: ModelInfo, index: DataIndex, split: str, limit: int
) -> Parity:
    """Run both models over the first `limit` images of `split` and compare them (see `Parity`)."""
    samples = index.samples(split)[:limit]
    dataset = task.dataset(samples, info=info, augment=None, cache=False, coding=index.masks)
    loader = DataLoader(dataset, batch_size=task.default_batch, collate_fn=task.collate())
    signature = task.export_signature(eager, info, dynamic_batch=True)
    diffs = _Differences(signature.agreement, getattr(task, "conf_threshold", 0.0))
    if signature.per_image:  # compare like with like, eager or compiled networks included: see _OneByOne
        eager, exported = _OneByOne(eager), _OneByOne(exported)
    models = _Recorder(eager).eval(), _Recorder(exported).eval()
    metrics = task.metrics(), task.metrics()
    for batch in loader:
        steps = [task.step(model, batch) for model in models]
        for step, scores in zip(steps, metrics, strict=True):
            scores.update(step["outputs"], step["targets"])
        diffs.outputs(models[0].last, models[1].last)
        if signature.agreement != "boxes":
            diffs.decisions(steps[0]["outputs"], steps[1]["outputs"])
    name = task.monitor[0].removeprefix("val_")
    eager_metrics, exported_metrics = (m.compute() for m in metrics)
    return Parity(
        images=len(samples), split=split, metric=name, eager=float(eager_metrics[name]),
        exported=float(exported_metrics[name]), max_abs=diffs.max_abs, max_rel=diffs.max_rel,
        agreement=diffs.share, agreement_name=AGREEMENT[signature.agreement],
    )  # fmt: skip
