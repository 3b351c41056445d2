"""Reading a 4-D feature map whatever its layout: N×C×H×W, or channels-last N×H×W×C as the stages of Swin
(torchvision's and timm's) give it. imagerec feeds square inputs, so the map's two equal sides tell the layout."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def is_channels_last(shape: Sequence[int]) -> bool:
    """Whether a 4-D `shape` is N×H×W×C: its middle sides equal and its last two different."""
    return len(shape) == 4 and shape[-1] != shape[-2] and shape[1] == shape[2]


def map_side(shape: Sequence[int] | None) -> int | None:
    """The side of a square feature map in either layout; None for anything else."""
    if shape is None or len(shape) != 4:
        return None
    if shape[-1] == shape[-2]:
        return shape[-1]
    return shape[1] if is_channels_last(shape) else None


def channels_first(features: torch.Tensor) -> torch.Tensor:
    """A 4-D map as N×C×H×W (a view when it is channels-last; unchanged otherwise)."""
    return features.permute(0, 3, 1, 2) if is_channels_last(features.shape) else features
