"""Pick numeric precision and memory format per model and machine by measuring, not assuming.

On CPUs with AVX-512 BF16, bf16 autocast can double convolution throughput, channels_last helps most
convnets, and depthwise-heavy models can lose with bf16; which wins depends on the model and the CPU,
so a few real training steps on a real batch decide.

Timing depends on the machine's load, so the choice is measured once per machine, model and input shape and
kept in a small cache (`cached_cpu_settings`): the same command on the same machine then trains with the same
numerics, and gives the same metrics, however busy the machine is.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imagerec.runs import write_json

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


def images_per_second(
    model: nn.Module, batch: Any, loss_fn: Callable[[nn.Module, Any], torch.Tensor], precision: str, steps: int
) -> float:
    """Training images per second of `model` on `batch` (median of `steps` timed steps after one warm-up)."""
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
            measured[key] = round(images_per_second(probe, probe_batch, loss_fn, precision, steps), 1)
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


def cache_dir() -> Path:
    """Where imagerec keeps what it measured of this machine: `IMAGEREC_CACHE_DIR`, else ~/.cache/imagerec."""
    return Path(os.environ.get("IMAGEREC_CACHE_DIR") or Path.home() / ".cache" / "imagerec")


def machine() -> str:
    """The CPU model and core count, as a cache key: timings measured on one CPU say nothing of another."""
    name = platform.processor()
    with contextlib.suppress(OSError):  # no /proc outside Linux
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), name)
    return f"{name or platform.machine()} ×{os.cpu_count()}"


def cached_cpu_settings(key: str, measure: Callable[[], ComputeSettings]) -> ComputeSettings:
    """The settings measured before for `key` on this machine, else `measure()` (then remembered).

    A cache that cannot be read or written (read-only home, damaged file) only costs a new measurement."""
    path = cache_dir() / "compute.json"
    full_key = f"{machine()} | torch {torch.__version__} | {key}"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    entry = known.get(full_key) if isinstance(known, dict) else None
    if isinstance(entry, dict) and {"precision", "channels_last"} <= entry.keys():
        return ComputeSettings(str(entry["precision"]), bool(entry["channels_last"]), dict(entry.get("measured", {})))
    settings = measure()
    known = known if isinstance(known, dict) else {}
    known[full_key] = {"precision": settings.precision, "channels_last": settings.channels_last,
                       "measured": settings.measured}  # fmt: skip
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, known)
    except OSError:
        pass
    return settings
