"""Mask-aware segmentation presets `none | light | medium | heavy`, and the collate that pads whole images.

Inputs are `(image, mask)` pairs as `SegmentationDataset` makes them: a float `tv_tensors.Image` in [0, 1] and a
`tv_tensors.Mask` H×W of class indices. torchvision.transforms.v2 moves both together, resampling masks with
nearest neighbour (never inventing a class between two) and leaving them alone in photometric changes. Where
geometry exposes pixels that were not in the image (rotation corners, padding, elastic pull-in), the image gets 0
and the mask `ignore_index`, so the loss skips them. Every preset ends with a random imgsz×imgsz crop, padded when
the image is smaller, so training batches stack.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as nnf
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from imagerec.registry import Registry

PresetBuilder = Callable[[int, bool, dict[type, float]], list[v2.Transform]]
PRESETS: Registry[PresetBuilder] = Registry("augmentation preset")


class RandomScale(v2.Transform):
    """Resize by a factor drawn uniformly from `scale` (aspect kept): scale jitter that, unlike
    RandomResizedCrop, keeps the whole image, so the crop that follows still sees every part of it."""

    def __init__(self, scale: tuple[float, float]) -> None:
        super().__init__()
        self.scale = scale

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        low, high = self.scale
        factor = low + (high - low) * float(torch.rand(()))
        return {"size": [max(1, round(height * factor)), max(1, round(width * factor))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        # torchvision resizes masks with NEAREST unless told otherwise: PyTorch's legacy nearest, which samples
        # half a pixel off and so shifts the mask against its image (3% of pixels disagreed at 0.75×, 0.7% with
        # NEAREST_EXACT, which samples pixel centres).
        mask = isinstance(inpt, tv_tensors.Mask)
        interpolation = v2.InterpolationMode.NEAREST_EXACT if mask else v2.InterpolationMode.BILINEAR
        return self._call_kernel(F.resize, inpt, size=params["size"], interpolation=interpolation, antialias=True)


def _crop(imgsz: int, fill: dict[type, float]) -> v2.Transform:
    return v2.RandomCrop(imgsz, pad_if_needed=True, fill=fill)


def _flips(flip: bool, *, vertical: bool = False) -> list[v2.Transform]:
    if not flip:
        return []
    return [v2.RandomHorizontalFlip(), *([v2.RandomVerticalFlip()] if vertical else [])]


def _photometric(strength: float) -> v2.Transform:
    # Saturation and hue would do nothing to grey images (microscopy, scans) and little good to the rest.
    return v2.ColorJitter(brightness=strength, contrast=strength)


@PRESETS.register("none")
def _none(imgsz: int, flip: bool, fill: dict[type, float]) -> list[v2.Transform]:
    return [_crop(imgsz, fill)]


@PRESETS.register("light")
def _light(imgsz: int, flip: bool, fill: dict[type, float]) -> list[v2.Transform]:
    return [*_flips(flip), _crop(imgsz, fill)]


@PRESETS.register("medium")
def _medium(imgsz: int, flip: bool, fill: dict[type, float]) -> list[v2.Transform]:
    return [
        RandomScale((0.75, 1.25)),
        v2.RandomApply([v2.RandomRotation(15, fill=fill)], p=0.5),
        _crop(imgsz, fill),
        *_flips(flip),
        _photometric(0.2),
    ]


@PRESETS.register("heavy")
def _heavy(imgsz: int, flip: bool, fill: dict[type, float]) -> list[v2.Transform]:
    # Elastic deformation is the U-Net paper's key augmentation for a few dozen biomedical images: tissue
    # deforms so, and the network learns invariance to it that no amount of flipping teaches. It runs on the
    # crop, so its cost does not grow with the image.
    return [
        RandomScale((0.5, 1.5)),
        v2.RandomApply([v2.RandomRotation(30, fill=fill)], p=0.5),
        _crop(imgsz, fill),
        *_flips(flip, vertical=True),
        v2.RandomApply([v2.ElasticTransform(alpha=50.0, sigma=6.0, fill=fill)], p=0.5),
        _photometric(0.3),
        v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.5))], p=0.2),
    ]


def train_transform(preset: str, *, imgsz: int, flip: bool = True, ignore_index: int = 255) -> v2.Transform:
    """The training pipeline of `preset`, called as `transform(image, mask)`; its output is imgsz×imgsz.

    `flip=False` leaves out every flip, for data whose mirror image means something else (digits, text).
    """
    fill: dict[type, float] = {tv_tensors.Image: 0.0, tv_tensors.Mask: ignore_index}
    return v2.Compose(PRESETS.get(preset)(imgsz, flip, fill))


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def pad_collate(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor]], *, ignore_index: int, multiple: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (image, mask) pairs of different sizes: each padded at the bottom and right to the batch's largest
    height and width rounded up to `multiple` (what encoders that halve the size five times need), images with
    0 and masks with `ignore_index`, so that padding counts in neither loss nor metrics.

    Returns B×C×H×W float images and B×H×W int64 masks, as plain tensors.
    """
    height = _round_up(max(image.shape[-2] for image, _ in batch), multiple)
    width = _round_up(max(image.shape[-1] for image, _ in batch), multiple)
    images, masks = [], []
    for image, mask in batch:
        pad = (0, width - image.shape[-1], 0, height - image.shape[-2])
        images.append(nnf.pad(image.as_subclass(torch.Tensor), pad, value=0.0))
        masks.append(nnf.pad(mask.as_subclass(torch.Tensor).long(), pad, value=ignore_index))
    return torch.stack(images), torch.stack(masks)
