"""Classification presets `none | light | medium | heavy` and the eval transform predict reuses."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchvision.transforms import v2

from imagerec.registry import Registry

PresetBuilder = Callable[[int, int], list[v2.Transform]]
PRESETS: Registry[PresetBuilder] = Registry("augmentation preset")


def _resize(imgsz: int) -> list[v2.Transform]:
    return [v2.Resize(imgsz, antialias=True), v2.CenterCrop(imgsz)]


@PRESETS.register("none")
def _none(imgsz: int, channels: int) -> list[v2.Transform]:
    return _resize(imgsz)


@PRESETS.register("light")
def _light(imgsz: int, channels: int) -> list[v2.Transform]:
    # No flips below `medium`: orientation carries the class for digits, letters and many scans.
    return [*_resize(imgsz), v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1))]


def _colour(channels: int, strength: float) -> v2.Transform:
    saturation = strength if channels == 3 else 0.0
    return v2.ColorJitter(brightness=strength, contrast=strength, saturation=saturation)


@PRESETS.register("medium")
def _medium(imgsz: int, channels: int) -> list[v2.Transform]:
    return [
        v2.RandomResizedCrop(imgsz, scale=(0.6, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomAffine(degrees=15),
        _colour(channels, 0.2),
        v2.TrivialAugmentWide(),
    ]


@PRESETS.register("heavy")
def _heavy(imgsz: int, channels: int) -> list[v2.Transform]:
    return [
        v2.RandomResizedCrop(imgsz, scale=(0.35, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        _colour(channels, 0.3),
        v2.RandAugment(num_ops=2, magnitude=9),
    ]


def train_transform(
    preset: str, *, imgsz: int, channels: int, mean: Sequence[float], std: Sequence[float]
) -> v2.Compose:
    """The training pipeline of `preset`; inputs are float C×H×W images in [0, 1]."""
    steps = PRESETS.get(preset)(imgsz, channels)
    tail: list[v2.Transform] = [v2.Normalize(list(mean), list(std))]
    if preset in ("medium", "heavy"):
        tail.append(v2.RandomErasing(p=0.25, value=0))
    return v2.Compose([*steps, v2.ToDtype(torch.float32), *tail])


def eval_transform(*, imgsz: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """Resize the shorter side, centre-crop, normalise: what evaluation, predict and export apply."""
    return v2.Compose([*_resize(imgsz), v2.ToDtype(torch.float32), v2.Normalize(list(mean), list(std))])


def batch_transform(preset: str, *, num_classes: int) -> v2.Transform | None:
    """MixUp or CutMix (one per batch) for `heavy`; None for lighter presets."""
    if preset != "heavy":
        return None
    return v2.RandomChoice([v2.MixUp(num_classes=num_classes), v2.CutMix(num_classes=num_classes)])
