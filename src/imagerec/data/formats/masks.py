"""Semantic segmentation: image folders paired with mask folders by file stem.

Layouts (image folders named `images`, `image`, `imgs` or `img`; mask folders `masks`, `mask`, `labels` or
`label`): `images/{train,val,test}/` + `masks/{train,val,test}/`; a flat `images/` + `masks/` (split at random by
`train`); or split folders each holding both, `{train,val,test}/image/` + `…/label/` (ISBI 2012). A split with
images but no masks (ISBI's `test/`) is unlabeled: left out with a note. An image pairs with the mask of the same
relative path and stem, whatever either's image extension (`a.jpg` ↔ `a.png`); a mask stem may add `_mask`,
`_label` or `_gt`. Classes come from `classes.yaml` beside the folders, else from a sample of the masks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from imagerec.data.formats._boxes import Findings, images_in, split_of
from imagerec.data.formats._mask_classes import CLASSES_FILES, coding_for
from imagerec.data.formats.base import DataFormat
from imagerec.data.index import DataIndex
from imagerec.data.masks import LOSSY_EXTENSIONS, is_mask_file
from imagerec.data.targets import MaskFile, Sample
from imagerec.errors import UserError

IMAGE_FOLDERS = ("images", "image", "imgs", "img")
MASK_FOLDERS = ("masks", "mask", "labels", "label")
MASK_SUFFIXES = ("_mask", "_label", "_gt")
_NAMED = 3  # files named in one error line


@dataclass(frozen=True)
class _Pair:
    """An image folder, the mask folder beside it (None: unlabeled), and the split they hold."""

    split: str
    images: Path
    masks: Path | None


def _subfolder(folder: Path | None, names: tuple[str, ...]) -> Path | None:
    if folder is None or not folder.is_dir():
        return None
    found = {d.name.lower(): d for d in sorted(folder.iterdir()) if d.is_dir()}
    return next((found[name] for name in names if name in found), None)


def _split_folders(folder: Path | None) -> dict[str, Path]:
    if folder is None or not folder.is_dir():
        return {}
    splits: dict[str, Path] = {}
    for d in sorted(folder.iterdir()):
        split = split_of(d.name) if d.is_dir() else None
        if split is not None:
            splits.setdefault(split, d)
    return splits


def _folder_pairs(root: Path) -> list[_Pair]:
    """Every (split, image folder, mask folder) of the layouts above; empty when there is none."""
    images, masks = _subfolder(root, IMAGE_FOLDERS), _subfolder(root, MASK_FOLDERS)
    if images is not None:
        split_images = _split_folders(images)
        if split_images:
            split_masks = _split_folders(masks)
            return [_Pair(split, folder, split_masks.get(split)) for split, folder in split_images.items()]
        return [_Pair("all", images, masks)]
    pairs = []
    for split, folder in _split_folders(root).items():
        inner = _subfolder(folder, IMAGE_FOLDERS)
        if inner is not None:
            pairs.append(_Pair(split, inner, _subfolder(folder, MASK_FOLDERS)))
        elif any(p.is_file() for p in folder.iterdir()):  # ISBI's test/N.png: images without masks
            pairs.append(_Pair(split, folder, None))
    return pairs


def mask_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if is_mask_file(p))


def _keyed(folder: Path, files: Callable[[Path], list[Path]] = images_in) -> dict[str, Path]:
    """Files by relative path without suffix (`sub/a`); two files with one key are a mistake."""
    keyed: dict[str, Path] = {}
    for file in files(folder):
        key = file.relative_to(folder).with_suffix("").as_posix()
        if key in keyed:
            raise UserError(f"{keyed[key]} and {file.name} have the same name; keep one (pairing is by name)")
        keyed[key] = file
    return keyed


def _image_key(key: str, images: dict[str, Path]) -> str | None:
    if key in images:
        return key
    return next((key[: -len(s)] for s in MASK_SUFFIXES if key.endswith(s) and key[: -len(s)] in images), None)


def _unmatched(findings: Findings, kind: str, files: list[Path], summary: str, each: str) -> None:
    """One line for the first few files (reading stops), or one problem per file when validate collects them."""
    if not files:
        return
    if not findings.collect:
        named = ", ".join(str(f) for f in files[:_NAMED]) + (", …" if len(files) > _NAMED else "")
        findings.fatal(kind, summary.format(n=len(files), named=named), files)
    for file in files:
        findings.fatal(kind, each.format(file=file), [file])


def _match(pair: _Pair, masks_folder: Path, findings: Findings) -> list[Sample]:
    images, masks = _keyed(pair.images), _keyed(masks_folder, mask_files)
    paired: dict[str, Path] = {}
    orphans = []
    for key in sorted(masks, key=lambda k: (k not in images, k)):  # exact names claim their image first
        image_key = _image_key(key, images)
        if image_key is None or image_key in paired:
            orphans.append(masks[key])
        else:
            paired[image_key] = masks[key]
    missing = [path for key, path in images.items() if key not in paired]
    _unmatched(
        findings,
        "no-mask",
        missing,
        f"{{n}} image(s) have no mask in {masks_folder} (first: {{named}}); add masks with the same file names "
        "or remove the images",
        f"{{file}}: no mask of this name in {masks_folder}; add it or remove the image",
    )
    _unmatched(
        findings,
        "no-image",
        sorted(orphans),
        f"{{n}} mask(s) have no image in {pair.images} (first: {{named}}); add the images or remove the masks",
        f"{{file}}: no image of this name in {pair.images}; add it or remove the mask",
    )
    return [Sample(images[key], MaskFile(paired[key])) for key in sorted(paired)]


def _labeled(pair: _Pair) -> Path | None:
    """The pair's mask folder when it holds masks."""
    if pair.masks is None or not mask_files(pair.masks):
        return None
    return pair.masks


def has_mask_pairs(path: Path) -> bool:
    """Whether `path` is a folder laid out as above with at least one image paired with a mask."""
    for pair in _folder_pairs(path):
        masks = _labeled(pair)
        if masks is not None:
            images = _keyed(pair.images)
            if any(_image_key(key, images) is not None for key in _keyed(masks, mask_files)):
                return True
    return False


def mask_evidence(path: Path) -> str | None:
    """What makes `path` look like mask data: image + mask pairs, or the signs of it without a pair (a
    classes.yaml, a `masks/` folder beside the images), so that reading says what is missing rather than another
    format finding nothing; None when nothing does."""
    if not path.is_dir():
        return None
    if has_mask_pairs(path):
        return "images paired with masks by name"
    classes = next((name for name in CLASSES_FILES if (path / name).is_file()), None)
    if classes is not None:
        return f"a {classes}"
    if any(p.masks is not None and p.masks.name.lower() in ("masks", "mask") for p in _folder_pairs(path)):
        return "a masks/ folder beside the images"
    return None


def is_masks(path: Path) -> bool:
    """Whether `path` is (or looks like) mask data; see `mask_evidence`."""
    return mask_evidence(path) is not None


def read_masks(path: Path, findings: Findings | None = None) -> DataIndex:
    """Index image + mask pairs, with how their masks encode classes in `index.masks`."""
    findings = findings or Findings()
    if not path.is_dir():
        raise UserError(f"{path}: give the folder holding images/ and masks/ (or train/image/ + train/label/)")
    splits: dict[str, list[Sample]] = {}
    notes = []
    for pair in _folder_pairs(path):
        masks = _labeled(pair)
        if masks is None:
            count = len(images_in(pair.images))
            notes.append(f"{pair.images}: {count} image(s) without masks (unlabeled) left out")
            continue
        splits.setdefault(pair.split, []).extend(_match(pair, masks, findings))
    order = ("train", "val", "test", "all")
    splits = {split: splits[split] for split in sorted(splits, key=order.index) if splits[split]}
    if not splits:
        raise UserError(
            f"{path}: no image with a mask found; expected images/ + masks/ (files paired by name; masks as PNG, GIF, "
            "TIFF, BMP or JPEG), with optional train/val/test subfolders, or train/image/ + train/label/"
        )
    paired = [s.target.path for samples in splits.values() for s in samples]  # type: ignore[union-attr]
    lossy = [m for m in paired if m.suffix.lower() in LOSSY_EXTENSIONS]
    if lossy:
        notes.append(
            f"{len(lossy)} mask(s) saved as JPEG (first: {lossy[0]}): lossy compression changes mask values along "
            "edges, so pixels there may be read as another class; save masks as PNG, GIF, TIFF or BMP"
        )
    classes, coding = coding_for(path, paired, notes, strict=not findings.collect)
    return DataIndex(
        root=path,
        classes=classes,
        splits=splits,
        origin="random" if set(splits) == {"all"} else "folders",
        notes=notes,
        format="masks",
        masks=coding,
    )


# Before YOLO, whose sniffing takes any yaml with `names:` (as classes.yaml has) for a data.yaml; a mask folder holds
# images, never YOLO's .txt labels, so real YOLO data is not taken for masks.
FORMAT = DataFormat("masks", read=read_masks, detect=is_masks, priority=30)
