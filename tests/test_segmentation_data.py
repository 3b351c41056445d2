"""Segmentation data: mask readers on hand-made fixtures (index, palette, binary, rgb; split, flat and ISBI layouts),
every mistake a user can make (one line, exit 2), inspect/validate, digit-scene masks, and the datasets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torchvision import tv_tensors

from helpers import invoke, user_error
from imagerec.data.checks import inspect_data, validate_data
from imagerec.data.datasets import DetectionDataset, SegmentationDataset
from imagerec.data.formats import detect_format, load_index
from imagerec.data.masks import VOC_CLASSES, MaskCoding, voc_colours
from imagerec.data.samples import write_digit_scenes
from imagerec.data.split import ensure_splits
from imagerec.data.targets import MaskFile
from imagerec.errors import UserError

# --- fixtures: tiny images and masks drawn by hand -----------------------------------------------------------

# A 6×4 class map: 0 background, 1 and 2 two objects, 255 an ignored border pixel.
CLASSES = np.array(
    [
        [0, 0, 1, 1, 0, 0],
        [0, 1, 1, 1, 0, 2],
        [0, 0, 0, 0, 2, 2],
        [255, 0, 0, 0, 0, 2],
    ],
    dtype=np.uint8,
)


def _image(path: Path, size: tuple[int, int] = (6, 4), shade: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (shade, 255 - shade, (7 * shade) % 256)).save(path)
    return path


def _mask(path: Path, values: np.ndarray, palette: list[tuple[int, int, int]] | None = None) -> Path:
    """An 8-bit grey mask, or a P-mode PNG with `palette`, or an RGB mask when `values` is H×W×3."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(values.astype(np.uint8))
    if palette is not None:
        image = image.convert("P")
        image.putpalette([v for colour in palette for v in colour] + [0] * (768 - 3 * len(palette)))
    image.save(path)
    return path


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _pairs(root: Path, splits: dict[str, list[str]], values: np.ndarray = CLASSES, **mask_options) -> Path:
    """ROOT/images/SPLIT/NAME.jpg + ROOT/masks/SPLIT/NAME.png for each name (split "" for a flat layout); every
    image different."""
    shade = 0
    for split, names in splits.items():
        for name in names:
            shade += 10
            _image(root / "images" / split / f"{name}.jpg", (values.shape[1], values.shape[0]), shade)
            _mask(root / "masks" / split / f"{name}.png", values, **mask_options)
    return root


@pytest.fixture
def indexed(tmp_path: Path) -> Path:
    """Index masks in split folders with a classes.yaml naming three classes."""
    root = _pairs(tmp_path / "cells", {"train": ["a", "b", "c"], "val": ["d"], "test": ["e"]})
    _write(root / "classes.yaml", "names: [background, cell, nucleus]\nignore_index: 255\n")
    return root


def _read_all(index) -> dict[str, np.ndarray]:
    return {s.path.stem: index.masks.read(s.target.path).numpy() for s in index.all_samples()}


# --- readers -------------------------------------------------------------------------------------------------


def test_index_masks_in_split_folders(indexed):
    assert detect_format(indexed) == "masks"
    index = load_index(indexed)
    assert (index.format, index.classes, list(index.splits)) == ("masks", ["background", "cell", "nucleus"], SPLITS)
    assert [s.path.name for s in index.splits["train"]] == ["a.jpg", "b.jpg", "c.jpg"]  # .jpg image ↔ .png mask
    assert all(isinstance(s.target, MaskFile) and s.target.path.suffix == ".png" for s in index.all_samples())
    assert index.masks == MaskCoding("index", 3, ignore_index=255)
    for mask in _read_all(index).values():
        np.testing.assert_array_equal(mask, CLASSES)
    assert index.counts("train") == [0, 0, 0]  # masks are not read to count: inspect reports pixel shares


SPLITS = ["train", "val", "test"]


def test_index_masks_without_classes_yaml_are_numbered(tmp_path):
    index = load_index(_pairs(tmp_path / "d", {"train": ["a"], "val": ["b"]}))
    assert index.classes == ["0", "1", "2"]  # from the values seen; 255 is ignored
    assert index.masks.kind == "index"
    assert any("no classes.yaml" in note and "add classes.yaml" in note for note in index.notes)


def test_voc_palette_masks_get_voc_names(tmp_path):
    values = np.where(CLASSES == 2, 15, CLASSES)  # 15 is VOC's person
    root = _pairs(tmp_path / "voc", {"": ["a", "b"]}, values, palette=list(voc_colours()))
    index = load_index(root)
    assert index.masks.kind == "palette"
    assert index.classes == list(VOC_CLASSES[:16])
    assert set(np.unique(_read_all(index)["a"])) == {0, 1, 15, 255}


def test_other_palette_masks_are_numbered_with_their_colours(tmp_path):
    palette = [(10, 10, 10), (200, 0, 0), (0, 200, 0)]
    index = load_index(_pairs(tmp_path / "p", {"": ["a", "b"]}, palette=palette))
    assert index.classes == ["0", "1", "2"]
    assert index.masks.colours == tuple(palette)
    np.testing.assert_array_equal(_read_all(index)["b"], CLASSES)


def test_binary_flat_masks_split_at_random(tmp_path):
    root = _pairs(tmp_path / "flat", {"": [f"n{i}" for i in range(10)]}, np.where(CLASSES == 1, 255, 0))
    index = load_index(root)
    assert (index.classes, index.masks.kind, list(index.splits)) == (["background", "foreground"], "binary", ["all"])
    assert set(np.unique(_read_all(index)["n0"])) == {0, 1}
    ensure_splits(index, val=0.2, test=0.2, seed=0)
    assert {k: len(v) for k, v in index.splits.items()} == {"train": 6, "val": 2, "test": 2}
    assert "split at random" in index.notes[-1]


def test_rgb_masks_read_by_classes_yaml_colours(tmp_path):
    colours = [(0, 0, 0), (250, 10, 10), (10, 250, 10)]
    rgb = np.zeros((*CLASSES.shape, 3), dtype=np.uint8)
    for i, colour in enumerate(colours):
        rgb[i == CLASSES] = colour
    rgb[CLASSES == 255] = (255, 255, 255)
    root = _pairs(tmp_path / "rgb", {"train": ["a"], "val": ["b"]}, rgb)
    _write(
        root / "classes.yaml",
        "names: {0: sky, 1: road, 2: car}\ncolours: [[0, 0, 0], [250, 10, 10], [10, 250, 10]]\n"
        "ignore_colour: [255, 255, 255]\n",
    )
    index = load_index(root)
    assert (index.classes, index.masks.kind, index.masks.colours) == (["sky", "road", "car"], "rgb", tuple(colours))
    np.testing.assert_array_equal(_read_all(index)["a"], CLASSES)


def test_mask_names_may_add_a_suffix_and_sit_in_subfolders(tmp_path):
    root = tmp_path / "s"
    for sub, name in (("x", "a"), ("y", "b")):
        _image(root / "images" / sub / f"{name}.tif")
        _mask(root / "masks" / sub / f"{name}_mask.png", CLASSES)
    index = load_index(root)
    assert sorted(s.target.path.name for s in index.splits["all"]) == ["a_mask.png", "b_mask.png"]


def test_isbi_layout(shared_datasets):
    root = shared_datasets / "isbi2012-em"
    if not root.is_dir():
        pytest.skip(f"{root} not found: the ISBI 2012 set is not in the shared datasets")
    assert detect_format(root) == "masks"
    index = load_index(root)
    assert list(index.splits) == ["train"]
    assert len(index.splits["train"]) == 30
    assert (index.classes, index.masks.kind) == (["background", "foreground"], "binary")  # 0 = membrane
    assert all(s.path.parent.name == "image" and s.target.path.parent.name == "label" for s in index.splits["train"])
    assert any("test" in note and "30 image(s) without masks (unlabeled) left out" in note for note in index.notes)
    first = index.splits["train"][0]
    raw = np.unique(np.asarray(Image.open(first.target.path)))
    assert set(raw.tolist()) == {0, 255}
    assert set(index.masks.read(first.target.path).unique().tolist()) == {0, 1}


def test_fingerprint_survives_moving_the_data(indexed, tmp_path):
    moved = shutil.copytree(indexed, tmp_path / "elsewhere")
    assert load_index(moved).fingerprint() == load_index(indexed).fingerprint()
    _mask(moved / "masks" / "val" / "d.png", np.where(CLASSES == 2, 1, CLASSES))
    assert load_index(moved).fingerprint() != load_index(indexed).fingerprint()


# --- bad input: one line, exit 2 -----------------------------------------------------------------------------


def _bad_size(root: Path) -> tuple[Path, list[str]]:
    _pairs(root, {"train": ["a", "b"]})
    mask = _mask(root / "masks" / "train" / "b.png", np.zeros((5, 6)))
    return root, [str(mask), "mask is 6×5", str(root / "images" / "train" / "b.jpg"), "is 6×4"]


def _bad_value(root: Path) -> tuple[Path, list[str]]:
    _pairs(root, {"train": ["a"]}, np.where(CLASSES == 2, 7, CLASSES))
    _write(root / "classes.yaml", "names: [background, cell, nucleus]\n")
    return root, [str(root / "masks" / "train" / "a.png"), "mask values 7 (4 px)", "expected 0..2"]


def _bad_colour(root: Path) -> tuple[Path, list[str]]:
    rgb = np.zeros((4, 7, 3), dtype=np.uint8)
    for i in range(7):  # seven colours no class has, one column each
        rgb[:, i] = (10 * (i + 1), 1, 2)
    _pairs(root, {"": ["a"]}, rgb)
    _write(root / "classes.yaml", "names: [a, b]\ncolours: [[0, 0, 0], [255, 0, 0]]\n")
    return root, ["(10, 1, 2) (4 px)", "(50, 1, 2) (4 px)", "… (7 in all)", "not class colours"]


def _bad_palette(root: Path) -> tuple[Path, list[str]]:
    _mask(root / "masks" / "a.png", CLASSES, palette=[(0, 0, 0), (255, 0, 0), (0, 255, 0)])
    _mask(root / "masks" / "b.png", CLASSES, palette=[(0, 0, 0), (0, 255, 0), (255, 0, 0)])
    _image(root / "images" / "a.png")
    _image(root / "images" / "b.png")
    return root, ["palette masks disagree", "index 1 is (255, 0, 0) in a.png but (0, 255, 0) in b.png", "classes.yaml"]


def _bad_no_mask(root: Path) -> tuple[Path, list[str]]:
    _pairs(root, {"train": ["a"]})
    for name in ("b", "c", "d", "e"):
        _image(root / "images" / "train" / f"{name}.png")
    return root, ["4 image(s) have no mask", "b.png", "d.png, …", "add masks"]


def _bad_no_image(root: Path) -> tuple[Path, list[str]]:
    _pairs(root, {"train": ["a"]})
    orphan = _mask(root / "masks" / "train" / "zz.png", CLASSES)
    return root, ["1 mask(s) have no image", str(orphan)]


def _bad_polygon(root: Path) -> tuple[Path, list[str]]:
    image = _image(root / "images" / "a.png", (20, 20))
    annotations = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "segmentation": [[1, 1, 6, 6]]}]
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 20, "height": 20}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "cell"}],
    }
    _write(root / "annotations.json", json.dumps(coco))
    return root, [str(image), "object 1 has a polygon of 2 point(s)", "needs 3 or more"]


BAD_INPUTS = [_bad_size, _bad_value, _bad_colour, _bad_palette, _bad_no_mask, _bad_no_image, _bad_polygon]


@pytest.mark.parametrize("make", BAD_INPUTS, ids=lambda f: f.__name__[5:])
def test_bad_input_is_one_line_exit_2(make, tmp_path, capsys, monkeypatch):
    data, expected = make(tmp_path / "data")
    line = user_error(capsys, monkeypatch, "data", "inspect", data)
    for part in expected:
        assert part in line, line


def test_bad_classes_yaml(tmp_path, capsys, monkeypatch):
    root = _pairs(tmp_path / "d", {"": ["a"]})
    _write(root / "classes.yaml", "names: [a, b]\ncolours: [[0, 0, 0]]\n")
    assert "1 colours for 2 classes" in user_error(capsys, monkeypatch, "data", "inspect", root)
    _write(root / "classes.yaml", "names: [a, b]\nignore_index: 1\n")
    assert "ignore_index 1 must be an integer that is not a class index" in user_error(
        capsys, monkeypatch, "data", "inspect", root, "--format", "masks"
    )


def test_validate_lists_every_mask_problem(tmp_path):
    root = _pairs(tmp_path / "d", {"train": ["a", "b", "c", "ok"]})
    _write(root / "classes.yaml", "names: [background, cell, nucleus]\n")
    _mask(root / "masks" / "train" / "a.png", np.zeros((5, 6)))  # size
    _mask(root / "masks" / "train" / "b.png", np.full((4, 6), 9))  # values
    (root / "masks" / "train" / "c.png").write_bytes(b"not a png")  # corrupt
    _image(root / "images" / "train" / "lonely.png")  # no mask
    _mask(root / "masks" / "train" / "stray.png", CLASSES)  # no image
    report = validate_data(root)
    assert report["summary"] == {"mask-corrupt": 1, "no-mask": 1, "no-image": 1, "mask-size": 1, "mask-values": 1}
    assert report["masks"] == 4
    by_kind = {p["kind"]: p for p in report["problems"]}
    assert by_kind["no-mask"]["files"] == [str(root / "images" / "train" / "lonely.png")]
    assert by_kind["mask-size"]["files"] == [str(root / "masks/train/a.png"), str(root / "images/train/a.jpg")]
    result = invoke("data", "validate", root)
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("mask-corrupt: ")
    assert "checked 4 images, 4 masks" in lines[-1]  # the image without a mask is listed, not indexed
    assert "5 problem(s)" in lines[-1]


def test_validate_lists_bad_polygons(tmp_path):
    root, _ = _bad_polygon(tmp_path / "d")
    assert validate_data(root)["summary"] == {"polygon": 1}


def test_inspect_and_validate_clean_masks(indexed):
    report = inspect_data(indexed)
    labelled = 23  # 24 pixels, one ignored
    assert report["format"] == "masks"
    assert report["masks"]["pixel_share"]["val"] == {
        "background": round(14 / labelled, 4), "cell": round(5 / labelled, 4), "nucleus": round(4 / labelled, 4),
    }  # fmt: skip
    assert report["masks"]["ignored_share"]["train"] == round(1 / 24, 4)
    assert report["counts"]["train"] == {"background": 3, "cell": 3, "nucleus": 3}
    assert report["imbalance_ratio"] == round(14 / 4, 3)
    assert report["masks"]["width"] == {"min": 6, "median": 6, "max": 6}
    result = invoke("data", "inspect", indexed)
    assert result.exit_code == 0, result.output
    assert "pixel share" in result.stdout
    assert "60.87%" in result.stdout  # background: 14 of 23
    assert validate_data(indexed)["problems"] == []


def test_validate_compares_duplicate_images_by_their_masks(indexed):
    shutil.copy(indexed / "images" / "train" / "a.jpg", indexed / "images" / "test" / "e.jpg")
    (leak,) = validate_data(indexed)["problems"]
    assert leak["kind"] == "leak"
    assert "labelled differently" not in leak["message"]  # same mask bytes, different mask files
    _mask(indexed / "masks" / "test" / "e.png", np.zeros((4, 6)))
    (leak,) = validate_data(indexed)["problems"]
    assert "labelled differently" in leak["message"]


def test_split_refuses_mask_data(indexed, tmp_path, capsys, monkeypatch):
    line = user_error(capsys, monkeypatch, "data", "split", indexed, tmp_path / "out")
    assert "segmentation data" in line


# --- digit scenes --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digit_scenes(tmp_path_factory.mktemp("scenes") / "s", n_train=12, n_val=3, n_test=3, seed=5)


def test_digit_scene_masks_agree_with_the_coco_rle(scenes):
    for split in SPLITS:
        coco = json.loads((scenes / "annotations" / f"instances_{split}.json").read_text())
        for image in coco["images"]:
            expected = np.zeros((image["height"], image["width"]), dtype=np.uint8)
            for annotation in (a for a in coco["annotations"] if a["image_id"] == image["id"]):
                rle = {**annotation["segmentation"], "counts": annotation["segmentation"]["counts"].encode()}
                expected[mask_utils.decode(rle) > 0] = annotation["category_id"]  # later glyphs drawn over
            with Image.open(scenes / "masks" / split / image["file_name"]) as png:
                assert png.mode == "L"
                np.testing.assert_array_equal(np.asarray(png), expected)


def test_digit_scenes_read_as_masks_only_when_asked(scenes):
    assert detect_format(scenes) == "coco"
    index = load_index(scenes, format="masks")
    assert index.classes == ["background", *(str(d) for d in range(10))]
    assert index.masks == MaskCoding("index", 11, colours=voc_colours(11))
    assert {split: len(samples) for split, samples in index.splits.items()} == {"train": 12, "val": 3, "test": 3}


# --- datasets ------------------------------------------------------------------------------------------------


def test_segmentation_dataset(indexed):
    index = load_index(indexed)
    for cache in (False, True):
        dataset = SegmentationDataset(index.splits["train"], channels=1, coding=index.masks, cache=cache)
        image, mask = dataset[1]
        assert isinstance(image, tv_tensors.Image)
        assert isinstance(mask, tv_tensors.Mask)
        assert (image.shape, image.dtype, mask.shape, mask.dtype) == ((1, 4, 6), torch.float32, (4, 6), torch.int64)
        np.testing.assert_array_equal(mask.numpy(), CLASSES)
    assert dataset._masks is not None
    assert dataset._masks[0].dtype == torch.uint8


def test_segmentation_dataset_refuses_a_mask_of_another_size_before_training(indexed):
    mask = _mask(indexed / "masks" / "val" / "d.png", np.zeros((3, 6)))
    index = load_index(indexed)
    with pytest.raises(UserError, match=rf"{mask}: the mask is 6×3 but its image .*d\.jpg is 6×4"):
        SegmentationDataset(index.splits["val"], channels=3, coding=index.masks, cache=False)


def test_instance_masks_from_polygons_and_rle(tmp_path):
    root = tmp_path / "coco"
    _image(root / "images" / "a.png", (20, 10))
    box = np.zeros((10, 20), dtype=np.uint8)
    box[2:5, 3:9] = 1
    compressed = mask_utils.encode(np.asfortranarray(box))
    uncompressed = {"size": [10, 20], "counts": [23, 3, 7, 3, 7, 3, 154]}  # column-major runs
    segmentations = [
        [[1.0, 1.0, 10.0, 1.0, 10.0, 8.0, 1.0, 8.0]],
        {"size": [10, 20], "counts": compressed["counts"].decode()},
        uncompressed,
    ]
    annotations = [
        {"id": i + 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 9, 7], "segmentation": s}
        for i, s in enumerate(segmentations)
    ]
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 20, "height": 10}], "annotations": annotations}
    _write(root / "annotations.json", json.dumps({**coco, "categories": [{"id": 1, "name": "x"}]}))
    samples = load_index(root).splits["all"]
    _, target = DetectionDataset(samples, channels=3, masks=True, cache=False)[0]
    masks = target["masks"]
    assert isinstance(masks, tv_tensors.Mask)
    assert (masks.shape, masks.dtype) == ((3, 10, 20), torch.uint8)
    expected_polygon = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(segmentations[0], 10, 20)))
    np.testing.assert_array_equal(masks[0].numpy(), expected_polygon)
    np.testing.assert_array_equal(masks[1].numpy(), box)
    np.testing.assert_array_equal(masks[2].numpy(), mask_utils.decode(mask_utils.frPyObjects(uncompressed, 10, 20)))
    assert "masks" not in DetectionDataset(samples, channels=3, cache=False)[0][1]


def test_instance_masks_refuse_short_polygons_before_training(tmp_path):
    root, _ = _bad_polygon(tmp_path / "d")
    with pytest.raises(UserError, match=r"a\.png: object 1 has a polygon of 2 point\(s\)"):
        DetectionDataset(load_index(root).splits["all"], channels=3, masks=True)


def test_instance_masks_need_a_segmentation_per_object(tmp_path):
    root = tmp_path / "coco"
    _image(root / "images" / "a.png", (20, 10))
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "segmentation": [[1, 1, 6, 1, 6, 6]]},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [8, 1, 5, 5]},
    ]
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 20, "height": 10}], "annotations": annotations}
    _write(root / "annotations.json", json.dumps({**coco, "categories": [{"id": 1, "name": "x"}]}))
    samples = load_index(root).splits["all"]
    DetectionDataset(samples, channels=3)  # detection does not need masks
    with pytest.raises(UserError, match=r"a\.png: object 2 has no segmentation"):
        DetectionDataset(samples, channels=3, masks=True)
