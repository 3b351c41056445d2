"""Writing predictions: as JSON, CSV or COCO results text, and as drawn images and index-mask PNGs."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imagerec.errors import UserError
from imagerec.records import ModelInfo
from imagerec.safe_read import printable
from imagerec.tasks.results import Classification, Detections, InstanceMasks, Result, SegmentationMask, coco_results

FORMATS = ("table", "json", "csv", "coco")


def check_format(fmt: str, result_type: type[Result]) -> None:
    """Refuse an output format that results of `result_type` (the run's task's) cannot give."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: use {', '.join(FORMATS)}")
    if fmt == "coco" and not issubclass(result_type, Detections):
        raise UserError("--format coco writes boxes: it applies to detection and instance segmentation runs")


def coco_image_ids(annotations: Path, sources: Sequence[Path]) -> dict[str, int | str]:
    """Each source's image id in COCO `annotations` (keyed as results name their source), matched by its
    `file_name` (the longest trailing part of the source's path that is one); a UserError naming the first source
    the file does not list."""
    from imagerec.data.formats.coco import image_ids

    ids = image_ids(Path(annotations))
    found: dict[str, int | str] = {}
    missing = []
    for source in sources:
        tails = ("/".join(Path(source).parts[-n:]) for n in range(len(Path(source).parts), 0, -1))
        match = next((tail for tail in tails if tail in ids), None)
        if match is None:
            missing.append(source)
        else:
            found[printable(source)] = ids[match]  # as results name their source
    if missing:
        raise UserError(
            f"{printable(missing[0])}: not among the images of {annotations} ({len(missing)} of {len(sources)} "
            "images are not); predict that dataset's images, or leave out --image-ids"
        )
    return found


def render(results: Sequence[Result], fmt: str, info: ModelInfo, image_ids: dict[str, int | str] | None = None) -> str:
    """`results` as JSON, CSV or (boxes) COCO results JSON text; `image_ids` (by source) for COCO's image_id."""
    if fmt == "json":
        return json.dumps([r.to_dict() for r in results], indent=2) + "\n"
    if fmt == "coco":
        return json.dumps(coco_results(results, info.classes, info.category_ids, image_ids), indent=2) + "\n"
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for row in _csv_rows(results):
        writer.writerow(row)
    return buffer.getvalue()


def _csv_rows(results: Sequence[Result]) -> list[list[Any]]:
    if not results:
        return []
    if isinstance(results[0], SegmentationMask):  # one row per class present: its pixels and share of the image
        rows = [["source", "class", "pixels", "share", "error"]]
        for r in results:
            total = sum((r.areas or {}).values()) or 1
            rows += [[r.source, name, n, f"{n / total:.6f}", ""] for name, n in (r.areas or {}).items() if n]
            rows += [[r.source, "", "", "", r.error]] if r.error else []
        return rows
    if isinstance(results[0], Detections):  # one row per box
        rows = [["source", "label", "score", "x1", "y1", "x2", "y2", "error"]]
        for r in results:
            found = zip(r.labels, r.scores, r.boxes, strict=True)
            rows += [[r.source, label, f"{score:.6f}", *(f"{v:.2f}" for v in box), ""] for label, score, box in found]
            rows += [[r.source, "", "", "", "", "", "", r.error]] if r.error else []
        return rows
    rows = [["source", "label", "prob", "topk_labels", "topk_probs", "error"]]
    for r in results:
        prob = f"{r.prob:.6f}" if r.prob is not None else ""
        rows.append([r.source, r.label or "", prob, ";".join(r.labels), ";".join(f"{p:.6f}" for p in r.probs),
                     r.error or ""])  # fmt: skip
    return rows


def save_outputs(
    result: Result, source: Path, info: ModelInfo, *, images: Path | None, masks: Path | None, max_pixels: int
) -> None:
    """Write `result`'s drawn image to `images` and its index mask to `masks` (each when given), named after
    its `source` file's stem; the source is read again under the same `max_pixels` limit it was predicted with."""
    if result.error is not None or (images is None and masks is None):
        return
    from imagerec.data.images import read_image
    from imagerec.outputs.visualize import (
        draw_class_map,
        draw_classification,
        draw_detections,
        draw_instances,
        save_class_map,
        save_png,
    )  # fmt: skip

    stem = source.stem
    if masks is not None and isinstance(result, SegmentationMask):
        save_class_map(result, masks / f"{stem}.png")
    if images is None:
        return
    image = read_image(source, max_pixels=max_pixels)
    if isinstance(result, Classification):
        drawn = draw_classification(image, result, info.classes)
    elif isinstance(result, SegmentationMask):
        drawn = draw_class_map(image, result, info.colours)
    elif isinstance(result, InstanceMasks):
        drawn = draw_instances(image, result, info.classes)
    else:
        drawn = draw_detections(image, result, info.classes)
    save_png(drawn, images / f"{stem}.png")
