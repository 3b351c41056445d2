"""`imagerec evaluate` and `imagerec predict`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from imagerec.cli.shared import MaxImagePixels, fail_if_unreadable
from imagerec.config import MAX_IMAGE_PIXELS
from imagerec.errors import UserError
from imagerec.runs import write_text
from imagerec.tasks.results import Detections, SegmentationMask

Opt = typer.Option
MAX_PIXELS = 2048 * 2048  # imagerec.tasks.base.MAX_PIXELS, repeated so `--help` needs no torch import


def print_metrics(console: Console, metrics: dict[str, Any], *, title: str) -> None:
    table = Table("metric", "value", title=title)
    for key, value in metrics.items():
        if isinstance(value, float):
            table.add_row(key, f"{value:.4f}")
    console.print(table)
    per_class = metrics.get("per_class")
    if per_class and not isinstance(next(iter(per_class.values())), dict):  # detection: AP per class
        ap50 = metrics.get("per_class_ap50", {})
        table = Table("class", "AP .50:.95", "AP .50")
        for name, ap in per_class.items():
            table.add_row(name, *("-" if v is None else f"{v:.4f}" for v in (ap, ap50.get(name))))
        console.print(table)
    elif per_class:  # classification (precision, recall, f1, support) or segmentation (iou, dice, pixels)
        columns = list(next(iter(per_class.values())))
        table = Table("class", *columns)
        for name, row in per_class.items():
            table.add_row(name, *(_cell(row[k]) for k in columns))
        console.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def evaluate(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    data: Annotated[Path, typer.Argument(help="Image folder or CSV with the same classes.")],
    split: Annotated[str, Opt(help="Split to evaluate: train, val or test.")] = "test",
    as_json: Annotated[bool, Opt("--json", help="Print the metrics JSON instead of a table.")] = False,
    max_image_pixels: MaxImagePixels = MAX_IMAGE_PIXELS,
) -> None:
    """Measure a trained run on a split of DATA (also saved to RUN/evaluation/<split>.json)."""
    from imagerec.api import evaluate as evaluate_run

    metrics = evaluate_run(run, data, split=split, max_image_pixels=max_image_pixels)
    if as_json:
        print(json.dumps(metrics, indent=2))
    else:
        print_metrics(Console(), metrics, title=f"{split} metrics ({metrics['count']} images)")


def _table(results: list[Any]) -> Table:
    if results and isinstance(results[0], SegmentationMask):
        table = Table("source", "size", "pixels per class (largest first)")
        for r in results:
            areas = sorted((r.areas or {}).items(), key=lambda kv: -kv[1])
            size = "[red]unreadable[/]" if r.error else f"{r.size[0]}×{r.size[1]}"
            table.add_row(r.source, size, r.error or ", ".join(f"{name} {n}" for name, n in areas if n))
        return table
    if results and isinstance(results[0], Detections):
        table = Table("source", "objects", "found (best first)")
        for r in results:
            found = ", ".join(f"{label} {score:.2f}" for label, score in zip(r.labels[:8], r.scores, strict=False))
            table.add_row(r.source, "[red]unreadable[/]" if r.error else str(len(r)), r.error or found)
        return table
    table = Table("source", "label", "prob", "top-k")
    for r in results:
        if r.error:
            table.add_row(r.source, "[red]unreadable[/]", "", r.error)
        else:
            topk_text = ", ".join(f"{name} {p:.3f}" for name, p in zip(r.labels, r.probs, strict=True))
            table.add_row(r.source, r.label, f"{r.prob:.4f}", topk_text)
    return table


def predict(
    run: Annotated[Path, typer.Argument(help="Run directory, or a file `imagerec export` wrote.")],
    sources: Annotated[list[Path], typer.Argument(help="Image files and/or folders.")],
    fmt: Annotated[str, Opt("--format", help="table | json | csv | coco (boxes as COCO results JSON)")] = "table",
    topk: Annotated[int, Opt(help="Classification: labels per image.")] = 5,
    conf: Annotated[
        float | None, Opt(help="Detection: minimum score of a box (default: the run's threshold, else 0.25).")
    ] = None,
    iou: Annotated[float | None, Opt(help="Detection: IoU above which overlapping boxes are merged (NMS).")] = None,
    agnostic_nms: Annotated[
        bool, Opt("--agnostic-nms", help="Detection: merge overlapping boxes across classes, not within each.")
    ] = False,
    max_det: Annotated[int | None, Opt(help="Detection: at most this many boxes per image, best first.")] = None,
    imgsz: Annotated[int | None, Opt(help="Detection: input size (longest side) instead of the trained one.")] = None,
    tile: Annotated[int | None, Opt(help="Segmentation: predict in tiles of this size (large images).")] = None,
    overlap: Annotated[int, Opt(help="Segmentation: pixels shared by neighbouring tiles, blended.")] = 64,
    max_pixels: Annotated[int, Opt(help="Segmentation: largest image predicted whole (else --tile).")] = MAX_PIXELS,
    save_images: Annotated[Path | None, Opt(help="Write each image with its labels, boxes or masks drawn.")] = None,
    save_masks: Annotated[Path | None, Opt(help="Segmentation: write each class map as an index PNG here.")] = None,
    out: Annotated[Path | None, Opt(help="Write the results to this file instead of the screen.")] = None,
    batch: Annotated[int, Opt(help="Images per batch.")] = 16,
    workers: Annotated[int, Opt(help="Processes decoding images in parallel.")] = 0,
    runtime: Annotated[
        str | None,
        Opt(help="eager | compile | onnx | openvino | torchscript (default: eager for a run, the file's own format)."),
    ] = None,
    max_image_pixels: MaxImagePixels = MAX_IMAGE_PIXELS,
    image_ids: Annotated[
        Path | None,
        Opt(help="--format coco: COCO annotations whose image ids the results use (matched by file name)."),
    ] = None,
) -> None:
    """Predict images. An unreadable file gets its error in the output (the `error` field or column) in its place;
    after everything else is written, the command then fails (exit 2) with one line counting them."""
    from imagerec.outputs.predict import expand_sources, load
    from imagerec.outputs.writers import check_format, coco_image_ids, render, save_outputs

    predictor = load(run, imgsz=imgsz, runtime=runtime, max_image_pixels=max_image_pixels)
    check_format(fmt, predictor.task.result_type)
    options = {
        "topk": topk, "conf": conf, "iou": iou, "agnostic": agnostic_nms, "max_det": max_det, "tile": tile,
        "overlap": overlap, "max_pixels": max_pixels,
    }  # fmt: skip
    if save_masks is not None and not issubclass(predictor.task.result_type, SegmentationMask):
        raise UserError("--save-masks applies to semantic segmentation runs")
    files = expand_sources(sources)
    if image_ids is not None and fmt != "coco":
        raise UserError("--image-ids numbers the results of --format coco; add --format coco or leave it out")
    ids = coco_image_ids(image_ids, files) if image_ids is not None else None
    console = Console(stderr=True)
    results: list[Any] = []
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task("predict", total=len(files))
        found = predictor.predict_iter(files, batch=batch, workers=workers, **options)
        for source, result in zip(files, found, strict=True):
            results.append(result)
            save_outputs(
                result, Path(source), predictor.info, images=save_images, masks=save_masks,
                max_pixels=max_image_pixels,
            )  # fmt: skip
            progress.advance(bar)
    if fmt == "table" and out is None:
        Console().print(_table(results))
    else:
        text = render(results, "csv" if fmt == "table" else fmt, predictor.info, ids)
        if out is None:
            print(text, end="")
        else:
            write_text(out, text)
    where = "printed above" if out is None else f"written to {out}"
    fail_if_unreadable([r.error for r in results if r.error is not None], len(results), done=f"results were {where}")
    if out is not None:
        console.print(f"{len(results)} results written to {out}")
    for folder, what in ((save_images, "drawn images"), (save_masks, "index-mask PNGs")):
        if folder is not None:
            console.print(f"{what} written to {folder}")
