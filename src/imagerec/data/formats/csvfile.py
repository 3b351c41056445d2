"""CSV tables: `path,label` (paths relative to the CSV), multi-label as `path,"a;b"`, optional `split` column."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from imagerec.data.formats.base import DataFormat
from imagerec.data.formats.csvboxes import has_box_csv
from imagerec.data.index import SPLIT_ALIASES, DataIndex
from imagerec.data.targets import Sample
from imagerec.errors import UserError
from imagerec.safe_read import is_file, read_text

MULTILABEL_SEPARATOR = ";"


def split_csvs(folder: Path) -> dict[str, Path]:
    """`train.csv`, `val.csv`, `test.csv` found in a folder (empty when it has none)."""
    if not folder.is_dir():
        return {}
    found = {}
    for file in sorted(folder.glob("*.csv")):
        if file.stem.lower() in SPLIT_ALIASES:
            found[SPLIT_ALIASES[file.stem.lower()]] = file
    return found


def _read_rows(file: Path, default_split: str) -> list[tuple[str, Path, list[str]]]:
    text = read_text(file, what="the CSV")
    try:
        return _parse_rows(file, csv.DictReader(io.StringIO(text, newline="")), default_split)
    except csv.Error as error:
        raise UserError(f"{file}: not a valid CSV ({error}); fix it") from None


def _parse_rows(file: Path, reader: csv.DictReader, default_split: str) -> list[tuple[str, Path, list[str]]]:
    fields = [f.strip().lower() for f in reader.fieldnames or []]
    if "path" not in fields or "label" not in fields:
        shown = ", ".join(fields)[:200] or "none"
        raise UserError(f"{file}: needs a header with columns path,label (found {shown})")
    rows = []
    for row_number, raw in enumerate(reader, start=2):
        row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if isinstance(k, str)}
        path = file.parent / row.get("path", "")
        if not row.get("path") or not is_file(path):
            raise UserError(
                f"{file}, row {row_number}: image {row.get('path', '')!r} not found (paths are relative to the CSV)"
            )
        path = path.resolve()
        labels = [label.strip() for label in row.get("label", "").split(MULTILABEL_SEPARATOR) if label.strip()]
        if not labels:
            raise UserError(f"{file}, row {row_number}: empty label; give a class name")
        split = SPLIT_ALIASES.get(row.get("split", "").lower(), default_split) if row.get("split") else default_split
        rows.append((split, path, labels))
    if not rows:
        raise UserError(f"{file}: no rows; add one line per image as path,label")
    return rows


def read_csv_index(path: Path) -> DataIndex:
    """Index one CSV file, or a folder holding train.csv / val.csv / test.csv."""
    files = split_csvs(path) if path.is_dir() else {"all": path}
    if not files:
        raise UserError(f"{path}: no train.csv, val.csv or test.csv in this folder; give the CSV file itself")
    rows = [row for split, file in files.items() for row in _read_rows(file, split)]
    multilabel = any(len(labels) > 1 for _, _, labels in rows)
    classes = sorted({label for _, _, labels in rows for label in labels})
    if len(classes) < 2 and not multilabel:
        raise UserError(f"{path}: only one label ({classes[0]}); classification needs at least two classes")
    lookup = {name: i for i, name in enumerate(classes)}
    splits: dict[str, list[Sample]] = {}
    for split, image, labels in rows:
        target = tuple(sorted(lookup[label] for label in labels)) if multilabel else lookup[labels[0]]
        splits.setdefault(split, []).append(Sample(image, target))
    root = path if path.is_dir() else path.parent
    origin = "csv" if "all" not in splits else "stratified"
    return DataIndex(root=root, classes=classes, splits=splits, multilabel=multilabel, origin=origin)


FORMAT = DataFormat(
    "csv",
    read=lambda path, _findings: read_csv_index(path),
    detect=lambda path: bool(split_csvs(path)),
    priority=10,
    suffixes=(".csv",),
    variant=lambda path: "csvboxes" if has_box_csv(path) else "csv",  # one name for both kinds of table
)
