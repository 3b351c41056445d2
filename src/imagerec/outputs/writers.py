"""Writing predictions: as CSV, JSON Lines, JSON or COCO results text, and as drawn images and index-mask PNGs."""

from __future__ import annotations

import csv
import io
import json
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagerec.errors import UserError
from imagerec.records import ModelInfo
from imagerec.safe_read import printable
from imagerec.tasks.results import Classification, Detections, InstanceMasks, Result, SegmentationMask, coco_results

FORMATS = ("table", "csv", "jsonl", "json", "coco", "parquet")
BY_SUFFIX = {".csv": "csv", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}


def choose_format(fmt: str | None, out: Path | None, result_type: type[Result]) -> str:
    """The output format: `fmt` when given, else the one `out`'s suffix names (`.csv`, `.jsonl`, `.json`, `.parquet`;
    CSV for any other), else a table on the screen. Refused when `result_type` (the run's task's results) cannot be
    written so, or Parquet has no file to go to."""
    if fmt is None:
        fmt = "table" if out is None else BY_SUFFIX.get(out.suffix.lower(), "csv")
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: use {', '.join(FORMATS)}")
    if fmt == "coco" and not issubclass(result_type, Detections):
        raise UserError("--format coco writes boxes: it applies to detection and instance segmentation runs")
    if fmt == "parquet" and out is None:
        raise UserError("--format parquet writes a folder of Parquet files: add --out results.parquet")
    return "csv" if fmt == "table" and out is not None else fmt


def check_image_ids(image_ids: Path | None, fmt: str) -> None:
    """Refuse COCO image ids (`--image-ids`) for a format other than COCO results."""
    if image_ids is not None and fmt != "coco":
        raise UserError("--image-ids numbers the results of --format coco; add --format coco or leave it out")


def coco_image_ids(annotations: Path, sources: Iterable[Path]) -> dict[str, int | str]:
    """Each source's image id in COCO `annotations` (keyed as results name their source), matched by its
    `file_name` (the longest trailing part of the source's path that is one); a UserError naming the first source
    the file does not list."""
    from imagerec.data.formats.coco import image_ids

    ids = image_ids(Path(annotations))
    found: dict[str, int | str] = {}
    missing, total = [], 0
    for source in sources:
        total += 1
        tails = ("/".join(Path(source).parts[-n:]) for n in range(len(Path(source).parts), 0, -1))
        match = next((tail for tail in tails if tail in ids), None)
        if match is None:
            missing.append(source)
        else:
            found[printable(source)] = ids[match]  # as results name their source
    if missing:
        raise UserError(
            f"{printable(missing[0])}: not among the images of {annotations} ({len(missing)} of {total} "
            "images are not); predict that dataset's images, or leave out --image-ids"
        )
    return found


@dataclass(frozen=True)
class TextFormat:
    """How results become text, result by result, so that a long prediction can be written as it goes: a header
    (CSV's column names), then each result's items; an `array`'s items are JSON values, joined into one JSON
    array exactly as `json.dumps(..., indent=2)` would write it."""

    header: Callable[[type[Result]], str]
    items: Callable[[Sequence[Result], ModelInfo, Mapping[str, int | str] | None, int], list[str]]
    array: bool = False


def _json_value(value: Any) -> str:
    return textwrap.indent(json.dumps(value, indent=2), "  ")


def _csv_text(rows: Iterable[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()


TEXT_FORMATS = {
    "csv": TextFormat(
        header=lambda result_type: _csv_text([csv_header(result_type)]),
        items=lambda results, info, ids, first: [_csv_text(csv_rows([r])) for r in results],
    ),
    "jsonl": TextFormat(
        header=lambda result_type: "",
        items=lambda results, info, ids, first: [json.dumps(r.to_dict()) + "\n" for r in results],
    ),
    "json": TextFormat(
        header=lambda result_type: "",
        items=lambda results, info, ids, first: [_json_value(r.to_dict()) for r in results],
        array=True,
    ),
    "coco": TextFormat(
        header=lambda result_type: "",
        items=lambda results, info, ids, first: [
            _json_value(entry) for entry in coco_results(results, info.classes, info.category_ids, ids, first=first)
        ],
        array=True,
    ),
}


def render(
    results: Sequence[Result], fmt: str, info: ModelInfo, image_ids: Mapping[str, int | str] | None = None
) -> str:
    """`results` as CSV, JSON Lines, JSON or (boxes) COCO results JSON text; `image_ids` (by source) for COCO's
    image_id."""
    text_format = TEXT_FORMATS[fmt]
    items = text_format.items(results, info, image_ids, 1)
    if text_format.array:
        return "[\n" + ",\n".join(items) + "\n]\n" if items else "[]\n"
    result_type = type(results[0]) if results else Classification
    return (text_format.header(result_type) if results else "") + "".join(items)


def csv_header(result_type: type[Result]) -> list[str]:
    if issubclass(result_type, SegmentationMask):  # one row per class present: its pixels and share of the image
        return ["source", "class", "pixels", "share", "error"]
    if issubclass(result_type, Detections):  # one row per box
        return ["source", "label", "score", "x1", "y1", "x2", "y2", "error"]
    return ["source", "label", "prob", "topk_labels", "topk_probs", "error"]


def csv_rows(results: Sequence[Result]) -> list[list[Any]]:
    """The CSV rows of `results` (see `csv_header`); an unreadable image gets one row with its error."""
    rows: list[list[Any]] = []
    for r in results:
        if isinstance(r, SegmentationMask):
            total = sum((r.areas or {}).values()) or 1
            rows += [[r.source, name, n, f"{n / total:.6f}", ""] for name, n in (r.areas or {}).items() if n]
            rows += [[r.source, "", "", "", r.error]] if r.error else []
        elif isinstance(r, Detections):
            found = zip(r.labels, r.scores, r.boxes, strict=True)
            rows += [[r.source, label, f"{score:.6f}", *(f"{v:.2f}" for v in box), ""] for label, score, box in found]
            rows += [[r.source, "", "", "", "", "", "", r.error]] if r.error else []
        else:
            prob = f"{r.prob:.6f}" if r.prob is not None else ""
            rows.append([r.source, r.label or "", prob, ";".join(r.labels), ";".join(f"{p:.6f}" for p in r.probs),
                         r.error or ""])  # fmt: skip
    return rows


def save_outputs(
    result: Result, source: Path, info: ModelInfo, *, images: Path | None, masks: Path | None, max_pixels: int
) -> None:
    """Write `result`'s drawn image to `images` (in the source's own format: a .jpg stays a .jpg) and its index mask
    to `masks` as PNG (each when given), named after its `source` file; the source is read again under the same
    `max_pixels` limit it was predicted with."""
    if result.error is not None or (images is None and masks is None):
        return
    from imagerec.data.images import read_image
    from imagerec.outputs.visualize import (
        draw_class_map,
        draw_classification,
        draw_detections,
        draw_instances,
        drawn_name,
        save_class_map,
        save_image,
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
        drawn = draw_class_map(image, result, info.colours, classes=info.classes, readable=True)
    elif isinstance(result, InstanceMasks):
        drawn = draw_instances(image, result, info.classes, readable=True)
    else:
        drawn = draw_detections(image, result, info.classes, readable=True)
    save_image(drawn, images / drawn_name(source))
