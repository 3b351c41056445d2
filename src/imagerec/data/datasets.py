"""Datasets: decode indexed images into tv_tensors and apply a transform."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from imagerec.data.images import read_image, to_channels
from imagerec.data.index import Sample

# Decode everything once when the decoded pixels stay under this many floats (~1 GiB).
CACHE_LIMIT_VALUES = 256 * 1024 * 1024


class ClassificationDataset(Dataset):
    """(image, target) pairs: target a class index, or a multi-hot float vector for multi-label data."""

    def __init__(
        self,
        samples: Sequence[Sample],
        *,
        channels: int,
        num_classes: int,
        transform: Callable | None = None,
        cache: bool | None = None,
    ) -> None:
        self.samples = list(samples)
        self.channels = channels
        self.num_classes = num_classes
        self.transform = transform
        self._cache: list[torch.Tensor] | None = None
        if self.samples and (cache or (cache is None and self._fits_in_memory())):
            self._cache = [self._decode(i) for i in range(len(self.samples))]

    def _fits_in_memory(self) -> bool:
        first = self._decode(0)
        return first.numel() * len(self.samples) <= CACHE_LIMIT_VALUES

    def _decode(self, i: int) -> torch.Tensor:
        return to_channels(read_image(self.samples[i].path), self.channels)

    def __len__(self) -> int:
        return len(self.samples)

    def target(self, i: int) -> int | torch.Tensor:
        target = self.samples[i].target
        if isinstance(target, tuple):
            hot = torch.zeros(self.num_classes)
            hot[list(target)] = 1.0
            return hot
        return target

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        image = tv_tensors.Image(self._cache[i] if self._cache is not None else self._decode(i))
        if self.transform is not None:
            image = self.transform(image)
        return image.as_subclass(torch.Tensor), self.target(i)


def channel_statistics(dataset: ClassificationDataset, limit: int = 2000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std over (up to `limit` evenly spaced) images, before any transform."""
    step = max(1, len(dataset) // limit)
    total = torch.zeros(dataset.channels, dtype=torch.float64)
    squares = torch.zeros_like(total)
    count = 0
    for i in range(0, len(dataset), step):
        image = (dataset._cache[i] if dataset._cache is not None else dataset._decode(i)).double()
        total += image.sum(dim=(1, 2))
        squares += (image**2).sum(dim=(1, 2))
        count += image.shape[1] * image.shape[2]
    mean = total / count
    std = (squares / count - mean**2).clamp_min(1e-12).sqrt()
    return [round(float(m), 6) for m in mean], [round(max(float(s), 1e-3), 6) for s in std]
