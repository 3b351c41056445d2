"""Semantic segmentation: a class per pixel, IoU and Dice, masks at the input's own size.

Instance segmentation (Mask R-CNN) is detection with masks: see `DetectionTask(masks=True)`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from imagerec.config import ModelConfig
from imagerec.data.datasets import SegmentationDataset
from imagerec.data.index import Sample
from imagerec.data.masks import MaskCoding
from imagerec.metrics.segmentation import SegmentationMetrics
from imagerec.models.segmentation import SegmenterSpec, create_segmenter
from imagerec.outputs.results import SegmentationMask
from imagerec.tasks.losses import build_loss
from imagerec.transforms import segmentation as presets

Batch = tuple[torch.Tensor, torch.Tensor]
MONITOR = ("miou", "max")
DEFAULT_IGNORE_INDEX = 255


class Normalized(nn.Module):
    """A segmenter that normalises its input with the training data's statistics, so the saved model carries its
    preprocessing (predict, export and tiling feed it raw [0, 1] pixels)."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


@dataclass
class SegmentationTask:
    """Loss, class maps and metrics for semantic segmentation over `classes` (index 0 is the background)."""

    classes: list[str]
    coding: MaskCoding | None = None  # how the data's mask files encode classes (not needed to predict)
    binary_head: str = "sigmoid"
    loss_name: str = "auto"
    flip: bool = True
    ignore_index: int = DEFAULT_IGNORE_INDEX
    name: str = "segment"
    monitor: tuple[str, str] = MONITOR
    default_batch: int = 8
    autotune: bool = True

    def __post_init__(self) -> None:
        if self.coding is not None:
            self.ignore_index = self.coding.ignore_index
        self.loss = build_loss(
            "ce_dice" if self.loss_name == "auto" else self.loss_name,
            num_classes=self.num_classes,
            binary=self.binary,
            ignore_index=self.ignore_index,
        )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def binary(self) -> bool:
        """Two classes with one logit (BCE + Dice), the default for foreground/background data."""
        return self.num_classes == 2 and self.binary_head == "sigmoid"

    def build_model(self, cfg: ModelConfig, info: dict[str, Any]) -> nn.Module:
        spec = SegmenterSpec(
            num_classes=self.num_classes,
            in_channels=info["channels"],
            imgsz=info["imgsz"],
            num_outputs=1 if self.binary else self.num_classes,
            encoder=cfg.backbone,
        )
        return Normalized(create_segmenter(cfg.name, spec), info["mean"], info["std"])

    def model_fields(self, cfg: ModelConfig) -> dict[str, Any]:
        """What model.json records for segmentation besides classes, channels, size and statistics."""
        return {
            "binary_head": cfg.binary_head,
            "backbone": cfg.backbone,
            "ignore_index": self.ignore_index,
            "colours": [list(c) for c in self.coding.colours] if self.coding is not None else None,
            "resize": "none: whole images at their own size (padded inside the model); training crops imgsz",
        }

    def dataset(
        self, samples: Sequence[Sample], *, info: dict[str, Any], augment: str | None, cache: bool | None
    ) -> SegmentationDataset:
        """Images with their masks: random imgsz crops with preset `augment`, or whole images (None)."""
        transform = None
        if augment is not None:
            transform = presets.train_transform(
                augment, imgsz=info["imgsz"], flip=self.flip, ignore_index=self.ignore_index
            )
        if self.coding is None:
            raise ValueError("SegmentationTask.dataset needs the data's mask coding")
        return SegmentationDataset(
            samples, channels=info["channels"], coding=self.coding, transform=transform, cache=cache
        )

    def predict_transform(self, info: dict[str, Any]) -> None:
        """None: the model normalises its input, and takes whole images at their own size."""
        return None

    def failed(self, source: str, error: str) -> SegmentationMask:
        return SegmentationMask(source, error=error)

    def collate(self, preset: str | None = None) -> Callable[[list], Batch]:
        # Training crops all have imgsz; whole validation images may differ: pad with ignored pixels.
        return partial(presets.pad_collate, ignore_index=self.ignore_index)

    def class_map(self, logits: torch.Tensor) -> torch.Tensor:
        """N×H×W class indices from N×K×H×W logits (or N×1×H×W for one logit)."""
        return (logits[:, 0] > 0).long() if self.binary else logits.argmax(dim=1)

    def step(self, model: nn.Module, batch: Batch) -> dict[str, Any]:
        images, masks = batch
        logits = model(images)
        loss = self.loss(logits.float(), masks)
        return {"loss": loss, "outputs": self.class_map(logits.detach()), "targets": masks}

    def metrics(self) -> SegmentationMetrics:
        return SegmentationMetrics(self.classes, ignore_index=self.ignore_index, binary=self.num_classes == 2)

    def batch_size(self, batch: Batch) -> int:
        return len(batch[0])

    def results(self, class_maps: Sequence[torch.Tensor], sources: Sequence[str]) -> list[SegmentationMask]:
        """Typed results: each image's class map (H×W, its own size) and pixels per class."""
        results = []
        for source, class_map in zip(sources, class_maps, strict=True):
            counts = torch.bincount(class_map.flatten(), minlength=self.num_classes).tolist()
            areas = {name: int(n) for name, n in zip(self.classes, counts, strict=True)}
            results.append(SegmentationMask(source, mask=class_map.to(torch.uint8).numpy(), areas=areas))
        return results
