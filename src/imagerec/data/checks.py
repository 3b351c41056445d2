"""Looking at a dataset before training: what is in it, what is wrong with it, and writing fixed splits."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from imagerec.data.formats import load_index
from imagerec.data.images import read_image
from imagerec.data.index import DataIndex, Sample
from imagerec.data.split import stratified_split
from imagerec.errors import UserError

__all__ = ["inspect_data", "split_dataset", "validate_data"]

_T = TypeVar("_T")
_R = TypeVar("_R")

_SPLIT_ORDER = {"train": 0, "val": 1, "test": 2, "all": 3}
_KIND_ORDER = ("leak", "corrupt", "empty", "duplicate", "channels")  # most harmful first
_TIFF = frozenset({".tif", ".tiff"})
_EXIF_ORIENTATION = 0x0112
# The modes read_image decodes to one channel; every other mode becomes three (alpha dropped).
_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_BIT_DEPTH = {"1": 1, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32}


def _parallel(function: Callable[[_T], _R], items: Iterable[_T]) -> Iterator[_R]:
    """`map` over a few threads, in order: decoding and hashing release the GIL, and small files are I/O bound."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        yield from pool.map(function, items)


def _entries(index: DataIndex) -> list[tuple[str, Sample]]:
    """(split, sample) for every indexed image, splits in train/val/test order."""
    return [
        (split, s) for split in sorted(index.splits, key=lambda n: _SPLIT_ORDER.get(n, 9)) for s in index.splits[split]
    ]


def _unique_paths(index: DataIndex) -> list[Path]:
    return list(dict.fromkeys(s.path for _, s in _entries(index)))


# --- inspect -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Header:
    width: int
    height: int
    channels: int  # as read_image decodes it
    bits: int
    mode: str
    format: str


def _tiff_header(path: Path) -> _Header:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        shape, dtype = tif.series[0].shape, tif.series[0].dtype
    channels = shape[2] if len(shape) == 3 else 1
    return _Header(
        shape[1], shape[0], channels - 1 if channels in (2, 4) else channels, dtype.itemsize * 8, str(dtype), "TIFF"
    )


def _header(path: Path) -> _Header | None:
    """Size, channels and depth from the file header (no decoding); None when the header cannot be read."""
    try:
        if path.suffix.lower() in _TIFF:
            return _tiff_header(path)
        with Image.open(path) as image:
            width, height = image.size
            if image.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):  # read_image rotates these by 90°
                width, height = height, width
            mode, fmt = image.mode, image.format or path.suffix[1:].upper()
    except Exception:  # any failure here means "unreadable"; validate says exactly why
        return None
    bits = 16 if (fmt, mode) == ("PNG", "I") else _BIT_DEPTH.get(mode, 8)  # older Pillow opens 16-bit PNG as "I"
    return _Header(width, height, 1 if mode in _GREY_MODES else 3, bits, mode, fmt)


def _spread(values: list[int]) -> dict[str, int] | None:
    return {"min": min(values), "median": statistics.median_low(values), "max": max(values)} if values else None


def _tally(values: Iterable[Any]) -> dict[str, int]:
    return {str(key): n for key, n in sorted(Counter(values).items(), key=lambda kv: str(kv[0]))}


def inspect_data(path: Path | str) -> dict[str, Any]:
    """Summarise a dataset from its index and image headers, without decoding the pixels.

    Returns classes, counts per split and class, width/height spread, decoded channels, bit depths, Pillow
    modes, file formats, the imbalance ratio (largest class / smallest class over all splits), whether the data
    is multi-label, and the files whose header could not be read (run `validate_data` for the reason).
    """
    index = load_index(path)
    paths = _unique_paths(index)
    headers = dict(zip(paths, _parallel(_header, paths), strict=True))
    readable = [h for h in headers.values() if h is not None]
    splits = sorted(index.splits, key=lambda n: _SPLIT_ORDER.get(n, 9))
    counts = {split: dict(zip(index.classes, index.counts(split), strict=True)) for split in splits}
    totals = {c: sum(per_class[c] for per_class in counts.values()) for c in index.classes}
    return {
        "root": str(index.root),
        "origin": index.origin,
        "classes": list(index.classes),
        "multilabel": index.multilabel,
        "images": len(paths),
        "splits": {split: len(index.splits[split]) for split in splits},
        "counts": counts,
        "class_totals": totals,
        "imbalance_ratio": round(max(totals.values()) / max(1, min(totals.values())), 3),
        "width": _spread([h.width for h in readable]),
        "height": _spread([h.height for h in readable]),
        "channels": _tally(h.channels for h in readable),
        "bit_depths": _tally(h.bits for h in readable),
        "modes": _tally(h.mode for h in readable),
        "formats": _tally(h.format for h in readable),
        "unreadable": [str(p) for p, h in headers.items() if h is None],
    }


# --- validate ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Scan:
    path: Path
    sha1: str | None = None  # None: the bytes could not be read or there are none
    channels: int | None = None  # None: did not decode
    error: str | None = None
    kind: str | None = None  # "empty" or "corrupt" when error is set


def _scan(path: Path) -> _Scan:
    """Hash the bytes and fully decode the image once."""
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
        channels = read_image(path).shape[0]
    except UserError as error:
        return _Scan(path, digest, error=str(error), kind="corrupt")
    return _Scan(path, digest, channels)


def _problem(kind: str, files: list[Path], message: str) -> dict[str, Any]:
    return {"kind": kind, "files": [str(f) for f in files], "message": message}


def _duplicate_problems(index: DataIndex, scans: dict[Path, _Scan]) -> list[dict[str, Any]]:
    groups: dict[str, list[tuple[str, Sample]]] = defaultdict(list)
    for split, sample in _entries(index):
        digest = scans[sample.path].sha1
        if digest is not None:
            groups[digest].append((split, sample))
    problems = []
    for members in groups.values():
        if len(members) < 2:
            continue
        splits = list(dict.fromkeys(split for split, _ in members))
        listed = ", ".join(f"{s.path} ({split})" for split, s in members)
        labels = {s.target for _, s in members}
        conflict = "; they are labelled differently" if len(labels) > 1 else ""
        files = [s.path for _, s in members]
        if len(splits) > 1:
            message = f"same image in {' and '.join(splits)} (leaks into evaluation): {listed}{conflict}"
            problems.append(_problem("leak", files, message + "; keep one copy"))
        else:
            where = "the unsplit data (it may leak once split)" if splits == ["all"] else splits[0]
            problems.append(_problem("duplicate", files, f"same image twice in {where}: {listed}{conflict}; keep one"))
    return problems


def _channel_problems(scans: dict[Path, _Scan]) -> list[dict[str, Any]]:
    seen = Counter(s.channels for s in scans.values() if s.channels is not None)
    if len(seen) < 2:
        return []
    majority = seen.most_common(1)[0][0]
    return [
        _problem(
            "channels",
            [s.path],
            f"{s.path}: decodes to {s.channels} channel(s) while {seen[majority]} of {seen.total()} images have "
            f"{majority}; it will be converted, check it belongs",
        )
        for s in scans.values()
        if s.channels is not None and s.channels != majority
    ]


def validate_data(path: Path | str, *, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Find problems worth fixing before training; each problem names its file(s).

    Every image is read once: its bytes are hashed (sha1) and it is fully decoded with `read_image`. Problem
    kinds, reported in this order: `leak` (identical bytes in two splits, so evaluation sees training images),
    `corrupt` (does not decode, e.g. truncated), `empty` (0 bytes), `duplicate` (identical bytes twice within
    one split) and `channels` (channel count differs from the majority). `progress(done, total)` is called
    after each file. Structural problems (missing path, empty class folder, bad CSV) raise UserError instead.
    """
    index = load_index(path)
    paths = _unique_paths(index)
    scans: dict[Path, _Scan] = {}
    for done, scan in enumerate(_parallel(_scan, paths), start=1):
        scans[scan.path] = scan
        if progress is not None:
            progress(done, len(paths))
    problems = [_problem(s.kind or "corrupt", [s.path], s.error) for s in scans.values() if s.error is not None]
    problems += _duplicate_problems(index, scans)
    problems += _channel_problems(scans)
    problems.sort(key=lambda p: _KIND_ORDER.index(p["kind"]))
    return {
        "root": str(index.root),
        "images": len(paths),
        "problems": problems,
        "summary": dict(Counter(p["kind"] for p in problems)),
    }


# --- split ---------------------------------------------------------------------------------------------------


def _check_out(out: Path, data: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: already exists and is not empty; give a new folder or remove this one")
    if data.is_dir() and out.resolve().is_relative_to(data.resolve()):
        raise UserError(f"{out}: is inside the data folder {data}; give a folder outside it")


def _check_class_names(classes: list[str], data: Path) -> None:
    for name in classes:
        if name in (".", "..") or name.startswith(".") or "/" in name or "\\" in name:
            raise UserError(f"{data}: class {name!r} cannot be a folder name; rename the label")


def _free_name(name: str, used: set[str]) -> str:
    """`name`, or `stem-N.ext` when a file of that name (compared case-insensitively) is already there."""
    candidate, n = name, 1
    while candidate.lower() in used:
        stem, dot, suffix = name.rpartition(".")
        candidate = f"{stem}-{n}.{suffix}" if dot else f"{name}-{n}"
        n += 1
    used.add(candidate.lower())
    return candidate


def _place(parts: dict[str, list[Sample]], classes: list[str], root: Path) -> dict[str, int]:
    """Hard-link (or copy, where links are impossible) each sample to root/<split>/<class>/<name>."""
    used: dict[Path, set[str]] = defaultdict(set)
    counts = {"linked": 0, "copied": 0}
    can_link = True
    for split, members in parts.items():
        for sample in members:
            folder = root / split / classes[sample.target]  # type: ignore[index]  # single-label only
            folder.mkdir(parents=True, exist_ok=True)
            dest = folder / _free_name(sample.path.name, used[folder])
            if can_link:
                try:
                    os.link(sample.path, dest)
                    counts["linked"] += 1
                    continue
                except OSError:  # another filesystem, or links not allowed: copy everything from here on
                    can_link = False
            shutil.copy2(sample.path, dest)
            counts["copied"] += 1
    return counts


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
    _check_class_names(index.classes, data)
    _check_out(out, data)
    pooled = sorted(index.splits, key=lambda n: _SPLIT_ORDER.get(n, 9))
    samples = list(dict.fromkeys(s for _, s in _entries(index)))
    parts = stratified_split(samples, index.classes, val=val, test=test, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        placed = _place(parts, index.classes, tmp)
        if out.exists():
            out.rmdir()  # empty, checked above
        tmp.rename(out)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"{out}: out of disk space while writing the split; nothing was written") from None
        raise
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
