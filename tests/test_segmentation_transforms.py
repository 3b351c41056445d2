"""Mask-aware augmentation: under every preset the mask stays on its image, keeps only class values (nearest
neighbour), and is left alone by photometric changes; pad_collate pads images with 0 and masks with ignore_index."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from imagerec.transforms.segmentation import PRESETS, pad_collate, train_transform

IGNORE = 255
VALUES = (0, 2, 5)  # gaps between classes: any interpolation of the mask would invent 1, 3 or 4
TOLERANCE = {"none": 0.0, "light": 0.0, "medium": 0.02, "heavy": 0.05}  # pixels whose image and mask disagree


def _scene(height: int = 80, width: int = 96) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """A mask of blobs (a disc, rectangles) and an image that spells each pixel's class as a one-hot colour: the
    class can be read back from the image (argmax over channels) after any geometry, and after brightness and
    contrast changes too, which scale or shift all channels alike."""
    mask = torch.zeros(height, width, dtype=torch.int64)
    mask[8:40, 10:50] = 2
    mask[45:75, 55:90] = 5
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    mask[(ys - 30) ** 2 + (xs - 70) ** 2 < 15**2] = 5
    mask[60:78, 5:30] = 2
    image = torch.stack([(mask == value).float() for value in VALUES])
    return tv_tensors.Image(image), tv_tensors.Mask(mask)


def _disagreement(image: torch.Tensor, mask: torch.Tensor) -> float:
    """Fraction of the labelled pixels whose class the image spells differently than the mask says."""
    spelled = torch.tensor(VALUES)[image.argmax(dim=0)]
    labelled = mask != IGNORE
    return float((spelled[labelled] != mask[labelled]).float().mean())


def test_the_alignment_check_catches_misalignment():
    image, mask = _scene()
    assert _disagreement(image, mask) == 0.0
    assert _disagreement(image.flip(-1), mask) > 0.2
    assert _disagreement(image[:, 2:], mask[:-2]) > 0.05  # two pixels off


@pytest.mark.parametrize("preset", PRESETS.names())
def test_mask_stays_on_its_image(preset):
    torch.manual_seed(0)
    image, mask = _scene()
    transform = train_transform(preset, imgsz=64, ignore_index=IGNORE)
    for _ in range(12):
        out_image, out_mask = transform(image, mask)
        assert isinstance(out_image, tv_tensors.Image)
        assert isinstance(out_mask, tv_tensors.Mask)
        assert out_image.shape == (3, 64, 64)
        assert out_mask.shape == (64, 64)
        assert out_mask.dtype == torch.int64
        assert set(out_mask.unique().tolist()) <= {*VALUES, IGNORE}  # nearest neighbour: no invented class
        # Interpolation blurs the image at class borders while the mask stays sharp: a few % may disagree there
        # (over 300 draws at most 1.4% with medium, 3.6% with heavy's halving, elastic pull and blur). Shifting
        # the mask by a pixel or two against its image would disagree on 5-10%, a flip on 20% and more.
        assert _disagreement(out_image, out_mask) <= TOLERANCE[preset]


def _photometric(transform: v2.Transform) -> list[v2.Transform]:
    inner = transform.transforms if isinstance(transform, v2.RandomApply) else [transform]
    return [t for t in inner if isinstance(t, v2.ColorJitter | v2.GaussianBlur)]


@pytest.mark.parametrize("preset", ["medium", "heavy"])
def test_photometric_changes_leave_the_mask_alone(preset):
    torch.manual_seed(1)
    image, mask = _scene()
    image = tv_tensors.Image(image * 0.5 + 0.25)  # mid-range, so brightness and contrast show
    found = [p for t in train_transform(preset, imgsz=64).transforms for p in _photometric(t)]
    assert found, "the preset has photometric changes"
    for transform in found:
        out_image, out_mask = transform(image, mask)
        assert torch.equal(out_mask, mask)
        assert not torch.equal(out_image, image)


def test_small_images_are_padded_with_zero_and_ignore_index():
    image = tv_tensors.Image(torch.rand(1, 20, 30) + 0.1)
    mask = tv_tensors.Mask(torch.ones(20, 30, dtype=torch.int64))
    out_image, out_mask = train_transform("none", imgsz=40, ignore_index=99)(image, mask)
    assert out_image.shape == (1, 40, 40)
    assert int((out_mask == 99).sum()) == 40 * 40 - 20 * 30
    assert torch.all(out_image[0][out_mask == 99] == 0)
    assert torch.all(out_image[0][out_mask == 1] > 0)


def test_flip_false_leaves_out_every_flip():
    torch.manual_seed(2)
    image, mask = _scene(64, 64)
    kept = train_transform("light", imgsz=64, flip=False)
    assert all(torch.equal(kept(image, mask)[0], image) for _ in range(10))
    flipping = train_transform("light", imgsz=64)
    assert any(not torch.equal(flipping(image, mask)[0], image) for _ in range(10))


def test_heavy_deforms_elastically_and_flips_vertically():
    steps = train_transform("heavy", imgsz=64).transforms
    kinds = {type(t) for step in steps for t in getattr(step, "transforms", [step])}
    assert {v2.ElasticTransform, v2.RandomVerticalFlip, v2.RandomRotation} <= kinds


def test_pad_collate_pads_to_a_multiple():
    batch = [
        (tv_tensors.Image(torch.ones(3, 33, 20)), tv_tensors.Mask(torch.full((33, 20), 1))),
        (tv_tensors.Image(torch.ones(3, 10, 50)), tv_tensors.Mask(torch.full((10, 50), 2, dtype=torch.uint8))),
    ]
    images, masks = pad_collate(batch, ignore_index=IGNORE)
    assert type(images) is torch.Tensor
    assert type(masks) is torch.Tensor
    assert images.shape == (2, 3, 64, 64)
    assert masks.shape == (2, 64, 64)
    assert masks.dtype == torch.int64
    assert images[0, :, :33, :20].eq(1).all()
    assert images[0, :, 33:].eq(0).all()
    assert images[0, :, :, 20:].eq(0).all()
    assert masks[0, :33, :20].eq(1).all()
    assert masks[0, 33:].eq(IGNORE).all()
    assert masks[0, :, 20:].eq(IGNORE).all()
    assert masks[1, :10, :50].eq(2).all()
    assert int((masks[1] == IGNORE).sum()) == 64 * 64 - 500
    images, masks = pad_collate(batch, ignore_index=-1, multiple=1)
    assert images.shape == (2, 3, 33, 50)
    assert masks[1, 20, 0] == -1
