"""Image classification: single-label (softmax, or one sigmoid logit for two classes) and multi-label."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Self

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import default_collate

from imagerec.config import ModelConfig
from imagerec.data.datasets import ClassificationDataset
from imagerec.data.images import MAX_PIXELS as MAX_IMAGE_PIXELS
from imagerec.data.masks import MaskCoding
from imagerec.data.targets import Sample
from imagerec.metrics.classification import MONITOR, ClassificationMetrics
from imagerec.models import create_model, model_device
from imagerec.models.embedding import build_head, replace_module
from imagerec.records import Decision, ModelInfo, Preprocessing
from imagerec.tasks.base import ExportSignature, PredictOptions, batch_axes, keep_imgsz, median_side
from imagerec.tasks.results import Classification
from imagerec.transforms import classification as presets


@dataclass
class ClassificationTask:
    """Loss, probabilities and metrics for classification over `classes`."""

    classes: list[str]
    multilabel: bool = False
    binary_head: str = "sigmoid"
    label_smoothing: float = 0.0
    class_weights: torch.Tensor | None = None
    name: str = "classify"
    kind: str = "classify"
    default_model: str = "seed_cnn"  # trains in seconds on a CPU; --weights DEFAULT with resnet18 when online
    default_batch: int = 64
    autotune: bool = True  # CPU precision and memory format chosen by measuring (engine.autotune)
    predict_options: tuple[str, ...] = ("topk",)
    settings: tuple[str, ...] = (
        "binary_head", "head", "positive", "threshold_by", "label_smoothing", "class_weights", "balanced_sampler",
    )  # fmt: skip
    result_type: type = Classification
    decision: Decision | None = None  # chosen on validation after training (Task.with_decision)
    positive: int | None = None  # binary data: the index of the class sensitivity is about (tasks.build)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def single_logit(self) -> bool:
        return not self.multilabel and self.num_classes == 2 and self.binary_head == "sigmoid"

    @property
    def num_outputs(self) -> int:
        return 1 if self.single_logit else self.num_classes

    @property
    def monitor(self) -> tuple[str, str]:
        return MONITOR["multilabel" if self.multilabel else "single"]

    def build_model(self, info: ModelInfo, *, dropout: float = 0.0) -> nn.Module:
        """A fresh model for the input described by `info` (its `head` when a k-NN or logistic-regression head
        fitted on embeddings replaces the network's classifier)."""
        # A pretraining run has no classes: it is built with one output, whose layer `info.head` then replaces.
        model = create_model(
            self.name, info.model, num_outputs=max(1, self.num_outputs), in_channels=info.channels,
            imgsz=info.imgsz, dropout=dropout,
        )  # fmt: skip
        if info.head:
            head = build_head(info.head, num_classes=self.num_classes, num_outputs=self.num_outputs)
            replace_module(model, info.head["layer"], head)
        return model

    def record_fields(self, cfg: ModelConfig) -> dict[str, Any]:
        """What model.json records for this task besides classes, channels, size and statistics."""
        return {
            "multilabel": self.multilabel,
            "binary_head": cfg.binary_head,
            "num_outputs": self.num_outputs,
            "resize": "shorter side to imgsz, centre crop imgsz, bilinear, antialias",
        }

    def default_imgsz(self, shapes: Sequence[tuple[int, int]]) -> int:
        """The median shorter side, within 32–224 px."""
        return median_side(shapes, longest=False, low=32, high=224)

    def weights_model(self, cfg: ModelConfig) -> str:
        """The classifier whose published weights `--weights DEFAULT` means: the model itself."""
        return cfg.backbone or cfg.name

    def preprocessing(self, *, channels: int, imgsz: int, mean: Sequence[float], std: Sequence[float]) -> Preprocessing:
        """Resized, cropped and normalised before the network (presets.eval_transform)."""
        return Preprocessing(
            channels=channels, size=imgsz, resize="shorter_side_centre_crop", mean=tuple(mean), std=tuple(std),
            inside_model=False,
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
    ) -> ClassificationDataset:
        """Images and targets of `samples`, augmented with preset `augment` (None: evaluation preprocessing)."""
        size = {"imgsz": info.imgsz, "mean": info.mean, "std": info.std}
        if augment is None:
            transform = self.eval_transform(**size)
        else:
            transform = self.train_transform(augment, channels=info.channels, **size)
        return ClassificationDataset(
            samples,
            channels=info.channels,
            num_classes=self.num_classes,
            transform=transform,
            cache=cache,
            max_pixels=max_image_pixels,
        )

    def train_transform(self, preset: str, *, imgsz: int, channels: int, mean: Sequence[float], std: Sequence[float]):
        return presets.train_transform(preset, imgsz=imgsz, channels=channels, mean=mean, std=std)

    def eval_transform(self, *, imgsz: int, mean: Sequence[float], std: Sequence[float]):
        return presets.eval_transform(imgsz=imgsz, mean=mean, std=std)

    with_imgsz = staticmethod(keep_imgsz)

    def predict_transform(self, info: ModelInfo) -> Callable:
        return self.eval_transform(imgsz=info.imgsz, mean=info.mean, std=info.std)

    def failed(self, source: str, error: str) -> Classification:
        """The result for an image that could not be read."""
        return Classification(source, (), (), error=error)

    def export_signature(self, model: nn.Module, info: ModelInfo, *, dynamic_batch: bool) -> ExportSignature:
        """Preprocessed N×C×imgsz×imgsz images in, the network's logits out."""
        how = (
            "a sigmoid of the one logit is the positive class's"
            if self.single_logit
            else ("a sigmoid of each logit is its class's" if self.multilabel else "their softmax gives the classes'")
        )
        return ExportSignature(
            graph=model,
            example=torch.zeros(1, info.channels, info.imgsz, info.imgsz),
            inputs=("images",),
            outputs=("logits",),
            axes=batch_axes(("images", "logits"), dynamic_batch=dynamic_batch),
            per_image=False,
            note=f"logits: N×{info.num_outputs or self.num_classes}; {how} probability",
            agreement="top1",
        )

    def collate(self, preset: str | None = None) -> Callable[[list], Any]:
        """default_collate, followed for the `heavy` preset by MixUp/CutMix on single-label batches."""
        mix = (
            None if self.multilabel or preset is None else presets.batch_transform(preset, num_classes=self.num_classes)
        )
        if mix is None:
            return default_collate

        def collate(batch: list) -> Any:
            return mix(*default_collate(batch))

        return collate

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """N×K class probabilities whatever the head."""
        logits = logits.float()
        if self.single_logit:
            positive = torch.sigmoid(logits.reshape(-1))
            return torch.stack([1 - positive, positive], dim=1)
        return torch.sigmoid(logits) if self.multilabel else logits.softmax(dim=1)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        weights = None if self.class_weights is None else self.class_weights.to(logits.device)
        if self.multilabel:
            return F.binary_cross_entropy_with_logits(logits, targets.float())
        if self.single_logit:
            positive = targets[:, 1] if targets.ndim == 2 else targets.float()
            positive = positive * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
            pos_weight = None if weights is None else weights[1:] / weights[0]
            return F.binary_cross_entropy_with_logits(logits.reshape(-1), positive, pos_weight=pos_weight)
        return F.cross_entropy(logits, targets, weight=weights, label_smoothing=self.label_smoothing)

    def step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        images, targets = batch
        logits = model(images)
        loss = self.loss(logits, targets)
        if targets.ndim == 2 and not self.multilabel:  # MixUp/CutMix soft targets during training
            targets = targets.argmax(dim=1)
        return {"loss": loss, "outputs": self.probabilities(logits.detach()), "targets": targets}

    @property
    def binary(self) -> bool:
        """Two classes, one per image: the data has a positive class and a decision threshold."""
        return not self.multilabel and self.num_classes == 2

    def metrics(self) -> ClassificationMetrics:
        return ClassificationMetrics(
            self.classes, multilabel=self.multilabel, positive=self.positive, decision=self.decision
        )

    def with_decision(self, decision: Decision | None) -> Self:
        """This task scoring and predicting at `decision`; its positive class is the decision's."""
        if decision is not None and decision.positive in self.classes and self.binary:
            return replace(self, decision=decision, positive=self.classes.index(decision.positive))
        return replace(self, decision=decision)

    def batch_size(self, batch: Any) -> int:
        return len(batch[0])

    def per_image(self, out: dict[str, Any], batch: Any) -> list[torch.Tensor]:
        """Each image's class probabilities from an evaluation step."""
        return list(out["outputs"].float().cpu())

    def results(self, outputs: Sequence[torch.Tensor], sources: Sequence[str]) -> list[Classification]:
        """Every class of each image, most probable first (multi-label: those above 0.5), from `per_image`."""
        probs = torch.stack(list(outputs)) if outputs else torch.zeros(0, self.num_classes)
        return self.top_labels(probs, sources, topk=self.num_classes)

    def predict(
        self, model: nn.Module, images: Sequence[torch.Tensor], sources: Sequence[str], options: PredictOptions
    ) -> list[Classification]:
        """Top-k labels of preprocessed images."""
        device = model_device(model)
        probs = self.probabilities(model(torch.stack(list(images)).to(device))).cpu()
        return self.top_labels(probs, sources, topk=options.topk)

    def top_labels(self, probs: torch.Tensor, sources: Sequence[str], topk: int) -> list[Classification]:
        """Typed results: the top-k labels (multi-label: every label above 0.5, at least the best one). A binary
        task with a decision puts the positive class first when its probability reaches the threshold, the other
        class first otherwise; the probabilities are the model's either way."""
        k = min(topk, self.num_classes)
        values, indices = self._ranked(probs, k)
        results = []
        for source, vals, idx in zip(sources, values.tolist(), indices.tolist(), strict=True):
            if self.multilabel:
                keep = [j for j, v in enumerate(vals) if v >= 0.5] or [0]
                vals, idx = [vals[j] for j in keep], [idx[j] for j in keep]
            results.append(Classification(source, tuple(self.classes[i] for i in idx), tuple(vals)))
        return results

    def _ranked(self, probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `k` classes of each image in the order answered: most probable first, or as the decision
        calls it."""
        if self.decision is None or self.positive is None or not len(probs):
            return probs.topk(k, dim=1)
        other = 1 - self.positive
        called = probs[:, self.positive] >= self.decision.threshold
        first = torch.where(called, self.positive, other)
        indices = torch.stack([first, (self.positive + other) - first], dim=1)[:, :k]
        return probs.gather(1, indices), indices


def inverse_frequency_weights(counts: Sequence[int]) -> torch.Tensor:
    """Class weights N / (K · n_c), so every class contributes equally to the loss."""
    counts_t = torch.tensor(counts, dtype=torch.float32).clamp_min(1)
    return counts_t.sum() / (len(counts_t) * counts_t)
