"""Digit scenes: deterministic, split by source digit, boxes and masks exact on the glyphs' pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from imagerec.data.samples import SAMPLES, write_digit_scenes

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digit_scenes(tmp_path_factory.mktemp("scenes") / "a", n_train=40, n_val=15, n_test=15, seed=3)


def _coco(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_registered_as_a_sample() -> None:
    assert "digit-scenes" in SAMPLES


def test_same_seed_same_bytes(scenes: Path, tmp_path: Path) -> None:
    again = write_digit_scenes(tmp_path / "b", n_train=40, n_val=15, n_test=15, seed=3)
    assert _files(scenes) == _files(again)
    other = write_digit_scenes(tmp_path / "c", n_train=40, n_val=15, n_test=15, seed=4)
    assert _files(other) != _files(scenes)


def test_layout_and_categories(scenes: Path) -> None:
    for split, count in zip(SPLITS, (40, 15, 15), strict=True):
        coco = _coco(scenes, split)
        assert len(coco["images"]) == count
        assert [(c["id"], c["name"]) for c in coco["categories"]] == [(d + 1, str(d)) for d in range(10)]
        for image in coco["images"]:
            with Image.open(scenes / "images" / split / image["file_name"]) as png:
                assert png.mode == "L"
                assert png.size == (image["width"], image["height"]) == (128, 128)


def test_no_source_digit_in_two_splits(scenes: Path) -> None:
    from sklearn.datasets import load_digits

    targets = load_digits().target
    used = {}
    for split in SPLITS:
        coco = _coco(scenes, split)
        used[split] = {s for image in coco["images"] for s in image["source_digits"]}
        for ann in coco["annotations"]:
            assert ann["category_id"] == targets[ann["source_digit"]] + 1
    assert not used["train"] & used["val"]
    assert not used["train"] & used["test"]
    assert not used["val"] & used["test"]


def _objects(root: Path, split: str):
    coco = _coco(root, split)
    for image in coco["images"]:
        pixels = np.asarray(Image.open(root / "images" / split / image["file_name"]))
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        yield image, pixels, anns


def test_one_to_six_digits_per_scene(scenes: Path) -> None:
    for split in SPLITS:
        for image, _, anns in _objects(scenes, split):
            assert 1 <= len(anns) <= 6
            assert [a["source_digit"] for a in anns] == image["source_digits"]


def test_boxes_tight_on_glyph_pixels_and_masks_consistent(scenes: Path) -> None:
    for split in SPLITS:
        for image, pixels, anns in _objects(scenes, split):
            for ann in anns:
                mask = mask_utils.decode(ann["segmentation"]).astype(bool)
                assert mask.shape == pixels.shape
                assert ann["area"] == mask.sum() > 0
                assert ann["iscrowd"] == 0
                assert (pixels[mask] > 0).all()  # the glyph is on the canvas where its mask says
                x, y, w, h = ann["bbox"]
                x1, y1, x2, y2 = int(x), int(y), int(x + w), int(y + h)
                assert (x, y, w, h) == (x1, y1, x2 - x1, y2 - y1)
                assert 0 <= x1 < x2 <= image["width"]
                assert 0 <= y1 < y2 <= image["height"]
                inside = np.zeros_like(mask)
                inside[y1:y2, x1:x2] = True
                assert not (mask & ~inside).any()  # nothing of the glyph outside its box
                # every edge row and column of the box touches the glyph
                assert mask[y1, x1:x2].any()
                assert mask[y2 - 1, x1:x2].any()
                assert mask[y1:y2, x1].any()
                assert mask[y1:y2, x2 - 1].any()


def test_canvas_holds_nothing_outside_the_masks(scenes: Path) -> None:
    for split in SPLITS:
        for _, pixels, anns in _objects(scenes, split):
            union = np.zeros(pixels.shape, dtype=bool)
            for ann in anns:
                union |= mask_utils.decode(ann["segmentation"]).astype(bool)
            assert not pixels[~union].any()


def test_small_canvas(tmp_path: Path) -> None:
    root = write_digit_scenes(tmp_path / "small", n_train=5, n_val=1, n_test=1, size=32)
    for _, pixels, anns in _objects(root, "train"):
        assert pixels.shape == (32, 32)
        assert 1 <= len(anns) <= 6
