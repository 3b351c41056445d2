"""Writing detection data in another format (COCO, YOLO, Pascal VOC), losslessly where the target can hold it.

Boxes are written with every digit a float needs (YOLO's fractions as `repr`), so A → B → A gives back the boxes
to rounding error. What a target cannot hold is left out and counted: YOLO has no `ignore` flag (crowd/difficult
objects are dropped, as Ultralytics' own converters do) and neither YOLO nor VOC keeps COCO segmentation.
Class order and COCO category ids survive through `data.yaml` (`names`, `category_ids`) and VOC's `classes.txt`
plus `categories.json`. Each format's writer lives with its reader, in `imagerec.data.formats`.
"""

from __future__ import annotations

import os
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from imagerec.data.formats import DATA_FORMATS, DETECTION_FORMATS, load_index
from imagerec.data.index import DataIndex
from imagerec.data.targets import Sample
from imagerec.errors import UserError
from imagerec.runs import check_out, staged_output

__all__ = ["Converted", "convert_data", "convert_index"]

TARGETS: tuple[str, ...] = tuple(f.name for f in DATA_FORMATS.values() if f.write is not None)


# --- placing files (shared with `data split`) ----------------------------------------------------------------


def free_name(name: str, used: set[str], *, by_stem: bool = False) -> str:
    """`name`, or `stem-N.ext` when that name (compared case-insensitively; by stem alone when label files are
    named after the image) is already taken in `used`, which it joins."""
    stem, dot, suffix = name.rpartition(".")
    stem, suffix = (stem, dot + suffix) if dot else (name, "")

    def key(candidate_stem: str) -> str:
        return (candidate_stem if by_stem else candidate_stem + suffix).lower()

    candidate, n = stem, 1
    while key(candidate) in used:
        candidate, n = f"{stem}-{n}", n + 1
    used.add(key(candidate))
    return candidate + suffix


@dataclass
class Placer:
    """Hard-links files into place (the same bytes, no extra space), copying once links turn out impossible."""

    linked: int = 0
    copied: int = 0
    can_link: bool = True

    def place(self, source: Path, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if self.can_link:
            try:
                os.link(source, dest)
                self.linked += 1
                return
            except OSError:  # another filesystem, or links not allowed: copy everything from here on
                self.can_link = False
        shutil.copy2(source, dest)
        self.copied += 1


# --- converting ----------------------------------------------------------------------------------------------


@dataclass
class Converted:
    """What `convert_index` wrote."""

    out: Path
    format: str
    images: int = 0
    boxes: int = 0
    linked: int = 0
    copied: int = 0
    left_out: dict[str, int] = field(default_factory=dict)  # what the target cannot hold → how many


def convert_index(index: DataIndex, out: Path | str, *, to: str) -> Converted:
    """Write the detection data in `index` to the new folder `out` in format `to`, splits kept.

    Images are hard-linked where possible, else copied; a name taken twice in one folder gets a `-N` suffix.
    Everything is written to a hidden sibling folder renamed to `out` at the end.
    """
    write = DATA_FORMATS.get(to).write if to in DATA_FORMATS else None
    if write is None:
        raise UserError(f"cannot convert to {to!r}: use one of {', '.join(TARGETS)}")
    if index.format not in DETECTION_FORMATS and not index.objects:
        raise UserError(f"{index.root}: holds {index.format} classification data; convert reads detection data")
    out = Path(out).expanduser()
    check_out(out, index.root)
    report, placer = Converted(out=out, format=to), Placer()
    used: dict[Path, set[str]] = defaultdict(set)

    def place(sample: Sample, folder: Path, *, by_stem: bool = False) -> str:
        name = free_name(sample.path.name, used[folder], by_stem=by_stem)
        placer.place(sample.path, folder / name)
        report.images += 1
        return name

    with staged_output(out, f"{to} data") as tmp:
        written = write(index, tmp, place)
    report.boxes, report.left_out = written.boxes, written.left_out
    report.linked, report.copied = placer.linked, placer.copied
    return report


def convert_data(src: Path | str, out: Path | str, *, to: str, format: str = "auto") -> Path:
    """Read detection data at `src` (any format `load_index` reads) and write it to `out` as COCO, YOLO or VOC.

    Returns `out`. A → B → A gives back the same boxes (to 1e-6 relative), class names and order, and COCO
    category ids; see the module docstring for what a target cannot hold.
    """
    return convert_index(load_index(src, format=format), out, to=to).out
