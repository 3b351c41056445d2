"""`imagerec benchmark`: how fast a run predicts in each runtime and precision on this machine, and what each costs
in validation metric, so a user can pick a runtime.

Every runtime is timed on the same preprocessed inputs at the model's input size, **interleaved**: each round
times one call of every runtime, in a rotating order, so a busy spell from another process slows them all alike;
medians and ratios to eager fp32 are what to read. The metric of each comes from the export's parity check on the
run's validation split. Exported and quantised files live in a temporary folder unless `keep_exports` names one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from imagerec.data.index import DataIndex
from imagerec.engine.autotune import cpu_supports_bf16
from imagerec.errors import UserError
from imagerec.outputs.export import export
from imagerec.outputs.graphs import FORMATS
from imagerec.outputs.parity import Parity, check_parity, parity_index
from imagerec.outputs.predict import Predictor, load
from imagerec.outputs.runtimes import EXTRAS, RUNTIMES, compiled, open_exported, runtime_names
from imagerec.runs import RunDir, open_run

DEFAULT_RUNTIMES = ("eager", "compile", "onnx", "openvino")
PRECISIONS = ("fp32", "bf16", "int8")
OFFERS = {"eager": ("fp32", "bf16"), "compile": ("fp32",), "onnx": ("fp32", "int8"), "openvino": ("fp32", "int8")}
NEEDS = {"onnx": ("onnx", "onnxruntime"), "openvino": ("onnx", "openvino"), "int8": ("nncf",)}  # int8: OpenVINO only
BF16_RUNS_IN = "bf16 autocast (convolutions, matmuls), f32 elsewhere"


@dataclass(frozen=True)
class Timing:
    """One runtime at one batch size: per-call latency (median, 95th percentile), images/s from the median call,
    and that throughput relative to eager fp32 measured in the same rounds."""

    batch: int
    p50_ms: float
    p95_ms: float
    images_per_s: float
    vs_eager: float


@dataclass(frozen=True)
class BenchmarkRow:
    """A runtime at a precision: what it computes in, its timings, its parity check on the validation split, and
    `setup_s` (export and quantisation; torch.compile's first call). `skipped` says why a row has no numbers."""

    runtime: str
    precision: str
    runs_in: str = ""
    timings: tuple[Timing, ...] = ()
    parity: Parity | None = None
    setup_s: float | None = None
    skipped: str | None = None

    def timing(self, batch: int) -> Timing | None:
        return next((t for t in self.timings if t.batch == batch), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime, "precision": self.precision, "runs_in": self.runs_in,
            "timings": [asdict(t) for t in self.timings], "setup_s": self.setup_s, "skipped": self.skipped,
            "check": None if self.parity is None else self.parity.to_dict(),
        }  # fmt: skip


@dataclass(frozen=True)
class BenchmarkReport:
    """What `benchmark` measured: one row per runtime and precision, on `input` (C, H, W per image) images."""

    run: str
    task: str
    model: str
    input: tuple[int, ...]
    per_image: bool
    batches: tuple[int, ...]
    iterations: int
    warmup: int
    threads: int
    machine: dict[str, Any]
    rows: tuple[BenchmarkRow, ...] = field(default_factory=tuple)

    def row(self, runtime: str, precision: str) -> BenchmarkRow | None:
        return next((r for r in self.rows if (r.runtime, r.precision) == (runtime, precision)), None)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "rows"} | {"rows": [r.to_dict() for r in self.rows]}


@dataclass
class _Candidate:
    """A row being measured: its model and the call times per batch size."""

    runtime: str
    precision: str
    runs_in: str
    model: nn.Module
    parity: Parity
    setup_s: float | None = None
    times: dict[int, list[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Context:
    """What preparing every row needs."""

    run: RunDir
    predictor: Predictor
    index: DataIndex
    split: str
    check_images: int
    threads: int
    folder: Path
    first: Any  # one input of the smallest batch: what compiles torch.compile's graph
    check: str | Path | None
    calib: str | Path | None


class _Autocast(nn.Module):
    """`model` under CPU bf16 autocast, answering in float32 as the eager model does."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Any) -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return _to_float(self.model(x))


def _to_float(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: _to_float(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_float(v) for v in value)
    return value


def benchmark(
    run: str | Path | RunDir,
    *,
    runtimes: Sequence[str] | None = None,
    batches: Sequence[int] = (1, 8, 32),
    precisions: Sequence[str] = PRECISIONS,
    iterations: int = 20,
    warmup: int = 3,
    check_images: int = 200,
    threads: int | None = None,
    check: str | Path | None = None,
    calib: str | Path | None = None,
    keep_exports: str | Path | None = None,
) -> BenchmarkReport:
    """Time `run` in each of `runtimes` (default eager, compile, onnx, openvino) at each of `precisions` (fp32, bf16:
    eager under autocast where the CPU has bf16, int8: ONNX Runtime and OpenVINO, calibrated on the run's training
    images, or `calib`) over `iterations` interleaved rounds per batch size after `warmup` calls, with `threads`
    threads (default torch's); and check each against eager PyTorch on up to `check_images` images of `check`
    (default: the run's validation split).

    Eager fp32 is always measured: it is the reference of every ratio. Runtimes that are not installed, and
    exports that fail, give a row saying why instead of numbers.
    """
    names, sizes, wanted = _runtimes(runtimes), _batches(batches), _precisions(precisions)
    if iterations < 1 or warmup < 0 or check_images < 1:
        raise UserError("--iterations and --check-images must be at least 1, --warmup at least 0")
    run_dir = run if isinstance(run, RunDir) else open_run(run)
    predictor = load(run_dir, device="cpu")
    index, split = parity_index(run_dir, predictor.info, check)
    threads = threads or torch.get_num_threads()
    signature = predictor.task.export_signature(predictor.model, predictor.info, dynamic_batch=True)
    images = _images(predictor, index, split, tuple(signature.example.shape[-3:]), max(sizes))
    inputs = {size: _batch(images, size, per_image=signature.per_image) for size in sizes}
    with _torch_threads(threads), _folder(keep_exports) as folder:
        context = _Context(run_dir, predictor, index, split, check_images, threads, folder, inputs[min(sizes)],
                           check, calib)  # fmt: skip
        prepared = [_prepare(name, precision, context) for name in names for precision in _offered(name, wanted)]
        candidates = [p for p in prepared if isinstance(p, _Candidate)]
        _measure(candidates, inputs, iterations, warmup)
    rows = _rows(prepared, sizes)
    return BenchmarkReport(
        run=str(run_dir.path), task=predictor.info.task, model=predictor.info.model,
        input=tuple(signature.example.shape[-3:]), per_image=signature.per_image, batches=sizes,
        iterations=iterations, warmup=warmup, threads=threads, machine=machine(), rows=rows,
    )  # fmt: skip


def machine() -> dict[str, Any]:
    """What the numbers depend on: the CPU, its instruction sets, and the cores."""
    flags: set[str] = set()
    name = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    return {
        "cpu": name, "cores": os.cpu_count(), "isa": torch.backends.cpu.get_cpu_capability(),
        "bf16": cpu_supports_bf16(), "vnni": bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"}),
        "torch": torch.__version__,
    }  # fmt: skip


# --- checking what was asked ------------------------------------------------------------------------------------------


def _runtimes(runtimes: Sequence[str] | None) -> list[str]:
    names = list(dict.fromkeys(runtimes or DEFAULT_RUNTIMES))
    for name in names:
        if name not in runtime_names():
            RUNTIMES.get(name)  # the registry's message names the runtimes there are
    return names if "eager" in names else ["eager", *names]  # eager fp32 is every ratio's reference


def _batches(batches: Sequence[int]) -> tuple[int, ...]:
    sizes = tuple(dict.fromkeys(batches))
    if not sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes):
        raise UserError(f"--batch {','.join(map(str, batches))}: give positive batch sizes, e.g. 1,8,32")
    return tuple(sorted(sizes))


def _precisions(precisions: Sequence[str]) -> set[str]:
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions:
        raise UserError(f"--precision {','.join(precisions)}: choose among {', '.join(PRECISIONS)}")
    return {"fp32", *precisions}  # fp32 rows are the reference of the others


def _offered(runtime: str, wanted: set[str]) -> list[str]:
    return [p for p in OFFERS.get(runtime, ("fp32",)) if p in wanted]


def _missing(runtime: str, precision: str) -> str | None:
    """Why `runtime` cannot run here (an optional dependency not installed, and how to install it), or None."""
    modules = NEEDS.get(runtime, ()) + (NEEDS["int8"] if (runtime, precision) == ("openvino", "int8") else ())
    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    if not absent:
        return None
    return f"not installed: pip install 'imagerec[{EXTRAS[absent[0]]}]' ({', '.join(absent)} missing)"


# --- preparing each row -----------------------------------------------------------------------------------------------


def _prepare(runtime: str, precision: str, context: _Context) -> _Candidate | BenchmarkRow:
    """The row's model, checked on the validation split, or a row saying why there is none."""
    reason = _missing(runtime, precision)
    if reason is None and precision == "bf16" and not cpu_supports_bf16():
        reason = "skipped: no bf16 on this CPU (no AVX-512 BF16 or AMX): autocast would emulate it, slower"
    if reason is not None:
        return BenchmarkRow(runtime, precision, skipped=reason)
    try:
        if runtime == "eager":
            return _eager(precision, context)
        if runtime == "compile":
            return _compiled(context)
        return _exported(runtime, precision, context)
    except UserError as error:  # an export or quantisation this model cannot have: the other rows still count
        return BenchmarkRow(runtime, precision, skipped=f"failed: {error}")


def _check(model: nn.Module, context: _Context) -> Parity:
    p = context.predictor
    return check_parity(p.task, p.model, model, p.info, context.index, context.split, context.check_images)


def _eager(precision: str, context: _Context) -> _Candidate:
    model = context.predictor.model if precision == "fp32" else _Autocast(context.predictor.model)
    return _Candidate("eager", precision, "f32" if precision == "fp32" else BF16_RUNS_IN, model, _check(model, context))


@torch.no_grad()
def _compiled(context: _Context) -> _Candidate | BenchmarkRow:
    model = compiled(context.predictor.model)
    start = time.perf_counter()
    try:
        model(context.first)
    except Exception as error:  # Inductor's failures (no C++ compiler, an unsupported operator) have many types
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        return BenchmarkRow("compile", "fp32", skipped=f"failed: torch.compile: {first}")
    setup = time.perf_counter() - start
    return _Candidate("compile", "fp32", "f32", model, _check(model, context), setup_s=setup)


def _exported(runtime: str, precision: str, context: _Context) -> _Candidate:
    """Exported (and quantised) as `imagerec export` does, into the benchmark's folder, and run by `runtime`."""
    fmt = runtime  # each exported-graph runtime runs the format of its name
    out = context.folder / f"model-{precision}{FORMATS.get(fmt).suffix}"
    start = time.perf_counter()
    # force: a benchmark reports a failed check in its row instead of refusing the file
    result = export(context.run, format=fmt, out=out, int8=precision == "int8", calib=context.calib,
                    check=context.check, check_images=context.check_images, force=True)  # fmt: skip
    setup = time.perf_counter() - start
    model = RUNTIMES.get(runtime)(open_exported(out), threads=context.threads)
    return _Candidate(runtime, precision, model.record.runs_in, model, result.parity, setup_s=setup)


# --- inputs and timing ------------------------------------------------------------------------------------------------


def _images(predictor: Predictor, index: DataIndex, split: str, shape: tuple[int, ...], count: int) -> list[Any]:
    """`count` preprocessed validation images (repeated when there are fewer) resized to the model's input size:
    real images, so a detector's suppression has real boxes to work on."""
    samples = index.samples(split)[:count]
    task, info = predictor.task, predictor.info
    dataset = task.dataset(samples, info=info, augment=None, cache=False, coding=index.masks)
    images = [_resized(dataset[i][0], shape) for i in range(len(dataset))]
    return [images[i % len(images)] for i in range(count)]


def _resized(image: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    image = image.float()
    if tuple(image.shape) == shape:
        return image
    return F.interpolate(image[None], size=tuple(shape[1:]), mode="bilinear", align_corners=False)[0]


def _batch(images: list[torch.Tensor], size: int, *, per_image: bool) -> Any:
    """A batch tensor, or for per-image models (detectors) the list of images they take."""
    return list(images[:size]) if per_image else torch.stack(images[:size])


@torch.no_grad()
def _measure(candidates: list[_Candidate], inputs: dict[int, Any], iterations: int, warmup: int) -> None:
    """Per batch size: `warmup` untimed calls of each, then rounds of one timed call each, in rotating order."""
    for size, x in inputs.items():
        for candidate in candidates:
            candidate.times[size] = []
            for _ in range(warmup):
                candidate.model(x)
        for round_ in range(iterations):
            shift = round_ % len(candidates)
            for candidate in candidates[shift:] + candidates[:shift]:
                start = time.perf_counter()
                candidate.model(x)
                candidate.times[size].append(time.perf_counter() - start)


def _rows(prepared: list[_Candidate | BenchmarkRow], sizes: tuple[int, ...]) -> tuple[BenchmarkRow, ...]:
    reference = next(p for p in prepared if isinstance(p, _Candidate) and (p.runtime, p.precision) == ("eager", "fp32"))
    base = {size: size / float(np.median(reference.times[size])) for size in sizes}
    rows = []
    for item in prepared:
        if isinstance(item, BenchmarkRow):
            rows.append(item)
            continue
        timings = tuple(_timing(size, item.times[size], base[size]) for size in sizes)
        rows.append(BenchmarkRow(item.runtime, item.precision, item.runs_in, timings, item.parity, item.setup_s))
    return tuple(rows)


def _timing(size: int, times: list[float], reference: float) -> Timing:
    median = float(np.median(times))
    return Timing(
        batch=size, p50_ms=median * 1000, p95_ms=float(np.percentile(times, 95)) * 1000,
        images_per_s=size / median, vs_eager=size / median / reference,
    )  # fmt: skip


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _folder(keep: str | Path | None) -> Iterator[Path]:
    """Where the exports go: `keep`, or a temporary folder removed afterwards (nothing is written into the run)."""
    if keep is not None:
        Path(keep).mkdir(parents=True, exist_ok=True)
        yield Path(keep)
        return
    with tempfile.TemporaryDirectory(prefix="imagerec-benchmark-") as tmp:
        yield Path(tmp)
