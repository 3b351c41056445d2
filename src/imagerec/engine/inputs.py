"""The smallest input a model can learn from, derived from how much its backbone downsamples."""

from __future__ import annotations

import math

import torch
from torch import nn

from imagerec.errors import UserError
from imagerec.models.feature_maps import map_side
from imagerec.models.probe import probe_modules
from imagerec.models.stages import find_backbone

PROBE_SIZE = 128  # tells strides up to 64 apart (a coarser backbone counts as 64) at a quarter of a 256 px probe


def smallest_input(model: nn.Module, *, in_channels: int) -> int | None:
    """The total stride of a detector's or segmenter's backbone, probed on one blank image: below it the coarsest
    feature map holds less than one cell of image, and boxes or masks cannot be learnt. None for a classifier (any
    size it runs at can be learnt from: `check_input_size` runs it) or a backbone that takes one size only."""
    found = find_backbone(model)
    if found is None:
        return None
    backbone = found[1]
    reference = next(backbone.parameters())
    probe = torch.zeros(1, in_channels, PROBE_SIZE, PROBE_SIZE, device=reference.device, dtype=reference.dtype)
    try:
        calls = probe_modules(backbone, probe)
    except (RuntimeError, ValueError, AssertionError):  # a transformer with a fixed input size: no stride to read
        return None
    # 1×1 maps (global pooling, squeeze-and-excitation) have no resolution of their own.
    sides = [side for call in calls.values() if (side := map_side(call.shape)) and side > 1]
    return 2 ** round(math.log2(PROBE_SIZE / min(sides))) if sides else None


def check_min_imgsz(model: nn.Module, *, name: str, in_channels: int, imgsz: int) -> None:
    """A UserError when `imgsz` is below `smallest_input` of `model`."""
    smallest = smallest_input(model, in_channels=in_channels)
    if smallest is not None and imgsz < smallest:
        raise UserError(
            f"--imgsz {imgsz} is below the smallest input {name} can learn from, {smallest} px: its backbone "
            f"downsamples {smallest}×, so its coarsest feature map would hold less than one cell of image; pass "
            f"--imgsz {smallest} or more"
        )
