"""Writing detection data in another format (COCO, YOLO, Pascal VOC), losslessly where the target can hold it.

Boxes are written with every digit a float needs (YOLO's fractions as `repr`), so A → B → A gives back the boxes
to rounding error. What a target cannot hold is left out and counted: YOLO has no `ignore` flag (crowd/difficult
objects are dropped, as Ultralytics' own converters do) and neither YOLO nor VOC keeps COCO segmentation.
Class order and COCO category ids survive through `data.yaml` (`names`, `category_ids`) and VOC's `classes.txt`
plus `categories.json`.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from imagerec.data.formats import DETECTION_FORMATS, load_index
from imagerec.data.formats._boxes import CATEGORIES_SIDECAR, image_size
from imagerec.data.index import DataIndex
from imagerec.data.targets import Objects, Sample
from imagerec.errors import UserError

__all__ = ["Converted", "convert_data", "convert_index"]

Target = Literal["coco", "yolo", "voc"]
TARGETS: tuple[str, ...] = ("coco", "yolo", "voc")
_IGNORED = "ignored boxes (YOLO cannot mark crowd/difficult objects)"


# --- placing files (shared with `data split`) ----------------------------------------------------------------


def check_out(out: Path, data: Path) -> None:
    """Refuse an OUT that holds files, or lies inside the data folder."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: already exists and is not empty; give a new folder or remove this one")
    if data.is_dir() and out.resolve().is_relative_to(data.resolve()):
        raise UserError(f"{out}: is inside the data folder {data}; give a folder outside it")


@contextmanager
def staged_output(out: Path, what: str) -> Iterator[Path]:
    """A hidden sibling folder to write into, renamed to `out` only when the block completes, so an interrupted
    run never leaves a half-written OUT behind. `out` must be absent or empty (see `check_out`)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        yield tmp
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"{out}: out of disk space while writing {what}; nothing was written") from None
        raise


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


def _number(value: float) -> int | float:
    """A pixel coordinate to 12 significant digits (far below 1e-6 relative, and 117.99999999999999 reads 118),
    written as an integer when it is one."""
    value = float(f"{value:.12g}")
    return int(value) if value.is_integer() else value


def _size(sample: Sample) -> tuple[int, int]:
    """The stored image's size (boxes are in its pixels), else the one the annotation stated."""
    size = image_size(sample.path) or sample.target.size  # type: ignore[union-attr]
    if size is None:
        raise UserError(f"{sample.path}: cannot read the image's size; replace or remove it, then convert again")
    return size


def _split_items(index: DataIndex) -> Iterator[tuple[str, list[Sample]]]:
    order = {"train": 0, "val": 1, "test": 2}
    for split in sorted(index.splits, key=lambda s: order.get(s, 9)):
        if index.splits[split]:
            yield split, index.splits[split]


def _area(box: tuple[float, ...], segmentation: Any, size: tuple[int, int]) -> float:
    """COCO's `area` is the mask's where there is one (what small/medium/large go by), else the box's."""
    if segmentation:
        from pycocotools import mask as mask_utils

        try:
            if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), str):  # compressed RLE
                return float(mask_utils.area(segmentation))
            rles = mask_utils.frPyObjects(segmentation, size[1], size[0])
            return float(mask_utils.area(mask_utils.merge(rles) if isinstance(rles, list) else rles))
        except (TypeError, ValueError, IndexError, KeyError):  # a malformed mask: fall back to the box
            pass
    return (box[2] - box[0]) * (box[3] - box[1])


def _coco_file(
    index: DataIndex, samples: list[Sample], images: Path, place: Callable[[Sample, Path], str]
) -> dict[str, Any]:
    ids = index.category_ids or list(range(1, len(index.classes) + 1))
    document: dict[str, Any] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i, "name": name} for i, name in zip(ids, index.classes, strict=True)],
    }
    for image_id, sample in enumerate(samples, start=1):
        objects: Objects = sample.target  # type: ignore[assignment]
        width, height = _size(sample)
        name = place(sample, images)
        document["images"].append({"id": image_id, "file_name": name, "width": width, "height": height})
        for i, (box, label) in enumerate(zip(objects.boxes, objects.labels, strict=True)):
            segmentation = objects.segmentation[i] if objects.segmentation else []
            document["annotations"].append(
                {
                    "id": len(document["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": ids[label],
                    "bbox": [_number(v) for v in (box[0], box[1], box[2] - box[0], box[3] - box[1])],
                    "area": _area(box, segmentation, (width, height)),
                    "iscrowd": int(objects.ignored(i)),
                    "segmentation": segmentation,
                }
            )
    return document


def _write_coco(index: DataIndex, root: Path, place: Callable[[Sample, Path], str], report: Converted) -> None:
    for split, samples in _split_items(index):
        unsplit = split == "all"
        images = root / "images" if unsplit else root / "images" / split
        document = _coco_file(index, samples, images, place)
        target = root / "annotations.json" if unsplit else root / "annotations" / f"instances_{split}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(document), encoding="utf-8")
        report.boxes += len(document["annotations"])


def _yolo_lines(sample: Sample, report: Converted) -> list[str]:
    objects: Objects = sample.target  # type: ignore[assignment]
    width, height = _size(sample)
    lines = []
    for i, ((x1, y1, x2, y2), label) in enumerate(zip(objects.boxes, objects.labels, strict=True)):
        if objects.ignored(i):
            report.left_out[_IGNORED] = report.left_out.get(_IGNORED, 0) + 1
            continue
        values = ((x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height)
        lines.append(f"{label} " + " ".join(repr(float(v)) for v in values))  # repr: the shortest exact digits
    return lines


def _write_yolo(index: DataIndex, root: Path, place: Callable[[Sample, Path], str], report: Converted) -> None:
    config: dict[str, Any] = {}
    for split, samples in _split_items(index):
        sub = "" if split == "all" else split
        if sub:
            config[split] = f"images/{sub}"
        for sample in samples:
            name = place(sample, root / "images" / sub)
            lines = _yolo_lines(sample, report)
            label = (root / "labels" / sub / name).with_suffix(".txt")
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")  # empty: a negative example
            report.boxes += len(lines)
    # No `path:` key: Ultralytics then resolves the split folders next to this yaml.
    config["names"] = dict(enumerate(index.classes))
    if index.category_ids:
        config["category_ids"] = list(index.category_ids)
    (root / "data.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")


def _voc_xml(sample: Sample, name: str, classes: list[str]) -> ET.Element:
    objects: Objects = sample.target  # type: ignore[assignment]
    width, height = _size(sample)
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "JPEGImages"
    ET.SubElement(root, "filename").text = name
    size = ET.SubElement(root, "size")
    for key, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, key).text = str(value)
    for i, (box, label) in enumerate(zip(objects.boxes, objects.labels, strict=True)):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = classes[label]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = str(int(objects.ignored(i)))
        corners = ET.SubElement(obj, "bndbox")
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True):
            ET.SubElement(corners, key).text = repr(_number(value))
    ET.indent(root, space="\t")
    return root


def _write_voc(index: DataIndex, root: Path, place: Callable[[Sample, Path], str], report: Converted) -> None:
    for split, samples in _split_items(index):
        ids = []
        for sample in samples:
            name = place(sample, root / "JPEGImages")
            ids.append(Path(name).stem)
            (root / "Annotations").mkdir(exist_ok=True)
            ET.ElementTree(_voc_xml(sample, name, index.classes)).write(
                root / "Annotations" / f"{ids[-1]}.xml", encoding="utf-8", xml_declaration=False
            )
            report.boxes += len(sample.target.boxes)  # type: ignore[union-attr]
        if split != "all":
            sets = root / "ImageSets" / "Main" / f"{split}.txt"
            sets.parent.mkdir(parents=True, exist_ok=True)
            sets.write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in index.classes), encoding="utf-8")
    if index.category_ids:
        entries = [{"id": i, "name": n} for i, n in zip(index.category_ids, index.classes, strict=True)]
        (root / CATEGORIES_SIDECAR).write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")


_WRITERS = {"coco": _write_coco, "yolo": _write_yolo, "voc": _write_voc}


def _count_segmentations(index: DataIndex, to: str, report: Converted) -> None:
    if to == "coco":
        return
    n = sum(1 for s in index.all_samples() for seg in s.target.segmentation if seg)  # type: ignore[union-attr]
    if n:
        report.left_out[f"segmentations ({to.upper()} keeps boxes only)"] = n


def convert_index(index: DataIndex, out: Path | str, *, to: Target) -> Converted:
    """Write the detection data in `index` to the new folder `out` in format `to`, splits kept.

    Images are hard-linked where possible, else copied; a name taken twice in one folder gets a `-N` suffix.
    Everything is written to a hidden sibling folder renamed to `out` at the end.
    """
    if to not in _WRITERS:
        raise UserError(f"cannot convert to {to!r}: use one of {', '.join(TARGETS)}")
    if index.format not in DETECTION_FORMATS and not index.objects:
        raise UserError(f"{index.root}: holds {index.format} classification data; convert reads detection data")
    out = Path(out).expanduser()
    check_out(out, index.root)
    report, placer = Converted(out=out, format=to), Placer()
    used: dict[Path, set[str]] = defaultdict(set)

    def place(sample: Sample, folder: Path) -> str:
        # One stem per file in YOLO and VOC: their label files are named after the image.
        key = Path("Annotations") if to == "voc" else folder
        name = free_name(sample.path.name, used[key], by_stem=to != "coco")
        placer.place(sample.path, folder / name)
        report.images += 1
        return name

    with staged_output(out, f"{to} data") as tmp:
        _WRITERS[to](index, tmp, place, report)
    _count_segmentations(index, to, report)
    report.linked, report.copied = placer.linked, placer.copied
    return report


def convert_data(src: Path | str, out: Path | str, *, to: Target, format: str = "auto") -> Path:
    """Read detection data at `src` (any format `load_index` reads) and write it to `out` as COCO, YOLO or VOC.

    Returns `out`. A → B → A gives back the same boxes (to 1e-6 relative), class names and order, and COCO
    category ids; see the module docstring for what a target cannot hold.
    """
    return convert_index(load_index(src, format=format), out, to=to).out
