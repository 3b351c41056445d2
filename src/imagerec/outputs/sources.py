"""Where the images to predict come from: files, folders, list files and globs, expanded lazily and in a fixed
order, then decoded in batches (in DataLoader workers when asked) without changing that order.

Everything here streams: a folder of two million scans is walked one directory at a time, and a list file is read
one line at a time, so memory does not grow with the number of images.
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from imagerec.data.images import IMAGE_EXTENSIONS, is_image_file
from imagerec.errors import UserError
from imagerec.safe_read import printable

ImageLike = str | Path | Image.Image | np.ndarray | torch.Tensor
LIST_SUFFIXES = frozenset({".txt"})
_GLOB_CHARACTERS = frozenset("*?[")


def walk_images(folder: Path) -> Iterator[Path]:
    """The image files in `folder` and below, in the order `sorted(folder.rglob("*"))` gives, one directory held in
    memory at a time."""
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as error:
        raise UserError(f"{folder}: cannot list this folder ({error.strerror})") from None
    for entry in entries:
        path = Path(entry.path)
        if entry.is_dir() and not entry.is_symlink():  # as rglob: a linked folder is not entered (no loops)
            yield from walk_images(path)
        elif is_image_file(path):
            yield path


def is_list_file(path: Path) -> bool:
    """A text file naming images one per line (what `imagerec predict runs/x scans.txt` reads)."""
    return path.suffix.lower() in LIST_SUFFIXES and path.is_file()


def read_list(path: Path) -> Iterator[Path]:
    """The paths a list file names, one per line, in its order; blank lines and lines starting with `#` are
    skipped, and a relative path is taken from the list file's folder (as YOLO's image lists are). A named file that
    is missing is yielded all the same: it is reported among the results, not a reason to stop."""
    number = 0
    try:
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                number += 1
                entry = line.strip()
                if entry and not entry.startswith("#"):
                    named = Path(entry).expanduser()
                    named = named if named.is_absolute() else path.parent / named
                    yield from walk_images(named) if named.is_dir() else (named,)
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: near line {number + 1}: not UTF-8 ({error.reason}); save the list as UTF-8") from None


def _glob(pattern: str) -> list[Path]:
    found = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if is_image_file(Path(p)))
    if not found:
        raise UserError(f"{pattern}: no image files match this pattern; check it, or quote it for the shell")
    return found


def iter_sources(sources: Iterable[ImageLike]) -> Iterator[ImageLike]:
    """Each image of `sources`, in order: a folder becomes its image files (recursively, sorted); a `.txt` file the
    images it lists; a path with `*`, `?` or `[` that is no file the image files the glob matches (sorted; `**`
    spans folders); in-memory images pass as they are. A missing path, or a folder without images, is a UserError
    when it is reached (see `count_sources` to find it first)."""
    for source in sources:
        if not isinstance(source, str | Path):
            yield source
            continue
        path = Path(source).expanduser()
        if path.is_dir():
            first = None
            for first in walk_images(path):  # noqa: B007 -- `first` tells an empty folder after the loop
                yield first
            if first is None:
                kinds = ", ".join(sorted(IMAGE_EXTENSIONS))
                raise UserError(f"{path}: no image files in this folder or below it ({kinds}); give another folder")
        elif is_list_file(path):
            yield from read_list(path)
        elif path.exists():
            yield path
        elif _GLOB_CHARACTERS & set(str(source)):
            yield from _glob(str(source))
        else:
            raise UserError(f"{path}: no such file or folder")


def expand_sources(sources: Iterable[ImageLike]) -> list[ImageLike]:
    """`iter_sources` as a list."""
    return list(iter_sources(sources))


def source_name(image: ImageLike, position: int) -> str:
    """How results name a source: its path (see `printable`), or `<image N>` for an in-memory image at position N."""
    return printable(image) if isinstance(image, str | Path) else f"<image {position}>"


def count_sources(sources: Iterable[ImageLike]) -> int:
    """How many images `sources` holds; walks them once, so a missing path is found before any work starts."""
    return sum(1 for _ in iter_sources(sources))


class Fingerprint:
    """A running digest of source names, to tell on `--resume` whether the images done before are the same."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()

    def add(self, name: str) -> None:
        self.digest.update(name.encode("utf-8", "surrogateescape") + b"\0")

    def hexdigest(self) -> str:
        return self.digest.hexdigest()


class DecodedStream(IterableDataset):
    """The images of `sources` (re-iterable: each DataLoader worker walks it) as (name, tensor, None), or
    (name, None, error) when unreadable, in order, starting after the first `skip` images.

    Worker k of W decodes blocks k, k+W, k+2W, … of `block` images; the DataLoader takes one batch from each worker
    in turn, so with `block` equal to the batch size the batches come out in the sources' order. Each worker holds
    one block, never the whole list.
    """

    def __init__(
        self,
        sources: Iterable[ImageLike],
        preprocess: Callable[[ImageLike], torch.Tensor],
        *,
        block: int,
        skip: int = 0,
    ) -> None:
        self.sources, self.preprocess, self.block, self.skip = sources, preprocess, block, skip

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor | None, str | None]]:
        worker = get_worker_info()
        workers, me = (1, 0) if worker is None else (worker.num_workers, worker.id)
        for position, source in enumerate(iter_sources(self.sources)):
            index = position - self.skip
            if index >= 0 and (index // self.block) % workers == me:
                yield self._decode(source, position)

    def _decode(self, source: ImageLike, position: int) -> tuple[str, torch.Tensor | None, str | None]:
        name = source_name(source, position)
        try:
            return name, self.preprocess(source), None
        except UserError as error:
            return name, None, printable(str(error))


def decoded_batches(
    sources: Iterable[ImageLike],
    preprocess: Callable[[ImageLike], torch.Tensor],
    *,
    batch: int,
    workers: int = 0,
    skip: int = 0,
) -> Iterator[list[tuple[str, torch.Tensor | None, str | None]]]:
    """Lists of up to `batch` decoded images (see `DecodedStream`), in the sources' order. With `workers` > 0 the
    sources are walked once per worker, so a one-pass iterator is read into a list first."""
    if workers and not isinstance(sources, list | tuple):
        sources = list(sources)
    stream = DecodedStream(sources, preprocess, block=batch, skip=skip)
    yield from DataLoader(stream, batch_size=batch, num_workers=workers, collate_fn=list)
