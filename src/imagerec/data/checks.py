"""Looking at a dataset before training: what is in it, what is wrong with it, and writing fixed splits."""

from __future__ import annotations

import functools
import hashlib
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imagerec.data._mask_checks import check_polygons, mask_inspection, mask_problems, polygon_problems
from imagerec.data.convert import Placer, free_name
from imagerec.data.formats import DETECTION_FORMATS, load_index, load_index_with_findings
from imagerec.data.images import MAX_PIXELS, frame_count, read_image
from imagerec.data.index import DataIndex
from imagerec.data.scan import entries, exif_orientation, ordered_splits, parallel, problem, read_header, spread
from imagerec.data.split import stratified_split
from imagerec.data.targets import MaskFile, Objects, Sample
from imagerec.errors import UserError
from imagerec.runs import check_out, staged_output

__all__ = ["inspect_data", "split_dataset", "validate_data"]


# Most harmful first. Detection adds: boxes the reader could not place, annotated sizes that are not the image's,
# and the same object boxed twice; segmentation: unpaired files, masks that cannot be read or used, polygons.
_KIND_ORDER = (
    "leak", "corrupt", "empty", "mask-corrupt", "no-mask", "no-image", "mask-size", "mask-values", "inverted", "beyond",
    "unknown-category", "unknown-image", "polygon", "size", "orientation", "duplicate", "duplicate-box", "channels",
    "animated",
)  # fmt: skip
_ANIMATABLE = frozenset({".gif", ".png", ".webp"})  # GIF, APNG and WebP may hold frames past the first
_SMALL, _MEDIUM = 32**2, 96**2  # COCO's area ranges
_DUPLICATE_IOU = 0.95


def _unique_paths(index: DataIndex) -> list[Path]:
    return list(dict.fromkeys(s.path for _, s in entries(index)))


# --- inspect -------------------------------------------------------------------------------------------------


def _tally(values: Iterable[Any]) -> dict[str, int]:
    return {str(key): n for key, n in sorted(Counter(values).items(), key=lambda kv: str(kv[0]))}


def _is_detection(index: DataIndex) -> bool:
    return index.format in DETECTION_FORMATS or index.objects


def _box_summary(index: DataIndex, splits: list[str]) -> dict[str, Any]:
    """Boxes per split, COCO size classes by box area, images without boxes, boxes per image, ignored boxes."""
    sizes, empty, per_split, ignored, per_image = {}, {}, {}, {}, []
    for split in splits:
        objects: list[Objects] = [s.target for s in index.splits[split]]  # type: ignore[misc]
        areas = [(b[2] - b[0]) * (b[3] - b[1]) for o in objects for b in o.boxes]
        sizes[split] = {
            "small": sum(a < _SMALL for a in areas),
            "medium": sum(_SMALL <= a < _MEDIUM for a in areas),
            "large": sum(a >= _MEDIUM for a in areas),
        }
        empty[split] = sum(not o.boxes for o in objects)
        per_split[split] = len(areas)
        per_image += [len(o.boxes) for o in objects]
        ignored[split] = sum(o.ignored(i) for o in objects for i in range(len(o.boxes)))
    per_image_spread = spread(per_image)
    return {
        "total": sum(per_split.values()),
        "per_split": per_split,
        "ignored": ignored,
        "sizes": sizes,
        "images_without_boxes": empty,
        "per_image": {**per_image_spread, "mean": round(statistics.fmean(per_image), 2)} if per_image_spread else None,
    }


def inspect_data(
    path: Path | str, *, format: str = "auto", progress: Callable[[int, int], None] | None = None
) -> dict[str, Any]:
    """Summarise a dataset from its index and image headers, without decoding the pixels.

    Returns classes, counts per split and class, width/height spread, decoded channels, bit depths, Pillow
    modes, file formats, the imbalance ratio (largest class / smallest class over all splits), whether the data
    is multi-label, and the files whose header could not be read (run `validate_data` for the reason). For
    detection data, counts are objects per class and `boxes` adds boxes per split, their sizes as COCO defines
    them (small < 32², medium < 96², large, by box area in pixels), images without boxes and boxes per image; a
    polygon of fewer than 3 points raises UserError. For mask data (segmentation), counts are images containing
    each class and the imbalance ratio is by pixels, over up to 200 masks per split, and `masks` adds each class's
    pixel share per split, the ignored share and mask sizes; a mask whose size is not its image's, or whose
    values are no class, raises UserError. `progress(done, total)` is called after each image's header.
    """
    index = load_index(path, format=format)
    if _is_detection(index):
        check_polygons(index)
    paths = _unique_paths(index)
    headers = {}
    for done, (file, header) in enumerate(zip(paths, parallel(read_header, paths), strict=True), start=1):
        headers[file] = header
        if progress is not None:
            progress(done, len(paths))
    readable = [h for h in headers.values() if h is not None]
    splits = ordered_splits(index)
    counts = {split: dict(zip(index.classes, index.counts(split), strict=True)) for split in splits}
    totals = {c: sum(per_class[c] for per_class in counts.values()) for c in index.classes}
    report = {
        "root": str(index.root),
        "origin": index.origin,
        "classes": list(index.classes),
        "multilabel": index.multilabel,
        "images": len(paths),
        "splits": {split: len(index.splits[split]) for split in splits},
        "counts": counts,
        "class_totals": totals,
        "imbalance_ratio": round(max(totals.values()) / max(1, min(totals.values())), 3),
        "width": spread([h.width for h in readable]),
        "height": spread([h.height for h in readable]),
        "channels": _tally(h.channels for h in readable),
        "bit_depths": _tally(h.bits for h in readable),
        "modes": _tally(h.mode for h in readable),
        "formats": _tally(h.format for h in readable),
        "unreadable": [str(p) for p, h in headers.items() if h is None],
    }
    if _is_detection(index):
        report |= {"format": index.format, "boxes": _box_summary(index, splits), "notes": list(index.notes)}
    if index.masks is not None:
        found = mask_inspection(index, headers, splits)
        report["unreadable"] += found.pop("unreadable_masks")
        report |= {"format": index.format, **found, "notes": list(index.notes)}
    return report


# --- validate ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Scan:
    path: Path
    sha1: str | None = None  # None: the bytes could not be read or there are none
    channels: int | None = None  # None: did not decode
    size: tuple[int, int] | None = None  # decoded (width, height)
    error: str | None = None
    kind: str | None = None  # "empty" or "corrupt" when error is set
    frames: int = 1  # an animated image's frames, of which training and prediction read the first


def _scan(path: Path, max_pixels: int = MAX_PIXELS) -> _Scan:
    """Hash the bytes and fully decode the image once (refused unread above `max_pixels`)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        return _Scan(
            path,
            error=f"{path}: cannot read the file ({error.strerror}); check it exists and is readable",
            kind="corrupt",
        )
    if not data:
        return _Scan(path, error=f"{path}: empty file (0 bytes); replace or remove it", kind="empty")
    digest = hashlib.sha1(data, usedforsecurity=False).hexdigest()
    try:
        shape = read_image(path, max_pixels=max_pixels).shape
        frames = frame_count(path, max_pixels=max_pixels) if path.suffix.lower() in _ANIMATABLE else 1
    except UserError as error:
        return _Scan(path, digest, error=str(error), kind="corrupt")
    return _Scan(path, digest, shape[0], (shape[2], shape[1]), frames=frames)


def _animation_problems(scans: dict[Path, _Scan]) -> list[dict[str, Any]]:
    return [
        problem(
            "animated",
            [s.path],
            f"{s.path}: animated ({s.frames} frames); only the first frame is read: save the "
            "frame you mean as a still image, or each frame as an image of its own",
        )  # fmt: skip
        for s in scans.values()
        if s.frames > 1
    ]


def _label(target: Any) -> str:
    """What a sample is labelled, comparable across samples: a mask by its bytes (its path differs anyway),
    anything else by repr (Objects may hold unhashable segmentations)."""
    if isinstance(target, MaskFile):
        try:
            return hashlib.sha1(target.path.read_bytes(), usedforsecurity=False).hexdigest()
        except OSError:
            return str(target.path)
    return repr(target)


def _duplicate_problems(index: DataIndex, scans: dict[Path, _Scan]) -> list[dict[str, Any]]:
    groups: dict[str, list[tuple[str, Sample]]] = defaultdict(list)
    for split, sample in entries(index):
        digest = scans[sample.path].sha1
        if digest is not None:
            groups[digest].append((split, sample))
    problems = []
    for members in groups.values():
        if len(members) < 2:
            continue
        splits = list(dict.fromkeys(split for split, _ in members))
        listed = ", ".join(f"{s.path} ({split})" for split, s in members)
        labels = {_label(s.target) for _, s in members}
        conflict = "; they are labelled differently" if len(labels) > 1 else ""
        files = [s.path for _, s in members]
        if len(splits) > 1:
            message = f"same image in {' and '.join(splits)} (leaks into evaluation): {listed}{conflict}"
            problems.append(problem("leak", files, message + "; keep one copy"))
        else:
            where = "the unsplit data (it may leak once split)" if splits == ["all"] else splits[0]
            problems.append(problem("duplicate", files, f"same image twice in {where}: {listed}{conflict}; keep one"))
    return problems


def _channel_problems(scans: dict[Path, _Scan]) -> list[dict[str, Any]]:
    seen = Counter(s.channels for s in scans.values() if s.channels is not None)
    if len(seen) < 2:
        return []
    majority = seen.most_common(1)[0][0]
    return [
        problem(
            "channels",
            [s.path],
            f"{s.path}: decodes to {s.channels} channel(s) while {seen[majority]} of {seen.total()} images have "
            f"{majority}; it will be converted, check it belongs",
        )
        for s in scans.values()
        if s.channels is not None and s.channels != majority
    ]


def _duplicate_boxes(sample: Sample, classes: list[str]) -> list[dict[str, Any]]:
    """Pairs of same-class boxes in one image overlapping with IoU above 0.95: one object boxed twice."""
    objects: Objects = sample.target  # type: ignore[assignment]
    if len(objects.boxes) < 2:
        return []
    boxes, labels = np.asarray(objects.boxes, dtype=np.float64), np.asarray(objects.labels)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    low, high = np.maximum(boxes[:, None, :2], boxes[None, :, :2]), np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=2)
    iou = inter / np.maximum(area[:, None] + area[None, :] - inter, 1e-12)
    pairs = np.argwhere(np.triu((iou > _DUPLICATE_IOU) & (labels[:, None] == labels[None, :]), k=1))
    return [
        problem(
            "duplicate-box",
            [sample.path],
            f"{sample.path}: two {classes[labels[i]]!r} boxes {list(objects.boxes[i])} and {list(objects.boxes[j])} "
            f"overlap with IoU {iou[i, j]:.3f}; the object is probably boxed twice, remove one",
        )
        for i, j in pairs
    ]


def _placement_problems(index: DataIndex, scans: dict[Path, _Scan]) -> list[dict[str, Any]]:
    """Images whose boxes may not sit where they seem: the annotated size is not the image's (either way round,
    as EXIF rotation may swap them), or an EXIF orientation turns the decoded image away from the stored pixels
    that boxes refer to."""
    problems = []
    for sample in {s.path: s for _, s in entries(index)}.values():  # Samples may hold unhashable masks
        stated, actual = sample.target.size, scans[sample.path].size  # type: ignore[union-attr]
        if stated and actual and stated not in (actual, actual[::-1]):
            message = (
                f"{sample.path}: the annotation says {stated[0]}×{stated[1]} but the image is {actual[0]}×{actual[1]}; "
                "its boxes may be misplaced, check the annotation belongs to this image"
            )
            problems.append(problem("size", [sample.path], message))
        orientation = exif_orientation(sample.path) if sample.target.boxes else 1  # type: ignore[union-attr]
        if orientation != 1:
            message = (
                f"{sample.path}: EXIF orientation {orientation} turns the image when decoded; its boxes are read in "
                "the turned (upright) image, as annotation tools show it: check they were not drawn on the stored "
                "pixels"
            )
            problems.append(problem("orientation", [sample.path], message))
    return problems


def _box_problems(index: DataIndex, scans: dict[Path, _Scan]) -> list[dict[str, Any]]:
    duplicates = [p for _, s in entries(index) for p in _duplicate_boxes(s, index.classes)]
    return duplicates + _placement_problems(index, scans)


def validate_data(
    path: Path | str,
    *,
    format: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    max_image_pixels: int = MAX_PIXELS,
) -> dict[str, Any]:
    """Find problems worth fixing before training; each problem names its file(s).

    Every image is read once: its bytes are hashed (sha1) and it is fully decoded with `read_image`. Problem
    kinds, reported in this order: `leak` (identical bytes in two splits, so evaluation sees training images),
    `corrupt` (does not decode, e.g. truncated, or its header claims more than `max_image_pixels`: a
    decompression bomb, not decoded), `empty` (0 bytes), `duplicate` (identical bytes twice within one split),
    `channels` (channel count differs from the majority) and `animated` (a GIF, APNG or WebP of several frames,
    of which only the first is read). `progress(done, total)` is called after each file. Structural problems
    (missing path, empty class folder, bad CSV) raise UserError instead.

    Detection data adds the problems `inverted` (x2 < x1 or y2 < y1), `beyond` (a box wholly outside its image),
    `unknown-category` (a category id, class
    index or name not in the class list), `unknown-image` (a COCO annotation for an image id not listed), `size`
    (the annotated image size is not the image's), `orientation` (an EXIF rotation the boxes may not follow) and
    `duplicate-box` (same class, IoU > 0.95 in one image), `polygon` (a segmentation polygon of fewer than 3
    points), and `warnings`: boxes the reader repaired, `outside` (clipped to the image) and `zero-area` (dropped).

    Mask data adds, every mask decoded once: `no-mask` (an image without its mask), `no-image` (a mask without
    its image), `mask-corrupt` (unreadable), `mask-size` (not its image's size) and `mask-values` (values, or
    colours, that are no class).
    """
    index, findings = load_index_with_findings(path, format=format)
    paths = _unique_paths(index)
    masks = index.masks is not None
    total = len(paths) + (len(index.all_samples()) if masks else 0)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    scans: dict[Path, _Scan] = {}
    for scan in parallel(functools.partial(_scan, max_pixels=max_image_pixels), paths):
        scans[scan.path] = scan
        tick()
    problems = [problem(s.kind or "corrupt", [s.path], s.error) for s in scans.values() if s.error is not None]
    problems += _duplicate_problems(index, scans)
    problems += _channel_problems(scans)
    problems += _animation_problems(scans)
    detection = _is_detection(index)
    if detection:
        problems += findings.problems + _box_problems(index, scans) + polygon_problems(index)
    if masks:
        problems += findings.problems + mask_problems(index, {p: s.size for p, s in scans.items()}, tick)
    problems.sort(key=lambda p: _KIND_ORDER.index(p["kind"]))
    report = {
        "root": str(index.root),
        "images": len(paths),
        "problems": problems,
        "summary": dict(Counter(p["kind"] for p in problems)),
    }
    if detection:
        report |= {
            "boxes": sum(len(s.target.boxes) for _, s in entries(index)),  # type: ignore[union-attr]
            "warnings": findings.warnings,
            "warning_summary": dict(Counter(w["kind"] for w in findings.warnings)),
        }
    if masks:
        report["masks"] = len(index.all_samples())
    return report


# --- split ---------------------------------------------------------------------------------------------------


def _check_class_names(classes: list[str], data: Path) -> None:
    for name in classes:
        if name in (".", "..") or name.startswith(".") or "/" in name or "\\" in name:
            raise UserError(f"{data}: class {name!r} cannot be a folder name; rename the label")


def _place(parts: dict[str, list[Sample]], classes: list[str], root: Path) -> dict[str, int]:
    """Hard-link (or copy, where links are impossible) each sample to root/<split>/<class>/<name>."""
    used: dict[Path, set[str]] = defaultdict(set)
    placer = Placer()
    for split, members in parts.items():
        for sample in members:
            folder = root / split / classes[sample.target]  # type: ignore[index]  # single-label only
            placer.place(sample.path, folder / free_name(sample.path.name, used[folder]))
    return {"linked": placer.linked, "copied": placer.copied}


def split_dataset(
    data: Path | str, out: Path | str, *, val: float = 0.1, test: float = 0.1, seed: int = 0
) -> dict[str, Any]:
    """Write DATA as OUT/{train,val,test}/<class>/ with a stratified split (existing splits are pooled first).

    Files are hard-linked when possible, else copied. Everything is written into a hidden sibling folder that
    is renamed to OUT at the end, so an interrupted run never leaves a half-written OUT behind.
    """
    data, out = Path(data).expanduser(), Path(out).expanduser()
    index = load_index(data)
    if index.multilabel:
        raise UserError(f"{data}: multi-label data cannot be written as one folder per class; add a split column")
    if index.objects:
        raise UserError(f"{data}: detection data has no class per image to write folders for; train splits it itself")
    if index.masks is not None:
        raise UserError(f"{data}: segmentation data has no class per image to write folders for; train splits it")
    _check_class_names(index.classes, data)
    check_out(out, data)
    pooled = ordered_splits(index)
    samples = list(dict.fromkeys(s for _, s in entries(index)))
    parts = stratified_split(samples, index.classes, val=val, test=test, seed=seed)
    with staged_output(out, "the split") as tmp:
        placed = _place(parts, index.classes, tmp)
    written = DataIndex(root=out, classes=index.classes, splits=parts)
    return {
        "out": str(out),
        "seed": seed,
        "val": val,
        "test": test,
        "pooled": pooled if pooled != ["all"] else [],
        "counts": {split: dict(zip(index.classes, written.counts(split), strict=True)) for split in parts},
        "images": sum(len(m) for m in parts.values()),
        **placed,
    }
