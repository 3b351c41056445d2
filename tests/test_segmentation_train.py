"""Segmentation end to end on real digit scenes: train the compact U-Net, evaluate, predict masks whole and tiled."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imagerec
from helpers import invoke, user_error
from imagerec.data.samples import write_digit_scenes
from imagerec.tasks.results import SegmentationMask

EPOCHS = 6
# 64 px, not the scenes' 128: foreground IoU 0.95 on the test split (0.98 at 96 px, for 1.6× the training time).
IMGSZ = 64


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Digit scenes whose masks say digit (255) or background (0): the binary, foreground/background form that
    microscopy and medical masks usually take. Ten-class masks are learnt too, but need more training than a test
    should take (docs/benchmarks.md)."""
    out = write_digit_scenes(tmp_path_factory.mktemp("scenes") / "scenes", n_train=160, n_val=30, n_test=40)
    for path in (out / "masks").rglob("*.png"):
        with Image.open(path) as mask:
            binary = np.where(np.asarray(mask) > 0, 255, 0).astype(np.uint8)
        Image.fromarray(binary).save(path)
    (out / "classes.yaml").unlink()
    return out


@pytest.fixture(scope="module")
def segment_run(scenes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("segment") / "run"
    result = invoke(
        "train", scenes, "--task", "segment", "--model", "unet", "--epochs", EPOCHS, "--no-flip", "--imgsz", IMGSZ,
        "--lr", "3e-3", "--batch", "8", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def test_unet_learns_digit_scenes(segment_run: Path, scenes: Path) -> None:
    """Measured here: MIOU_TRAINED after 6 epochs on 160 scenes; the same U-Net with fresh weights: MIOU_FRESH."""
    measured = json.loads((segment_run / "evaluation" / "test.json").read_text())
    predictor = imagerec.load(segment_run)
    torch.manual_seed(0)
    predictor.model = predictor.task.build_model(predictor.info).eval()
    fresh = _evaluate_with(predictor, scenes)
    assert fresh["iou_fg"] < 0.3, fresh
    assert measured["iou_fg"] > 0.8, measured
    assert measured["pixel_accuracy"] > 0.95, measured
    info = json.loads((segment_run / "model.json").read_text())
    assert info["classes"] == ["background", "foreground"]


def _evaluate_with(predictor: imagerec.Predictor, scenes: Path) -> dict:
    from imagerec.data.formats import load_index

    index = load_index(scenes, format="masks")
    task = predictor.task
    task.coding = index.masks
    dataset = task.dataset(index.samples("test"), info=predictor.info, augment=None, cache=False)
    metrics = task.metrics()
    with torch.no_grad():
        for i in range(len(dataset)):
            image, mask = task.collate()([dataset[i]])
            metrics.update(task.class_map(predictor.model(image)), mask)
    return metrics.compute()


def test_evaluate_and_predict_masks(segment_run: Path, scenes: Path, tmp_path: Path) -> None:
    result = invoke("evaluate", segment_run, scenes, "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    saved = json.loads((segment_run / "evaluation" / "test.json").read_text())
    assert metrics["miou"] == pytest.approx(saved["miou"], abs=1e-6)
    assert {"miou", "dice", "pixel_accuracy", "per_class"} <= set(metrics)

    images = sorted((scenes / "images" / "test").glob("*.png"))[:3]
    masks, drawn = tmp_path / "masks", tmp_path / "drawn"
    result = invoke("predict", segment_run, *images, "--format", "json", "--save-masks", masks, "--save-images", drawn)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    for row, image in zip(rows, images, strict=True):
        with Image.open(masks / image.name) as mask, Image.open(image) as original:
            assert mask.size == original.size
            values = np.asarray(mask)
        assert values.max() <= 1
        assert sum(row["areas"].values()) == values.size
        assert row["areas"]["background"] == int((values == 0).sum())
    assert sorted(p.name for p in drawn.glob("*.png")) == sorted(p.name for p in images)
    result = invoke("predict", segment_run, *images, "--format", "csv")
    table = list(csv.DictReader(io.StringIO(result.stdout)))
    assert {row["class"] for row in table} >= {"background"}


def test_tiled_prediction_matches_whole_image(segment_run: Path, scenes: Path, tmp_path: Path) -> None:
    """A 2×2 mosaic of test scenes (256×256) predicted whole and in 96 px tiles with a 32 px overlap."""
    sources = sorted((scenes / "images" / "test").glob("*.png"))[:4]
    canvas = Image.new("L", (256, 256))
    for k, source in enumerate(sources):
        with Image.open(source) as scene:
            canvas.paste(scene, ((k % 2) * 128, (k // 2) * 128))
    canvas.save(tmp_path / "big.png")
    predictor = imagerec.load(segment_run)
    whole = predictor.predict(tmp_path / "big.png")[0]
    tiled = predictor.predict(tmp_path / "big.png", tile=96, overlap=32)[0]
    assert isinstance(tiled, SegmentationMask)
    assert tiled.mask.shape == (256, 256)
    assert float((tiled.mask == whole.mask).mean()) > 0.99


def test_image_above_the_pixel_limit_needs_a_tile(segment_run: Path, scenes: Path, capsys, monkeypatch) -> None:
    image = sorted((scenes / "images" / "test").glob("*.png"))[0]
    line = user_error(capsys, monkeypatch, "predict", segment_run, image, "--max-pixels", 1000)
    assert "--tile" in line
    assert str(image) in line


def test_masks_task_must_match_the_data(digits_dir: Path, capsys, monkeypatch) -> None:
    line = user_error(capsys, monkeypatch, "train", digits_dir, "--task", "segment", "--epochs", 1)
    assert "needs masks" in line


def test_mask_rcnn_trains_and_predicts_instances(tmp_path: Path) -> None:
    """The instance path end to end on digit scenes' COCO objects (RLE masks): one short epoch of Mask R-CNN,
    evaluated by mask mAP, predicting each object with its mask."""
    data = write_digit_scenes(tmp_path / "scenes", n_train=8, n_val=4, n_test=4)
    out = tmp_path / "run"
    result = invoke(
        "train", data, "--task", "segment", "--model", "maskrcnn_resnet50_fpn", "--epochs", 1, "--imgsz", "64",
        "--batch", "4", "--no-flip", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    info = json.loads((out / "model.json").read_text())
    assert info["instance"] is True
    measured = json.loads((out / "evaluation" / "test.json").read_text())
    assert {"map", "map50", "per_class"} <= set(measured)
    image = sorted((data / "images" / "test").glob("*.png"))[0]
    result = invoke("predict", out, image, "--format", "json", "--conf", "0.0")
    assert result.exit_code == 0, result.output
    objects = json.loads(result.stdout)[0]["objects"]
    assert objects
    assert objects[0]["mask"]["size"] == [128, 128]
