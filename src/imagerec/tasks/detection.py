"""Object detection: boxes with a class and a score, COCO mAP, one loss dict per step."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from imagerec.config import ModelConfig
from imagerec.data.datasets import DetectionDataset
from imagerec.data.index import Sample
from imagerec.metrics.detection import DetectionMetrics
from imagerec.models.detection import Detector, DetectorSpec, create_detector
from imagerec.outputs.results import Detections, InstanceMasks, rle
from imagerec.transforms import detection as presets

Batch = tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]
MONITOR = ("map", "max")


def collate(batch: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> Batch:
    """Images stay a list (they may differ in size: the model resizes and pads them); tv_tensors become plain
    tensors, which the models expect."""
    images = [image.as_subclass(torch.Tensor) for image, _ in batch]
    targets = [{k: v.as_subclass(torch.Tensor) for k, v in target.items()} for _, target in batch]
    return images, targets


def _training_targets(targets: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """Boxes marked ignore (VOC difficult, COCO crowd) are left out of training, as evaluation leaves them out."""
    kept = []
    for t in targets:
        keep = ~t["ignore"] if "ignore" in t else torch.ones_like(t["labels"], dtype=torch.bool)
        kept.append({k: t[k][keep] for k in ("boxes", "labels", "masks") if k in t})
    return kept


@dataclass
class DetectionTask:
    """Loss, post-processing and metrics for detection over `classes` (0-based: no background class).

    With `masks` it is instance segmentation (Mask R-CNN): targets carry each object's mask, mAP is measured on
    masks, and results are InstanceMasks.
    """

    classes: list[str]
    masks: bool = False
    name: str = "detect"
    monitor: tuple[str, str] = MONITOR
    autotune: bool = False  # detection ops (RoIAlign, NMS) gain little from bf16 on CPU; stay in fp32 there
    default_batch: int = 8
    flip: bool = True  # horizontal flips in augmentation: wrong for text and digits, whose mirror is another class

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def build_model(self, cfg: ModelConfig, info: dict[str, Any]) -> Detector:
        spec = DetectorSpec(
            num_classes=self.num_classes,
            in_channels=info["channels"],
            imgsz=info["imgsz"],
            mean=info["mean"],
            std=info["std"],
            anchor_sizes=cfg.anchor_sizes,
            backbone=cfg.backbone,
        )
        if self.masks:
            from imagerec.models.segmentation import create_instance_segmenter

            return create_instance_segmenter(cfg.name, spec)
        return create_detector(cfg.name, spec)

    def model_fields(self, cfg: ModelConfig) -> dict[str, Any]:
        """What model.json records for detection besides classes, channels, size and statistics."""
        return {
            "instance": self.masks,
            "backbone": cfg.backbone,
            "anchor_sizes": list(cfg.anchor_sizes) if cfg.anchor_sizes else None,
            "resize": "longest side to imgsz, aspect kept, padded to a multiple of 32, inside the model; "
            "boxes mapped back to the original image",
        }

    def dataset(
        self, samples: Sequence[Sample], *, info: dict[str, Any], augment: str | None, cache: bool | None
    ) -> DetectionDataset:
        """Images with their boxes, augmented with preset `augment` (None: as stored; the model resizes)."""
        transform = mosaic = None
        if augment is not None:
            transform = presets.train_transform(augment, imgsz=info["imgsz"], flip=self.flip)
            # Mosaic and mixup combine boxes only; with instance masks they stay off.
            mosaic = None if self.masks else presets.mosaic_transform(augment, imgsz=info["imgsz"])
        return DetectionDataset(
            samples, channels=info["channels"], transform=transform, mosaic=mosaic, cache=cache, masks=self.masks
        )

    def predict_transform(self, info: dict[str, Any]) -> None:
        """None: detectors resize and normalise inside the model, and map boxes back to the image."""
        return None

    def failed(self, source: str, error: str) -> Detections:
        """The result for an image that could not be read."""
        return InstanceMasks(source, error=error) if self.masks else Detections(source, error=error)

    def collate(self, preset: str | None = None) -> Callable[[list], Batch]:
        return collate

    def step(self, model: nn.Module, batch: Batch) -> dict[str, Any]:
        """Training: the summed loss and each part. Evaluation: detections and targets (torchvision's detectors
        compute no loss in eval mode, so validation is measured by mAP alone)."""
        images, targets = batch
        if model.training:
            losses = model(images, _training_targets(targets))
            return {"loss": sum(losses.values()), **{k: v.detach() for k, v in losses.items()}}
        return {"outputs": model(images), "targets": targets}

    def metrics(self) -> DetectionMetrics:
        return DetectionMetrics(self.classes, iou_type="segm" if self.masks else "bbox")

    def batch_size(self, batch: Batch) -> int:
        return len(batch[0])

    def results(
        self,
        outputs: Sequence[dict[str, torch.Tensor]],
        sources: Sequence[str],
        *,
        sizes: Sequence[tuple[int, int]],
        conf: float = 0.0,
    ) -> list[Detections]:
        """Typed results, boxes with a score of at least `conf`, best first; `sizes` are the images' (w, h)."""
        results = []
        for source, out, size in zip(sources, outputs, sizes, strict=True):
            keep = out["scores"] >= conf
            scores, order = out["scores"][keep].sort(descending=True)
            boxes, labels = out["boxes"][keep][order], out["labels"][keep][order]
            found = {
                "boxes": tuple(tuple(box) for box in boxes.tolist()),
                "labels": tuple(self.classes[i] for i in labels.tolist()),
                "scores": tuple(scores.tolist()),
                "size": size,
            }
            if self.masks:  # torchvision gives N×1×H×W probabilities; an object's pixels are those above 0.5
                pixels = out["masks"][keep][order][:, 0] > 0.5
                results.append(InstanceMasks(source, **found, masks=tuple(rle(m.numpy()) for m in pixels)))
            else:
                results.append(Detections(source, **found))
        return results
