"""Format readers, each turning files on disk into a DataIndex; `load_index` detects which applies."""

from __future__ import annotations

from pathlib import Path

from imagerec.data.index import DataIndex
from imagerec.errors import UserError


def load_index(path: Path | str, *, format: str = "auto") -> DataIndex:
    """Index the classification data at `path` (an image folder, a CSV file, or a folder of split CSVs)."""
    from imagerec.data.formats import csvfile, imagefolder

    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"{path}: no such file or folder; give the folder holding your class subfolders or a CSV")
    if format == "auto":
        format = "csv" if path.suffix.lower() == ".csv" or csvfile.split_csvs(path) else "imagefolder"
    if format == "csv":
        return csvfile.read_csv_index(path)
    if format == "imagefolder":
        return imagefolder.read_imagefolder(path)
    raise UserError(f"unknown data format {format!r} for classification: use imagefolder or csv")
