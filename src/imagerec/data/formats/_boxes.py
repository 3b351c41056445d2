"""What the detection formats share: box checks, problem collection, image lookup, class lists, split names, and
the few helpers their writers use."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, StrictInt

from imagerec.data.formats._schema import Name, Names, validated
from imagerec.data.images import IMAGE_EXTENSIONS, is_image_file
from imagerec.data.index import SPLIT_ALIASES, DataIndex
from imagerec.data.scan import read_header
from imagerec.data.targets import Box, Objects, Sample
from imagerec.errors import UserError
from imagerec.safe_read import is_file, load_json, read_text

# Problems that stop reading (unless a validate run collects them all) and the ones readers repair with a note.
FATAL_KINDS = ("inverted", "beyond", "unknown-category", "unknown-image")
WARNING_KINDS = ("outside", "zero-area")
_WARNING_NOTES = {
    "outside": "{n} box(es) reaching outside their image were clipped to it",
    "zero-area": "{n} box(es) with zero width or height were dropped",
}


@dataclass
class Findings:
    """Problems with boxes met while reading. Fatal ones raise UserError at once unless `collect` is set (as
    `imagerec data validate` does, to list them all); warnings are repairs (clipping, dropping) the reader made."""

    collect: bool = False
    problems: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)

    def fatal(self, kind: str, message: str, files: Sequence[Path | str] = ()) -> None:
        if not self.collect:
            raise UserError(message)
        self.problems.append({"kind": kind, "files": [str(f) for f in files], "message": message})

    def warn(self, kind: str, message: str, files: Sequence[Path | str] = ()) -> None:
        self.warnings.append({"kind": kind, "files": [str(f) for f in files], "message": message})

    def notes(self) -> list[str]:
        """One line per kind of repair, for `DataIndex.notes` (validate lists every box)."""
        first: dict[str, str] = {}
        for warning in self.warnings:
            first.setdefault(warning["kind"], warning["message"])
        counts = Counter(w["kind"] for w in self.warnings)
        return [
            f"{_WARNING_NOTES[kind].format(n=n)} (first: {first[kind]}); imagerec data validate lists them all"
            for kind, n in counts.items()
        ]


def _fmt(box: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"


class ObjectsBuilder:
    """Collects one image's boxes, checking each: inverted → fatal, zero-area → dropped, outside → clipped."""

    def __init__(self, findings: Findings, image: Path, size: tuple[int, int] | None) -> None:
        self.findings, self.image, self.size = findings, image, size
        self.boxes: list[Box] = []
        self.labels: list[int] = []
        self.ignore: list[bool] = []
        self.segmentation: list[Any] = []
        self.area: list[float | None] = []

    def add(
        self,
        box: Sequence[float],
        label: int,
        *,
        file: Path,
        where: str = "",
        ignore: bool = False,
        segmentation: Any = None,
        area: float | None = None,
    ) -> None:
        """Add corners (x1, y1, x2, y2) read from `file`; `where` in it ("line 3") makes messages precise."""
        at = f"{file}, {where}" if where else str(file)
        x1, y1, x2, y2 = (float(v) for v in box)
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            raise UserError(f"{at}: box {_fmt(box)} has a value that is not a finite number; fix the annotation")
        if x2 < x1 or y2 < y1:
            self.findings.fatal(
                "inverted",
                f"{at}: box {_fmt(box)} of {self.image.name} is inverted (x2 < x1 or y2 < y1); swap its corners",
                [file],
            )
            return
        if self._beyond((x1, y1, x2, y2)):
            self.findings.fatal(
                "beyond",
                f"{at}: box {_fmt(box)} lies wholly outside {self.image.name} ({self.size[0]}×{self.size[1]}); "
                "its coordinates belong to another image or another unit (pixels vs fractions): fix the annotation",
                [file],
            )
            return
        clipped = self._clip((x1, y1, x2, y2), at, file)
        if clipped[2] == clipped[0] or clipped[3] == clipped[1]:
            self.findings.warn(
                "zero-area", f"{at}: box {_fmt(box)} of {self.image.name} has zero width or height; dropped", [file]
            )
            return
        self.boxes.append(clipped)
        self.labels.append(label)
        self.ignore.append(bool(ignore))
        self.segmentation.append(segmentation if segmentation is not None else [])
        self.area.append(area)

    def _beyond(self, box: Box) -> bool:
        """Whether a box of some area shares no pixel with its image: clipping would leave nothing to learn from,
        so the annotation is wrong rather than a little generous (as boxes reaching over an edge often are)."""
        if self.size is None or box[2] == box[0] or box[3] == box[1]:
            return False
        x1, y1, x2, y2 = box
        return x1 >= self.size[0] or y1 >= self.size[1] or x2 <= 0 or y2 <= 0

    def _clip(self, box: Box, at: str, file: Path) -> Box:
        if self.size is None:
            return box
        width, height = float(self.size[0]), float(self.size[1])
        x1, y1, x2, y2 = box
        clipped = (
            min(max(x1, 0.0), width),
            min(max(y1, 0.0), height),
            min(max(x2, 0.0), width),
            min(max(y2, 0.0), height),
        )
        if clipped != box:
            self.findings.warn(
                "outside",
                f"{at}: box {_fmt(box)} reaches outside {self.image.name} ({self.size[0]}×{self.size[1]}); "
                f"clipped to {_fmt(clipped)}",
                [file],
            )
        return clipped

    def build(self) -> Objects:
        return Objects(
            boxes=tuple(self.boxes),
            labels=tuple(self.labels),
            ignore=tuple(self.ignore) if any(self.ignore) else (),
            size=self.size,
            segmentation=tuple(self.segmentation) if any(self.segmentation) else (),
            # COCO sizes objects by the area it states (small < 32², ...): kept so evaluation sizes them alike.
            area=tuple(
                a if a is not None else (b[2] - b[0]) * (b[3] - b[1])
                for a, b in zip(self.area, self.boxes, strict=True)
            )
            if any(a is not None for a in self.area)
            else (),
        )


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) of the image as decoded, EXIF orientation applied (boxes and masks refer to the upright
    image, as its pixels do), from its header; None when it cannot be read."""
    header = read_header(path)
    return (header.width, header.height) if header is not None else None


def number(text: str | None, at: str, what: str) -> float:
    """`text` as a float, or a UserError saying where the bad value is."""
    try:
        value = float((text or "").strip())
    except ValueError:
        raise UserError(f"{at}: {what} {text!r} is not a number; fix the annotation") from None
    if not math.isfinite(value):
        raise UserError(f"{at}: {what} {text!r} is not a finite number; fix the annotation")
    return value


class ImageFinder:
    """Resolves image names written in annotations against a few likely folders, trying the last one that
    worked first (so a large dataset costs about one stat per image)."""

    def __init__(self, folders: Iterable[Path]) -> None:
        self.folders = [f for f in dict.fromkeys(folders) if f.is_dir()]
        self._last: Path | None = None

    def find(self, name: str) -> Path | None:
        written = Path(name.replace("\\", "/"))
        if written.is_absolute():  # a path on the annotator's machine: only its name can help here
            if is_file(written):
                return written
            tails = [Path(written.name)]
        else:
            tails = [written] if len(written.parts) == 1 else [written, Path(written.name)]
        for folder in ([self._last] if self._last else []) + self.folders:
            for tail in tails:
                if is_file(folder / tail):
                    self._last = folder
                    return folder / tail
        return None

    def find_stem(self, stem: str) -> Path | None:
        """An image named `stem` with any image extension (for annotations that do not name their image)."""
        for folder in self.folders:
            for suffix in sorted(IMAGE_EXTENSIONS):
                for candidate in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
                    if is_file(candidate):
                        return candidate
        return None

    def require(self, name: str, at: str) -> Path:
        found = self.find(name)
        if found is None:
            where = ", ".join(str(f) for f in self.folders) or "nowhere (none of the usual folders exist)"
            raise UserError(f"{at}: image {name!r} not found (looked in {where}); add the image or fix its name")
        return found


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if is_image_file(p))


def split_of(name: str) -> str | None:
    """The split a file or folder name stands for: `instances_val2017` → val, `train_labels` → train."""
    for token in re.split(r"[^a-z]+", name.lower()):
        if token in SPLIT_ALIASES:
            return SPLIT_ALIASES[token]
    return None


def read_names(file: Path) -> list[str]:
    """Class names one per line (classes.txt, labels.txt), blank lines skipped."""
    text = read_text(file, what="the class list")
    return validated(Names, [line.strip() for line in text.splitlines() if line.strip()], file)


def names_file(*folders: Path) -> Path | None:
    """The first classes.txt / labels.txt / predefined_classes.txt found in `folders`."""
    for folder in folders:
        for name in ("classes.txt", "labels.txt", "predefined_classes.txt"):
            if (folder / name).is_file():
                return folder / name
    return None


def build_index(
    root: Path,
    classes: list[str],
    splits: dict[str, list[Sample]],
    *,
    format: str,
    findings: Findings,
    category_ids: list[int] | None = None,
    notes: Iterable[str] = (),
) -> DataIndex:
    """The DataIndex every detection reader returns, with the readers' repairs summarised in its notes."""
    if not classes:
        raise UserError(f"{root}: no classes found; name them (e.g. in classes.txt) or annotate some objects")
    boxes = any(s.target.boxes for samples in splits.values() for s in samples)  # type: ignore[union-attr]
    if not boxes and not findings.problems:  # problems validate collected are what it has to say instead
        images = sum(len(samples) for samples in splits.values())
        dropped = f" ({findings.notes()[0].split(' (first')[0]})" if findings.warnings else ""
        raise UserError(
            f"{root}: read as {format} detection data, but none of its {images} image(s) has a box{dropped}; add "
            "the annotations, or give --format if this is other data (e.g. masks for segmentation)"
        )
    return DataIndex(
        root=root,
        classes=classes,
        splits=splits,
        origin="stratified" if set(splits) == {"all"} else format,
        notes=[*notes, *findings.notes()],
        format=format,
        category_ids=category_ids,
    )


CATEGORIES_SIDECAR = "categories.json"


class _SidecarEntry(BaseModel):
    id: StrictInt
    name: Name


def read_sidecar(folder: Path) -> tuple[list[str], list[int]] | None:
    """Class names and COCO category ids from `categories.json` (`[{"id": 1, "name": "cat"}, …]`, written by
    `imagerec data convert` where the format has no place for ids); None when there is none."""
    file = folder / CATEGORIES_SIDECAR
    if not is_file(file):
        return None
    entries = validated(list[_SidecarEntry], load_json(file), file)
    names = validated(Names, [e.name for e in entries], file)
    return names, [e.id for e in entries]


# --- writing (`imagerec data convert`) ---------------------------------------------------------------------------


def coordinate(value: float) -> int | float:
    """A pixel coordinate to 12 significant digits (far below 1e-6 relative, and 117.99999999999999 reads 118),
    written as an integer when it is one."""
    value = float(f"{value:.12g}")
    return int(value) if value.is_integer() else value


def stored_size(sample: Sample) -> tuple[int, int]:
    """The size of the image its boxes are in (as decoded, EXIF orientation applied), else the one the annotation
    stated."""
    size = image_size(sample.path) or sample.target.size  # type: ignore[union-attr]
    if size is None:
        raise UserError(f"{sample.path}: cannot read the image's size; replace or remove it, then convert again")
    return size


def filled_splits(index: DataIndex) -> Iterator[tuple[str, list[Sample]]]:
    """(split, samples) for every split that has samples, in train, val, test order."""
    order = {"train": 0, "val": 1, "test": 2}
    for split in sorted(index.splits, key=lambda s: order.get(s, 9)):
        if index.splits[split]:
            yield split, index.splits[split]


def segmentations(index: DataIndex) -> int:
    """How many objects in the index have a segmentation: what a format that keeps boxes only leaves out."""
    return sum(1 for s in index.all_samples() for seg in s.target.segmentation if seg)  # type: ignore[union-attr]
