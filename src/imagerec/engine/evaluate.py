"""evaluate_split: the one way a split is scored — by training (validation and test), `imagerec evaluate` and the
report — over the Task contract."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning_fabric.utilities.apply_func import move_data_to_device
from torch import nn
from torch.utils.data import DataLoader

from imagerec.tasks.base import Metrics, Task


@dataclass
class SplitScores:
    """What scoring a split measured: the task's metrics, the mean loss where the task computes one in
    evaluation, and (when asked for) each image's output in the loader's order, for `task.results`."""

    metrics: dict[str, Any]
    loss: float | None = None
    outputs: list[Any] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """The loss (where there is one) then the metrics: what training logs and saves."""
        return ({} if self.loss is None else {"loss": round(self.loss, 6)}) | self.metrics


@torch.no_grad()
def evaluate_split(
    task: Task,
    model: nn.Module,
    loader: DataLoader,
    *,
    device: torch.device | None = None,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    keep_outputs: bool = False,
    metrics: Metrics | None = None,
    progress: Callable[[int], None] | None = None,
) -> SplitScores:
    """Run `model` in evaluation mode over `loader` and score it with the task's metrics.

    Batches are moved to `device` when it is given (a Fabric loader has already placed them) and run under
    `autocast`. Every process of a multi-process run sees the whole loader, so the metrics are exact. `metrics`
    (default: a fresh `task.metrics()`) is left holding what it accumulated, for `Metrics.decide`. `progress` is
    told the number of images of each batch done.
    """
    model.eval()
    metrics = task.metrics() if metrics is None else metrics
    loss_sum, seen, outputs = 0.0, 0, []
    for batch in loader:
        if device is not None:
            batch = move_data_to_device(batch, device)
        with autocast():
            out = task.step(model, batch)
        metrics.update(out["outputs"], out["targets"])
        if keep_outputs:
            outputs.extend(task.per_image(out, batch))
        if "loss" in out:  # detectors compute no loss in evaluation mode
            size = task.batch_size(batch)
            loss_sum += float(out["loss"]) * size
            seen += size
        if progress is not None:
            progress(task.batch_size(batch))
    return SplitScores(metrics.compute(), loss_sum / seen if seen else None, outputs)
