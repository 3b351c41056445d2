"""Object detection: boxes with a class and a score, COCO mAP, one loss dict per step; and instance segmentation
(Mask R-CNN), detection whose objects also carry a mask."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Self

import torch
from torch import nn

from imagerec.config import ModelConfig
from imagerec.data.datasets import DetectionDataset
from imagerec.data.images import MAX_PIXELS as MAX_IMAGE_PIXELS
from imagerec.data.masks import MaskCoding
from imagerec.data.targets import Sample
from imagerec.metrics.detection import DEFAULT_CONF, DetectionMetrics
from imagerec.models import model_device
from imagerec.models.detection import (
    BACKBONE_HEADS,
    DEFAULT_BACKBONE,
    Detector,
    DetectorGraph,
    DetectorSpec,
    create_detector,
    thresholds,
)
from imagerec.records import Decision, ModelInfo, Preprocessing
from imagerec.tasks.base import ExportSignature, PredictOptions, keep_imgsz, median_side
from imagerec.tasks.results import Detections, InstanceMasks, rle
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
    """Loss, post-processing and metrics for detection over `classes` (0-based: no background class)."""

    classes: list[str]
    flip: bool = True  # horizontal flips in augmentation: wrong for text and digits, whose mirror is another class
    name: str = "detect"
    kind: str = "detect"
    default_model: str = "fcos_lite"  # the small detector that trains on a CPU in minutes
    monitor: tuple[str, str] = MONITOR
    autotune: bool = False  # detection ops (RoIAlign, NMS) gain little from bf16 on CPU; stay in fp32 there
    default_batch: int = 8
    predict_options: tuple[str, ...] = ("conf", "iou", "agnostic", "max_det")
    settings: tuple[str, ...] = ("anchor_sizes", "flip", "threshold_by")
    result_type: type = Detections
    masks: bool = False  # objects carry masks: targets, metrics (mask mAP) and results
    decision: Decision | None = None  # chosen on validation after training (Task.with_decision)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def build_model(self, info: ModelInfo, *, dropout: float = 0.0) -> Detector:
        return create_detector(info.model, self._spec(info))

    def _spec(self, info: ModelInfo) -> DetectorSpec:
        return DetectorSpec(
            num_classes=self.num_classes, in_channels=info.channels, imgsz=info.imgsz, mean=info.mean,
            std=info.std, anchor_sizes=info.anchor_sizes, backbone=info.backbone,
        )  # fmt: skip

    def record_fields(self, cfg: ModelConfig) -> dict[str, Any]:
        """What model.json records for detection besides classes, channels, size and statistics."""
        return {
            "instance": self.masks,
            "backbone": cfg.backbone,
            "anchor_sizes": list(cfg.anchor_sizes) if cfg.anchor_sizes else None,
            "resize": "longest side to imgsz, aspect kept, padded to a multiple of 32, inside the model; "
            "boxes mapped back to the original image",
        }

    def default_imgsz(self, shapes: Sequence[tuple[int, int]]) -> int:
        """The median longer side, within 64–640 px, rounded up to a multiple of 32 (detectors pad to it anyway)."""
        return median_side(shapes, longest=True, low=64, high=640, multiple=32)

    def weights_model(self, cfg: ModelConfig) -> str:
        """The classifier whose published weights `--weights DEFAULT` means: the backbone under the head."""
        if cfg.backbone:
            return cfg.backbone
        return DEFAULT_BACKBONE if cfg.name in BACKBONE_HEADS else cfg.name

    def preprocessing(self, *, channels: int, imgsz: int, mean: Sequence[float], std: Sequence[float]) -> Preprocessing:
        """Resized (longest side), padded and normalised inside the model (GeneralizedRCNNTransform)."""
        return Preprocessing(
            channels=channels, size=imgsz, resize="longest_side_pad", pad_multiple=32, mean=tuple(mean),
            std=tuple(std), inside_model=True,
        )  # fmt: skip

    def dataset(
        self,
        samples: Sequence[Sample],
        *,
        info: ModelInfo,
        augment: str | None,
        cache: bool | None,
        coding: MaskCoding | None = None,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
    ) -> DetectionDataset:
        """Images with their boxes, augmented with preset `augment` (None: as stored; the model resizes)."""
        transform = mosaic = None
        if augment is not None:
            transform = presets.train_transform(augment, imgsz=info.imgsz, flip=self.flip)
            # Mosaic and mixup combine boxes only; with instance masks they stay off.
            mosaic = None if self.masks else presets.mosaic_transform(augment, imgsz=info.imgsz)
        return DetectionDataset(
            samples,
            channels=info.channels,
            transform=transform,
            mosaic=mosaic,
            cache=cache,
            masks=self.masks,
            max_pixels=max_image_pixels,
        )

    def with_imgsz(self, info: ModelInfo, imgsz: int) -> ModelInfo:
        """`info` for predicting at another input size (the model resizes, and maps boxes back)."""
        preprocessing = info.preprocessing.model_copy(update={"size": imgsz})
        return info.model_copy(update={"imgsz": imgsz, "preprocessing": preprocessing})

    def predict_transform(self, info: ModelInfo) -> None:
        """None: detectors resize and normalise inside the model, and map boxes back to the image."""
        return None

    def failed(self, source: str, error: str) -> Detections:
        """The result for an image that could not be read."""
        return self.result_type(source, error=error)

    def export_signature(self, model: nn.Module, info: ModelInfo, *, dynamic_batch: bool) -> ExportSignature:
        """One C×H×W image in [0, 1] at its own size in; boxes (x1, y1, x2, y2 in its pixels), scores and 0-based
        labels out, after non-maximum suppression in the graph (and Mask R-CNN's N×1×H×W mask probabilities)."""
        graph = DetectorGraph(model)
        outputs = ("boxes", "scores", "labels", "masks")[: 4 if self.masks else 3]
        fixed = graph.fixed()
        return ExportSignature(
            graph=graph,
            example=torch.rand(info.channels, info.imgsz, info.imgsz, generator=torch.Generator().manual_seed(0)),
            inputs=("image",),
            outputs=outputs,
            axes={"image": {1: "height", 2: "width"}} | {name: {0: "objects"} for name in outputs},
            per_image=True,
            note=(
                f"{', '.join(outputs)} of one image, after per-class NMS in the graph (IoU {fixed['iou']}, at most "
                f"{fixed['max_det']} boxes, scores ≥ {fixed['min_conf']}); boxes in the image's pixels"
            ),
            agreement="boxes",
            fixed=fixed,
        )

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
        return DetectionMetrics(self.classes, iou_type="segm" if self.masks else "bbox", decision=self.decision)

    def with_decision(self, decision: Decision | None) -> Self:
        """This task scoring and predicting at `decision`."""
        return replace(self, decision=decision)

    def batch_size(self, batch: Batch) -> int:
        return len(batch[0])

    def per_image(self, out: dict[str, Any], batch: Batch) -> list[tuple[dict[str, torch.Tensor], tuple[int, int]]]:
        """Each image's detections (at the model's own score threshold) and its (width, height)."""
        images, _ = batch
        return [
            ({k: v.cpu() for k, v in o.items()}, (image.shape[-1], image.shape[-2]))
            for o, image in zip(out["outputs"], images, strict=True)
        ]

    def results(self, outputs: Sequence[tuple[dict[str, torch.Tensor], tuple[int, int]]], sources: Sequence[str]):
        """Every detection `per_image` kept, as typed results."""
        return self._typed([o for o, _ in outputs], sources, sizes=[s for _, s in outputs], conf=0.0)

    def predict(
        self, model: nn.Module, images: Sequence[torch.Tensor], sources: Sequence[str], options: PredictOptions
    ) -> list[Detections]:
        """Boxes scoring at least `options.conf` (None: `conf_threshold`), merged above `options.iou` within each
        class or, with `options.agnostic`, across classes, at most `options.max_det` per image, in each image's
        own pixels."""
        device = model_device(model)
        batch = [image.to(device) for image in images]
        conf = self.conf_threshold if options.conf is None else options.conf
        with thresholds(score=conf, iou=options.iou, agnostic=options.agnostic, max_det=options.max_det):
            outputs = [{k: v.cpu() for k, v in o.items()} for o in model(batch)]
        sizes = [(image.shape[-1], image.shape[-2]) for image in images]
        return self._typed(outputs, sources, sizes=sizes, conf=conf)

    @property
    def conf_threshold(self) -> float:
        """The minimum box score predict keeps unless told: the run's decision, else DEFAULT_CONF."""
        return DEFAULT_CONF if self.decision is None else self.decision.threshold

    def _typed(
        self,
        outputs: Sequence[dict[str, torch.Tensor]],
        sources: Sequence[str],
        *,
        sizes: Sequence[tuple[int, int]],
        conf: float,
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


@dataclass
class InstanceSegmentationTask(DetectionTask):
    """Instance segmentation (Mask R-CNN): detection whose targets carry each object's mask; mAP is measured on
    masks and results are InstanceMasks. It trains with `--task segment` on COCO objects with masks."""

    name: str = "segment"
    kind: str = "instance"
    default_model: str = "maskrcnn_resnet50_fpn"
    result_type: type = InstanceMasks
    masks: bool = True

    def default_imgsz(self, shapes: Sequence[tuple[int, int]]) -> int:
        """As semantic segmentation: the median shorter side, within 32–256 px."""
        return median_side(shapes, longest=False, low=32, high=256)

    def weights_model(self, cfg: ModelConfig) -> str:
        return cfg.backbone or cfg.name

    with_imgsz = staticmethod(keep_imgsz)

    def build_model(self, info: ModelInfo, *, dropout: float = 0.0) -> Detector:
        from imagerec.models.segmentation import create_instance_segmenter

        return create_instance_segmenter(info.model, self._spec(info))
