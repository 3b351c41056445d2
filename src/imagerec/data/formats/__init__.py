"""Data formats, each a registered entry that recognises, reads and (detection formats) writes its layout;
`load_index` detects which applies and reads the data into a DataIndex.

A new format is one module defining its `FORMAT` (a `DataFormat`) and one line registering it below.
"""

from __future__ import annotations

from pathlib import Path

from imagerec.data.formats import coco, csvboxes, csvfile, imagefolder, masks, voc, yolo
from imagerec.data.formats._boxes import Findings
from imagerec.data.formats.base import DataFormat
from imagerec.data.index import DataIndex
from imagerec.errors import UserError
from imagerec.registry import Registry
from imagerec.safe_read import is_dir, is_file

DATA_FORMATS: Registry[DataFormat] = Registry("data format")
# In the order messages list them; detection asks them by `priority` instead.
for _module in (imagefolder, csvfile, coco, yolo, voc, masks, csvboxes):
    DATA_FORMATS.add(_module.FORMAT.name, _module.FORMAT)

_FALLBACK = "imagefolder"  # what a folder (or file) no format recognises is read as
FORMATS = tuple(f.name for f in DATA_FORMATS.values() if f.forceable)  # what a user may force; `csv` reads boxes too
DETECTION_FORMATS = tuple(f.name for f in DATA_FORMATS.values() if f.detection)  # DataIndex.format of detection data


def _actual(data_format: DataFormat, path: Path) -> str:
    return data_format.variant(path) if data_format.variant is not None else data_format.name


def _refuse_ambiguous(path: Path) -> None:
    """Mask data that also carries YOLO labels could be either task: say so rather than pick one."""
    labels = yolo.label_evidence(path)
    if labels is not None:
        raise UserError(
            f"{path}: could be segmentation masks ({masks.mask_evidence(path)}) or YOLO detection ({labels}); "
            "give --format masks or --format yolo"
        )


def detect_format(path: Path) -> str:
    """The format of the data at `path`, judged from file suffixes and the layout (no file is fully read); a
    UserError when the layout is as much one format as another."""
    ordered = sorted(DATA_FORMATS.values(), key=lambda f: f.priority)
    if path.is_file():
        suffix = path.suffix.lower()
        found = next((f for f in ordered if suffix in f.suffixes), None)
    else:
        found = next((f for f in ordered if f.detect is not None and f.detect(path)), None)
        if found is masks.FORMAT:
            _refuse_ambiguous(path)
    return _actual(found, path) if found is not None else _FALLBACK


def _read(path: Path | str, format: str, findings: Findings) -> DataIndex:
    path = Path(path).expanduser()
    if not (is_file(path) or is_dir(path)):
        raise UserError(f"{path}: no such file or folder; give the folder holding your class subfolders or a CSV")
    if format == "auto":
        format = detect_format(path)
    elif format in DATA_FORMATS:
        format = _actual(DATA_FORMATS.get(format), path)
    if format not in DATA_FORMATS:
        raise UserError(f"unknown data format {format!r}: use {', '.join(FORMATS)} (or auto)")
    return DATA_FORMATS.get(format).read(path, findings)


def load_index(path: Path | str, *, format: str = "auto") -> DataIndex:
    """Index the data at `path`: classification (an image folder, a CSV file, a folder of split CSVs), detection
    (COCO JSON, YOLO, Pascal VOC XML, box CSVs) or semantic segmentation (image and mask folders), detected from
    the layout unless `format` names it. Where a folder holds both COCO JSON and masks (digit scenes), auto
    reads COCO: ask for `format="masks"` to get the masks.

    Detection boxes reaching outside their image are clipped and zero-area ones dropped, each kind with a note in
    `index.notes`; every other problem with the data raises UserError.
    """
    return _read(path, format, Findings())


def load_index_with_findings(path: Path | str, *, format: str = "auto") -> tuple[DataIndex, Findings]:
    """Like `load_index`, but problems that would stop reading (inverted boxes, unknown categories or image ids,
    images without a mask and masks without an image) are collected and left out instead, so that
    `imagerec data validate` can list them all."""
    findings = Findings(collect=True)
    return _read(path, format, findings), findings
