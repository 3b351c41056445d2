"""ImageFolder layouts: DATA/{train,val,test}/<class>/* or a flat DATA/<class>/*."""

from __future__ import annotations

from pathlib import Path

from imagerec.data.formats.base import DataFormat
from imagerec.data.images import is_image_file
from imagerec.data.index import SPLIT_ALIASES, DataIndex
from imagerec.data.targets import Sample
from imagerec.errors import UserError


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _class_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if is_image_file(p))


def read_imagefolder(root: Path) -> DataIndex:
    """Index an image folder; split folders are recognised by name (train, val/valid/validation, test)."""
    if not root.is_dir():
        raise UserError(f"{root}: not a folder; an image folder has one subfolder per class")
    dirs = _subdirs(root)
    split_dirs = {SPLIT_ALIASES[d.name.lower()]: d for d in dirs if d.name.lower() in SPLIT_ALIASES}
    if split_dirs:
        per_split = {split: {c.name: c for c in _subdirs(d)} for split, d in split_dirs.items()}
        origin = "folders"
    else:
        per_split = {"all": {c.name: c for c in dirs}}
        origin = "stratified"
    classes = sorted({name for folders in per_split.values() for name in folders})
    if not classes:
        raise UserError(f"{root}: no class subfolders found; put each class's images in DATA/<class>/")
    if len(classes) < 2:
        raise UserError(f"{root}: only one class ({classes[0]}); classification needs at least two class folders")
    lookup = {name: i for i, name in enumerate(classes)}
    splits: dict[str, list[Sample]] = {}
    for split, folders in per_split.items():
        samples = []
        for name, folder in folders.items():
            images = _class_images(folder)
            if not images:
                raise UserError(f"{folder}: empty class folder; add images or remove the folder")
            samples.extend(Sample(p, lookup[name]) for p in images)
        splits[split] = samples
    return DataIndex(root=root, classes=classes, splits=splits, origin=origin)


# No `detect`: an image folder is what data no other format recognises is read as.
FORMAT = DataFormat("imagefolder", read=lambda path, _findings: read_imagefolder(path))
