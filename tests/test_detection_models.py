"""The detector contract over every registered detector: train mode gives losses that fall when fitted to one
batch, eval mode gives boxes with 0-based labels in the input image's pixels."""

from __future__ import annotations

import pytest
import torch

from imagerec.errors import UserError
from imagerec.models import list_models
from imagerec.models.detection import DETECTORS, DetectorSpec, create_detector

NUM_CLASSES = 3


def _spec(channels: int = 3, imgsz: int = 128, **options: object) -> DetectorSpec:
    return DetectorSpec(
        num_classes=NUM_CLASSES, in_channels=channels, imgsz=imgsz, mean=[0.5] * channels, std=[0.25] * channels,
        **options,
    )  # fmt: skip


def _batch(channels: int) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Two images of different sizes: one with two boxes drawn as bright rectangles, one without any box."""
    first = torch.full((channels, 128, 112), 0.1)
    first[:, 20:60, 10:50] = 0.9
    first[:, 70:120, 60:100] = 0.6
    second = torch.full((channels, 96, 128), 0.1)
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 50.0, 60.0], [60.0, 70.0, 100.0, 120.0]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    return [first, second], targets


def _loss(model: torch.nn.Module, images: list, targets: list) -> torch.Tensor:
    torch.manual_seed(0)  # the same proposal/anchor sampling every step, so losses compare
    return sum(model(images, targets).values())


@pytest.mark.parametrize("name", DETECTORS.names())
def test_detector_trains_and_predicts(name: str) -> None:
    torch.manual_seed(0)
    channels = 1 if name in ("fcos_lite", "fasterrcnn_mobilenet_v3_large_320_fpn") else 3
    # The model resizes to 64 px inside (the images stay 128 px): boxes must still come back in the input's pixels.
    model = create_detector(name, _spec(channels, imgsz=64))
    images, targets = _batch(channels)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)  # 3e-4 overshoots Faster R-CNN on one batch
    model.train()
    first = _loss(model, images, targets)
    assert torch.isfinite(first)
    for _ in range(4):
        optimizer.zero_grad()
        _loss(model, images, targets).backward()
        optimizer.step()
    with torch.no_grad():
        last = _loss(model, images, targets)
    assert last < first, f"{name}: loss {float(first):.4f} → {float(last):.4f} after 4 steps on one batch"
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    assert len(outputs) == 2
    for out, image in zip(outputs, images, strict=True):
        assert set(out) >= {"boxes", "scores", "labels"}
        if len(out["labels"]):
            assert int(out["labels"].min()) >= 0
            assert int(out["labels"].max()) < NUM_CLASSES
            height, width = image.shape[1:]
            assert float(out["boxes"][:, 2].max()) <= width + 1e-3
            assert float(out["boxes"][:, 3].max()) <= height + 1e-3


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "timm:resnet18"])
def test_any_classifier_feeds_a_detector(backbone: str) -> None:
    model = create_detector("fcos", _spec(1, backbone=backbone)).eval()
    with torch.no_grad():
        out = model([torch.rand(1, 128, 128)])
    assert out[0]["boxes"].shape[1] == 4
    model.train()
    images, targets = _batch(1)
    assert torch.isfinite(sum(model(images, targets).values()))


def test_boxes_map_back_to_the_original_image_exactly() -> None:
    """The in-model letterbox (longest side to imgsz, padded) and its inverse are exact, whatever the image size."""
    model = create_detector("fcos_lite", _spec(3, imgsz=160)).eval()
    transform = model.model.transform
    image = torch.rand(3, 517, 1203)
    boxes = torch.tensor([[0.0, 0.0, 1203.0, 517.0], [101.5, 33.25, 640.0, 480.75]])
    resized, targets = transform([image], [{"boxes": boxes.clone(), "labels": torch.tensor([0, 1])}])
    assert max(resized.image_sizes[0]) == 160
    restored = transform.postprocess([{"boxes": targets[0]["boxes"]}], resized.image_sizes, [(517, 1203)])
    torch.testing.assert_close(restored[0]["boxes"], boxes, rtol=1e-5, atol=1e-3)


def test_anchor_sizes_are_configurable_and_checked() -> None:
    model = create_detector("retinanet", _spec(3, anchor_sizes=(8, 16, 32, 64, 128)))
    assert [round(sizes[0]) for sizes in model.model.anchor_generator.sizes] == [8, 16, 32, 64, 128]
    with pytest.raises(UserError, match="needs 5 values"):
        create_detector("retinanet", _spec(3, anchor_sizes=(8, 16)))
    with pytest.raises(UserError, match="no anchors"):
        create_detector("fcos_lite", _spec(3, anchor_sizes=(8, 16, 32)))
    with pytest.raises(UserError, match="fixed backbone"):
        create_detector("fasterrcnn_resnet50_fpn", _spec(3, backbone="resnet18"))


def test_detectors_are_listed_and_misspellings_suggested() -> None:
    names = {row["name"] for row in list_models("detect")}
    assert {"fcos_lite", "fasterrcnn_resnet50_fpn", "ssdlite320_mobilenet_v3_large", "retinanet"} <= names
    with pytest.raises(UserError, match="did you mean fcos_lite"):
        create_detector("fcos_lit", _spec())
