"""The in-memory index every format reader produces: image paths with their targets, grouped by split."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

SPLIT_NAMES = ("train", "val", "test")
# Folder names people use for the validation split, mapped to ours.
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}


@dataclass(frozen=True)
class Sample:
    """One image and its target: a class index, or a tuple of class indices for multi-label data."""

    path: Path
    target: int | tuple[int, ...]


@dataclass
class DataIndex:
    """Classes plus samples per split (`train`/`val`/`test`, or `all` before splitting)."""

    root: Path
    classes: list[str]
    splits: dict[str, list[Sample]]
    multilabel: bool = False
    origin: str = "folders"  # how the splits came to be: folders, csv or stratified
    notes: list[str] = field(default_factory=list)

    def samples(self, split: str) -> list[Sample]:
        return self.splits.get(split, [])

    def all_samples(self) -> list[Sample]:
        return [s for samples in self.splits.values() for s in samples]

    def counts(self, split: str) -> list[int]:
        """Images per class in `split` (multi-label images count once per label)."""
        counts = [0] * len(self.classes)
        for sample in self.samples(split):
            for t in sample.target if isinstance(sample.target, tuple) else (sample.target,):
                counts[t] += 1
        return counts

    def relative(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def fingerprint(self) -> str:
        """A hash of every file's relative path, size and target: changes when the data does."""
        digest = hashlib.sha256()
        for split in sorted(self.splits):
            for s in sorted(self.splits[split], key=lambda s: str(s.path)):
                size = s.path.stat().st_size if s.path.exists() else -1
                digest.update(f"{split}|{self.relative(s.path)}|{size}|{s.target}\n".encode())
        return digest.hexdigest()[:16]

    def split_record(self) -> dict[str, list[str]]:
        """Relative paths per split, saved in the run so evaluation reuses exactly the same split."""
        return {split: sorted(self.relative(s.path) for s in samples) for split, samples in self.splits.items()}
