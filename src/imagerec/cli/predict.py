"""`imagerec evaluate` and `imagerec predict`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from imagerec.cli.shared import MaxImagePixels, QuietOpt, fail_if_unreadable, print_json, status_console
from imagerec.config import MAX_IMAGE_PIXELS
from imagerec.errors import UserError
from imagerec.progress import image_progress
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
    quiet: QuietOpt = False,
) -> None:
    """Measure a trained run on a split of DATA (also saved to RUN/evaluation/<split>.json)."""
    from imagerec.api import evaluate as evaluate_run

    console = status_console(quiet)
    metrics = evaluate_run(run, data, split=split, max_image_pixels=max_image_pixels, console=console)
    if as_json:
        print_json(metrics)
    else:
        print_metrics(Console(), metrics, title=f"{split} metrics ({metrics['count']} images)")
    console.print(f"saved to {Path(run) / 'evaluation' / f'{split}.json'}", markup=False)


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
    sources: Annotated[
        list[Path],
        typer.Argument(help="Image files, folders, .txt files listing images (one per line) and/or quoted globs."),
    ],
    fmt: Annotated[
        str | None,
        Opt(
            "--format",
            help="table | csv | jsonl | json | coco (boxes as COCO results) | parquet (default: from "
            "--out's suffix, else a table).",
        ),
    ] = None,
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
    out: Annotated[
        Path | None,
        Opt(help="Write the results here as they are made: .parquet (a folder of Parquet files), .jsonl, .csv, .json."),
    ] = None,
    resume: Annotated[
        bool, Opt("--resume", help="Continue an interrupted --out after the images it holds (same options).")
    ] = False,
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
    engine: Annotated[
        str, Opt(help="local (this machine) | ray (a pool of model copies on Ray; writes --out results.parquet).")
    ] = "local",
    address: Annotated[
        str | None,
        Opt(help="--engine ray: the cluster's head (host:port, or ray://host:port); default: a local Ray instance."),
    ] = None,
    actors: Annotated[
        int | None, Opt(help="--engine ray: model copies at work (default: one per GPU, else one per CPU but one).")
    ] = None,
    as_json: Annotated[bool, Opt("--json", help="The results as one JSON list on stdout (--format json).")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Predict images. Results are written as they are made, so memory stays flat for millions of images, and an
    interrupted --out continues with --resume. An unreadable or missing file gets its error in the output (the
    `error` field or column) in its place; after everything else is written, the command then fails (exit 2) with
    one line counting them. With --engine ray the images are predicted on Ray (each actor loads the model once) and
    written to --out in their order, with the columns and files of the local engine; no --resume."""
    fmt = _json_format(fmt) if as_json else fmt
    options = {
        "topk": topk, "conf": conf, "iou": iou, "agnostic": agnostic_nms, "max_det": max_det, "tile": tile,
        "overlap": overlap, "max_pixels": max_pixels,
    }  # fmt: skip
    if _engine(engine, address, actors) == "ray":
        refused = {"--resume": resume, "--workers": workers, "--save-images": save_images, "--save-masks": save_masks,
                   "--image-ids": image_ids}  # fmt: skip
        ray = {"address": address, "actors": actors, "batch": batch, "runtime": runtime, "imgsz": imgsz,
               "max_image_pixels": max_image_pixels}  # fmt: skip
        _predict_on_ray(run, sources, out, fmt, refused, quiet, **ray, **options)
        return
    from imagerec.outputs.predict import load
    from imagerec.outputs.stream import write_predictions
    from imagerec.outputs.writers import check_image_ids, choose_format, save_outputs

    predictor = load(run, imgsz=imgsz, runtime=runtime, max_image_pixels=max_image_pixels)
    fmt = choose_format(fmt, out, predictor.task.result_type)
    if save_masks is not None and not issubclass(predictor.task.result_type, SegmentationMask):
        raise UserError("--save-masks applies to semantic segmentation runs")
    check_image_ids(image_ids, fmt)
    if fmt == "table" and resume:
        raise UserError("--resume continues results written to --out; give the --out of the interrupted prediction")
    console = status_console(quiet)
    how = {"batch": batch, "workers": workers, **options}
    with image_progress(console) as progress:
        bar = progress.add_task("predict", total=None, status="")

        def on_start(total: int, skipped: int) -> None:
            progress.reset(bar, total=total, completed=skipped, status="")

        def on_result(result: Any) -> None:
            save_outputs(result, Path(result.source), predictor.info, images=save_images, masks=save_masks,
                         max_pixels=max_image_pixels)  # fmt: skip
            _advance(progress, bar)

        if fmt == "table":
            results = _predict_table(predictor, sources, how, on_start, on_result)
        else:
            try:
                written = write_predictions(
                    predictor, sources, out, fmt=fmt, resume=resume, image_ids=image_ids, on_start=on_start,
                    on_result=on_result, **how,
                )  # fmt: skip
            except KeyboardInterrupt:
                if out is None:
                    raise
                task = progress.tasks[bar]
                console.print(f"interrupted: {task.completed:.0f} of {task.total or 0:.0f} images are written to "
                              f"{out}; run the same command with --resume to continue")  # fmt: skip
                raise typer.Exit(130) from None
    _say_saved(console, save_images, save_masks)
    if fmt == "table":
        Console().print(_table(results))
        fail_if_unreadable([r.error for r in results if r.error], len(results), done="results were printed above")
    else:
        _report(console, written, out)


def _json_format(fmt: str | None) -> str:
    """`--json`: the results as JSON, which is `--format json`."""
    if fmt not in (None, "json"):
        raise UserError(f"--json is --format json: drop --format {fmt}, or --json")
    return "json"


def _engine(engine: str, address: str | None, actors: int | None) -> str:
    if engine not in ("local", "ray"):
        raise UserError(f"--engine {engine!r}: use local or ray")
    if engine == "local" and (address is not None or actors is not None):
        flag = "--address" if address is not None else "--actors"
        raise UserError(f"{flag} applies to --engine ray: add --engine ray, or leave out {flag}")
    if actors is not None and actors < 1:
        raise UserError(f"--actors {actors}: give 1 or more model copies")
    return engine


def _advance(progress: Progress, bar: Any) -> None:
    """One more image done: the bar moves and shows images per second."""
    progress.advance(bar)
    speed = progress.tasks[bar].speed
    progress.update(bar, status=f"{speed:.1f} img/s" if speed else "")


def _predict_on_ray(
    run: Path,
    sources: list[Path],
    out: Path | None,
    fmt: str | None,
    refused: dict[str, Any],
    quiet: bool,
    **how: Any,
) -> None:
    """`predict --engine ray`: the sources predicted on Ray, written to the Parquet folder `out`."""
    given = [option for option, value in refused.items() if value]
    if "--resume" in given:
        raise UserError("--resume continues a prediction of --engine local; --engine ray writes its --out whole: leave "
                        "out --resume, or use --engine local")  # fmt: skip
    if given:
        raise UserError(f"{given[0]} applies to --engine local; leave it out with --engine ray")
    wanted = fmt or ("parquet" if out is not None and out.suffix.lower() == ".parquet" else None)
    if out is None or wanted != "parquet":
        raise UserError("--engine ray writes a folder of Parquet files: give --out results.parquet")
    from imagerec.outputs.batch import predict_files

    console = status_console(quiet)
    with image_progress(console) as progress:
        bar = progress.add_task("predict", total=None, status="")
        written = predict_files(
            run, sources, out, on_start=lambda total, _: progress.reset(bar, total=total, status=""),
            on_result=lambda _: _advance(progress, bar), **how,
        )  # fmt: skip
    _report(console, written, out)


def _say_saved(console: Console, images: Path | None, masks: Path | None) -> None:
    for folder, what in ((images, "drawn images"), (masks, "index-mask PNGs")):
        if folder is not None:
            console.print(f"{what} written to {folder}")


def _report(console: Console, written: Any, out: Path | None) -> None:
    """What was written; exit 2 when some images could not be read."""
    where = "printed above" if out is None else f"written to {out}"
    first = [written.first_error] if written.first_error else []
    fail_if_unreadable(first, written.total, count=written.unreadable, done=f"results were {where}")
    if out is not None:
        resumed = f" ({written.skipped} of them before --resume)" if written.skipped else ""
        console.print(f"{written.total} results{resumed} written to {out}")


def _predict_table(
    predictor: Any, sources: list[Path], how: dict[str, Any], on_start: Callable, on_result: Callable
) -> list[Any]:
    """Every result, kept for the table on the screen."""
    from imagerec.outputs.sources import count_sources

    on_start(count_sources(sources), 0)
    results = []
    for result in predictor.predict_iter(sources, **how):
        results.append(result)
        on_result(result)
    return results
