"""Pick numeric precision and memory format per model and machine by measuring, not assuming.

On CPUs with AVX-512 BF16, bf16 autocast can double convolution throughput, channels_last helps most
convnets, and depthwise-heavy models can lose with bf16; which wins depends on the model and the CPU,
so a few real training steps on a real batch decide.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

MIN_GAIN = 1.10  # a setting must beat fp32/NCHW by 10% to be chosen: timings are noisy


@dataclass(frozen=True)
class ComputeSettings:
    precision: str
    channels_last: bool
    measured: dict[str, float] = field(default_factory=dict)  # images/s per candidate

    def describe(self) -> str:
        layout = "channels_last" if self.channels_last else "NCHW"
        return f"precision {self.precision}, {layout}"


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def cpu_supports_bf16() -> bool:
    return bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())


def _images_per_second(
    model: nn.Module, batch: Any, loss_fn: Callable[[nn.Module, Any], torch.Tensor], precision: str, steps: int
) -> float:
    size = len(batch[0])
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            loss = loss_fn(model, batch)
        loss.backward()
        model.zero_grad(set_to_none=True)
        if i:  # the first step warms up kernels and allocators
            times.append(time.perf_counter() - start)
    return size / statistics.median(times)


def choose_cpu_settings(
    model: nn.Module,
    batch: Any,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    *,
    requested: str = "auto",
    steps: int = 3,
) -> ComputeSettings:
    """Time fp32 vs bf16 autocast and NCHW vs channels_last for a few training steps; keep the fastest."""
    precisions = ["32-true", "bf16-mixed"] if requested == "auto" and cpu_supports_bf16() else [_normal(requested)]
    layouts = [False, True] if _has_conv(model) else [False]
    images, *rest = batch
    measured: dict[str, float] = {}
    for channels_last in layouts:
        probe = copy.deepcopy(model).train()
        probe_batch = (images, *rest)
        if channels_last:
            probe = probe.to(memory_format=torch.channels_last)
            probe_batch = (images.contiguous(memory_format=torch.channels_last), *rest)
        for precision in precisions:
            key = f"{precision}/{'channels_last' if channels_last else 'NCHW'}"
            measured[key] = round(_images_per_second(probe, probe_batch, loss_fn, precision, steps), 1)
    baseline_key = next(iter(measured))
    best_key = max(measured, key=measured.get)
    if measured[best_key] < MIN_GAIN * measured[baseline_key]:
        best_key = baseline_key
    precision, layout = best_key.split("/")
    return ComputeSettings(precision, layout == "channels_last", measured)


def _normal(precision: str) -> str:
    return {"32": "32-true", "auto": "32-true"}.get(precision, precision)


def default_settings(model: nn.Module, *, accelerator: str, requested: str) -> ComputeSettings:
    """Settings without measuring: for GPUs (bf16 where supported, else fp16; channels_last for convnets)
    and for multi-process CPU runs, where every process must agree without timing noise."""
    if accelerator == "cuda":
        precision = requested
        if requested == "auto":
            precision = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        return ComputeSettings(_normal(precision), _has_conv(model))
    return ComputeSettings(_normal(requested), False)
