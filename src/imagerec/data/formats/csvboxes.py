"""Box tables: `filename,width,height,class,xmin,ymin,xmax,ymax`, one row per box (as TensorFlow's object
detection tutorials write them). A row with an empty class and box is an image without boxes. One CSV file, or a
folder of CSVs named by split (`train_labels.csv`, `test_labels.csv`). Images are looked for next to the CSV,
in `images/` beside it, or in `../images/`. `width,height` are optional; an optional `split` column splits a
single file.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from imagerec.data.formats._boxes import (
    Findings,
    ImageFinder,
    ObjectsBuilder,
    build_index,
    names_file,
    number,
    read_names,
    split_of,
)
from imagerec.data.formats.base import DataFormat
from imagerec.data.index import SPLIT_ALIASES, DataIndex
from imagerec.data.targets import Sample
from imagerec.errors import UserError
from imagerec.safe_read import read_text

BOX_COLUMNS = ("xmin", "ymin", "xmax", "ymax")
_ALIASES = {
    "filename": ("filename", "file", "image", "path", "image_path"),
    "class": ("class", "label", "name", "category"),
}

_Row = dict[str, str]


def _header(file: Path) -> list[str]:
    with file.open(newline="", encoding="utf-8-sig") as handle:
        return [f.strip().lower() for f in next(csv.reader(handle), [])]


def has_box_columns(file: Path) -> bool:
    """Whether a CSV's header names a box corner (xmin, ymin, xmax, ymax): one is enough to read it as boxes,
    so that a table missing the others is told which."""
    try:
        return bool(set(BOX_COLUMNS) & set(_header(file)))
    except (OSError, UnicodeDecodeError, csv.Error):
        return False


def box_csvs(path: Path) -> dict[str, Path]:
    """Box CSVs per split at `path` (a file gives `all`); empty when there are none."""
    if path.is_file():
        return {"all": path} if has_box_columns(path) else {}
    if not path.is_dir():
        return {}
    found = [f for f in sorted(path.glob("*.csv")) if has_box_columns(f)]
    named = {split_of(f.stem): f for f in found if split_of(f.stem)}
    if named:
        return named  # type: ignore[return-value]  # a file with no split in its name (e.g. all labels) is a union
    if len(found) > 1:
        raise UserError(
            f"{path}: several box CSVs ({', '.join(f.name for f in found)}); name them by split or give one"
        )
    return {"all": found[0]} if found else {}


def _columns(fields: list[str], file: Path) -> dict[str, str]:
    """Our column name → the header's, or a UserError naming what is missing."""
    columns = {name: next((a for a in aliases if a in fields), "") for name, aliases in _ALIASES.items()}
    columns |= {name: name if name in fields else "" for name in (*BOX_COLUMNS, "width", "height", "split")}
    missing = [name for name in ("filename", "class", *BOX_COLUMNS) if not columns[name]]
    if missing:
        raise UserError(
            f"{file}: missing column(s) {', '.join(missing)}; the header needs "
            f"filename,width,height,class,xmin,ymin,xmax,ymax (found {','.join(fields) or 'nothing'})"
        )
    return columns


def _rows(file: Path) -> list[tuple[int, _Row]]:
    """(line number, row with our column names) for every row."""
    text = read_text(file, what="the CSV")
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        columns = _columns([f.strip().lower() for f in reader.fieldnames or []], file)
        rows = []
        for raw in reader:
            row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if isinstance(k, str)}
            rows.append((reader.line_num, {ours: row.get(theirs, "") for ours, theirs in columns.items() if theirs}))
    except csv.Error as error:
        raise UserError(f"{file}: not a valid CSV ({error}); fix it") from None
    if not rows:
        raise UserError(f"{file}: no rows; add one line per box as filename,width,height,class,xmin,ymin,xmax,ymax")
    return rows


def _size(row: _Row, at: str) -> tuple[int, int] | None:
    if not row.get("width") or not row.get("height"):
        return None
    size = int(number(row["width"], at, "width")), int(number(row["height"], at, "height"))
    return size if min(size) > 0 else None


def _box(row: _Row, at: str) -> tuple[float, float, float, float] | None:
    """The row's box, or None for a row that only lists an image (empty class and box)."""
    given = [row[k] for k in ("class", *BOX_COLUMNS) if row[k]]
    if not given:
        return None
    if len(given) < 5:
        raise UserError(
            f"{at}: give the class and all of xmin,ymin,xmax,ymax, or none of them for an image without boxes"
        )
    return tuple(number(row[k], at, k) for k in BOX_COLUMNS)  # type: ignore[return-value]


def _samples(
    file: Path, rows: list[tuple[int, _Row]], default_split: str, lookup: dict[str, int], findings: Findings
) -> dict[str, list[Sample]]:
    here = file.parent
    finder = ImageFinder([here, here / "images", here.parent / "images", here.parent])
    builders: dict[tuple[str, str], ObjectsBuilder] = {}
    for line, row in rows:
        at = f"{file}, line {line}"
        key = (SPLIT_ALIASES.get(row.get("split", "").lower(), default_split), row["filename"])
        if key not in builders:
            builders[key] = ObjectsBuilder(findings, finder.require(row["filename"], at), _size(row, at))
        box = _box(row, at)
        if box is None:
            continue
        if row["class"] not in lookup:
            message = f"{at}: class {row['class']!r} is not in the class list; add it or fix the row"
            findings.fatal("unknown-category", message, [file])
            continue
        builders[key].add(box, lookup[row["class"]], file=file, where=f"line {line}")
    splits: dict[str, list[Sample]] = {}
    for (split, _), builder in builders.items():
        splits.setdefault(split, []).append(Sample(builder.image, builder.build()))
    return splits


def _classes(tables: dict[str, tuple[Path, list[tuple[int, _Row]]]]) -> list[str]:
    folder = next(iter(tables.values()))[0].parent
    listed = names_file(folder, folder.parent)
    if listed is not None:
        return read_names(listed)
    return sorted({row["class"] for _, rows in tables.values() for _, row in rows if row["class"]})


def read_csv_boxes(path: Path, findings: Findings | None = None) -> DataIndex:
    """Index box CSVs; classes sorted by name unless a classes.txt beside the CSVs gives the order."""
    findings = findings or Findings()
    files = box_csvs(path)
    if not files:
        raise UserError(f"{path}: no CSV with columns filename,class,xmin,ymin,xmax,ymax found")
    tables = {split: (file, _rows(file)) for split, file in files.items()}
    classes = _classes(tables)
    lookup = {name: i for i, name in enumerate(classes)}
    splits: dict[str, list[Sample]] = {}
    for split, (file, rows) in tables.items():
        for name, samples in _samples(file, rows, split, lookup, findings).items():
            splits.setdefault(name, []).extend(samples)
    given = path if path.is_dir() else path.parent
    try:  # the raccoon layout keeps data/*.csv beside images/: the root is the folder above both
        root = Path(os.path.commonpath([given, *{s.path.parent for samples in splits.values() for s in samples}]))
    except ValueError:  # absolute image paths in a CSV given by a relative path
        root = given
    return build_index(root, classes, splits, format="csvboxes", findings=findings)


def has_box_csv(path: Path) -> bool:
    """Whether the CSV at `path`, or any CSV in the folder `path`, has box columns."""
    files = [path] if path.is_file() else sorted(path.glob("*.csv"))
    return any(has_box_columns(f) for f in files)


# Any box CSV in a folder counts only once every other layout has been ruled out; box CSVs named by split are
# found earlier, through `csv`.
FORMAT = DataFormat("csvboxes", read=read_csv_boxes, detect=has_box_csv, priority=60, detection=True, forceable=False)
