"""Detection augmentation: for every preset, Mosaic and MixUp, boxes follow the pixels they enclose.

The check: a scene of filled rectangles, each with a unique label, is transformed with a fixed seed; then each
rectangle alone (same boxes, so the same random draws) is transformed with that seed again, and the surviving box
of its label must enclose exactly the pixels the rectangle became (within 2 px for interpolation). A box that was
dropped must have lost most of its rectangle.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from imagerec.data.datasets import DetectionDataset
from imagerec.data.samples import write_digit_scenes
from imagerec.data.targets import Objects, Sample
from imagerec.transforms.detection import (
    PRESETS,
    BoxIoUCrop,
    MixUp,
    Mosaic,
    MultiSample,
    mosaic_transform,
    train_transform,
)

TOLERANCE = 2.0  # pixels: bilinear resizing blurs a rectangle's edge by about one pixel
SEEDS = range(16)

Rect = tuple[int, int, int, int]


def _rects(rng: np.random.Generator, height: int, width: int, count: int) -> list[Rect]:
    """`count` non-overlapping rectangles (x1, y1, x2, y2) of 6–30 px sides, kept 2 px apart."""
    rects: list[Rect] = []
    while len(rects) < count:
        w, h = (int(v) for v in rng.integers(6, 31, size=2))
        x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        r = (x, y, x + w, y + h)
        if all(r[2] + 2 <= o[0] or o[2] + 2 <= r[0] or r[3] + 2 <= o[1] or o[3] + 2 <= r[1] for o in rects):
            rects.append(r)
    return rects


def _sample(rects: list[Rect], labels: list[int], shape: tuple[int, int, int], only: int | None = None):
    """(image, target) with the rectangles filled (or only rectangle `only`); ignore set on odd labels."""
    image = torch.zeros(shape)
    for i, (x1, y1, x2, y2) in enumerate(rects):
        if only is None or only == i:
            image[:, y1:y2, x1:x2] = 0.4 + 0.1 * (i % 6)
    boxes = torch.tensor(rects, dtype=torch.float32).reshape(-1, 4)
    target = {
        "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=shape[1:]),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "ignore": torch.tensor([label % 2 == 1 for label in labels], dtype=torch.bool),
    }
    return tv_tensors.Image(image), target


def _seeded(seed: int, fn, *args):
    torch.manual_seed(seed)
    return fn(*args)


def _pixel_box(image: torch.Tensor) -> tuple[torch.Tensor | None, int]:
    """Tight box (x1, y1, x2, y2) of the pixels above half the image's maximum, and their count."""
    values = image.amax(dim=0)
    on = values > 0.5 * values.max() if values.max() > 0.05 else torch.zeros_like(values, dtype=torch.bool)
    if not on.any():
        return None, 0
    rows, cols = on.any(dim=1).nonzero()[:, 0], on.any(dim=0).nonzero()[:, 0]
    box = torch.tensor([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=torch.float32)
    return box, int(on.sum())


def _check_structure(image: torch.Tensor, target: dict) -> None:
    boxes = target["boxes"]
    assert isinstance(image, tv_tensors.Image)
    assert image.dtype == torch.float32
    assert 0.0 <= float(image.min()) <= float(image.max()) <= 1.0
    assert isinstance(boxes, tv_tensors.BoundingBoxes)
    assert boxes.format == tv_tensors.BoundingBoxFormat.XYXY
    assert tuple(boxes.canvas_size) == tuple(image.shape[-2:])
    assert boxes.shape[1] == 4
    assert target["labels"].dtype == torch.int64
    assert target["ignore"].dtype == torch.bool
    assert len(boxes) == len(target["labels"]) == len(target["ignore"])
    height, width = image.shape[-2:]
    assert (boxes[:, 0] >= 0).all()
    assert (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= width).all()
    assert (boxes[:, 3] <= height).all()
    assert (boxes[:, 2] > boxes[:, 0]).all()
    assert (boxes[:, 3] > boxes[:, 1]).all()
    assert torch.equal(target["ignore"], target["labels"] % 2 == 1)  # ignore stays aligned with labels


def _check_follows_pixels(run, objects: list, areas: dict[int, float], max_dropped_visible: float) -> int:
    """`run(sample)` is the seeded transform; `objects` are (label, sample with only that object drawn).

    Returns how many boxes were dropped, so callers can check that dropping was exercised."""
    image, target = run(None)
    _check_structure(image, target)
    kept = {int(label): box for label, box in zip(target["labels"], target["boxes"], strict=True)}
    assert len(kept) == len(target["labels"])  # labels are unique in the test scenes
    dropped = 0
    for label, alone in objects:
        pixels, count = _pixel_box(run(alone)[0])
        if label in kept:
            assert pixels is not None, f"label {label}: box kept but its pixels are gone"
            assert torch.allclose(kept[label], pixels, atol=TOLERANCE), (label, kept[label], pixels)
        else:
            dropped += 1
            assert count <= max_dropped_visible * areas[label] + 2 * np.sqrt(areas[label]), (label, count)
    return dropped


def _scene(seed: int, shape: tuple[int, int, int] = (3, 96, 128), count: int = 6):
    rects = _rects(np.random.default_rng(seed), shape[1], shape[2], count)
    labels = list(range(count))
    full = _sample(rects, labels, shape)
    alone = [(label, _sample(rects, labels, shape, only=i)) for i, label in enumerate(labels)]
    areas = {label: float((r[2] - r[0]) * (r[3] - r[1])) for label, r in zip(labels, rects, strict=True)}
    return full, alone, areas


@pytest.mark.parametrize("preset", PRESETS.names())
@pytest.mark.parametrize("channels", [1, 3])
def test_boxes_follow_pixels_for_every_preset(preset: str, channels: int) -> None:
    transform = train_transform(preset, imgsz=128)
    dropped = 0
    for seed in SEEDS:
        full, alone, areas = _scene(seed, shape=(channels, 96, 128))
        # SSD's IoU crop drops a box whose centre leaves the crop, which may keep up to half of it
        dropped += _check_follows_pixels(
            lambda s, seed=seed, full=full: _seeded(seed, transform, *(s or full)), alone, areas, 0.5
        )
    if preset in ("medium", "heavy"):
        assert dropped > 0, "no seed exercised dropping boxes"


@pytest.mark.parametrize("preset", PRESETS.names())
def test_large_images_are_shrunk_with_their_boxes(preset: str) -> None:
    transform = train_transform(preset, imgsz=64)
    for seed in SEEDS:
        full, alone, areas = _scene(seed, shape=(1, 150, 200))
        image, _ = _seeded(seed, transform, *full)
        zoom = {"medium": 2, "heavy": 3}.get(preset, 1)  # zoom-out enlarges the shrunk canvas
        assert max(image.shape[-2:]) <= 64 * zoom
        scaled = {label: area * (64 / 200) ** 2 for label, area in areas.items()}
        _check_follows_pixels(
            lambda s, seed=seed, full=full: _seeded(seed, transform, *(s or full)), alone, scaled, 0.5
        )


@pytest.mark.parametrize("preset", PRESETS.names())
def test_boxes_reaching_outside_are_clipped(preset: str) -> None:
    image, target = _sample([(10, 10, 20, 20), (30, 5, 45, 25)], [0, 1], (1, 30, 40))
    target["boxes"] = tv_tensors.wrap(torch.tensor([[-4.0, 10, 20, 20], [30, 5, 45, 25]]), like=target["boxes"])
    out_image, out = _seeded(0, train_transform(preset, imgsz=64, flip=False), image, target)
    _check_structure(out_image, out)
    if preset in ("none", "light"):  # no crop can drop them: both stay, the first cut at the left edge
        assert out["boxes"].tolist() == [[0, 10, 20, 20], [30, 5, 40, 25]]


def test_flip_keyword() -> None:
    full, _, _ = _scene(0)
    boxes = full[1]["boxes"]
    unflipped = [_seeded(seed, train_transform("light", imgsz=128, flip=False), *full)[1]["boxes"] for seed in SEEDS]
    assert all(torch.equal(b, boxes) for b in unflipped)
    flipped = [_seeded(seed, train_transform("light", imgsz=128), *full)[1]["boxes"] for seed in SEEDS]
    assert any(not torch.equal(b, boxes) for b in flipped)


@pytest.mark.parametrize("preset", PRESETS.names())
def test_zero_box_samples_pass_through(preset: str) -> None:
    image, target = _sample([], [], (3, 40, 50))
    assert BoxIoUCrop().make_params([image, target["boxes"]]) == {}  # no search for a crop around nothing
    for seed in SEEDS:
        out_image, out = _seeded(seed, train_transform(preset, imgsz=64), image, target)
        _check_structure(out_image, out)
        assert out["boxes"].shape == (0, 4)


def _four_scenes(seed: int, size: int):
    """Four size×size samples whose labels are unique across all four (sample k: 10k + j)."""
    scenes = []
    for k in range(4):
        rects = _rects(np.random.default_rng(100 * seed + k), size, size, 3)
        scenes.append((rects, [10 * k + j for j in range(3)]))
    return scenes


def _stage_run(stage, scenes, shape, seed: int):
    """A seeded run of a multi-sample stage on the scenes, optionally with only one object (sample k, object j)."""

    def run(only: tuple[int, int] | None):
        samples = [
            _sample(rects, labels, shape, only=(only[1] if only and only[0] == k else -1) if only else None)
            for k, (rects, labels) in enumerate(scenes)
        ]
        return _seeded(seed, stage.combine, samples[: stage.num_samples])

    return run


@pytest.mark.parametrize("scale", [(1.0, 1.0), (0.5, 1.0)])
def test_mosaic_boxes_follow_pixels(scale: tuple[float, float]) -> None:
    size = 96
    mosaic = Mosaic(size, scale=scale, min_visible=0.2)
    dropped = 0
    for seed in SEEDS:
        scenes = _four_scenes(seed, size)
        run = _stage_run(mosaic, scenes, (1, size, size), seed)
        objects = [((k, j), labels[j]) for k, (_, labels) in enumerate(scenes) for j in range(3)]
        areas = {
            labels[j]: float((r[2] - r[0]) * (r[3] - r[1])) for rects, labels in scenes for j, r in enumerate(rects)
        }
        alone = [(label, only) for only, label in objects]
        image, target = run(None)
        assert image.shape == (1, size, size)
        if scale == (1.0, 1.0):  # unscaled, so every kept box holds at least min_visible of its rectangle
            for label, box in zip(target["labels"].tolist(), target["boxes"], strict=True):
                assert (box[2] - box[0]) * (box[3] - box[1]) >= 0.2 * areas[label]
        # at scale 1 a dropped box kept under min_visible of its area; smaller scales shrink it further
        dropped += _check_follows_pixels(lambda s, run=run: run(s), alone, areas, 0.2)
    assert dropped > 0


def test_mixup_keeps_every_box_on_its_pixels() -> None:
    mixup = MixUp(p=1.0)
    for seed in SEEDS:
        scenes = _four_scenes(seed, 64)
        run = _stage_run(mixup, scenes, (3, 64, 64), seed)
        alone = [(labels[j], (k, j)) for k, (_, labels) in enumerate(scenes[:2]) for j in range(3)]
        image, target = run(None)
        assert len(target["boxes"]) == 6
        assert _check_follows_pixels(lambda s, run=run: run(s), alone, {}, 0.0) == 0


def test_mixup_pads_samples_of_different_sizes() -> None:
    a = _sample([(2, 2, 10, 10)], [0], (1, 20, 30))
    b = _sample([(5, 5, 30, 12)], [1], (1, 40, 35))
    image, target = _seeded(0, MixUp(p=1.0).combine, [a, b])
    assert image.shape == (1, 40, 35)
    assert target["boxes"].tolist() == [[2, 2, 10, 10], [5, 5, 30, 12]]
    _check_structure(image, target)


def test_multi_sample_draws_only_when_applied() -> None:
    draws = []

    def draw():
        draws.append(1)
        return _sample([(1, 1, 5, 5)], [0], (1, 32, 32))

    first = _sample([(3, 3, 9, 9)], [1], (1, 32, 32))
    assert MultiSample(Mosaic(32, p=0.0), MixUp(p=0.0))(first, draw) is first
    assert not draws
    image, _ = MultiSample(Mosaic(32, p=1.0), MixUp(p=1.0))(first, draw)
    assert len(draws) == 3 + 1
    assert image.shape == (1, 32, 32)


# --- DetectionDataset on digit scenes -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scene_samples(tmp_path_factory: pytest.TempPathFactory) -> list[Sample]:
    root = write_digit_scenes(tmp_path_factory.mktemp("scenes"), n_train=6, n_val=1, n_test=1)
    coco = json.loads((root / "annotations" / "instances_train.json").read_text())
    samples = []
    for image in coco["images"]:
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        boxes = tuple((x, y, x + w, y + h) for x, y, w, h in (a["bbox"] for a in anns))
        objects = Objects(boxes=boxes, labels=tuple(a["category_id"] - 1 for a in anns))
        samples.append(Sample(Path(root / "images" / "train" / image["file_name"]), objects))
    samples.append(Sample(samples[0].path, Objects()))  # a negative example
    return samples


@pytest.mark.parametrize("channels", [1, 3])
def test_dataset_returns_documented_types(scene_samples: list[Sample], channels: int) -> None:
    dataset = DetectionDataset(scene_samples, channels=channels)
    for i in range(len(dataset)):
        image, target = dataset[i]
        assert image.shape == (channels, 128, 128)
        assert set(target) == {"boxes", "labels", "ignore"}
        _check_structure(image, {**target, "ignore": target["labels"] % 2 == 1})
        assert not target["ignore"].any()
        assert target["labels"].tolist() == list(scene_samples[i].target.labels)
    assert dataset[len(dataset) - 1][1]["boxes"].shape == (0, 4)


def test_dataset_with_heavy_augmentation(scene_samples: list[Sample]) -> None:
    dataset = DetectionDataset(
        scene_samples,
        channels=1,
        transform=train_transform("heavy", imgsz=128, flip=False),
        mosaic=MultiSample(Mosaic(128, p=1.0), MixUp(p=0.5)),
        cache=True,
    )
    before = [dataset.pixels(i).clone() for i in range(len(dataset))]
    outputs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        outputs.append([dataset[i] for i in range(len(dataset))])
    for image, target in outputs[0]:
        assert image.dtype == torch.float32
        assert isinstance(target["boxes"], tv_tensors.BoundingBoxes)
        assert tuple(target["boxes"].canvas_size) == tuple(image.shape[-2:])
        assert len(target["boxes"]) == len(target["labels"]) == len(target["ignore"])
        assert 0 <= float(image.min()) <= float(image.max()) <= 1
    same = all(torch.equal(a[0], b[0]) for a, b in zip(outputs[0], outputs[1], strict=True))
    assert same, "the same torch seed must give the same samples"
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(outputs[0], outputs[2], strict=True))
    assert all(torch.equal(b, dataset.pixels(i)) for i, b in enumerate(before)), "the cache was modified"


def test_mosaic_transform_per_preset() -> None:
    assert mosaic_transform("none", imgsz=64) is None
    assert mosaic_transform("medium", imgsz=64) is None
    heavy = mosaic_transform("heavy", imgsz=64)
    assert isinstance(heavy, MultiSample)
    assert [type(s) for s in heavy.stages] == [Mosaic, MixUp]
