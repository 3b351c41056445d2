"""Typed prediction results with `.to_dict()` for JSON, CSV and HTTP."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import PurePath
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Classification:
    """Top-k labels of one image, most probable first; `error` is set (and labels empty) when it was unreadable."""

    source: str
    labels: tuple[str, ...]
    probs: tuple[float, ...]
    error: str | None = None

    @property
    def label(self) -> str | None:
        return self.labels[0] if self.labels else None

    @property
    def prob(self) -> float | None:
        return self.probs[0] if self.probs else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["labels"], data["probs"] = list(self.labels), [round(p, 6) for p in self.probs]
        return data

    def to_row(self) -> dict[str, Any]:
        """One flat table row (Parquet's columns; see `imagerec.outputs.tables`)."""
        return {
            "source": self.source, "label": self.label, "prob": self.prob, "topk_labels": list(self.labels),
            "topk_probs": list(self.probs), "error": self.error,
        }  # fmt: skip


@dataclass(frozen=True)
class Detections:
    """The objects found in one image, best score first; boxes in the image's pixels (x1, y1, x2, y2).

    `error` is set (and nothing found) when the image was unreadable; `size` is the image's (width, height).
    """

    source: str
    boxes: tuple[tuple[float, float, float, float], ...] = ()
    labels: tuple[str, ...] = ()
    scores: tuple[float, ...] = ()
    size: tuple[int, int] | None = None
    error: str | None = None

    def __len__(self) -> int:
        return len(self.boxes)

    def to_dict(self) -> dict[str, Any]:
        objects = [
            {"label": label, "score": round(score, 6), "box": [round(v, 2) for v in box]}
            for box, label, score in zip(self.boxes, self.labels, self.scores, strict=True)
        ]
        data: dict[str, Any] = {"source": self.source, "objects": objects}
        if self.size is not None:
            data["width"], data["height"] = self.size
        if self.error is not None:
            data["error"] = self.error
        return data

    def to_row(self) -> dict[str, Any]:
        """One flat table row: the boxes, labels and scores as aligned lists."""
        width, height = self.size or (None, None)
        return {
            "source": self.source, "width": width, "height": height, "labels": list(self.labels),
            "scores": list(self.scores), "boxes": [list(box) for box in self.boxes], "error": self.error,
        }  # fmt: skip


def coco_results(
    results: Sequence[Detections],
    classes: Sequence[str],
    category_ids: Sequence[int] | None = None,
    image_ids: Mapping[str, int | str] | None = None,
    *,
    first: int = 1,
) -> list[dict[str, Any]]:
    """Detections in the COCO results format (what pycocotools' `loadRes` reads): one entry per box.

    `image_id` is the ground truth's id from `image_ids` (by source) when given, else the file name's number when
    it is one (COCO names images by id), else the position (`results[0]`'s is `first`); `category_id` is the
    data's own COCO id when the run was trained on COCO data, else the class position + 1.
    """
    ids = list(category_ids) if category_ids else list(range(1, len(classes) + 1))
    lookup = {name: ids[i] for i, name in enumerate(classes)}
    entries = []
    for position, result in enumerate(results, start=first):
        stem = PurePath(result.source).stem
        image_id = image_ids[result.source] if image_ids else int(stem) if stem.isdigit() else position
        for (x1, y1, x2, y2), label, score in zip(result.boxes, result.labels, result.scores, strict=True):
            entries.append({
                "image_id": image_id, "file_name": PurePath(result.source).name, "category_id": lookup[label],
                "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score,
            })  # fmt: skip
    return entries


def rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's compressed run-length encoding of a boolean H×W mask (what pycocotools' `mask.decode` reads)."""
    from pycocotools import mask as coco_mask

    encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


@dataclass(frozen=True, eq=False)
class SegmentationMask:
    """One image's class per pixel: `mask` is H×W class indices at the image's own size; `areas` counts pixels
    per class. `error` is set (and the mask None) when the image was unreadable."""

    source: str
    mask: np.ndarray | None = None
    areas: dict[str, int] | None = None
    error: str | None = None

    @property
    def size(self) -> tuple[int, int] | None:
        return None if self.mask is None else (int(self.mask.shape[1]), int(self.mask.shape[0]))

    def to_dict(self, *, masks: bool = True) -> dict[str, Any]:
        """JSON-ready: areas per class, and (with `masks`) each present class's pixels as COCO RLE."""
        data: dict[str, Any] = {"source": self.source}
        if self.error is not None:
            return {**data, "error": self.error}
        data["width"], data["height"] = self.size
        data["areas"] = dict(self.areas or {})
        if masks:
            names = list(self.areas or {})
            data["masks"] = {names[c]: rle(self.mask == c) for c in np.unique(self.mask).tolist()}
        return data

    def to_row(self) -> dict[str, Any]:
        """One flat table row: the classes present, their pixel counts and their masks (COCO RLE), aligned."""
        if self.mask is None:
            return {"source": self.source, "width": None, "height": None, "classes": [], "pixels": [], "masks": [],
                    "error": self.error}  # fmt: skip
        names = list(self.areas or {})
        present = np.unique(self.mask).tolist()
        width, height = self.size
        return {
            "source": self.source, "width": width, "height": height, "classes": [names[c] for c in present],
            "pixels": [int((self.areas or {})[names[c]]) for c in present],
            "masks": [rle(self.mask == c) for c in present], "error": None,
        }  # fmt: skip


@dataclass(frozen=True)
class InstanceMasks(Detections):
    """Detections with each object's pixels: `masks` holds one COCO RLE per box, in the same order."""

    masks: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        for entry, mask in zip(data["objects"], self.masks, strict=True):
            entry["mask"] = mask
        return data

    def to_row(self) -> dict[str, Any]:
        return {**super().to_row(), "masks": list(self.masks)}


Result = Classification | Detections | SegmentationMask  # InstanceMasks are Detections
