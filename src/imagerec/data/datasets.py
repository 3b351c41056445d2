"""Datasets: decode indexed images into tv_tensors and apply a transform (classification, detection and
segmentation)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from imagerec.data.formats._boxes import image_size
from imagerec.data.images import MAX_PIXELS, read_image, to_channels
from imagerec.data.masks import MaskCoding, check_segmentations, instance_masks, size_mismatch
from imagerec.data.targets import MaskFile, Objects, Sample
from imagerec.errors import UserError
from imagerec.metrics.embedding import UNLABELLED

# Decode everything once when the decoded pixels stay under this many floats (~1 GiB).
CACHE_LIMIT_VALUES = 256 * 1024 * 1024


DetectionTarget = dict[str, torch.Tensor]
DetectionSample = tuple[tv_tensors.Image, DetectionTarget]
# A multi-sample augmentation (mosaic, mixup): given the sample at hand and a way to draw more at random, one sample.
MultiSampleTransform = Callable[[DetectionSample, Callable[[], DetectionSample]], DetectionSample]


class ImageDataset(Dataset):
    """Indexed images decoded to float C×H×W with `channels` channels, kept in memory when they fit."""

    def __init__(
        self, samples: Sequence[Sample], *, channels: int, cache: bool | None, max_pixels: int = MAX_PIXELS
    ) -> None:
        self.samples = list(samples)
        self.channels = channels
        self.max_pixels = max_pixels  # refused from the header above this, before decoding (decompression bombs)
        self._cache: list[torch.Tensor] | None = None
        if self.samples and (cache or (cache is None and self._fits_in_memory())):
            self._cache = [self._decode(i) for i in range(len(self.samples))]

    def _fits_in_memory(self) -> bool:
        first = self._decode(0)
        return first.numel() * len(self.samples) <= CACHE_LIMIT_VALUES

    def _decode(self, i: int) -> torch.Tensor:
        return to_channels(read_image(self.samples[i].path, max_pixels=self.max_pixels), self.channels)

    def pixels(self, i: int) -> torch.Tensor:
        """Image `i` as decoded, before any transform (shared with the cache: do not modify in place)."""
        return self._cache[i] if self._cache is not None else self._decode(i)

    def __len__(self) -> int:
        return len(self.samples)


class ClassificationDataset(ImageDataset):
    """(image, target) pairs: target a class index, or a multi-hot float vector for multi-label data."""

    def __init__(
        self,
        samples: Sequence[Sample],
        *,
        channels: int,
        num_classes: int,
        transform: Callable | None = None,
        cache: bool | None = None,
        max_pixels: int = MAX_PIXELS,
    ) -> None:
        self.num_classes = num_classes
        self.transform = transform
        super().__init__(samples, channels=channels, cache=cache, max_pixels=max_pixels)

    def target(self, i: int) -> int | torch.Tensor:
        target = self.samples[i].target
        if isinstance(target, tuple):
            hot = torch.zeros(self.num_classes)
            hot[list(target)] = 1.0
            return hot
        return target

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        image = tv_tensors.Image(self.pixels(i))
        if self.transform is not None:
            image = self.transform(image)
        return image.as_subclass(torch.Tensor), self.target(i)


class ViewDataset(ImageDataset):
    """(transform(image), class index) pairs for self-supervised pretraining: the transform gives one tensor or the
    list of a method's augmented views; images without one class (unlabelled, detection or segmentation data) get
    `UNLABELLED`. The class is read only by the k-NN monitor on the validation split."""

    def __init__(
        self,
        samples: Sequence[Sample],
        *,
        channels: int,
        transform: Callable,
        cache: bool | None = None,
        max_pixels: int = MAX_PIXELS,
    ) -> None:
        self.transform = transform
        super().__init__(samples, channels=channels, cache=cache, max_pixels=max_pixels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | list[torch.Tensor], int]:
        out = self.transform(self.pixels(i))
        plain = (
            out.as_subclass(torch.Tensor)
            if isinstance(out, torch.Tensor)
            else [v.as_subclass(torch.Tensor) for v in out]
        )
        target = self.samples[i].target
        return plain, target if isinstance(target, int) else UNLABELLED


class DetectionDataset(ImageDataset):
    """(image, target) pairs for detection: a float `tv_tensors.Image` in [0, 1] and
    `{"boxes": BoundingBoxes XYXY in pixels, "labels": int64 (0-based), "ignore": bool}`.

    `mosaic` (see `imagerec.transforms.detection.mosaic_transform`) combines the sample with others drawn at random
    through torch's RNG, so worker seeding makes it reproducible; `transform` is then called as
    `transform(image, target)`. With `masks` (instance segmentation) the target also has `"masks"`, a
    `tv_tensors.Mask` N×H×W uint8 drawn from each object's COCO polygons or RLE; every object must have one, which
    is checked here, before training starts. Mosaic and MixUp combine boxes only: leave `mosaic` out with masks.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        *,
        channels: int,
        transform: Callable[[tv_tensors.Image, DetectionTarget], DetectionSample] | None = None,
        mosaic: MultiSampleTransform | None = None,
        cache: bool | None = None,
        masks: bool = False,
        max_pixels: int = MAX_PIXELS,
    ) -> None:
        self.transform = transform
        self.mosaic = mosaic
        self.masks = masks
        if masks:
            check_segmentations(samples)
        super().__init__(samples, channels=channels, cache=cache, max_pixels=max_pixels)

    def target(self, i: int, canvas_size: tuple[int, int]) -> DetectionTarget:
        """The boxes, labels and ignore flags of sample `i`, on an image of `canvas_size` (height, width)."""
        objects = self.samples[i].target
        if not isinstance(objects, Objects):
            raise TypeError(f"{self.samples[i].path}: expected Objects as the target, got {type(objects).__name__}")
        count = len(objects.boxes)
        boxes = torch.tensor(objects.boxes, dtype=torch.float32).reshape(count, 4)
        ignore = objects.ignore or (False,) * count
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=canvas_size),
            "labels": torch.tensor(objects.labels, dtype=torch.int64).reshape(count),
            "ignore": torch.tensor(ignore, dtype=torch.bool).reshape(count),
        }
        if objects.area and self.transform is None and self.mosaic is None:  # augmentation would make it stale
            target["area"] = torch.tensor(objects.area, dtype=torch.float32)
        if self.masks:
            pixels = instance_masks(objects, canvas_size[0], canvas_size[1], self.samples[i].path)
            target["masks"] = tv_tensors.Mask(torch.from_numpy(pixels))
        return target

    def sample(self, i: int) -> DetectionSample:
        """Sample `i` as decoded, before mosaic and transform."""
        image = tv_tensors.Image(self.pixels(i))
        return image, self.target(i, (image.shape[-2], image.shape[-1]))

    def _random_sample(self) -> DetectionSample:
        return self.sample(int(torch.randint(len(self), ())))

    def __getitem__(self, i: int) -> DetectionSample:
        image, target = self.sample(i)
        if self.mosaic is not None:
            image, target = self.mosaic((image, target), self._random_sample)
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target


class SegmentationDataset(ImageDataset):
    """(image, mask) pairs for semantic segmentation: a float `tv_tensors.Image` in [0, 1] and a
    `tv_tensors.Mask` H×W int64 of class indices (or `coding.ignore_index`), read through `coding`.

    The mask must have its image's size (a UserError names both files otherwise). When the images are cached, the
    masks are too, as 8-bit where the classes fit. `transform` is called as `transform(image, mask)`.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        *,
        channels: int,
        coding: MaskCoding,
        transform: Callable[[tv_tensors.Image, tv_tensors.Mask], tuple[tv_tensors.Image, tv_tensors.Mask]]
        | None = None,
        cache: bool | None = None,
        max_pixels: int = MAX_PIXELS,
    ) -> None:
        self.coding = coding
        self.transform = transform
        self.samples = list(samples)
        self._check_sizes()
        super().__init__(samples, channels=channels, cache=cache, max_pixels=max_pixels)
        self._masks: list[torch.Tensor] | None = None
        if self._cache is not None:
            small = max(coding.num_classes - 1, coding.ignore_index) < 256 and coding.ignore_index >= 0
            self._masks = [self._read_mask(i).to(torch.uint8 if small else torch.int32) for i in range(len(self))]

    def mask_path(self, i: int) -> Path:
        target = self.samples[i].target
        if not isinstance(target, MaskFile):
            raise TypeError(f"{self.samples[i].path}: expected a MaskFile as the target, got {type(target).__name__}")
        return target.path

    def _check_sizes(self) -> None:
        """Compare sizes from the file headers now, so that a mismatch stops before training rather than in it
        (decoding checks again: EXIF rotation can turn an image and not its mask)."""
        for i, sample in enumerate(self.samples):
            image, mask = image_size(sample.path), image_size(self.mask_path(i))
            if image and mask and image != mask:
                raise UserError(size_mismatch(self.mask_path(i), mask, sample.path, image))

    def _read_mask(self, i: int) -> torch.Tensor:
        path = self.mask_path(i)
        mask, image = self.coding.read(path), self.pixels(i)
        if tuple(mask.shape) != tuple(image.shape[-2:]):
            sizes = (mask.shape[1], mask.shape[0]), (image.shape[-1], image.shape[-2])
            raise UserError(size_mismatch(path, sizes[0], self.samples[i].path, sizes[1]))
        return mask

    def mask(self, i: int) -> torch.Tensor:
        """Mask `i` as H×W int64 class indices, before any transform."""
        return self._masks[i].long() if self._masks is not None else self._read_mask(i)

    def __getitem__(self, i: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        image, mask = tv_tensors.Image(self.pixels(i)), tv_tensors.Mask(self.mask(i))
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return image, mask


def channel_statistics(dataset: ImageDataset, limit: int = 2000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std over (up to `limit` evenly spaced) images, before any transform."""
    step = max(1, len(dataset) // limit)
    total = torch.zeros(dataset.channels, dtype=torch.float64)
    squares = torch.zeros_like(total)
    count = 0
    for i in range(0, len(dataset), step):
        image = dataset.pixels(i).double()
        total += image.sum(dim=(1, 2))
        squares += (image**2).sum(dim=(1, 2))
        count += image.shape[1] * image.shape[2]
    mean = total / count
    std = (squares / count - mean**2).clamp_min(1e-12).sqrt()
    return [round(float(m), 6) for m in mean], [round(max(float(s), 1e-3), 6) for s in std]
