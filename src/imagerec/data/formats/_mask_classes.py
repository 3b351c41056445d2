"""The classes of mask data and how its files encode them: from `classes.yaml`, else from a sample of the masks.

`classes.yaml` (`.yml` too) beside the image and mask folders:

    names: [background, membrane]    # or {0: background, 1: membrane}; index i = class i
    colours: [[0, 0, 0], [255, 0, 0]]  # optional (`colors` too): one RGB per class; colour masks are read by them
    ignore_index: 255                # optional: the value of pixels to ignore (default 255, as VOC)
    ignore_colour: [224, 224, 192]   # optional: in colour masks, the colour of ignored pixels
    kind: index                      # optional: index | palette | binary | rgb; inferred when absent
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import AliasChoices, BaseModel, Field

from imagerec.data.formats._schema import Colour, Names, validated
from imagerec.data.masks import (
    VOC_CLASSES,
    MaskCoding,
    MaskError,
    StoredMask,
    as_colours,
    open_mask,
    voc_colours,
)
from imagerec.errors import UserError
from imagerec.safe_read import is_file, load_yaml_mapping

CLASSES_FILES = ("classes.yaml", "classes.yml")
SAMPLED_MASKS = 32  # masks read to infer the coding: evenly spaced over the data
_VOC_IGNORE_COLOUR = voc_colours()[255]


@dataclass(frozen=True)
class Declared:
    """What classes.yaml states."""

    file: Path
    names: list[str]
    colours: tuple[Colour, ...] = ()
    ignore_index: int = 255
    ignore_colour: Colour | None = None
    kind: str | None = None


class _ClassesYaml(BaseModel):
    names: Annotated[Names, Field(min_length=1)]
    colours: list[Colour] | None = Field(None, validation_alias=AliasChoices("colours", "colors"))
    ignore_index: Annotated[int, Field(strict=True, ge=-1, le=65535)] = 255  # a mask value: 16 bits at most
    ignore_colour: Colour | None = Field(None, validation_alias=AliasChoices("ignore_colour", "ignore_color"))
    kind: Literal["index", "palette", "binary", "rgb"] | None = None


def read_declared(root: Path) -> Declared | None:
    """classes.yaml in `root`, checked; None when there is none."""
    file = next((root / n for n in CLASSES_FILES if is_file(root / n)), None)
    if file is None:
        return None
    data = load_yaml_mapping(file, needs="`names:` (and optional colours, ignore_index)")
    if "names" not in data:
        raise UserError(f"{file}: `names` must list the classes (index i = class i), e.g. names: [background, cell]")
    declared = validated(_ClassesYaml, data, file)
    names, colours = declared.names, tuple(declared.colours or ())
    if colours and len(colours) != len(names):
        raise UserError(f"{file}: {len(colours)} colours for {len(names)} classes; give one [r, g, b] per class")
    if 0 <= declared.ignore_index < len(names):
        raise UserError(
            f"{file}: ignore_index {declared.ignore_index} must be an integer that is not a class index (e.g. 255)"
        )
    if declared.kind == "binary" and len(names) != 2:
        raise UserError(f"{file}: binary masks have 2 classes but `names` lists {len(names)}")
    return Declared(file, names, colours, declared.ignore_index, declared.ignore_colour, declared.kind)


def _sample(masks: list[Path], strict: bool) -> list[tuple[Path, StoredMask]]:
    step = max(1, len(masks) // SAMPLED_MASKS)
    opened = []
    for path in masks[::step][:SAMPLED_MASKS]:
        try:
            opened.append((path, open_mask(path)))
        except MaskError:
            if strict:
                raise
            # validate reports this file among the rest
    return opened


def _used_indices(stored: StoredMask, ignore: int) -> set[int]:
    return {int(v) for v in np.unique(stored.pixels)} - {ignore}


def _palette_conflict(opened: list[tuple[Path, StoredMask]], ignore: int) -> str | None:
    """ "index i is c1 in a.png but c2 in b.png" when files' palettes give a used index two colours."""
    seen: dict[int, tuple[Colour, Path]] = {}
    for path, stored in opened:
        for i in _used_indices(stored, ignore):
            colour = stored.palette[i] if i < len(stored.palette) else (0, 0, 0)
            first = seen.setdefault(i, (colour, path))
            if first[0] != colour:
                return f"index {i} is {first[0]} in {first[1].name} but {colour} in {path.name}"
    return None


def _palette_matches(opened: list[tuple[Path, StoredMask]], colours: tuple[Colour, ...], ignore: int) -> bool:
    return all(
        i < len(colours) and i < len(s.palette) and s.palette[i] == colours[i]
        for _, s in opened
        for i in _used_indices(s, ignore)
    )


def _grey_values(opened: list[tuple[Path, StoredMask]]) -> set[int]:
    return {int(v) for _, s in opened if s.mode != "rgb" for v in np.unique(s.pixels)}


def _infer_kind(opened: list[tuple[Path, StoredMask]], declared: Declared | None, root: Path) -> str:
    modes = {s.mode for _, s in opened}
    ignore = declared.ignore_index if declared else 255
    if "rgb" in modes:
        return "rgb"
    if modes == {"palette"}:
        if declared and declared.colours and not _palette_matches(opened, declared.colours, ignore):
            return "rgb"  # the stated colours name the classes; the files number them differently
        conflict = _palette_conflict(opened, ignore)
        if conflict and not (declared and declared.colours):
            raise UserError(
                f"{root}: the palette masks disagree ({conflict}), so a palette index is no class; add "
                "classes.yaml with `names` and `colours` (masks are then read by colour)"
            )
        return "rgb" if conflict else "palette"
    values = _grey_values(opened)
    binary = 255 in values and values <= {0, 255} and (declared is None or len(declared.names) == 2)
    return "binary" if binary else "index"


def _seen_colours(opened: list[tuple[Path, StoredMask]]) -> set[Colour]:
    found: set[Colour] = set()
    for _, stored in opened:
        flat = as_colours(stored).reshape(-1, 3)
        found |= {(int(r), int(g), int(b)) for r, g, b in np.unique(flat, axis=0)}
    return found


def _inferred(kind: str, opened: list[tuple[Path, StoredMask]], root: Path) -> tuple[list[str], MaskCoding]:
    """Classes and coding without classes.yaml: binary → background/foreground; VOC colours → VOC names; other
    values or palette indices → "0".."K-1"; colour masks in other colours → refused."""
    if kind == "binary":
        return ["background", "foreground"], MaskCoding("binary", 2)
    if kind == "rgb":
        voc = {c: i for i, c in enumerate(voc_colours(len(VOC_CLASSES)))}
        colours = _seen_colours(opened) - {_VOC_IGNORE_COLOUR}
        if not colours <= set(voc):
            raise UserError(
                f"{root}: colour masks in colours that are not VOC's; add classes.yaml with `names` and `colours` "
                "(one [r, g, b] per class)"
            )
        count = max((voc[c] for c in colours), default=0) + 1
        return list(VOC_CLASSES[:count]), MaskCoding("rgb", count, ignore_colour=_VOC_IGNORE_COLOUR)
    used = {i for _, s in opened for i in _used_indices(s, 255)}
    count = max(used, default=0) + 1
    if count > 255 or min(used, default=0) < 0:  # 255 marks ignored pixels; negative values are no class
        shown = max(used) if count > 255 else min(used)
        raise UserError(
            f"{root}: mask value {shown} is no class index (0..254, with 255 ignored, when classes are inferred); "
            "list the classes in classes.yaml (names, ignore_index) or fix the masks"
        )
    palette = next((s.palette for _, s in opened if s.mode == "palette"), ())
    own = tuple(palette[:count]) if kind == "palette" and len(palette) >= count else ()
    if own and count <= len(VOC_CLASSES) and own == voc_colours(count):
        return list(VOC_CLASSES[:count]), MaskCoding("palette", count)
    colours = own
    return [str(i) for i in range(count)], MaskCoding(kind, count, colours=colours)  # type: ignore[arg-type]


def coding_for(root: Path, masks: list[Path], notes: list[str], *, strict: bool) -> tuple[list[str], MaskCoding]:
    """The class names and MaskCoding of the masks under `root`, with a note saying where they came from.

    `strict=False` (validate) skips unreadable masks in the sample instead of stopping at the first.
    """
    declared = read_declared(root)
    opened = _sample(masks, strict)
    kind = declared.kind if declared and declared.kind else _infer_kind(opened, declared, root)
    of = f"{len(opened)} of {len(masks)} masks" if len(opened) < len(masks) else f"all {len(masks)} masks"
    if declared is None:
        classes, coding = _inferred(kind, opened, root)
        named = ", ".join(classes)
        notes.append(f"no classes.yaml: {kind} masks, classes {named} from {of}; add classes.yaml to name them")
        return classes, coding
    try:
        coding = MaskCoding(
            kind,  # type: ignore[arg-type]
            len(declared.names),
            ignore_index=declared.ignore_index,
            colours=declared.colours,
            ignore_colour=declared.ignore_colour,
        )
    except ValueError as error:
        raise UserError(f"{declared.file}: {error}; fix it") from None
    notes.append(f"{kind} masks, classes from {declared.file.name}")
    return declared.names, coding
