"""YOLO txt labels: one `class cx cy w h` line per object, fractions of the image size, beside every image
(Ultralytics' segment lines, `class x1 y1 x2 y2 …`, give the polygon's extent and keep the polygon).

Layouts: a `data.yaml` (`names` as a list or a dict, `train`/`val`/`test` folders or .txt lists relative to
`path:` or the yaml); or, without one, `images/{train,val,test}/` with `labels/{train,val,test}/`, a flat
`images/` with `labels/`, or Roboflow's `{train,valid,test}/{images,labels}/`. A label file sits where the image
is with the last `images` folder renamed `labels`. An image without a label file, or with an empty one, is a
negative example. Names come from the yaml, else `classes.txt`, else the class numbers themselves.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, StrictInt, StrictStr

from imagerec.data.formats._boxes import (
    Findings,
    ObjectsBuilder,
    build_index,
    filled_splits,
    image_size,
    images_in,
    names_file,
    number,
    read_names,
    segmentations,
    split_of,
    stored_size,
)
from imagerec.data.formats._mask_classes import CLASSES_FILES
from imagerec.data.formats._schema import Names, validated
from imagerec.data.formats.base import DataFormat, Place, Written
from imagerec.data.images import is_image_file
from imagerec.data.index import SPLIT_ALIASES, DataIndex
from imagerec.data.targets import Objects, Sample
from imagerec.errors import UserError
from imagerec.safe_read import is_dir, is_file, load_yaml_mapping, read_text

_FIELDS = ("cx", "cy", "w", "h")
MAX_UNNAMED_CLASSES = 1000  # class numbers named after themselves when no names are given; beyond: a typo, surely


@dataclass(frozen=True)
class _Line:
    number: int
    label: int
    values: tuple[float, ...]  # cx, cy, w, h; or a polygon x1, y1, x2, y2, … (Ultralytics' segment labels)


def _names_yaml(file: Path) -> bool:
    try:
        return file.is_file() and b"names:" in file.read_bytes()
    except OSError:  # unreadable: not taken for a data.yaml, and reading says why if it is one
        return False


def find_yaml(folder: Path) -> Path | None:
    """`data.yaml` / `dataset.yaml` in `folder`, or its only yaml file that has `names` (classes.yaml is mask
    data's class list, never a data.yaml)."""
    for name in ("data.yaml", "data.yml", "dataset.yaml", "dataset.yml"):
        if (folder / name).is_file():
            return folder / name
    found = [f for f in sorted(folder.glob("*.y*ml")) if f.name.lower() not in CLASSES_FILES and _names_yaml(f)]
    return found[0] if len(found) == 1 else None


def _image_dirs(root: Path) -> dict[str, list[Path]]:
    """Split → image folders for the layouts without a yaml; empty when none is there."""
    images = root / "images"
    if images.is_dir():
        split_dirs = {split: [d] for d in sorted(images.iterdir()) if d.is_dir() and (split := split_of(d.name))}
        return split_dirs or {"all": [images]}
    return {
        split: [d / "images"]
        for d in sorted(root.iterdir())
        if (d / "images").is_dir() and (split := split_of(d.name))  # Roboflow: {train,valid,test}/images
    }


def is_yolo(folder: Path) -> bool:
    """Whether `folder` is laid out as YOLO data: a yaml with names, or image folders with `labels` beside."""
    if find_yaml(folder) is not None:
        return True
    return any(label_path(d / "x.jpg").parent.is_dir() for dirs in _image_dirs(folder).values() for d in dirs)


def label_evidence(folder: Path) -> str | None:
    """What makes `folder` look like YOLO boxes: a data.yaml, or label .txt files beside its images; None when
    neither is there."""
    found = find_yaml(folder)
    if found is not None:
        return f"a {found.name}"
    labels = {label_path(d / "x.jpg").parent for dirs in _image_dirs(folder).values() for d in dirs}
    if any(next(d.rglob("*.txt"), None) is not None for d in labels if d.is_dir()):
        return "label .txt files beside the images"
    return None


def label_path(image: Path) -> Path:
    """Where YOLO keeps `image`'s labels: the last `images` folder of its path renamed `labels`, suffix .txt."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


class _DataYaml(BaseModel):
    names: Names
    path: StrictStr | None = None
    category_ids: list[StrictInt] | None = None  # written by `imagerec data convert` so COCO ids survive


_Entries = dict[str, StrictStr | list[StrictStr] | None]  # split → folders or .txt lists


def _load_yaml(file: Path) -> tuple[_DataYaml, dict[str, list[str]]]:
    """The yaml's names, `path` and category ids, and the entries of its split keys (train, val, valid, test, …)."""
    data = load_yaml_mapping(file, needs="a YOLO data.yaml with `names` (a list, or a dict of index: name)")
    if "names" not in data:
        raise UserError(f"{file}: a YOLO data.yaml needs `names` (a list, or a dict of index: name)")
    config = validated(_DataYaml, data, file)
    if config.category_ids is not None and len(config.category_ids) != len(config.names):
        raise UserError(
            f"{file}: `category_ids` lists {len(config.category_ids)} ids for {len(config.names)} names; "
            "give one per name or remove it"
        )
    entries = validated(_Entries, {str(k): v for k, v in data.items() if str(k).lower() in SPLIT_ALIASES}, file)
    return config, {k: [v] if isinstance(v, str) else v for k, v in entries.items() if v}


def _resolve(base: Path, entry: str) -> Path:
    path = base / entry
    # Roboflow writes ../train/images meaning train/images
    if not (is_file(path) or is_dir(path)) and entry.startswith("../"):
        path = base / entry[3:]
    return path.resolve()


def _listed_images(source: Path) -> list[Path]:
    """The images a data.yaml entry names: a folder, a .txt list (paths relative to it), or one image."""
    if is_dir(source):
        return images_in(source)
    if is_file(source) and is_image_file(source):
        return [source]
    if source.suffix.lower() != ".txt" or not is_file(source):
        raise UserError(f"{source}: not found; fix the path in data.yaml (paths are relative to `path:` or the yaml)")
    images = []
    for n, line in enumerate(read_text(source, what="the image list").splitlines(), start=1):
        if line.strip():
            image = source.parent / line.strip()
            if not is_file(image):
                raise UserError(f"{source}, line {n}: image {line.strip()!r} not found; fix or remove the line")
            images.append(image.resolve())
    return images


def _yaml_splits(config: _DataYaml, entries: dict[str, list[str]], file: Path) -> tuple[Path, dict[str, list[Path]]]:
    base = file.parent
    if config.path:
        given = Path(config.path).expanduser()
        base = given if given.is_absolute() else file.parent / given
        base = base if is_dir(base) else file.parent  # a `path:` from another machine: the yaml's folder then
    splits = {
        SPLIT_ALIASES[key.lower()]: [image for entry in listed for image in _listed_images(_resolve(base, entry))]
        for key, listed in entries.items()
    }
    if not splits:
        splits = {s: [i for d in dirs for i in images_in(d)] for s, dirs in _image_dirs(file.parent).items()}
    return base.resolve(), splits


def _parse_line(text: str, file: Path, number_: int) -> _Line:
    parts = text.split()
    at = f"{file}, line {number_}"
    if len(parts) != 5 and (len(parts) < 7 or len(parts) % 2 == 0):
        raise UserError(
            f"{at}: expected 5 values `class cx cy w h` (or a class and 3 or more x y points), found {len(parts)}; "
            "fix the line"
        )
    label = number(parts[0], at, "class")
    if not label.is_integer() or label < 0:
        raise UserError(f"{at}: class {parts[0]!r} is not a class index (0, 1, 2, …); fix the line")
    names = _FIELDS if len(parts) == 5 else [f"{'xy'[i % 2]}{i // 2 + 1}" for i in range(len(parts) - 1)]
    values = tuple(number(v, at, name) for v, name in zip(parts[1:], names, strict=True))
    for value, name in zip(values, names, strict=True):
        if not 0.0 <= value <= 1.0:
            raise UserError(f"{at}: {name} {value:g} is outside [0, 1]; YOLO values are fractions of the image size")
    return _Line(number_, int(label), values)


def _place(line: _Line, width: int, height: int) -> tuple[tuple[float, float, float, float], Any]:
    """Pixel corners, and for a polygon line its COCO-style pixel polygon."""
    if len(line.values) == 4:
        cx, cy, w, h = line.values
        return ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height), None
    xs, ys = [x * width for x in line.values[::2]], [y * height for y in line.values[1::2]]
    polygon = [v for xy in zip(xs, ys, strict=True) for v in xy]
    return (min(xs), min(ys), max(xs), max(ys)), [polygon]


def _read_labels(image: Path) -> tuple[Path, list[_Line]]:
    file = label_path(image)
    if not file.is_file():
        return file, []
    lines = read_text(file, what="YOLO labels (lines of `class cx cy w h`)").splitlines()
    return file, [_parse_line(text, file, n) for n, text in enumerate(lines, start=1) if text.strip()]


def _objects(
    image: Path, size: tuple[int, int] | None, labels: tuple[Path, list[_Line]], n_classes: int, findings: Findings
) -> Sample:
    file, lines = labels
    builder = ObjectsBuilder(findings, image, size)
    if size is None:
        if lines and not findings.collect:  # validate reports the unreadable image itself
            raise UserError(f"{image}: cannot read the image's size to place its YOLO boxes; replace or remove it")
        return Sample(image, builder.build())
    width, height = size
    for line in lines:
        if line.label >= n_classes:
            findings.fatal(
                "unknown-category",
                f"{file}, line {line.number}: class {line.label} but there are only {n_classes} names; "
                "fix the line or add the name",
                [file],
            )
            continue
        box, polygon = _place(line, width, height)
        builder.add(box, line.label, file=file, where=f"line {line.number}", segmentation=polygon)
    return Sample(image, builder.build())


def _config(path: Path) -> tuple[Path | None, Path]:
    """The yaml (if any) and the folder the data is in."""
    if path.is_file():
        if path.suffix.lower() not in (".yaml", ".yml"):
            raise UserError(f"{path}: give the YOLO data.yaml or the folder holding images/ and labels/")
        return path, path.parent
    return find_yaml(path), path


def read_yolo(path: Path, findings: Findings | None = None) -> DataIndex:
    """Index YOLO detection data; sizes come from the image headers, since labels are fractions of them."""
    findings = findings or Findings()
    file, folder = _config(path)
    names: list[str] | None = None
    category_ids = None
    notes = []
    if file is not None:
        file = file.resolve()  # data.yaml paths resolve to absolute ones: keep every path in the index alike
        config, entries = _load_yaml(file)
        names, category_ids = config.names, config.category_ids
        root, listed = _yaml_splits(config, entries, file)
    else:
        root, listed = folder, {s: [i for d in dirs for i in images_in(d)] for s, dirs in _image_dirs(folder).items()}
        listed_names = names_file(folder, folder / "labels")
        names = read_names(listed_names) if listed_names else None
    if not any(listed.values()):
        raise UserError(f"{path}: no images found; YOLO data needs images/ (or the folders data.yaml names)")
    images = list(dict.fromkeys(i for members in listed.values() for i in members))
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        sizes = dict(zip(images, pool.map(image_size, images), strict=True))
        labels = dict(zip(images, pool.map(_read_labels, images), strict=True))
    if names is None:
        top = max((line.label for _, lines in labels.values() for line in lines), default=0)
        if top >= MAX_UNNAMED_CLASSES:
            raise UserError(
                f"{path}: a label uses class {top} and no names are given; list the class names in data.yaml "
                "(`names:`) or classes.txt"
            )
        names = [str(i) for i in range(top + 1)]
        notes.append(f"no class names found (data.yaml or classes.txt): classes are named by number, 0 to {top}")
    splits = {
        split: [_objects(i, sizes[i], labels[i], len(names), findings) for i in members]
        for split, members in listed.items()
    }
    return build_index(root, names, splits, format="yolo", findings=findings, category_ids=category_ids, notes=notes)


# --- writing ---------------------------------------------------------------------------------------------------

_IGNORED = "ignored boxes (YOLO cannot mark crowd/difficult objects)"


def _yolo_lines(sample: Sample, written: Written) -> list[str]:
    objects: Objects = sample.target  # type: ignore[assignment]
    width, height = stored_size(sample)
    lines = []
    for i, ((x1, y1, x2, y2), label) in enumerate(zip(objects.boxes, objects.labels, strict=True)):
        if objects.ignored(i):
            written.leave_out(_IGNORED)
            continue
        values = ((x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height)
        lines.append(f"{label} " + " ".join(repr(float(v)) for v in values))  # repr: the shortest exact digits
    return lines


def write_yolo(index: DataIndex, root: Path, place: Place) -> Written:
    """Write detection data as YOLO: `images/<split>/`, `labels/<split>/` and a `data.yaml` naming the classes."""
    written = Written()
    config: dict[str, Any] = {}
    for split, samples in filled_splits(index):
        sub = "" if split == "all" else split
        if sub:
            config[split] = f"images/{sub}"
        for sample in samples:
            name = place(sample, root / "images" / sub, by_stem=True)  # a label file is named after its image
            lines = _yolo_lines(sample, written)
            label = (root / "labels" / sub / name).with_suffix(".txt")
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")  # empty: a negative example
            written.boxes += len(lines)
    # No `path:` key: Ultralytics then resolves the split folders next to this yaml.
    config["names"] = dict(enumerate(index.classes))
    if index.category_ids:
        config["category_ids"] = list(index.category_ids)
    (root / "data.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    written.leave_out("segmentations (YOLO keeps boxes only)", segmentations(index))
    return written


FORMAT = DataFormat(
    "yolo", read=read_yolo, detect=is_yolo, priority=40, suffixes=(".yaml", ".yml"), write=write_yolo, detection=True
)
