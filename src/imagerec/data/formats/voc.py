"""Pascal VOC XML, one file per image: `<filename>`, `<size>`, and `<object>`s with `<name>`, `<difficult>`,
`<bndbox>` (xmin, ymin, xmax, ymax).

Layouts: VOC's own `Annotations/` + `JPEGImages/` (+ `ImageSets/Main/{train,val,trainval,test}.txt`), LabelImg's
XML next to the images, `annotations/` + `images/`, and any of these inside `train/`, `val/`, `test/` folders.
The box numbers are kept as written (no 1-based shift), so conversions give back exactly what was read.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field

from imagerec.data.formats._boxes import (
    CATEGORIES_SIDECAR,
    Findings,
    ImageFinder,
    ObjectsBuilder,
    build_index,
    coordinate,
    filled_splits,
    image_size,
    images_in,
    names_file,
    read_names,
    read_sidecar,
    segmentations,
    split_of,
    stored_size,
)
from imagerec.data.formats._schema import Name, validated
from imagerec.data.formats.base import DataFormat, Place, Written
from imagerec.data.index import DataIndex
from imagerec.data.targets import Objects, Sample
from imagerec.errors import UserError
from imagerec.safe_read import is_file, parse_xml, read_text

_CORNERS = ("xmin", "ymin", "xmax", "ymax")
_IMAGE_FOLDERS = ("JPEGImages", "images", "Images", "JPEGimages")


@dataclass(frozen=True)
class _Object:
    name: str
    box: tuple[float, float, float, float]
    difficult: bool


@dataclass(frozen=True)
class _Record:
    file: Path
    image: Path
    size: tuple[int, int] | None
    objects: tuple[_Object, ...]


def annotation_folder(folder: Path) -> Path | None:
    """The folder holding the XML files: `Annotations/`, `annotations/`, or `folder` itself."""
    for candidate in (folder / "Annotations", folder / "annotations", folder):
        if candidate.is_dir() and any(candidate.glob("*.xml")):
            return candidate
    return None


def _split_folders(root: Path) -> dict[str, Path]:
    return {
        split: d
        for d in sorted(root.iterdir())
        if d.is_dir() and (split := split_of(d.name)) and annotation_folder(d) is not None
    }


def is_voc(folder: Path) -> bool:
    """Whether `folder` holds VOC XML (directly, in Annotations/ or annotations/, or in split folders)."""
    return annotation_folder(folder) is not None or bool(_split_folders(folder))


def _image_sets(root: Path, annotations: Path) -> dict[str, list[Path]] | None:
    """The XML files per split that `ImageSets/Main/*.txt` lists; None when there are no such lists."""
    main = root / "ImageSets" / "Main"
    lists = {
        name: main / f"{name}.txt" for name in ("train", "val", "trainval", "test") if (main / f"{name}.txt").is_file()
    }
    if not lists:
        return None
    if "train" in lists or "val" in lists:
        lists.pop("trainval", None)  # trainval is the union of the two
    splits = {}
    for name, file in lists.items():
        text = read_text(file, what="the image set list")
        ids = [line.split()[0] for line in text.splitlines() if line.strip()]
        for n, image_id in enumerate(ids, start=1):
            if not is_file(annotations / f"{image_id}.xml"):
                raise UserError(f"{file}, line {n}: no {annotations / image_id}.xml; add it or remove the line")
        splits["train" if name == "trainval" else name] = [annotations / f"{i}.xml" for i in ids]
    return splits


def _xml_files(root: Path) -> dict[str, list[Path]]:
    split_folders = _split_folders(root)
    if split_folders:
        return {split: sorted(annotation_folder(d).glob("*.xml")) for split, d in split_folders.items()}  # type: ignore[union-attr]
    annotations = annotation_folder(root)
    if annotations is None:
        raise UserError(f"{root}: no VOC XML files found; put them in Annotations/ or next to the images")
    return _image_sets(root, annotations) or {"all": sorted(annotations.glob("*.xml"))}


def _parse(file: Path) -> ET.Element:
    root = parse_xml(file)
    if root.tag != "annotation":
        raise UserError(f"{file}: not a Pascal VOC annotation (root <{root.tag}>, expected <annotation>)")
    return root


Coordinate = Annotated[float, Field(allow_inf_nan=False)]  # parsed from the element's text


class _Box(BaseModel):
    xmin: Coordinate
    ymin: Coordinate
    xmax: Coordinate
    ymax: Coordinate


class _VocObject(BaseModel):
    name: Name
    bndbox: _Box
    difficult: bool = False  # 0/1, as VOC and LabelImg write it (true/false too)


class _VocSize(BaseModel):
    width: Annotated[Coordinate, Field(ge=0)]  # LabelImg writes 0 when it did not know
    height: Annotated[Coordinate, Field(ge=0)]


class _VocAnnotation(BaseModel):
    size: _VocSize | None = None
    object: list[_VocObject] = []


def _texts(element: ET.Element, tags: tuple[str, ...]) -> dict[str, str]:
    """The stripped text of each of `tags` under `element` that is there (an empty <difficult/> means 0)."""
    found = {tag: text.strip() for tag in tags if (text := element.findtext(tag)) is not None}
    return {tag: text for tag, text in found.items() if text or tag != "difficult"}


def _fields(element: ET.Element) -> dict[str, Any]:
    """What the reader uses of an <annotation>, as plain values for validation (absent parts left out)."""
    data: dict[str, Any] = {"object": []}
    if (size := element.find("size")) is not None:
        data["size"] = _texts(size, ("width", "height"))
    for obj in element.findall("object"):
        fields: dict[str, Any] = _texts(obj, ("name", "difficult"))
        if (box := obj.find("bndbox")) is not None:
            fields["bndbox"] = _texts(box, _CORNERS)
        data["object"].append(fields)
    return data


def _size(annotation: _VocAnnotation) -> tuple[int, int] | None:
    if annotation.size is None:
        return None
    width, height = int(annotation.size.width), int(annotation.size.height)
    return (width, height) if width > 0 and height > 0 else None


def _objects(annotation: _VocAnnotation) -> tuple[_Object, ...]:
    return tuple(
        _Object(o.name, (o.bndbox.xmin, o.bndbox.ymin, o.bndbox.xmax, o.bndbox.ymax), o.difficult)
        for o in annotation.object
    )


def _image(element: ET.Element, file: Path, finder: ImageFinder) -> Path:
    written = (element.findtext("filename") or "").strip()
    found = (finder.find(written) if written else None) or finder.find_stem(Path(written).stem or file.stem)
    found = found or finder.find_stem(file.stem)
    if found is None:
        where = ", ".join(str(f) for f in finder.folders)
        raise UserError(
            f"{file}: image {written or file.stem!r} not found (looked in {where}); add it or fix <filename>"
        )
    return found


def _finder(annotations: Path, root: Path) -> ImageFinder:
    bases = (root, annotations.parent)
    return ImageFinder([annotations, *(base / name for base in bases for name in _IMAGE_FOLDERS), root])


def _record(file: Path, finder: ImageFinder) -> _Record:
    element = _parse(file)
    image = _image(element, file, finder)
    annotation = validated(_VocAnnotation, _fields(element), file)
    return _Record(file, image, _size(annotation) or image_size(image), _objects(annotation))


def _classes(records: list[_Record], root: Path) -> tuple[list[str], list[int] | None]:
    """Names in order (a sidecar's, a classes.txt's, else sorted) and COCO ids when a sidecar gives them."""
    sidecar = read_sidecar(root)
    if sidecar is not None:
        return sidecar
    listed = names_file(root, root / "Annotations", root / "annotations")
    if listed is not None:
        return read_names(listed), None
    return sorted({obj.name for r in records for obj in r.objects}), None


def _sample(record: _Record, lookup: dict[str, int], findings: Findings) -> Sample:
    builder = ObjectsBuilder(findings, record.image, record.size)
    for i, obj in enumerate(record.objects, start=1):
        if obj.name not in lookup:
            findings.fatal(
                "unknown-category",
                f"{record.file}, object {i}: class {obj.name!r} is not in the class list; add it or fix the name",
                [record.file],
            )
            continue
        builder.add(obj.box, lookup[obj.name], file=record.file, where=f"object {i}", ignore=obj.difficult)
    return Sample(record.image, builder.build())


def _unannotated(records: list[_Record]) -> list[str]:
    """A note on images beside annotated ones that have no XML (left out: they may be unlabelled, not empty)."""
    used = {r.image for r in records}
    folders = {r.image.parent for r in records}
    missing = sorted(p for folder in folders for p in images_in(folder) if p not in used and p.parent == folder)
    if not missing:
        return []
    return [
        f"{len(missing)} image(s) without an XML file were left out, e.g. {missing[0]}; "
        "an XML without <object> makes an image a negative example"
    ]


def read_voc(path: Path, findings: Findings | None = None) -> DataIndex:
    """Index Pascal VOC / LabelImg XML; `difficult` objects are marked ignore."""
    findings = findings or Findings()
    root = path.parent if path.is_file() else path
    files = _xml_files(root)
    finders: dict[Path, ImageFinder] = {}
    records = {
        split: [_record(f, finders.setdefault(f.parent, _finder(f.parent, root))) for f in members]
        for split, members in files.items()
    }
    everything = [r for members in records.values() for r in members]
    classes, category_ids = _classes(everything, root)
    lookup = {name: i for i, name in enumerate(classes)}
    splits = {split: [_sample(r, lookup, findings) for r in members] for split, members in records.items()}
    return build_index(
        root,
        classes,
        splits,
        format="voc",
        findings=findings,
        category_ids=category_ids,
        notes=_unannotated(everything),
    )


# --- writing ---------------------------------------------------------------------------------------------------


def _voc_xml(sample: Sample, name: str, classes: list[str]) -> ET.Element:
    objects: Objects = sample.target  # type: ignore[assignment]
    width, height = stored_size(sample)
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
            ET.SubElement(corners, key).text = repr(coordinate(value))
    ET.indent(root, space="\t")
    return root


def write_voc(index: DataIndex, root: Path, place: Place) -> Written:
    """Write detection data as Pascal VOC: `JPEGImages/`, one XML per image in `Annotations/`, split lists in
    `ImageSets/Main/`, and the class list (with COCO ids, when there are any) beside them."""
    written = Written()
    for split, samples in filled_splits(index):
        ids = []
        for sample in samples:
            name = place(sample, root / "JPEGImages", by_stem=True)  # an annotation is named after its image
            ids.append(Path(name).stem)
            (root / "Annotations").mkdir(exist_ok=True)
            ET.ElementTree(_voc_xml(sample, name, index.classes)).write(
                root / "Annotations" / f"{ids[-1]}.xml", encoding="utf-8", xml_declaration=False
            )
            written.boxes += len(sample.target.boxes)  # type: ignore[union-attr]
        if split != "all":
            sets = root / "ImageSets" / "Main" / f"{split}.txt"
            sets.parent.mkdir(parents=True, exist_ok=True)
            sets.write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in index.classes), encoding="utf-8")
    if index.category_ids:
        entries = [{"id": i, "name": n} for i, n in zip(index.category_ids, index.classes, strict=True)]
        (root / CATEGORIES_SIDECAR).write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")
    written.leave_out("segmentations (VOC keeps boxes only)", segmentations(index))
    return written


FORMAT = DataFormat(
    "voc", read=read_voc, detect=is_voc, priority=50, suffixes=(".xml",), write=write_voc, detection=True
)
