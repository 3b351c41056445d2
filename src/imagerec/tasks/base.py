"""The Task contract: the only thing the engine knows about a task."""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn


class Metrics(Protocol):
    def update(self, outputs: Any, targets: Any) -> None: ...

    def compute(self) -> dict[str, Any]: ...

    def reset(self) -> None: ...


class Task(Protocol):
    """What a task provides to the engine.

    `step` runs the model on one collated batch and returns at least `{"loss": scalar}`; in evaluation it
    also returns `outputs` and `targets` to feed `metrics().update`. `monitor` names the validation metric
    that picks the best checkpoint and whether higher ("max") or lower ("min") is better.
    """

    name: str

    @property
    def monitor(self) -> tuple[str, str]: ...

    def step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]: ...

    def metrics(self) -> Metrics: ...

    def batch_size(self, batch: Any) -> int: ...
