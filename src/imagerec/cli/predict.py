"""`imagerec evaluate` and `imagerec predict`."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from imagerec.errors import UserError
from imagerec.outputs.results import Classification, Detections
from imagerec.runs import write_text

Opt = typer.Option
Result = Classification | Detections


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
    elif per_class:
        table = Table("class", "precision", "recall", "f1", "support")
        for name, row in per_class.items():
            table.add_row(name, *(f"{row[k]:.4f}" for k in ("precision", "recall", "f1")), str(row["support"]))
        console.print(table)


def evaluate(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    data: Annotated[Path, typer.Argument(help="Image folder or CSV with the same classes.")],
    split: Annotated[str, Opt(help="Split to evaluate: train, val or test.")] = "test",
    as_json: Annotated[bool, Opt("--json", help="Print the metrics JSON instead of a table.")] = False,
) -> None:
    """Measure a trained run on a split of DATA (also saved to RUN/evaluation/<split>.json)."""
    from imagerec.api import evaluate as evaluate_run

    metrics = evaluate_run(run, data, split=split)
    if as_json:
        print(json.dumps(metrics, indent=2))
    else:
        print_metrics(Console(), metrics, title=f"{split} metrics ({metrics['count']} images)")


def _render(results: list[Result], fmt: str, info: dict[str, Any]) -> str:
    if fmt == "json":
        return json.dumps([r.to_dict() for r in results], indent=2) + "\n"
    if fmt == "coco":
        from imagerec.outputs.results import coco_results

        return json.dumps(coco_results(results, info["classes"], info.get("category_ids")), indent=2) + "\n"
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    if results and isinstance(results[0], Detections):
        writer.writerow(["source", "label", "score", "x1", "y1", "x2", "y2", "error"])
        for r in results:
            rows = zip(r.labels, r.scores, r.boxes, strict=True)
            writer.writerows(
                [r.source, label, f"{score:.6f}", *(f"{v:.2f}" for v in box), ""] for label, score, box in rows
            )
            if r.error:
                writer.writerow([r.source, "", "", "", "", "", "", r.error])
        return buffer.getvalue()
    writer.writerow(["source", "label", "prob", "topk_labels", "topk_probs", "error"])
    for r in results:
        writer.writerow([
            r.source, r.label or "", f"{r.prob:.6f}" if r.prob is not None else "", ";".join(r.labels),
            ";".join(f"{p:.6f}" for p in r.probs), r.error or "",
        ])  # fmt: skip
    return buffer.getvalue()


def _table(results: list[Result]) -> Table:
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
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    sources: Annotated[list[Path], typer.Argument(help="Image files and/or folders.")],
    fmt: Annotated[str, Opt("--format", help="table | json | csv | coco (detection: COCO results JSON)")] = "table",
    topk: Annotated[int, Opt(help="Classification: labels per image.")] = 5,
    conf: Annotated[float, Opt(help="Detection: minimum score of a box.")] = 0.25,
    iou: Annotated[float | None, Opt(help="Detection: IoU above which overlapping boxes are merged (NMS).")] = None,
    imgsz: Annotated[int | None, Opt(help="Detection: input size (longest side) instead of the trained one.")] = None,
    save_images: Annotated[Path | None, Opt(help="Detection: write each image with its boxes drawn here.")] = None,
    out: Annotated[Path | None, Opt(help="Write the results to this file instead of the screen.")] = None,
    batch: Annotated[int, Opt(help="Images per batch.")] = 16,
    workers: Annotated[int, Opt(help="Processes decoding images in parallel.")] = 0,
) -> None:
    """Predict images; unreadable files are reported in the output and skipped."""
    from imagerec.outputs.predict import expand_sources, load

    _check_options(fmt, topk, conf, iou)
    predictor = load(run, imgsz=imgsz)
    detect = predictor.info["task"] == "detect"
    if (fmt == "coco" or save_images is not None) and not detect:
        raise UserError("--format coco and --save-images apply to detection runs")
    files = expand_sources(sources)
    console = Console(stderr=True)
    options = {"conf": conf, "iou": iou} if detect else {"topk": topk}
    results: list[Result] = []
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task("predict", total=len(files))
        for result in predictor.predict_iter(files, batch=batch, workers=workers, **options):
            results.append(result)
            if save_images is not None and result.error is None:
                _save_drawn(result, predictor.classes, save_images)
            progress.advance(bar)
    failed = sum(r.error is not None for r in results)
    if fmt == "table" and out is None:
        Console().print(_table(results))
    else:
        text = _render(results, "csv" if fmt == "table" else fmt, predictor.info)
        if out is None:
            print(text, end="")
        else:
            write_text(out, text)
            console.print(f"{len(results)} results written to {out}")
    if save_images is not None:
        console.print(f"images with boxes drawn written to {save_images}")
    if failed:
        console.print(f"[yellow]{failed} file(s) could not be read and were skipped[/]")


def _check_options(fmt: str, topk: int, conf: float, iou: float | None) -> None:
    if fmt not in ("table", "json", "csv", "coco"):
        raise UserError(f"--format {fmt!r}: use table, json, csv or coco")
    if topk < 1:
        raise UserError(f"--topk {topk}: must be at least 1")
    if not 0 <= conf <= 1 or (iou is not None and not 0 < iou <= 1):
        raise UserError("--conf must be in [0, 1] and --iou in (0, 1]")


def _save_drawn(result: Detections, classes: list[str], folder: Path) -> None:
    from imagerec.data.images import read_image
    from imagerec.outputs.visualize import draw_detections, save_png

    source = Path(result.source)
    save_png(draw_detections(read_image(source), result, classes), folder / f"{source.stem}.png")
