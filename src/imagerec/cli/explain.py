"""`imagerec explain`: heatmaps of what a trained model looked at."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from imagerec.cli.shared import JsonOpt, MaxImagePixels, QuietOpt, fail_if_unreadable, print_json, status_console
from imagerec.config import MAX_IMAGE_PIXELS
from imagerec.progress import counting

Opt = typer.Option
METHODS = "gradcam | gradcam++ | scorecam | hirescam | integrated-gradients"  # outputs.explain.METHODS, without torch


def explain(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    sources: Annotated[list[Path], typer.Argument(help="Image files and/or folders.")],
    method: Annotated[str | None, Opt(help=f"{METHODS}. Default: hirescam (docs/explain.md says why).")] = None,
    target: Annotated[str | None, Opt(help="Explain this class instead of the predicted one(s).")] = None,
    out: Annotated[
        Path | None, Opt(help="Folder for the overlay PNGs and .npy heatmaps (default: RUN/explanations).")
    ] = None,
    conf: Annotated[float, Opt(help="Detection: minimum score of a box to explain.")] = 0.25,
    max_boxes: Annotated[int, Opt(help="Detection: most boxes explained per image, best first.")] = 10,
    max_image_pixels: MaxImagePixels = MAX_IMAGE_PIXELS,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Explain predictions with heatmaps over each image: for the predicted class, each detected box or each
    segmented class. An unreadable file gets its error in explanations.json; after the others are explained, the
    command then fails (exit 2) with one line counting them."""
    from imagerec.outputs.explain import explain as explain_images
    from imagerec.outputs.sources import expand_sources

    files = expand_sources(sources)
    folder = out if out is not None else run / "explanations"
    console = status_console(quiet)
    with counting(console, "explain", len(files)) as advance:
        results = explain_images(
            run, files, method=method, target=target, out=folder, conf=conf, max_boxes=max_boxes,
            max_image_pixels=max_image_pixels, progress=advance,
        )  # fmt: skip
    if as_json:
        print_json({"out": folder, "explanations": [r.to_dict() for r in results]})
    else:
        Console().print(_table(results))
    errors = [r.error for r in results if r.error is not None]
    fail_if_unreadable(errors, len(files), done=f"image(s) were explained into {folder}")
    console.print(f"overlays, heatmaps (.npy) and explanations.json written to {folder}")
    explained = {r.source for r in results}
    nothing = [str(f) for f in files if str(f) not in explained]
    if nothing:
        why = f"no box scored --conf {conf} or more, or only background was segmented; --target explains a class"
        console.print(f"[yellow]{len(nothing)} image(s) had nothing to explain ({why})[/]")


def _table(results: list) -> Table:
    table = Table("source", "target", "method", "score", "overlay")
    for r in results:
        if r.error:
            table.add_row(r.source, "[red]unreadable[/]", "", "", r.error)
        else:
            table.add_row(r.source, r.target, r.method, f"{r.score:.4f}", r.files.get("overlay", ""))
    return table
