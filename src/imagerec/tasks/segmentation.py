"""Semantic segmentation: a class per pixel, IoU and Dice, masks at the input's own size.

Instance segmentation (Mask R-CNN) is detection with masks: see `tasks.detection.InstanceSegmentationTask`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Self

import torch
from torch import nn

from imagerec.config import ModelConfig
from imagerec.data.datasets import SegmentationDataset
from imagerec.data.formats._boxes import image_size
from imagerec.data.images import MAX_PIXELS as MAX_IMAGE_PIXELS
from imagerec.data.masks import MaskCoding
from imagerec.data.targets import Sample
from imagerec.errors import UserError
from imagerec.metrics.segmentation import SegmentationMetrics
from imagerec.models import model_device
from imagerec.models.segmentation import DEFAULT_ENCODER, SegmenterSpec, create_segmenter
from imagerec.models.tiling import predict_tiled
from imagerec.records import Decision, ModelInfo, Preprocessing
from imagerec.tasks.base import ExportSignature, PredictOptions, batch_axes, keep_imgsz, median_side
from imagerec.tasks.losses import build_loss
from imagerec.tasks.results import SegmentationMask
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
    kind: str = "segment"
    default_model: str = "unet"  # semantic: what `--task segment` trains when no --model is given
    monitor: tuple[str, str] = MONITOR
    default_batch: int = 8
    autotune: bool = True
    predict_options: tuple[str, ...] = ("tile", "overlap", "max_pixels")
    settings: tuple[str, ...] = ("binary_head", "loss", "flip")
    result_type: type = SegmentationMask
    decision: Decision | None = None  # chosen on validation after training (Task.with_decision)

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

    def build_model(self, info: ModelInfo, *, dropout: float = 0.0) -> nn.Module:
        spec = SegmenterSpec(
            num_classes=self.num_classes,
            in_channels=info.channels,
            imgsz=info.imgsz,
            num_outputs=1 if self.binary else self.num_classes,
            encoder=info.backbone,
        )
        return Normalized(create_segmenter(info.model, spec), info.mean, info.std)

    def default_imgsz(self, shapes: Sequence[tuple[int, int]]) -> int:
        """The training crop: the median shorter side, within 32–256 px."""
        return median_side(shapes, longest=False, low=32, high=256)

    def weights_model(self, cfg: ModelConfig) -> str:
        """The classifier whose published weights `--weights DEFAULT` means: the smp encoder, or the model."""
        if cfg.backbone:
            return cfg.backbone
        return DEFAULT_ENCODER if cfg.name.startswith("smp_") else cfg.name

    def preprocessing(self, *, channels: int, imgsz: int, mean: Sequence[float], std: Sequence[float]) -> Preprocessing:
        """Whole images at their own size, normalised (and padded to a multiple of 32) inside the model."""
        return Preprocessing(
            channels=channels, size=imgsz, resize="none", pad_multiple=32, mean=tuple(mean), std=tuple(std),
            inside_model=True,
        )  # fmt: skip

    def record_fields(self, cfg: ModelConfig) -> dict[str, Any]:
        """What model.json records for segmentation besides classes, channels, size and statistics."""
        return {
            "binary_head": cfg.binary_head,
            "backbone": cfg.backbone,
            "ignore_index": self.ignore_index,
            "colours": [list(c) for c in self.coding.colours] if self.coding is not None else None,
            "resize": "none: whole images at their own size (padded inside the model); training crops imgsz",
        }

    def dataset(
        self,
        samples: Sequence[Sample],
        *,
        info: ModelInfo,
        augment: str | None,
        cache: bool | None,
        coding: MaskCoding | None = None,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
    ) -> SegmentationDataset:
        """Images with their masks (decoded by `coding`, default the training data's): random imgsz crops with
        preset `augment`, or whole images (None)."""
        transform = None
        if augment is not None:
            transform = presets.train_transform(
                augment, imgsz=info.imgsz, flip=self.flip, ignore_index=self.ignore_index
            )
        coding = coding or self.coding
        if coding is None:
            raise ValueError("SegmentationTask.dataset needs the data's mask coding")
        return SegmentationDataset(
            samples, channels=info.channels, coding=coding, transform=transform, cache=cache,
            max_pixels=max_image_pixels,
        )  # fmt: skip

    with_imgsz = staticmethod(keep_imgsz)

    def predict_transform(self, info: ModelInfo) -> None:
        """None: the model normalises its input, and takes whole images at their own size."""
        return None

    def failed(self, source: str, error: str) -> SegmentationMask:
        return SegmentationMask(source, error=error)

    def export_signature(self, model: nn.Module, info: ModelInfo, *, dynamic_batch: bool) -> ExportSignature:
        """N×C×H×W pixels in [0, 1] in (normalised inside), per-pixel logits out, at any height and width."""
        how = "a pixel is foreground where its one logit is above 0" if self.binary else "argmax over K is the class"
        return ExportSignature(
            graph=model,
            example=torch.zeros(1, info.channels, info.imgsz, info.imgsz),
            inputs=("images",),
            outputs=("logits",),
            axes=batch_axes(("images", "logits"), dynamic_batch=dynamic_batch, spatial=True),
            per_image=False,
            note=f"logits: N×{1 if self.binary else self.num_classes}×H×W; {how} (class map beside the graph)",
            agreement="pixels",
        )

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

    def with_decision(self, decision: Decision | None) -> Self:
        """This task scoring and predicting at `decision`."""
        return replace(self, decision=decision)

    def batch_size(self, batch: Batch) -> int:
        return len(batch[0])

    def per_image(self, out: dict[str, Any], batch: Batch) -> list[torch.Tensor]:
        """Each image's class map from an evaluation step (padded to the batch's size; `results` crops it)."""
        return list(out["outputs"].to(torch.uint8 if self.num_classes <= 256 else torch.int64).cpu())

    def results(self, outputs: Sequence[torch.Tensor], sources: Sequence[str]) -> list[SegmentationMask]:
        """Typed results from `per_image`, each class map cropped to its image file's size."""
        cropped = []
        for class_map, source in zip(outputs, sources, strict=True):
            width, height = image_size(Path(source)) or (class_map.shape[-1], class_map.shape[-2])
            cropped.append(class_map[:height, :width].long())
        return self._typed(cropped, sources)

    def predict(
        self, model: nn.Module, images: Sequence[torch.Tensor], sources: Sequence[str], options: PredictOptions
    ) -> list[SegmentationMask]:
        """Each image's class map at its own size, whole or (with `options.tile`) tile by tile."""
        maps = [self._class_map(model, image, source, options) for image, source in zip(images, sources, strict=True)]
        return self._typed(maps, sources)

    def _class_map(self, model: nn.Module, image: torch.Tensor, source: str, options: PredictOptions) -> torch.Tensor:
        device = model_device(model)
        height, width = image.shape[-2:]
        if options.tile is None:
            if height * width > options.max_pixels:
                raise UserError(
                    f"{source}: {width}×{height} pixels is above the {options.max_pixels:,}-pixel limit for "
                    "whole-image inference; pass --tile 1024 (tiles with blended overlaps) or raise --max-pixels"
                )
            logits = model(image[None].to(device))[0]
        else:
            logits = predict_tiled(lambda x: model(x.to(device)), image, tile=options.tile, overlap=options.overlap)
        return self.class_map(logits[None].float()).cpu()[0]

    def _typed(self, class_maps: Sequence[torch.Tensor], sources: Sequence[str]) -> list[SegmentationMask]:
        """Typed results: each image's class map (H×W, its own size) and pixels per class."""
        results = []
        for source, class_map in zip(sources, class_maps, strict=True):
            counts = torch.bincount(class_map.flatten(), minlength=self.num_classes).tolist()
            areas = {name: int(n) for name, n in zip(self.classes, counts, strict=True)}
            results.append(SegmentationMask(source, mask=class_map.to(torch.uint8).numpy(), areas=areas))
        return results
