"""What one indexed image is labelled with: a class index, several (multi-label), its Objects (detection and
instance segmentation) or its MaskFile (semantic segmentation). Format readers build them, masks and datasets read
them; the index groups them by split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Objects:
    """The annotated objects of one image, for detection and instance segmentation.

    Boxes are in pixels of the image as stored on disk, corners (x1, y1, x2, y2), x to the right and y down;
    labels index `DataIndex.classes` (0-based: no background class here). `ignore` marks objects evaluation must
    neither reward nor penalise (VOC `difficult`, COCO `iscrowd`). An image with no objects is a negative example.
    """

    boxes: tuple[Box, ...] = ()
    labels: tuple[int, ...] = ()
    ignore: tuple[bool, ...] = ()  # empty means none ignored
    size: tuple[int, int] | None = None  # (width, height) as the annotation states it, when it does
    segmentation: tuple[Any, ...] = ()  # per object: COCO polygons (list of flat xy lists) or RLE dict
    area: tuple[float, ...] = ()  # per object, as COCO states it (the mask's area); empty: the box areas

    def ignored(self, i: int) -> bool:
        return bool(self.ignore) and self.ignore[i]


@dataclass(frozen=True)
class MaskFile:
    """The mask of one image, for semantic segmentation: what its pixel values mean is `DataIndex.masks`."""

    path: Path


@dataclass(frozen=True)
class Sample:
    """One image and its target: a class index, a tuple of class indices (multi-label), its Objects, or its
    MaskFile."""

    path: Path
    target: int | tuple[int, ...] | Objects | MaskFile
