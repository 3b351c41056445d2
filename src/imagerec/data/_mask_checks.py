"""`imagerec data inspect` and `validate` for segmentation: masks beside their images, and COCO polygons."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from imagerec.data.index import DataIndex
from imagerec.data.masks import MaskCoding, MaskError, segmentation_problems, size_mismatch
from imagerec.data.scan import Header, entries, parallel, problem, read_header, spread
from imagerec.data.targets import MaskFile, Objects, Sample
from imagerec.errors import UserError

MASKS_READ_PER_SPLIT = 200  # masks decoded per split for pixel shares: evenly spaced, so the shares stay cheap


def _mask(sample: Sample) -> Path:
    return sample.target.path  # type: ignore[union-attr]


# --- inspect -------------------------------------------------------------------------------------------------


def check_polygons(index: DataIndex) -> None:
    """UserError naming the first image with a polygon of fewer than 3 points (no mask can be drawn from it)."""
    for _, sample in entries(index):
        if isinstance(sample.target, Objects) and sample.target.segmentation:
            problems = segmentation_problems(sample.target)
            if problems:
                raise UserError(f"{sample.path}: {problems[0]}; fix or remove it in the annotations")


def _check_sizes(samples: list[Sample], headers: dict[Path, Header | None], masks: dict[Path, Header | None]) -> None:
    for sample in samples:
        image, mask = headers.get(sample.path), masks.get(_mask(sample))
        if image and mask and (mask.width, mask.height) != (image.width, image.height):
            sizes = (mask.width, mask.height), (image.width, image.height)
            raise UserError(size_mismatch(_mask(sample), sizes[0], sample.path, sizes[1]))


def _tally(coding: MaskCoding, paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Pixels per class, images containing each class, and ignored pixels, over the masks at `paths`."""
    pixels = torch.zeros(coding.num_classes, dtype=torch.int64)
    images = torch.zeros_like(pixels)
    ignored = 0
    for mask in parallel(coding.read, paths):
        flat = mask.flatten()
        kept = flat != coding.ignore_index
        ignored += int((~kept).sum())
        counts = torch.bincount(flat[kept], minlength=coding.num_classes)
        pixels += counts
        images += counts > 0
    return pixels, images, ignored


def mask_inspection(index: DataIndex, headers: dict[Path, Header | None], splits: list[str]) -> dict[str, Any]:
    """What `inspect_data` reports for mask data: per split, the pixel share of each class (of the pixels not
    ignored) and of ignored pixels, and the images containing each class, over up to 200 evenly spaced masks;
    mask sizes. UserError for a mask whose size differs from its image's, or a mask that cannot be read."""
    coding: MaskCoding = index.masks  # type: ignore[assignment]
    samples = [s for split in splits for s in index.splits[split]]
    paths = [_mask(s) for s in samples]
    mask_headers = dict(zip(paths, parallel(read_header, paths), strict=True))
    _check_sizes(samples, headers, mask_headers)
    counts, shares, ignored, read, pixels = {}, {}, {}, {}, torch.zeros(coding.num_classes, dtype=torch.int64)
    for split in splits:
        members = [_mask(s) for s in index.splits[split]]
        sample = members[:: max(1, len(members) // MASKS_READ_PER_SPLIT)][:MASKS_READ_PER_SPLIT]
        split_pixels, split_images, split_ignored = _tally(coding, sample)
        labelled = max(1, int(split_pixels.sum()))
        counts[split] = dict(zip(index.classes, split_images.tolist(), strict=True))
        shares[split] = {c: round(int(n) / labelled, 4) for c, n in zip(index.classes, split_pixels, strict=True)}
        ignored[split] = round(split_ignored / max(1, labelled + split_ignored), 4)
        read[split] = len(sample)
        pixels += split_pixels
    readable = [h for h in mask_headers.values() if h is not None]
    totals = {c: int(n) for c, n in zip(index.classes, pixels, strict=True)}
    return {
        "counts": counts,
        "class_totals": {c: sum(counts[s][c] for s in splits) for c in index.classes},
        "imbalance_ratio": round(max(totals.values()) / max(1, min(totals.values())), 3),
        "masks": {
            "kind": coding.kind,
            "ignore_index": coding.ignore_index,
            "colours": [list(c) for c in coding.colours],
            "read": read,
            "pixel_share": shares,
            "ignored_share": ignored,
            "pixels": totals,
            "width": spread([h.width for h in readable]),
            "height": spread([h.height for h in readable]),
        },
        "unreadable_masks": [str(p) for p, h in mask_headers.items() if h is None],
    }


# --- validate ------------------------------------------------------------------------------------------------


def polygon_problems(index: DataIndex) -> list[dict[str, Any]]:
    """One `polygon` problem per object whose segmentation cannot be drawn (fewer than 3 points, or neither
    polygons nor RLE)."""
    return [
        problem("polygon", [sample.path], f"{sample.path}: {wrong}; fix or remove it in the annotations")
        for _, sample in entries(index)
        if isinstance(sample.target, Objects) and sample.target.segmentation
        for wrong in segmentation_problems(sample.target)
    ]


def _pair_problems(coding: MaskCoding, sample: Sample, size: tuple[int, int] | None) -> list[dict[str, Any]]:
    path = _mask(sample)
    try:
        mask = coding.read(path)
    except MaskError as error:
        return [problem(f"mask-{error.kind}", [path], str(error))]
    shape = (mask.shape[1], mask.shape[0])
    if size is not None and shape != size:
        return [problem("mask-size", [path, sample.path], size_mismatch(path, shape, sample.path, size))]
    return []


def mask_problems(
    index: DataIndex, sizes: dict[Path, tuple[int, int] | None], progress: Callable[[], None]
) -> list[dict[str, Any]]:
    """Every mask decoded once: `mask-corrupt` (unreadable), `mask-values` (values or colours that are no
    class), `mask-size` (not its image's size; `sizes` are the decoded images' (width, height))."""
    coding: MaskCoding = index.masks  # type: ignore[assignment]
    samples = [s for _, s in entries(index) if isinstance(s.target, MaskFile)]

    def check(sample: Sample) -> list[dict[str, Any]]:
        return _pair_problems(coding, sample, sizes.get(sample.path))

    problems = []
    for found in parallel(check, samples):
        problems += found
        progress()
    return problems
