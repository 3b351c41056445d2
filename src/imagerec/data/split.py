"""Stratified train/val/test splits with a fixed seed."""

from __future__ import annotations

import random
from collections import defaultdict

from imagerec.data.index import DataIndex
from imagerec.data.targets import Sample
from imagerec.errors import UserError


def _stratify_key(sample: Sample) -> int:
    # Images with several objects or a mask have no one class to stratify by: they are split at random.
    if not isinstance(sample.target, int | tuple):
        return -1
    return sample.target[0] if isinstance(sample.target, tuple) else sample.target


def stratified_split(
    samples: list[Sample], classes: list[str], *, val: float, test: float, seed: int
) -> dict[str, list[Sample]]:
    """Split per class so every split keeps the class proportions.

    Written per class rather than with sklearn's train_test_split so that every class with enough images
    lands in every split, and a class too small to split gets a clear message instead of a ValueError.
    """
    if not 0 <= val < 1 or not 0 <= test < 1 or val + test >= 1:
        raise UserError(f"split fractions val={val} test={test} must be in [0, 1) and leave images for training")
    by_class: dict[int, list[Sample]] = defaultdict(list)
    for sample in sorted(samples, key=lambda s: str(s.path)):
        by_class[_stratify_key(sample)].append(sample)
    rng = random.Random(seed)
    splits: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    wanted = 1 + (val > 0) + (test > 0)
    for label, members in sorted(by_class.items()):
        if len(members) < wanted:
            what = "the data" if label < 0 else f"class {classes[label]!r}"
            raise UserError(
                f"{what} has {len(members)} image(s) but a train/val/test split needs at least "
                f"{wanted}; add images to it or give separate split folders"
            )
        rng.shuffle(members)
        n_test = max(1, round(len(members) * test)) if test > 0 else 0
        n_val = max(1, round(len(members) * val)) if val > 0 else 0
        n_test, n_val = min(n_test, len(members) - 1 - (val > 0)), min(n_val, len(members) - 1 - n_test)
        splits["test"] += members[:n_test]
        splits["val"] += members[n_test : n_test + n_val]
        splits["train"] += members[n_test + n_val :]
    return {name: part for name, part in splits.items() if part}


def ensure_splits(index: DataIndex, *, val: float, test: float, seed: int) -> DataIndex:
    """Give `index` train and val splits: split a flat set, or carve val out of train when it is missing."""
    if "all" in index.splits:
        index.splits = stratified_split(index.splits.pop("all"), index.classes, val=val, test=test, seed=seed)
        stratified = all(isinstance(s.target, int | tuple) for s in index.all_samples())
        how = "stratified by class" if stratified else "at random"
        index.notes.append(f"split {how} with seed {seed}: val {val}, test {test}")
    elif "train" in index.splits and "val" not in index.splits and val > 0:
        parts = stratified_split(index.splits["train"], index.classes, val=val, test=0.0, seed=seed)
        index.splits["train"], index.splits["val"] = parts["train"], parts["val"]
        index.notes.append(f"no val split given: {val:.0%} of train held out, stratified, seed {seed}")
    if "train" not in index.splits:
        raise UserError(f"{index.root}: no training images found (expected a train/ folder or class folders)")
    return index


def drawn_by_run(index: DataIndex, record: dict[str, list[str]] | None) -> bool:
    """Whether a run drew part of its split from `index`'s data (a flat folder split, or val carved out of train),
    so that its recorded split, not the folders, says which image is in which split."""
    return bool(record) and ("all" in index.splits or ("val" in record and "val" not in index.splits))


def apply_split_record(index: DataIndex, record: dict[str, list[str]]) -> DataIndex:
    """Re-create the split a run recorded (relative paths per split) over an index of the same data."""
    by_path = {index.relative(s.path): s for s in index.all_samples()}
    index.splits = {split: [by_path[p] for p in paths if p in by_path] for split, paths in record.items()}
    return index
