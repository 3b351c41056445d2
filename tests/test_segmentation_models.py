"""The segmenter contract over every registered model: logits at the input's own size for any size (odd ones
included), finite gradients, a loss that falls when fitted to one batch; Mask R-CNN as a detector with masks."""

from __future__ import annotations

import pytest
import torch

from imagerec.errors import UserError
from imagerec.models import create_model, list_models
from imagerec.models.detection import Detector, DetectorSpec
from imagerec.models.segmentation import (
    INSTANCE_SEGMENTERS,
    SEGMENTERS,
    Segmenter,
    SegmenterSpec,
    UNet,
    create_instance_segmenter,
    create_segmenter,
)
from imagerec.tasks.losses import build_loss

NUM_CLASSES = 3
# torchvision's FCN and DeepLabV3 on ResNets keep stride 8 through 23 dilated blocks, and the paper-width U-Net
# has 64 channels at full resolution: smaller inputs keep the test fast; they are still odd-sized.
HEAVY = {"unet_w64"} | {name for name in SEGMENTERS.names() if "resnet" in name and not name.startswith("smp_")}


def _sizes(name: str) -> dict[int, tuple[int, int]]:
    """Input size per channel count: 1-channel inputs odd-sized, 3-channel ones not a multiple of 32."""
    return {1: (65, 47), 3: (64, 48)} if name in HEAVY else {1: (67, 45), 3: (96, 128)}


def _batch(channels: int, size: tuple[int, int], binary: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Two images of a bright block (class 1) and a dim one (class 2 or, binary, 1 too), with ignored pixels."""
    height, width = size
    images = torch.full((2, channels, height, width), 0.1)
    target = torch.zeros(2, height, width, dtype=torch.int64)
    images[:, :, 5:30, 5:25] = 0.9
    target[:, 5:30, 5:25] = 1
    images[:, :, 35:60, 28:44] = 0.5
    target[:, 35:60, 28:44] = 1 if binary else 2
    target[:, 0, :] = 255  # a row of ignored pixels, as VOC's borders
    return images, target


def _loss(model: torch.nn.Module, loss_fn, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(0)  # the same dropout masks every time, so losses compare
    logits = model(images)
    assert logits.shape[-2:] == images.shape[-2:]
    return loss_fn(logits, target)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", SEGMENTERS.names())
def test_segmenter_contract(name: str, channels: int) -> None:
    """One channel: a binary task with one logit (BCE + Dice); three: three classes (CE + Dice)."""
    torch.manual_seed(0)
    binary = channels == 1
    outputs = 1 if binary else NUM_CLASSES
    spec = SegmenterSpec(num_classes=2 if binary else NUM_CLASSES, in_channels=channels, imgsz=64, num_outputs=outputs)
    model = create_segmenter(name, spec).train()
    loss_fn = build_loss("ce_dice", num_classes=spec.num_classes, binary=binary, ignore_index=255)
    images, target = _batch(channels, _sizes(name)[channels], binary)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = _loss(model, loss_fn, images, target)
    assert torch.isfinite(first)
    for step in range(3):
        optimizer.zero_grad()
        loss = first if step == 0 else _loss(model, loss_fn, images, target)
        loss.backward()
        if step == 0:
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            assert grads
            assert all(torch.isfinite(g).all() for g in grads)
        optimizer.step()
    with torch.no_grad():
        last = _loss(model, loss_fn, images, target)
    assert last < first, f"{name}: loss {float(first):.4f} → {float(last):.4f} after 3 steps on one batch"
    model.eval()
    with torch.no_grad():
        logits = model(images[:1])
    assert logits.shape == (1, outputs, *images.shape[-2:])
    assert torch.isfinite(logits).all()


def test_unet_is_the_papers_shape_and_takes_tiny_inputs() -> None:
    model = UNet(1, 2, width=8)
    assert len(model.encoder.downs) == 4  # four poolings: the paper's depth
    assert [block[0].out_channels for block in model.decoder.blocks] == [64, 32, 16, 8]
    assert model.multiple == 16
    wrapped = Segmenter(model, multiple=model.multiple).eval()
    with torch.no_grad():
        # 5×7 is smaller than the pad it needs (11 and 9 pixels): edge replication instead of reflection.
        assert wrapped(torch.rand(1, 1, 5, 7)).shape == (1, 2, 5, 7)
        assert wrapped(torch.rand(1, 1, 17, 33)).shape == (1, 2, 17, 33)


def test_unpadded_multiple_gives_the_models_own_output() -> None:
    """Sizes already a multiple pass untouched: the wrapper adds nothing to the model's own computation."""
    torch.manual_seed(0)
    model = create_segmenter("unet", SegmenterSpec(num_classes=2, in_channels=1, imgsz=32, num_outputs=2)).eval()
    x = torch.rand(1, 1, 32, 48)
    with torch.no_grad():
        assert torch.equal(model(x), model.model(x))


def test_smp_models_take_any_encoder_and_refuse_unknown_ones() -> None:
    spec = SegmenterSpec(num_classes=2, in_channels=1, imgsz=64, num_outputs=2, encoder="mobilenet_v2")
    model = create_segmenter("smp_fpn", spec).eval()
    assert "MobileNet" in type(model.model.encoder).__name__
    with torch.no_grad():
        assert model(torch.rand(1, 1, 50, 70)).shape == (1, 2, 50, 70)
    with pytest.raises(UserError, match="unknown segmentation-models-pytorch encoder"):
        create_segmenter("smp_unet", SegmenterSpec(2, 1, 64, 2, encoder="resnet_nonexistent"))
    with pytest.raises(UserError, match="smp_unet"):
        create_segmenter("unet", SegmenterSpec(2, 1, 64, 2, encoder="resnet18"))
    with pytest.raises(UserError, match="unknown segmentation model"):
        create_segmenter("unett", SegmenterSpec(2, 1, 64, 2))


def test_listing_and_create_model() -> None:
    rows = list_models("segment")
    names = [row["name"] for row in rows]
    assert names == SEGMENTERS.names() + INSTANCE_SEGMENTERS.names()
    assert all(row["source"] for row in rows)
    model = create_model("segment", "lraspp_mobilenet_v3_large", num_outputs=1, in_channels=1, imgsz=64).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 1, 41, 39)).shape == (1, 1, 41, 39)
    with pytest.raises(UserError, match="segment"):
        list_models("track")


# --- instance segmentation ------------------------------------------------------------------------------------


def _instance_batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Two 1-channel images of different sizes: one with two objects (boxes and masks), one with none."""
    image = torch.full((1, 96, 112), 0.1)
    masks = torch.zeros(2, 96, 112, dtype=torch.uint8)
    masks[0, 10:50, 10:40] = 1
    masks[1, 60:90, 50:100] = 1
    image[:, masks.bool().any(0)] = 0.9
    targets = [
        {"boxes": torch.tensor([[10.0, 10.0, 40.0, 50.0], [50.0, 60.0, 100.0, 90.0]]), "labels": torch.tensor([0, 1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    targets[0]["masks"] = masks
    targets[1]["masks"] = torch.zeros(0, 80, 64, dtype=torch.uint8)
    return [image, torch.full((1, 80, 64), 0.1)], targets


@pytest.mark.parametrize("name", INSTANCE_SEGMENTERS.names())
def test_mask_rcnn_trains_and_predicts_masks(name: str) -> None:
    torch.manual_seed(0)
    spec = DetectorSpec(num_classes=2, in_channels=1, imgsz=128, mean=[0.3], std=[0.3])
    model = create_instance_segmenter(name, spec).train()
    # Fewer sampled regions and kept detections than torchvision's 512 and 100: the contract is the same, and
    # v2's convolutional box head costs seconds per image at 512 regions on one CPU thread.
    model.model.roi_heads.fg_bg_sampler.batch_size_per_image = 64
    model.model.roi_heads.detections_per_img = 10
    images, targets = _instance_batch()
    losses = model(images, targets)
    assert {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    for out, image in zip(outputs, images, strict=True):
        n = len(out["boxes"])
        assert out["masks"].shape == (n, 1, *image.shape[-2:])
        if n:
            assert 0.0 <= float(out["masks"].min()) <= float(out["masks"].max()) <= 1.0
            assert 0 <= int(out["labels"].min()) <= int(out["labels"].max()) < 2


def test_mask_rcnn_is_a_detector_with_masks() -> None:
    spec = DetectorSpec(num_classes=1, in_channels=3, imgsz=96, mean=[0.5] * 3, std=[0.25] * 3)
    model = create_instance_segmenter("maskrcnn_resnet50_fpn", spec)
    assert isinstance(model, Detector)
    assert type(model.model).__name__ == "MaskRCNN"
    assert model.offset == 1  # label 0 is torchvision's background, hidden by Detector
    with pytest.raises(UserError, match="fixed backbone"):
        create_instance_segmenter("maskrcnn_resnet50_fpn", DetectorSpec(1, 3, 96, [0.5] * 3, [0.25] * 3, None, "vgg"))
    with pytest.raises(UserError, match="unknown instance segmentation model"):
        create_instance_segmenter("maskrcnn_resnet18", spec)
