"""Segmentation losses: cross-entropy, soft Dice, focal and CE + Dice, for K logits (softmax) or one (sigmoid).

Every loss takes `logits` (N×K×H×W, or N×1×H×W for a binary task) and `target` (N×H×W class indices, 0/1 for a
binary task) and leaves out pixels equal to `ignore_index` (VOC's object borders, padding). A batch whose pixels
are all ignored gives a loss of 0, not NaN, so one empty crop cannot wreck training.

- `ce`: cross-entropy (BCE with one logit), optionally weighted per class: the mean of w[target] × CE over the
  kept pixels, divided by the sum of their weights, as torch's weighted cross-entropy does.
- `dice`: soft Dice over the whole batch (probabilities, not class maps, so it has a gradient), 1 − Dice averaged
  over ALL classes including the background; a class absent from the batch's truth contributes 0 (its Dice is
  undefined). With one logit it is the foreground's Dice. Class weights do not apply: Dice already weighs every
  class equally whatever its pixel count.
- `focal`: (1 − p_t)^γ × CE with γ = 2 (Lin et al.), down-weighting pixels already classified well; softmax
  focal for K logits, sigmoid focal for one; class weights as for `ce`.
- `ce_dice`: the sum of the two, the usual default: CE for per-pixel calibration, Dice for small structures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F

from imagerec.errors import UserError

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOSSES = ("ce", "dice", "focal", "ce_dice")
FOCAL_GAMMA = 2.0


def _pixel_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, *, binary: bool, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pixel CE (BCE with one logit), the kept-pixel mask, and the target with ignored pixels set to 0
    (so it can index class weights; those pixels are masked out anyway)."""
    valid = target != ignore_index
    safe = target.where(valid, 0)
    if binary:
        per_pixel = F.binary_cross_entropy_with_logits(logits[:, 0], safe.to(logits.dtype), reduction="none")
    else:
        per_pixel = F.cross_entropy(logits, safe, reduction="none")
    return per_pixel, valid, safe


def _weighted_mean(
    per_pixel: torch.Tensor, valid: torch.Tensor, safe: torch.Tensor, weights: torch.Tensor | None
) -> torch.Tensor:
    pixel_weights = valid.to(per_pixel.dtype)
    if weights is not None:
        pixel_weights = pixel_weights * weights.to(per_pixel.device, per_pixel.dtype)[safe]
    # Summed and divided rather than indexed and averaged: no host sync, and 0 (not NaN) when nothing is kept.
    return (per_pixel * pixel_weights).sum() / pixel_weights.sum().clamp_min(torch.finfo(per_pixel.dtype).tiny)


def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    binary: bool,
    ignore_index: int,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy over the kept pixels (binary cross-entropy on one logit), weighted per class if given."""
    per_pixel, valid, safe = _pixel_cross_entropy(logits, target, binary=binary, ignore_index=ignore_index)
    return _weighted_mean(per_pixel, valid, safe, class_weights)


def focal(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    binary: bool,
    ignore_index: int,
    class_weights: torch.Tensor | None = None,
    gamma: float = FOCAL_GAMMA,
) -> torch.Tensor:
    """Focal loss (1 − p_t)^γ · CE, p_t = exp(−CE) the probability given to the true class.

    Ours rather than smp's FocalLoss: for K logits smp sums one sigmoid focal loss per class (one-vs-rest), which
    does not match a softmax head, and its mean over a fully ignored batch is NaN.
    """
    per_pixel, valid, safe = _pixel_cross_entropy(logits, target, binary=binary, ignore_index=ignore_index)
    modulated = (1 - torch.exp(-per_pixel)).pow(gamma) * per_pixel
    return _weighted_mean(modulated, valid, safe, class_weights)


def dice_loss(*, binary: bool, ignore_index: int) -> Loss:
    """Soft Dice loss: segmentation-models-pytorch's DiceLoss, which already leaves out `ignore_index` pixels (from
    both the prediction and the truth), computes Dice over the whole batch, and zeroes classes absent from it."""
    from segmentation_models_pytorch.losses import DiceLoss

    return DiceLoss("binary" if binary else "multiclass", from_logits=True, ignore_index=ignore_index)


def _summed(parts: Sequence[Loss]) -> Loss:
    if len(parts) == 1:
        return parts[0]

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = parts[0](logits, target)
        for part in parts[1:]:
            total = total + part(logits, target)
        return total

    return loss


def build_loss(
    name: str,
    *,
    num_classes: int,
    binary: bool,
    ignore_index: int,
    class_weights: Sequence[float] | None = None,
) -> Loss:
    """The loss `name` ("ce", "dice", "focal" or "ce_dice") as a function (logits, target) → scalar.

    `binary`: the model has one logit per pixel (target 0/1). `class_weights`: one per class (two when binary,
    background first), for `ce` and `focal` and the CE part of `ce_dice`.
    """
    if name not in LOSSES:
        raise UserError(f"unknown segmentation loss {name!r}: use one of {', '.join(LOSSES)}")
    weights = None
    if class_weights is not None:
        expected = 2 if binary else num_classes
        if len(class_weights) != expected:
            raise UserError(f"class_weights needs {expected} values (one per class), got {len(class_weights)}")
        weights = torch.tensor(list(class_weights), dtype=torch.float32)
    common = {"binary": binary, "ignore_index": ignore_index}
    ce = partial(cross_entropy, class_weights=weights, **common)
    parts = {
        "ce": [ce],
        "dice": [dice_loss(**common)],
        "focal": [partial(focal, class_weights=weights, **common)],
        "ce_dice": [ce, dice_loss(**common)],
    }[name]
    return _summed(parts)
