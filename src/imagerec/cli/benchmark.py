"""`imagerec benchmark`."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from imagerec.cli.shared import QuietOpt, print_json, status_console, stdout_to_stderr
from imagerec.errors import UserError

if TYPE_CHECKING:
    from imagerec.outputs.benchmark import BenchmarkReport, BenchmarkRow

Opt = typer.Option


def benchmark(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    runtimes: Annotated[str, Opt(help="Runtimes to compare, comma-separated.")] = "eager,compile,onnx,openvino",
    batch: Annotated[str, Opt(help="Batch sizes: latency at the smallest, throughput at each.")] = "1,8,32",
    precision: Annotated[str, Opt(help="Precisions: fp32, bf16 (eager autocast), int8 (onnx, openvino).")] = (
        "fp32,bf16,int8"
    ),
    iterations: Annotated[int, Opt(help="Timed calls per runtime and batch size, interleaved.")] = 20,
    warmup: Annotated[int, Opt(help="Untimed calls per runtime and batch size first.")] = 3,
    check_images: Annotated[int, Opt(help="Validation images the metric of each is measured on, at most.")] = 200,
    threads: Annotated[int | None, Opt(help="Threads for every runtime (default: torch's).")] = None,
    check: Annotated[Path | None, Opt(help="Images to measure the metrics on (default: the run's val split).")] = None,
    calib: Annotated[Path | None, Opt(help="Calibration images for int8 (default: the run's training data).")] = None,
    keep_exports: Annotated[Path | None, Opt(help="Keep the exported files in this folder.")] = None,
    as_json: Annotated[bool, Opt("--json", help="Print the measurements as JSON.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Time a run in each runtime and precision (interleaved, medians) and check each one's validation metric."""
    from imagerec.outputs.benchmark import benchmark as measure

    with stdout_to_stderr() if as_json else contextlib.nullcontext(), status_console(quiet).status("timing"):
        report = measure(
            run, runtimes=_names(runtimes), batches=_numbers(batch), precisions=_names(precision),
            iterations=iterations, warmup=warmup, check_images=check_images, threads=threads, check=check,
            calib=calib, keep_exports=keep_exports,
        )  # fmt: skip
    if as_json:
        print_json(report.to_dict())
        return
    console = Console()
    console.print(_table(report))
    for row in report.rows:
        if row.skipped is not None:
            console.print(f"{row.runtime} {row.precision}: {row.skipped}", markup=False)  # "imagerec[onnx]" is text
    m = report.machine
    console.print(
        f"{m['cpu']}, {m['cores']} cores, {m['isa']}, bf16 {'yes' if m['bf16'] else 'no'}, int8 dot products (VNNI) "
        f"{'yes' if m['vnni'] else 'no'}; threads: {report.threads}; medians of {report.iterations} interleaved calls"
    )


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _numbers(text: str) -> list[int]:
    try:
        return [int(part) for part in _names(text)]
    except ValueError:
        raise UserError(
            f"--batch {text}: give batch sizes as positive integers separated by commas, e.g. 1,8,32"
        ) from None


def _table(report: BenchmarkReport) -> Table:
    small, large = report.batches[0], report.batches[-1]
    table = Table(title=f"{report.model} ({report.task}), input {'×'.join(map(str, report.input))}")
    for name in ("runtime", "precision", "computes in", f"p50 ms b{small}", f"p95 ms b{small}"):
        left = name in ("runtime", "precision", "computes in")
        table.add_column(name, justify="left" if left else "right", no_wrap=name != "computes in")
    for size in report.batches:
        table.add_column(f"img/s b{size}", justify="right")
    metric = next((r.parity.metric for r in report.rows if r.parity is not None), "metric")
    for name in (f"× eager b{large}", metric, "drop pt", "max |Δ|"):
        table.add_column(name, justify="right")
    for row in report.rows:
        table.add_row(*_cells(row, report.batches))
    return table


def _cells(row: BenchmarkRow, batches: tuple[int, ...]) -> list[str]:
    if row.skipped is not None:
        return [row.runtime, row.precision, row.skipped.split(":")[0], *["—"] * (len(batches) + 6)]
    first, last = row.timings[0], row.timings[-1]
    parity = row.parity
    checked = [f"{parity.exported:.4f}", f"{parity.metric_drop * 100:.2f}", f"{parity.max_abs:.1e}"] if parity else []
    return [
        row.runtime, row.precision, row.runs_in, f"{first.p50_ms:.2f}", f"{first.p95_ms:.2f}",
        *[f"{t.images_per_s:.1f}" for t in row.timings], f"{last.vs_eager:.2f}×", *(checked or ["—"] * 3),
    ]  # fmt: skip
