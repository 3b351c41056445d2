"""`imagerec data ...`: sample, inspect, validate, split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from imagerec.data.samples import SAMPLES, write_sample

app = typer.Typer(help="Write, inspect, validate and split datasets.", no_args_is_help=True)
Opt = typer.Option

DataArg = Annotated[Path, typer.Argument(help="Image folder, CSV file, or folder of train/val/test CSVs.")]
JsonOpt = Annotated[bool, Opt("--json", help="Print the result as JSON.")]


@app.command("sample")
def sample(
    name: Annotated[str, typer.Argument(help=f"One of: {', '.join(SAMPLES.names())}.")],
    out: Annotated[Path, typer.Argument(help="Folder to write the images to.")],
) -> None:
    """Write embedded real data (shipped with scikit-learn / scikit-image) as an image folder."""
    path = write_sample(name, out)
    count = sum(1 for _ in path.rglob("*.png"))
    Console().print(f"wrote {count} images of {name!r} to {path}")


def _tally(counts: dict[str, int]) -> str:
    return ", ".join(f"{key} ×{n}" for key, n in counts.items()) or "-"


def _spread(spread: dict[str, int] | None) -> str:
    return f"{spread['min']} / {spread['median']} / {spread['max']}" if spread else "-"


def _counts_table(counts: dict[str, dict[str, int]], title: str) -> Table:
    splits = list(counts)
    classes = list(next(iter(counts.values()), {}))
    table = Table("class", *splits, "total", title=title)
    for name in classes:
        row = [counts[split][name] for split in splits]
        table.add_row(name, *map(str, row), str(sum(row)))
    table.add_row(
        "[bold]total",
        *(str(sum(counts[s].values())) for s in splits),
        str(sum(sum(c.values()) for c in counts.values())),
    )
    return table


def _print_inspection(console: Console, report: dict[str, Any]) -> None:
    console.print(_counts_table(report["counts"], f"{report['root']} ({report['origin']})"))
    table = Table("property", "value", show_header=False)
    table.add_row("images", str(report["images"]))
    table.add_row("classes", str(len(report["classes"])))
    table.add_row("multi-label", "yes" if report["multilabel"] else "no")
    table.add_row("imbalance (largest / smallest class)", f"{report['imbalance_ratio']:.2f}")
    table.add_row("width min / median / max", _spread(report["width"]))
    table.add_row("height min / median / max", _spread(report["height"]))
    table.add_row("channels (decoded)", _tally(report["channels"]))
    table.add_row("bits per sample", _tally(report["bit_depths"]))
    table.add_row("modes", _tally(report["modes"]))
    table.add_row("formats", _tally(report["formats"]))
    console.print(table)
    if report["unreadable"]:
        console.print(
            f"[yellow]{len(report['unreadable'])} file(s) have an unreadable header[/]; run imagerec data validate"
        )


@app.command("inspect")
def inspect(data: DataArg, as_json: JsonOpt = False) -> None:
    """Classes, counts per split and class, image sizes, channels, bit depths, formats and class imbalance."""
    from imagerec.data.checks import inspect_data

    report = inspect_data(data)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        _print_inspection(Console(), report)


@app.command("validate")
def validate(data: DataArg, as_json: JsonOpt = False) -> None:
    """Find corrupt or empty images, duplicates (across splits: leakage) and odd channel counts.

    Prints one line per problem naming the file(s). Exit code 0: no problems; 1: problems found;
    2: the data could not be read at all (missing path, empty class folder, bad CSV).
    """
    from imagerec.data.checks import validate_data

    stderr = Console(stderr=True)
    with Progress(console=stderr, transient=True, disable=not stderr.is_terminal) as bar:
        task = bar.add_task("validate", total=None)
        report = validate_data(data, progress=lambda done, total: bar.update(task, completed=done, total=total))
    problems = report["problems"]
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        for problem in problems:  # plain print: one unwrapped line each, and paths never read as Rich markup
            print(f"{problem['kind']}: {problem['message']}")
        kinds = ", ".join(f"{n} {kind}" for kind, n in report["summary"].items())
        print(
            f"checked {report['images']} images in {data}: "
            + (f"{len(problems)} problem(s) ({kinds})" if problems else "no problems")
        )
    raise typer.Exit(1 if problems else 0)


@app.command("split")
def split(
    data: DataArg,
    out: Annotated[Path, typer.Argument(help="New folder to write OUT/{train,val,test}/<class>/ into.")],
    val: Annotated[float, Opt(help="Fraction of each class for validation.")] = 0.1,
    test: Annotated[float, Opt(help="Fraction of each class for testing.")] = 0.1,
    seed: Annotated[int, Opt(help="Random seed; the same seed gives the same split.")] = 0,
) -> None:
    """Write a stratified train/val/test split as folders (files hard-linked where possible, else copied)."""
    from imagerec.data.checks import split_dataset

    report = split_dataset(data, out, val=val, test=test, seed=seed)
    console = Console()
    console.print(_counts_table(report["counts"], f"{report['out']} (seed {seed})"))
    if report["pooled"]:
        console.print(f"the existing splits ({', '.join(report['pooled'])}) were pooled and split again")
    console.print(f"wrote {report['images']} images: {report['linked']} hard-linked, {report['copied']} copied")
