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
from imagerec.outputs.results import Classification
from imagerec.runs import write_text

Opt = typer.Option


def print_metrics(console: Console, metrics: dict[str, Any], *, title: str) -> None:
    table = Table("metric", "value", title=title)
    for key, value in metrics.items():
        if isinstance(value, float):
            table.add_row(key, f"{value:.4f}")
    console.print(table)
    per_class = metrics.get("per_class")
    if per_class:
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


def _render(results: list[Classification], fmt: str) -> str:
    if fmt == "json":
        return json.dumps([r.to_dict() for r in results], indent=2) + "\n"
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["source", "label", "prob", "topk_labels", "topk_probs", "error"])
    for r in results:
        writer.writerow([
            r.source, r.label or "", f"{r.prob:.6f}" if r.prob is not None else "", ";".join(r.labels),
            ";".join(f"{p:.6f}" for p in r.probs), r.error or "",
        ])  # fmt: skip
    return buffer.getvalue()


def predict(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    sources: Annotated[list[Path], typer.Argument(help="Image files and/or folders.")],
    fmt: Annotated[str, Opt("--format", help="table | json | csv")] = "table",
    topk: Annotated[int, Opt(help="Labels per image.")] = 5,
    out: Annotated[Path | None, Opt(help="Write the results to this file instead of the screen.")] = None,
    batch: Annotated[int, Opt(help="Images per batch.")] = 64,
    workers: Annotated[int, Opt(help="Processes decoding images in parallel.")] = 0,
) -> None:
    """Predict images; unreadable files are reported in the output and skipped."""
    from imagerec.outputs.predict import expand_sources, load

    if fmt not in ("table", "json", "csv"):
        raise UserError(f"--format {fmt!r}: use table, json or csv")
    if topk < 1:
        raise UserError(f"--topk {topk}: must be at least 1")
    predictor = load(run)
    files = expand_sources(sources)
    console = Console(stderr=True)
    results: list[Classification] = []
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task("predict", total=len(files))
        for result in predictor.predict_iter(files, topk=topk, batch=batch, workers=workers):
            results.append(result)
            progress.advance(bar)
    failed = sum(r.error is not None for r in results)
    if fmt == "table" and out is None:
        table = Table("source", "label", "prob", "top-k")
        for r in results:
            if r.error:
                table.add_row(r.source, "[red]unreadable[/]", "", r.error)
            else:
                topk_text = ", ".join(f"{name} {p:.3f}" for name, p in zip(r.labels, r.probs, strict=True))
                table.add_row(r.source, r.label, f"{r.prob:.4f}", topk_text)
        Console().print(table)
    else:
        text = _render(results, "csv" if fmt == "table" else fmt)
        if out is None:
            print(text, end="")
        else:
            write_text(out, text)
            console.print(f"{len(results)} results written to {out}")
    if failed:
        console.print(f"[yellow]{failed} file(s) could not be read and were skipped[/]")
