"""Sliding-window inference for images too large to segment at once: overlapping tiles, blended logits.

Written here rather than taken from a library: MONAI's `sliding_window_inference` does this well but would pull in
MONAI for one function; the logic is short. Each tile's logits are weighted by a window that is 1 in the middle
and ramps down over `overlap` pixels towards the tile's edges, where a convolutional network sees least context;
the weighted sum divided by the summed weights gives every pixel a smooth mix of the tiles covering it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Forward = Callable[[torch.Tensor], torch.Tensor]  # N×C×h×w → N×K×h×w logits
EDGE_WEIGHT = 1e-3  # never zero: pixels at the image border are covered by one tile edge only


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size `tile` covering [0, length), consecutive tiles overlapping by ≥ `overlap`."""
    if length <= tile:
        return [0]
    stride = max(1, tile - overlap)
    starts = list(range(0, length - tile, stride))
    return [*starts, length - tile]


def blend_window(height: int, width: int, overlap: int) -> torch.Tensor:
    """H×W weights: 1 inside, a linear ramp over `overlap` pixels at each edge."""

    def ramp(n: int) -> torch.Tensor:
        x = torch.arange(n, dtype=torch.float32) + 0.5
        if overlap <= 0:
            return torch.ones(n)
        return torch.minimum(x / overlap, (n - x) / overlap).clamp(EDGE_WEIGHT, 1.0)

    return ramp(height)[:, None] * ramp(width)[None, :]


@torch.no_grad()
def predict_tiled(forward: Forward, image: torch.Tensor, *, tile: int, overlap: int, batch: int = 4) -> torch.Tensor:
    """K×H×W logits of `image` (C×H×W) from overlapping `tile`×`tile` windows; memory grows with the tile and
    the output, not with what the network would need for the whole image."""
    if overlap >= tile:
        raise ValueError(f"overlap {overlap} must be smaller than the tile {tile}")
    _, height, width = image.shape
    th, tw = min(tile, height), min(tile, width)
    window = blend_window(th, tw, overlap)
    corners = [(y, x) for y in tile_starts(height, th, overlap) for x in tile_starts(width, tw, overlap)]
    total: torch.Tensor | None = None
    weights = torch.zeros(height, width)
    for i in range(0, len(corners), batch):
        chunk = corners[i : i + batch]
        logits = forward(torch.stack([image[:, y : y + th, x : x + tw] for y, x in chunk])).float().cpu()
        if total is None:
            total = torch.zeros(logits.shape[1], height, width)
        for (y, x), tile_logits in zip(chunk, logits, strict=True):
            total[:, y : y + th, x : x + tw] += tile_logits * window
            weights[y : y + th, x : x + tw] += window
    return total / weights
