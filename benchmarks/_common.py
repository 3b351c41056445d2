"""Shared helpers for the benchmark scripts: machine description, quiet engine runs, robust statistics.

Not a public module: the scripts import it by path (`benchmarks/` is not a package).
"""

from __future__ import annotations

import csv
import io
import os
import platform
import random
import resource
import statistics
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console

SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine() -> dict[str, Any]:
    """What the numbers depend on: CPU, cores, ISA, torch build and threads, GPU (if any), current load."""
    flags = cpu_flags()
    bf16 = bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "isa": torch.backends.cpu.get_cpu_capability(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "mkldnn_bf16": bf16,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "python": platform.python_version(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def print_machine(title: str) -> dict[str, Any]:
    info = machine()
    print(f"# {title}")
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print()
    return info


def quiet_console() -> Console:
    """A console that renders the live progress bar as a terminal would, into a discarded buffer.

    The engine's progress bar is part of what a user pays for, so it stays on while we measure.
    """
    return Console(file=io.StringIO(), force_terminal=True, width=120)


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class Timed:
    wall_s: float = 0.0
    cpu_s: float = 0.0


@contextmanager
def timed():
    """`with timed() as t:` measures wall and CPU seconds of the block into t."""
    result = Timed()
    wall, cpu = time.perf_counter(), cpu_seconds()
    try:
        yield result
    finally:
        result.wall_s = time.perf_counter() - wall
        result.cpu_s = cpu_seconds() - cpu


def read_metrics(run: Path) -> list[dict[str, float]]:
    with (Path(run) / "metrics.csv").open() as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def read_compute(run: Path) -> dict[str, Any]:
    return yaml.safe_load((Path(run) / "run.yaml").read_text())["resolved"]["compute"]


def steady_images_per_s(rows: Sequence[dict[str, float]], skip: int = 1) -> float:
    """Median images/s over epochs after the first `skip` (which pay one-off warm-up costs)."""
    values = [r["images_per_s"] for r in rows[skip:]] or [r["images_per_s"] for r in rows]
    return statistics.median(values)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: Sequence[float]) -> str:
    """mean ± sample standard deviation, as text."""
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def print_result(result: dict[str, Any]) -> None:
    """One measured row as `key=value` pairs, printed as soon as it is measured (long runs show progress)."""
    print("  " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def symlink_files(files: Sequence[Path], folder: Path) -> None:
    """Links in `folder` (made if missing) to each of `files`, by name: a data folder without copying the data."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        (folder / f.name).symlink_to(f.resolve())


def label_subset(root: Path, fraction: float, seed: int, work: Path) -> Path:
    """`fraction` of each class's training images of `root` (train/val/test class folders), drawn with `seed`;
    val and test whole. Symlinks under work/subset-<percent>-<seed>, made once."""
    out = work / f"subset-{round(fraction * 100)}-{seed}"
    if out.exists():
        return out
    rng = random.Random(seed)
    for split in ("train", "val", "test"):
        for class_dir in sorted(p for p in (root / split).iterdir() if p.is_dir()):
            files = sorted(class_dir.glob("*.png"))
            if split == "train" and fraction < 1:
                files = sorted(rng.sample(files, max(1, round(fraction * len(files)))))
            symlink_files(files, out / split / class_dir.name)
    return out
