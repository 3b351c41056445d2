"""The report's inference-speed section: the run's Predictor timed on a few of the evaluated images on this
machine, one image at a time (latency) and a batch at a time (throughput)."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from imagerec.errors import UserError
from imagerec.outputs.report.blocks import ReportContext, Section, Table, Text

IMAGES = 4  # distinct images timed, cycled through
CALLS = 10  # timed calls per measurement, after one warm-up call
BUDGET_S = 0.5  # a slow model stops being timed after this long (at least MIN_CALLS calls), to keep reports fast
MIN_CALLS = 3
TITLE = "Inference speed on this machine"


def inference_section(ctx: ReportContext) -> Section:
    """Median latency per image at batch 1 and throughput at the evaluation batch; without evaluation data, a line
    saying it was not measured."""
    section = Section("inference", TITLE)
    images = _images(ctx)
    if ctx.predictor is None or not images:
        why = "no evaluation data" if ctx.predictor is None else "none of the first images could be read"
        section.blocks.append(Text(f"Not measured: {why}. `imagerec benchmark RUN` times the model on its own."))
        return section
    predictor = ctx.predictor
    batch = int(ctx.config.get("data", {}).get("batch") or ctx.task.default_batch)
    stacked = [images[i % len(images)] for i in range(batch)]
    single, single_calls = median_seconds(lambda i: predictor.predict(images[i % len(images)], batch=1))
    batched, batch_calls = median_seconds(lambda _: predictor.predict(stacked, batch=batch))
    device = predictor.device
    named = f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)
    rows: list[list[Any]] = [
        ["latency per image at batch 1 (ms, median)", three_figures(1000 * single)],
        [f"throughput at batch {batch} (images/s, median)", three_figures(batch / batched)],
        ["device", named],
        ["CPU threads", torch.get_num_threads()],
        ["runtime", predictor.runtime],
    ]
    caption = (
        f"The run's Predictor on {len(images)} of the evaluated images, decoded beforehand: its preprocessing, the "
        f"network and its post-processing. Latency: the median of {single_calls} calls of one image; throughput: "
        f"{batch} images (the evaluation batch) divided by the median of {batch_calls} calls; each after one "
        "warm-up call. Measured while the report was written, so other work on the machine slows it."
    )
    section.blocks.append(Table(["", ""], rows, caption))
    return section


def three_figures(value: float) -> str:
    """`value` to three significant figures, thousands separated, without exponent: 0.545, 12.3, 7,139."""
    digits = max(0, 2 - math.floor(math.log10(abs(value)))) if value else 0
    return f"{value:,.{digits}f}"


def _images(ctx: ReportContext) -> list[torch.Tensor]:
    """Up to IMAGES of the evaluated images, decoded (unreadable ones left out)."""
    images = []
    for sample in ctx.samples[: 4 * IMAGES] if ctx.predictor is not None else []:
        try:
            images.append(ctx.predictor.read(Path(sample.path)))
        except UserError:
            continue
        if len(images) == IMAGES:
            break
    return images


def median_seconds(call: Callable[[int], object]) -> tuple[float, int]:
    """The median wall time of `call(i)` over up to CALLS calls after one warm-up, stopping early (after
    MIN_CALLS) once BUDGET_S is spent; and the number of calls timed."""
    call(0)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < CALLS and (len(times) < MIN_CALLS or time.perf_counter() - start < BUDGET_S):
        begin = time.perf_counter()
        call(len(times))
        times.append(time.perf_counter() - begin)
    return statistics.median(times), len(times)
