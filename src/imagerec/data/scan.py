"""What `imagerec data inspect` and `validate` share for every task: the indexed images in split order, a few
threads to read them with, image headers read without decoding, and problems in one shape."""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from imagerec.data.index import DataIndex
from imagerec.data.targets import Sample

_T = TypeVar("_T")
_R = TypeVar("_R")

_SPLIT_ORDER = {"train": 0, "val": 1, "test": 2, "all": 3}
_TIFF = frozenset({".tif", ".tiff"})
_EXIF_ORIENTATION = 0x0112
# The modes read_image decodes to one channel; every other mode becomes three (alpha dropped).
_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_BIT_DEPTH = {"1": 1, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32}


def parallel(function: Callable[[_T], _R], items: Iterable[_T]) -> Iterator[_R]:
    """`map` over a few threads, in order: decoding and hashing release the GIL, and small files are I/O bound."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        yield from pool.map(function, items)


def ordered_splits(index: DataIndex) -> list[str]:
    """The index's split names in train, val, test, all order (others last)."""
    return sorted(index.splits, key=lambda n: _SPLIT_ORDER.get(n, 9))


def entries(index: DataIndex) -> list[tuple[str, Sample]]:
    """(split, sample) for every indexed image, splits in train/val/test order."""
    return [(split, s) for split in ordered_splits(index) for s in index.splits[split]]


@dataclass(frozen=True)
class Header:
    """What an image file's header says, as `read_image` will decode it."""

    width: int
    height: int
    channels: int  # as read_image decodes it
    bits: int
    mode: str
    format: str


def _tiff_header(path: Path) -> Header:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        shape, dtype = tif.series[0].shape, tif.series[0].dtype
    channels = shape[2] if len(shape) == 3 else 1
    return Header(
        shape[1], shape[0], channels - 1 if channels in (2, 4) else channels, dtype.itemsize * 8, str(dtype), "TIFF"
    )


def read_header(path: Path) -> Header | None:
    """Size, channels and depth from the file header (no decoding); None when the header cannot be read."""
    try:
        if path.suffix.lower() in _TIFF:
            return _tiff_header(path)
        with Image.open(path) as image:
            width, height = image.size
            if image.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):  # read_image rotates these by 90°
                width, height = height, width
            mode, fmt = image.mode, image.format or path.suffix[1:].upper()
    except Exception:  # any failure here means "unreadable"; validate says exactly why
        return None
    bits = 16 if (fmt, mode) == ("PNG", "I") else _BIT_DEPTH.get(mode, 8)  # older Pillow opens 16-bit PNG as "I"
    return Header(width, height, 1 if mode in _GREY_MODES else 3, bits, mode, fmt)


def exif_orientation(path: Path) -> int:
    """The EXIF orientation tag of the image at `path` (1, upright, when it has none or cannot be read)."""
    try:
        with Image.open(path) as image:
            return int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # unreadable: reported as corrupt already
        return 1


def spread(values: list[int]) -> dict[str, int] | None:
    """Minimum, median and maximum of `values`; None when there are none."""
    return {"min": min(values), "median": statistics.median_low(values), "max": max(values)} if values else None


def problem(kind: str, files: list[Path], message: str) -> dict[str, Any]:
    """One problem as `validate_data` reports it."""
    return {"kind": kind, "files": [str(f) for f in files], "message": message}
