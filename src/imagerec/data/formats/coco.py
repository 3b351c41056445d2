"""COCO JSON: `images`, `annotations` (bbox [x, y, width, height]) and `categories` (any integer ids).

Layouts: a .json file; or a folder holding one (`annotations.json`), split folders each with their own
(`train/_annotations.coco.json`, Roboflow), or `annotations/instances_{train,val,test}*.json`. Images are found
by `file_name` next to the JSON, in `images/` or `images/<split>/`, or in the split folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from typing_extensions import TypedDict

from imagerec.data.formats._boxes import (
    Findings,
    ImageFinder,
    ObjectsBuilder,
    build_index,
    coordinate,
    filled_splits,
    split_of,
    stored_size,
)
from imagerec.data.formats._schema import Name, validated
from imagerec.data.formats.base import DataFormat, Place, Written
from imagerec.data.index import DataIndex
from imagerec.data.targets import Objects, Sample
from imagerec.errors import UserError
from imagerec.safe_read import load_json

_SNIFF_BYTES = 1 << 20


def _looks_like_coco(file: Path) -> bool:
    """Whether a JSON file is named like COCO or its first MiB names a COCO key (cheap enough to run over every
    JSON in a folder; the name alone lets a damaged file be read, and its error reported)."""
    name = file.name.lower()
    if name == "annotations.json" or name.startswith("instances") or "coco" in name:
        return True
    try:
        with file.open("rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except OSError:
        return False
    return b'"images"' in head or b'"annotations"' in head or b'"categories"' in head


def _jsons(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    found = [f for f in sorted(folder.glob("*.json")) if not f.name.startswith(".") and _looks_like_coco(f)]
    instances = [f for f in found if f.name.lower().startswith("instances")]
    return instances or found  # COCO's own folder also holds captions_*.json and person_keypoints_*.json


def _by_split(files: list[Path]) -> dict[str, Path]:
    named = {}
    for file in files:
        split = split_of(file.stem) or "all"
        if split in named:
            raise UserError(f"{file}: {named[split].name} is also a COCO file for {split!r}; give the one to use")
        named[split] = file
    if len(named) > 1:
        named.pop("all", None)  # a file without a split name beside split files is an extra, e.g. a merged copy
    return named


def coco_files(path: Path) -> dict[str, Path]:
    """The COCO JSON file per split at `path` (`all` for unsplit data); empty when there is none."""
    if path.is_file():
        return {"all": path} if path.suffix.lower() == ".json" else {}
    if not path.is_dir():
        return {}
    per_folder = {}
    for folder in sorted(p for p in path.iterdir() if p.is_dir()):
        split, found = split_of(folder.name), _jsons(folder)
        if split and folder.name.lower() != "annotations" and len(found) == 1:
            per_folder[split] = found[0]
    if per_folder:
        return per_folder
    return _by_split(_jsons(path / "annotations") or _jsons(path))


Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]  # an int or float in the JSON, finite
Id = StrictInt | StrictStr


NonNegative = Annotated[int, Field(strict=True, ge=0)]


class _Rle(TypedDict):
    """Run-length encoding as COCO writes it: counts as numbers (crowd objects) or pycocotools' string."""

    size: tuple[NonNegative, NonNegative]  # height, width
    counts: list[NonNegative] | StrictStr


# Polygons (each a flat x, y, x, y, … list), an RLE, or nothing; polygons of under 3 points are refused where
# masks are drawn or inspected, so that boxes-only data with a stray polygon still reads.
Segmentation = list[list[Number]] | _Rle | None


def _as_written(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    handler(value)  # checked, but kept as written (ints stay ints), so that a conversion writes back the same
    return value


class _Image(BaseModel):
    id: Id
    file_name: Annotated[StrictStr, Field(min_length=1)]
    width: Annotated[Number, Field(ge=0)] | None = None  # LabelImg and some exporters write 0 when unknown
    height: Annotated[Number, Field(ge=0)] | None = None


class _Category(BaseModel):
    id: StrictInt
    name: Name
    supercategory: StrictStr | StrictInt | None = None


class _Annotation(BaseModel):
    id: Id | None = None
    image_id: Id
    category_id: StrictInt
    bbox: tuple[Number, Number, Number, Number]
    iscrowd: StrictBool | Annotated[int, Field(strict=True, ge=0, le=1)] = 0
    area: Number | None = None
    segmentation: Annotated[Segmentation, WrapValidator(_as_written)] = None


class _Document(BaseModel):
    images: list[_Image]
    annotations: list[_Annotation] = []
    categories: list[_Category]


def _load(file: Path) -> _Document:
    data = load_json(file)
    if not isinstance(data, dict) or "images" not in data:
        raise UserError(f'{file}: not COCO annotations (no "images" list); export the data as COCO JSON')
    return validated(_Document, data, file)


def image_ids(file: Path) -> dict[str, Id]:
    """The image ids of COCO annotations `file`, by each image's `file_name` as written."""
    ids: dict[str, Id] = {}
    for image in _load(file).images:
        if image.file_name in ids:
            raise UserError(f"{file}: image {image.file_name!r} is listed twice; keep one")
        ids[image.file_name] = image.id
    return ids


def _categories(document: _Document, file: Path) -> dict[int, _Category]:
    categories: dict[int, _Category] = {}
    for category in document.categories:
        if category.id in categories:
            raise UserError(f"{file}: category id {category.id} is listed twice; keep one")
        categories[category.id] = category
    return categories


def _classes(categories: dict[int, _Category], documents: list[_Document], file: Path) -> list[tuple[int, str]]:
    """(id, name) sorted by id, less Roboflow's dataset-name category: unused, and another's supercategory."""
    used = {a.category_id for document in documents for a in document.annotations}
    parents = {str(c.supercategory) for c in categories.values() if c.supercategory not in (None, c.name)}
    kept = sorted((i, c.name) for i, c in categories.items() if i in used or c.name not in parents)
    names = [name for _, name in kept]
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise UserError(f"{file}: two categories are named {twice!r}; give each category its own name")
    return kept


def _image_folders(file: Path, root: Path, split: str) -> list[Path]:
    bases = [file.parent, root]
    if file.parent.name.lower() == "annotations":
        bases.append(file.parent.parent)
    folders = []
    for base in bases:
        for folder in (base, base / "images"):
            folders.append(folder)
            if split != "all" and folder.is_dir():
                folders += [d for d in sorted(folder.iterdir()) if d.is_dir() and split_of(d.name) == split]
    return folders


def _images(document: _Document, file: Path, finder: ImageFinder, findings: Findings) -> dict[Id, ObjectsBuilder]:
    builders: dict[Id, ObjectsBuilder] = {}
    for image in document.images:
        if image.id in builders:
            raise UserError(f"{file}: image id {image.id!r} is listed twice; keep one")
        size = (int(image.width or 0), int(image.height or 0))
        path = finder.require(image.file_name, f"{file}, image id {image.id!r}")
        builders[image.id] = ObjectsBuilder(findings, path, size if min(size) > 0 else None)
    return builders


def _add_annotations(
    document: _Document, file: Path, builders: dict[Id, ObjectsBuilder], labels: dict[int, int], findings: Findings
) -> None:
    for i, annotation in enumerate(document.annotations):
        where = f"annotation id {annotation.id if annotation.id is not None else f'#{i}'}"
        if annotation.image_id not in builders:
            findings.fatal(
                "unknown-image",
                f'{file}, {where}: image_id {annotation.image_id!r} is not in "images"; add the image or remove the '
                "annotation",
                [file],
            )
            continue
        if annotation.category_id not in labels:
            findings.fatal(
                "unknown-category",
                f'{file}, {where}: category_id {annotation.category_id!r} is not in "categories"; add it or fix the '
                "annotation",
                [file],
            )
            continue
        x, y, w, h = annotation.bbox
        builders[annotation.image_id].add(
            (x, y, x + w, y + h),
            labels[annotation.category_id],
            file=file,
            where=where,
            ignore=bool(annotation.iscrowd),
            segmentation=annotation.segmentation,
            area=annotation.area if annotation.area and annotation.area > 0 else None,
        )


def _root(path: Path) -> Path:
    folder = path.parent if path.is_file() else path
    return folder.parent if folder.name.lower() == "annotations" else folder


def read_coco(path: Path, findings: Findings | None = None) -> DataIndex:
    """Index COCO detection data: classes ordered by category id, `iscrowd` objects marked ignore."""
    findings = findings or Findings()
    files = coco_files(path)
    if not files:
        raise UserError(f"{path}: no COCO JSON found; give the .json file or the folder holding it")
    root = _root(path)
    loaded = {split: _load(file) for split, file in files.items()}
    first = next(iter(files.values()))
    categories = _categories(loaded[next(iter(files))], first)
    names = {i: c.name for i, c in categories.items()}
    for split, file in files.items():
        if {i: c.name for i, c in _categories(loaded[split], file).items()} != names:
            raise UserError(f"{file}: its categories differ from those in {first}; every split needs the same ones")
    classes = _classes(categories, list(loaded.values()), first)
    labels = {cid: i for i, (cid, _) in enumerate(classes)}
    splits: dict[str, list[Sample]] = {}
    for split, file in files.items():
        builders = _images(loaded[split], file, ImageFinder(_image_folders(file, root, split)), findings)
        _add_annotations(loaded[split], file, builders, labels, findings)
        splits[split] = [Sample(b.image, b.build()) for b in builders.values()]
    return build_index(
        root, [name for _, name in classes], splits, format="coco", findings=findings, category_ids=list(labels)
    )


# --- writing ---------------------------------------------------------------------------------------------------


def _written_area(box: tuple[float, ...], segmentation: Any, size: tuple[int, int]) -> float:
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


def _coco_file(index: DataIndex, samples: list[Sample], images: Path, place: Place) -> dict[str, Any]:
    ids = index.category_ids or list(range(1, len(index.classes) + 1))
    document: dict[str, Any] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i, "name": name} for i, name in zip(ids, index.classes, strict=True)],
    }
    for image_id, sample in enumerate(samples, start=1):
        objects: Objects = sample.target  # type: ignore[assignment]
        width, height = stored_size(sample)
        name = place(sample, images)
        document["images"].append({"id": image_id, "file_name": name, "width": width, "height": height})
        for i, (box, label) in enumerate(zip(objects.boxes, objects.labels, strict=True)):
            segmentation = objects.segmentation[i] if objects.segmentation else []
            document["annotations"].append(
                {
                    "id": len(document["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": ids[label],
                    "bbox": [coordinate(v) for v in (box[0], box[1], box[2] - box[0], box[3] - box[1])],
                    "area": _written_area(box, segmentation, (width, height)),
                    "iscrowd": int(objects.ignored(i)),
                    "segmentation": segmentation,
                }
            )
    return document


def write_coco(index: DataIndex, root: Path, place: Place) -> Written:
    """Write detection data as COCO JSON: one annotations file per split, images in `images/<split>/`."""
    written = Written()
    for split, samples in filled_splits(index):
        unsplit = split == "all"
        images = root / "images" if unsplit else root / "images" / split
        document = _coco_file(index, samples, images, place)
        target = root / "annotations.json" if unsplit else root / "annotations" / f"instances_{split}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(document), encoding="utf-8")
        written.boxes += len(document["annotations"])
    return written


FORMAT = DataFormat(
    "coco",
    read=read_coco,
    detect=lambda path: bool(coco_files(path)),
    priority=20,
    suffixes=(".json",),
    write=write_coco,
    detection=True,
)
