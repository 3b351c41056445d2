"""Semantic segmentation metrics from one pixel confusion matrix: IoU, Dice and pixel accuracy, per class and mean.

The key names are the JSON contract of `imagerec evaluate`; docs/segmentation.md explains each one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from imagerec.records import Decision

# Main metric and whether higher is better, used for best checkpoints and early stopping.
MONITOR = ("miou", "max")


def confusion_matrix(
    preds: torch.Tensor, target: torch.Tensor, num_classes: int, *, ignore_index: int | None = None
) -> torch.Tensor:
    """K×K pixel counts (int64, on the inputs' device): row = true class, column = predicted class; pixels whose
    target is `ignore_index` are left out. A class outside 0..K-1 elsewhere is a ValueError.

    Equal to torchmetrics' `multiclass_confusion_matrix(preds, target, K, ignore_index=...)` (tested), but always
    one `torch.bincount`: torchmetrics replaces it, when deterministic algorithms are on, with a pixels × K²
    comparison table (gigabytes for a batch of large images), although bincount without weights is deterministic.
    """
    k = num_classes
    target, preds = target.reshape(-1).long(), preds.reshape(-1).long()
    keep = target != ignore_index if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
    in_range = (target >= 0) & (target < k) & (preds >= 0) & (preds < k)
    # Two extra bins instead of boolean indexing (which waits for the device): k² counts ignored pixels,
    # k² + 1 values out of range.
    index = torch.where(keep & in_range, target * k + preds, torch.where(keep, k * k + 1, k * k))
    counts = torch.bincount(index, minlength=k * k + 2)
    if int(counts[-1]):
        raise ValueError(f"{int(counts[-1])} pixels have a predicted or true class outside 0..{k - 1}")
    return counts[: k * k].reshape(k, k)


def class_map(outputs: torch.Tensor, target_ndim: int = 3) -> torch.Tensor:
    """Predicted classes (N×H×W) from class maps (N×H×W integers, returned as they are), K logits or
    probabilities (N×K×H×W: argmax) or one logit (N×1×H×W: foreground where it is above 0)."""
    if outputs.ndim == target_ndim:
        if outputs.is_floating_point():
            raise ValueError("outputs with the targets' shape must be class indices (integers), not scores")
        return outputs
    if outputs.ndim != target_ndim + 1:
        raise ValueError(f"outputs of shape {tuple(outputs.shape)}: need N×H×W classes or N×K×H×W scores")
    return (outputs[:, 0] > 0).long() if outputs.shape[1] == 1 else outputs.argmax(dim=1)


class SegmentationMetrics:
    """IoU, Dice and pixel accuracy over every pixel of the evaluated set (not averaged per image).

    `update(outputs, targets)`: outputs as `class_map` accepts them, targets N×H×W class indices; pixels whose
    target is `ignore_index` count nowhere. The K×K confusion matrix C (rows truth, columns prediction) is
    accumulated on the inputs' device. For class k, with TP = C[k, k], FP = column sum − TP, FN = row sum − TP:

    - IoU_k = TP / (TP + FP + FN) (Jaccard), Dice_k = 2·TP / (2·TP + FP + FN) (F1 of the pixels).
    - A class absent from both truth and prediction over the whole set has 0 / 0: its IoU and Dice are undefined,
      None (JSON null), and left out of the means. A class predicted but absent from the truth scores 0, as does
      one present but never predicted.
    - `miou` and `dice`: means over the FOREGROUND classes, 1..K-1 (class 0 is the background, which dominates
      most images and would flatter the mean); with a single class, over it. `miou_all`: over all classes.
      None when no class in the mean is defined.
    - `pixel_accuracy`: trace(C) / sum(C).
    - `per_class`: name → {"iou", "dice", "pixels" (true pixels of the class)}; `confusion_matrix`: C as lists;
      `count`: images.
    - `binary` (two classes, background and foreground): also `iou_fg` and `dice_fg`, class 1's IoU and Dice.
    """

    def __init__(self, classes: Sequence[str], *, ignore_index: int = 255, binary: bool = False) -> None:
        if binary and len(classes) != 2:
            raise ValueError(f"binary segmentation needs 2 classes (background, foreground), got {len(classes)}")
        self.classes = list(classes)
        self.ignore_index = ignore_index
        self.binary = binary
        self._confusion: torch.Tensor | None = None
        self._count = 0

    def reset(self) -> None:
        self._confusion = None
        self._count = 0

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Adds a batch: outputs (classes, scores or one logit per pixel) and N×H×W target classes."""
        preds = class_map(outputs.detach(), targets.ndim)
        if preds.shape != targets.shape:
            raise ValueError(f"predicted classes {tuple(preds.shape)} and targets {tuple(targets.shape)} differ")
        batch = confusion_matrix(preds, targets, len(self.classes), ignore_index=self.ignore_index)
        self._confusion = batch if self._confusion is None else self._confusion + batch.to(self._confusion.device)
        self._count += int(targets.shape[0]) if targets.ndim == 3 else 1

    def decide(self, rule: str) -> Decision | None:
        """No threshold to choose: each pixel takes its most probable class."""
        return None

    def compute(self) -> dict[str, Any]:
        """The values listed in the class docstring, as plain Python numbers and None."""
        k = len(self.classes)
        confusion = self._confusion.cpu() if self._confusion is not None else torch.zeros(k, k, dtype=torch.int64)
        iou, dice = _scores(confusion.double())
        first = 1 if k >= 2 else 0  # the means skip the background
        total = int(confusion.sum())
        result: dict[str, Any] = {
            "miou": _mean(iou[first:]),
            "dice": _mean(dice[first:]),
            "miou_all": _mean(iou),
            "pixel_accuracy": _round(int(confusion.trace()) / total) if total else None,
            "per_class": {
                name: {"iou": _round(iou[i]), "dice": _round(dice[i]), "pixels": int(pixels)}
                for i, (name, pixels) in enumerate(zip(self.classes, confusion.sum(1).tolist(), strict=True))
            },
            "confusion_matrix": confusion.tolist(),
            "count": self._count,
        }
        if self.binary:
            result["iou_fg"], result["dice_fg"] = _round(iou[1]), _round(dice[1])
        return result


def _scores(confusion: torch.Tensor) -> tuple[list[float | None], list[float | None]]:
    """Per-class IoU and Dice; None where the class is absent from both truth and prediction (0 / 0)."""
    tp = confusion.diag().tolist()
    truth, predicted = confusion.sum(1).tolist(), confusion.sum(0).tolist()
    iou = [t / (a + b - t) if a + b else None for t, a, b in zip(tp, truth, predicted, strict=True)]
    dice = [2 * t / (a + b) if a + b else None for t, a, b in zip(tp, truth, predicted, strict=True)]
    return iou, dice


def _mean(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return _round(sum(defined) / len(defined)) if defined else None


def _round(value: float | None) -> float | None:
    """Rounded for JSON like the other metrics; None stays None."""
    return None if value is None else round(float(value), 6)
