"""`imagerec report`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from imagerec.cli.shared import JsonOpt, QuietOpt, print_json, status_console

Opt = typer.Option


def report(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    data: Annotated[
        Path | None, Opt(help="Data to evaluate on (default: the data the run was trained on, with its split).")
    ] = None,
    split: Annotated[str, Opt(help="Split to evaluate: train, val or test.")] = "test",
    out: Annotated[Path | None, Opt(help="Folder for report.html and its PNGs (default: the run directory).")] = None,
    evaluate: Annotated[
        bool, Opt("--eval/--no-eval", help="--no-eval: training curves, schedule, speed and configuration only.")
    ] = True,
    device: Annotated[str, Opt(help="auto | cpu | cuda | mps")] = "auto",
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write RUN/report.html: training curves and, on evaluation data, where the model is right and wrong."""
    from imagerec.errors import UserError
    from imagerec.outputs.report import write_report

    if data is not None and not evaluate:
        raise UserError("--data and --no-eval contradict each other: drop one")
    console = status_console(quiet)
    start = time.perf_counter()
    with console.status("writing the report"):
        path = write_report(run, data=data, split=split, out=out, device=device, evaluate=evaluate)
    seconds = time.perf_counter() - start
    if as_json:
        print_json({"report": path, "seconds": round(seconds, 2)})
    console.print(f"report written to {path} ({seconds:.1f} s); open it in a browser")
