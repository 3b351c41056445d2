"""Self-supervised pretraining as the engine sees it: what `fit` and `evaluate_split` call on a task.

A training batch is (list of views, classes): `step` returns the method's loss (the model computes it, see
`models.ssl`). An evaluation batch is (images, classes): `step` returns the embeddings, which `EmbeddingMetrics`
turns into the k-NN monitor and the collapse check. The classes are never used in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from imagerec.data.datasets import ViewDataset
from imagerec.data.images import MAX_PIXELS as MAX_IMAGE_PIXELS
from imagerec.data.targets import Sample
from imagerec.metrics.embedding import EmbeddingMetrics
from imagerec.records import Decision, ModelInfo
from imagerec.transforms import classification as presets
from imagerec.transforms.ssl import view_transform


@dataclass(frozen=True)
class PretrainObjective:
    """The method's views and loss, and the embedding metrics. `monitor` is the row key that picks the best epoch:
    the k-NN accuracy when the validation images have classes (`labelled`), else the lowest training loss."""

    method: str
    labelled: bool
    name: str = "pretrain"
    decision: Decision | None = None

    @property
    def monitor(self) -> tuple[str, str]:
        return ("val_knn_accuracy", "max") if self.labelled else ("train_loss", "min")

    def dataset(
        self,
        samples: Sequence[Sample],
        *,
        info: ModelInfo,
        train: bool,
        cache: bool | None,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
    ) -> ViewDataset:
        """Training: each image as the method's list of views; evaluation: as a classifier would see it."""
        size = {"imgsz": info.imgsz, "mean": info.mean, "std": info.std}
        transform = (
            view_transform(self.method, channels=info.channels, **size) if train else presets.eval_transform(**size)
        )
        return ViewDataset(
            samples, channels=info.channels, transform=transform, cache=cache, max_pixels=max_image_pixels
        )

    def step(self, model: nn.Module, batch: Any) -> dict[str, Any]:
        images, targets = batch
        if isinstance(images, torch.Tensor):
            return {"outputs": model(images).float(), "targets": targets}
        return {"loss": model(images)}

    def batch_size(self, batch: Any) -> int:
        return len(batch[1])

    def metrics(self) -> EmbeddingMetrics:
        return EmbeddingMetrics()
