"""Sliding-window inference: tiles cover the image, blending is smooth, and the result matches whole-image
inference of a convolutional network wherever both fit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from imagerec.models.tiling import blend_window, predict_tiled, tile_starts


def test_tile_starts_cover_the_image_with_the_overlap() -> None:
    assert tile_starts(100, 128, 16) == [0]
    starts = tile_starts(300, 128, 32)
    assert starts[0] == 0
    assert starts[-1] == 300 - 128
    assert all(b - a <= 128 - 32 for a, b in zip(starts, starts[1:], strict=False))


def test_blend_window_is_one_inside_and_ramps_at_the_edges() -> None:
    window = blend_window(64, 48, 16)
    assert window.shape == (64, 48)
    assert float(window[32, 24]) == 1.0
    assert 0 < float(window[0, 0]) < 0.01
    assert float(window[8, 24]) == pytest.approx(8.5 / 16)
    assert torch.equal(blend_window(10, 10, 0), torch.ones(10, 10))


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 3, 3, padding=1),
    ).eval()


def test_tiled_equals_whole_image_inference() -> None:
    """A 3-layer ConvNet (receptive field 7 px): blended 96 px tiles with a 32 px overlap give the whole-image class
    of (measured) every pixel, and logits within 1e-2; an image smaller than the tile is exactly the whole image."""
    net = _net()
    image = torch.rand(1, 300, 257)
    with torch.no_grad():
        whole = net(image[None])[0]
    tiled = predict_tiled(net, image, tile=96, overlap=32, batch=3)
    assert tiled.shape == whole.shape
    assert float((tiled.argmax(0) == whole.argmax(0)).float().mean()) > 0.999
    torch.testing.assert_close(tiled, whole, atol=1e-2, rtol=0)
    small = torch.rand(1, 60, 70)
    with torch.no_grad():
        torch.testing.assert_close(predict_tiled(net, small, tile=96, overlap=32), net(small[None])[0])


def test_overlap_must_be_below_the_tile() -> None:
    with pytest.raises(ValueError, match="overlap"):
        predict_tiled(_net(), torch.rand(1, 64, 64), tile=32, overlap=32)
