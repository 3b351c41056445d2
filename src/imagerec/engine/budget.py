"""A training time budget (`--time 10m`): how many epochs fit, from the measured time of the run's own epochs.

A first estimate comes from timing a few training steps before the run (so a budget too small for one epoch is
refused before any work); after the first epoch, whose time includes loading, validation and the checkpoint,
the schedule is planned again to span what is left. After later epochs the schedule is shortened when epochs
slow down (a busy machine), so that it still ends, annealed, within the budget instead of overrunning it.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from imagerec.engine import autotune
from imagerec.errors import UserError

# Of the budget, the share kept for what follows the last epoch: choosing the decision threshold on validation,
# scoring the test split and writing the report (each about one validation pass on the small data here).
RESERVE = 0.05


@dataclass
class TimeBudget:
    """`seconds` of training wall time, counted from `start` (time.monotonic())."""

    seconds: float
    start: float = field(default_factory=time.monotonic)

    @property
    def left(self) -> float:
        return self.seconds * (1 - RESERVE) - (time.monotonic() - self.start)

    def first_estimate(self, epoch_seconds: float, *, text: str) -> int:
        """Epochs that fit by the estimate made before training; refuses a budget too small for one."""
        if epoch_seconds > self.left:
            smallest = math.ceil((time.monotonic() - self.start + epoch_seconds) / (1 - RESERVE) / 60 * 1.2)
            raise UserError(
                f"--time {text}: one epoch takes about {epoch_seconds:.0f} s here (measured), more than the budget "
                f"allows; give at least --time {smallest}m, or use less data or a smaller --imgsz"
            )
        return max(1, int(self.left // epoch_seconds))

    def epochs_after(self, done: int, epoch_seconds: float) -> int:
        """The total epochs when `done` epochs have finished and each takes `epoch_seconds`."""
        return done + max(0, int(self.left // max(epoch_seconds, 1e-6)))


def estimate_epoch_seconds(
    model: nn.Module,
    batch: Any,
    loss_fn: Callable[[nn.Module, Any], Any],
    *,
    precision: str,
    train_images: int,
    eval_images: int,
) -> float:
    """An epoch's time from a few timed training steps on a copy of `model` (its BatchNorm statistics stay
    untouched): the training images, plus the validation images at a third of a training step's cost each."""
    per_second = autotune.images_per_second(copy.deepcopy(model).train(), batch, loss_fn, precision, steps=2)
    return (train_images + eval_images / 3) / per_second
