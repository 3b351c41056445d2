"""`imagerec export`."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from imagerec.cli.shared import QuietOpt, print_json, status_console, stdout_to_stderr
from imagerec.errors import UserError

Opt = typer.Option


def export(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    fmt: Annotated[str, Opt("--format", help="onnx | openvino | torchscript")] = "onnx",
    out: Annotated[Path | None, Opt(help="File to write (default: RUN/exports/model[-int8].<suffix>).")] = None,
    dynamic_batch: Annotated[
        bool, Opt("--dynamic-batch/--fixed-batch", help="Any batch size, or a graph fixed at batch 1.")
    ] = True,
    int8: Annotated[bool, Opt("--int8", help="Quantise to int8 (onnx, openvino), calibrated on --calib.")] = False,
    calib: Annotated[Path | None, Opt(help="Calibration images for --int8 (default: the run's training data).")] = None,
    check: Annotated[
        Path | None, Opt(help="Images to check the export on (default: the run's validation split).")
    ] = None,
    check_images: Annotated[int, Opt(help="At most this many images checked.")] = 200,
    atol: Annotated[float, Opt(help="fp32: largest output difference from eager PyTorch accepted.")] = 1e-3,
    max_drop: Annotated[float, Opt(help="int8: largest metric drop accepted (0.01 = 1 point).")] = 0.01,
    force: Annotated[bool, Opt("--force", help="Keep the file even when the check fails.")] = False,
    opset: Annotated[int, Opt(help="ONNX opset.")] = 17,
    as_json: Annotated[bool, Opt("--json", help="Print the check as JSON.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Export a run to ONNX, OpenVINO or TorchScript, with its preprocessing inside, checked against PyTorch."""
    from imagerec.outputs.export import export as export_run

    console = Console(stderr=as_json, quiet=quiet)
    doing = (
        f"exporting to {fmt}{' int8' if int8 else ''}, then checking it against PyTorch on up to {check_images} images"
    )
    with stdout_to_stderr() if as_json else contextlib.nullcontext(), status_console(quiet).status(doing):
        result = export_run(
            run, format=fmt, out=out, dynamic_batch=dynamic_batch, int8=int8, calib=calib, check=check,
            check_images=check_images, atol=atol, max_drop=max_drop, force=force, opset=opset,
        )  # fmt: skip
    if as_json:
        print_json(result.to_dict())
    record = result.record
    console.print(f"graph: {record.note}")
    console.print(f"precision: {record.precision} weights, computed in {record.runs_in}")
    console.print(f"check: {result.parity.describe()}")
    if result.refused and result.path is None:
        raise UserError(f"export refused, no file written: {result.refused}")
    if result.refused:
        console.print(f"[yellow]kept with --force although: {result.refused}[/]")
    Console(stderr=as_json).print(f"exported to {result.path}")  # the result: shown with --quiet too
    steps = (f"imagerec predict {result.path} IMAGES", f"imagerec serve {result.path}", f"imagerec benchmark {run}")
    for step in steps:
        console.print(f"next: {step}", markup=False)
