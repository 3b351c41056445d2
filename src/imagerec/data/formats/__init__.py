"""Format readers, each turning files on disk into a DataIndex; `load_index` detects which applies."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from imagerec.data.index import DataIndex
from imagerec.errors import UserError

if TYPE_CHECKING:
    from imagerec.data.formats._boxes import Findings

FORMATS = ("imagefolder", "csv", "coco", "yolo", "voc", "masks")  # what a user may force; `csv` reads boxes too
DETECTION_FORMATS = ("coco", "yolo", "voc", "csvboxes")  # DataIndex.format of detection data


def _has_box_csv(path: Path) -> bool:
    from imagerec.data.formats.csvboxes import has_box_columns

    files = [path] if path.is_file() else sorted(path.glob("*.csv"))
    return any(has_box_columns(f) for f in files)


def detect_format(path: Path) -> str:
    """The format of the data at `path`, judged from file suffixes and the layout (no file is fully read)."""
    from imagerec.data.formats import coco, csvfile, masks, voc, yolo

    if path.is_file():
        suffix = path.suffix.lower()
        by_suffix = {".json": "coco", ".yaml": "yolo", ".yml": "yolo", ".xml": "voc"}
        if suffix == ".csv":
            return "csvboxes" if _has_box_csv(path) else "csv"
        return by_suffix.get(suffix, "imagefolder")
    if csvfile.split_csvs(path):
        return "csvboxes" if _has_box_csv(path) else "csv"
    if coco.coco_files(path):
        return "coco"
    # Before YOLO, whose sniffing takes any yaml with `names:` (as classes.yaml has) for a data.yaml; a mask
    # folder holds images, never YOLO's .txt labels, so real YOLO data is not taken for masks.
    if masks.is_masks(path):
        return "masks"
    if yolo.is_yolo(path):
        return "yolo"
    if voc.is_voc(path):
        return "voc"
    return "csvboxes" if _has_box_csv(path) else "imagefolder"


def _read(path: Path | str, format: str, findings: Findings) -> DataIndex:
    from imagerec.data.formats import coco, csvboxes, csvfile, imagefolder, masks, voc, yolo

    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"{path}: no such file or folder; give the folder holding your class subfolders or a CSV")
    if format == "auto":
        format = detect_format(path)
    elif format == "csv" and _has_box_csv(path):
        format = "csvboxes"
    readers = {
        "coco": coco.read_coco,
        "yolo": yolo.read_yolo,
        "voc": voc.read_voc,
        "csvboxes": csvboxes.read_csv_boxes,
        "masks": masks.read_masks,
    }
    if format in readers:
        return readers[format](path, findings)
    if format == "csv":
        return csvfile.read_csv_index(path)
    if format == "imagefolder":
        return imagefolder.read_imagefolder(path)
    raise UserError(f"unknown data format {format!r}: use {', '.join(FORMATS)} (or auto)")


def load_index(path: Path | str, *, format: str = "auto") -> DataIndex:
    """Index the data at `path`: classification (an image folder, a CSV file, a folder of split CSVs), detection
    (COCO JSON, YOLO, Pascal VOC XML, box CSVs) or semantic segmentation (image and mask folders), detected from
    the layout unless `format` names it. Where a folder holds both COCO JSON and masks (digit scenes), auto
    reads COCO: ask for `format="masks"` to get the masks.

    Detection boxes reaching outside their image are clipped and zero-area ones dropped, each kind with a note in
    `index.notes`; every other problem with the data raises UserError.
    """
    from imagerec.data.formats._boxes import Findings

    return _read(path, format, Findings())


def load_index_with_findings(path: Path | str, *, format: str = "auto") -> tuple[DataIndex, Findings]:
    """Like `load_index`, but problems that would stop reading (inverted boxes, unknown categories or image ids,
    images without a mask and masks without an image) are collected and left out instead, so that
    `imagerec data validate` can list them all."""
    from imagerec.data.formats._boxes import Findings

    findings = Findings(collect=True)
    return _read(path, format, findings), findings
