"""The in-memory index every format reader produces: image paths with their targets, grouped by split."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from imagerec.data.targets import MaskFile, Objects, Sample

if TYPE_CHECKING:
    from imagerec.data.masks import MaskCoding

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


@dataclass
class DataIndex:
    """Classes plus samples per split (`train`/`val`/`test`, or `all` before splitting)."""

    root: Path
    classes: list[str]
    splits: dict[str, list[Sample]]
    multilabel: bool = False
    origin: str = "folders"  # how the splits came to be: the format's own splits (folders, csv, …) or stratified
    notes: list[str] = field(default_factory=list)
    format: str = "imagefolder"  # the reader that produced it: imagefolder, csv, coco, yolo, voc, csvboxes
    category_ids: list[int] | None = None  # COCO category id of each class, kept so a round trip keeps them
    masks: MaskCoding | None = None  # how the mask files of semantic segmentation data encode classes

    @property
    def objects(self) -> bool:
        """Whether targets are Objects (detection data) rather than class indices."""
        return any(isinstance(s.target, Objects) for s in self.all_samples())

    def samples(self, split: str) -> list[Sample]:
        return self.splits.get(split, [])

    def all_samples(self) -> list[Sample]:
        return [s for samples in self.splits.values() for s in samples]

    def counts(self, split: str) -> list[int]:
        """Images per class in `split` (multi-label images count once per label; detection: objects per class).

        Segmentation masks are not read here (that costs a decode per mask): their counts are zeros, and
        `imagerec data inspect` reports pixel shares per class instead.
        """
        counts = [0] * len(self.classes)
        for sample in self.samples(split):
            target = sample.target
            if isinstance(target, MaskFile):
                continue
            labels = target.labels if isinstance(target, Objects) else target
            for t in labels if isinstance(labels, tuple) else (labels,):
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
                digest.update(
                    f"{split}|{self.relative(s.path)}|{size}|{self._target_key(s.target)}\n".encode(
                        errors="surrogateescape"
                    )
                )
        return digest.hexdigest()[:16]

    def _target_key(self, target: object) -> str:
        # A mask by its relative path and size, so that moving the data folder keeps the fingerprint.
        if isinstance(target, MaskFile):
            size = target.path.stat().st_size if target.path.exists() else -1
            return f"mask:{self.relative(target.path)}|{size}"
        return str(target)

    def split_record(self) -> dict[str, list[str]]:
        """Relative paths per split, saved in the run so evaluation reuses exactly the same split."""
        return {split: sorted(self.relative(s.path) for s in samples) for split, samples in self.splits.items()}
