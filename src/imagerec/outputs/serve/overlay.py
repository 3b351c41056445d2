"""Masks drawn on the uploaded image as PNG, for clients (the page) that cannot decode COCO RLE themselves."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from imagerec.outputs.visualize import draw_class_map, draw_instances
from imagerec.records import ModelInfo
from imagerec.tasks.results import InstanceMasks, SegmentationMask


def overlays(images: Sequence[Image.Image], results: Sequence[Any], info: ModelInfo) -> list[bytes | None]:
    """Per image: a PNG with its masks tinted in their class colours (None for results without masks)."""
    return [_overlay(image, result, info) for image, result in zip(images, results, strict=True)]


def _overlay(image: Image.Image, result: Any, info: ModelInfo) -> bytes | None:
    if result.error is not None or not isinstance(result, SegmentationMask | InstanceMasks):
        return None
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
    if isinstance(result, SegmentationMask):
        drawn = draw_class_map(pixels, result, info.colours)
    else:
        drawn = draw_instances(pixels, result, info.classes)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(drawn.permute(1, 2, 0).numpy())).save(buffer, format="PNG")
    return buffer.getvalue()
