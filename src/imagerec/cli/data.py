"""`imagerec data ...`: sample, inspect, validate, convert, split."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from imagerec.cli.shared import JsonOpt, MaxImagePixels, QuietOpt, print_json, status_console
from imagerec.config import MAX_IMAGE_PIXELS
from imagerec.data.samples import SAMPLES, write_sample
from imagerec.progress import tally

app = typer.Typer(help="Write, inspect, validate, convert and split datasets.", no_args_is_help=True)
Opt = typer.Option

DataArg = Annotated[
    Path,
    typer.Argument(
        help="Image folder, CSV file or folder of train/val/test CSVs; or detection data: COCO JSON, YOLO "
        "(data.yaml or images/ + labels/), Pascal VOC XML, or box CSVs; or segmentation data: images/ + masks/."
    ),
]
FormatOpt = Annotated[
    str, Opt("--format", help="Data format: auto (from the layout), imagefolder, csv, coco, yolo, voc or masks.")
]


@app.command("sample")
def sample(
    name: Annotated[str, typer.Argument(help=f"One of: {', '.join(SAMPLES.names())}.")],
    out: Annotated[Path, typer.Argument(help="New (or empty) folder to write the images to.")],
    force: Annotated[
        bool, Opt("--force", help="Write into a folder that holds files (same-named files are replaced).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write embedded real data (shipped with scikit-learn / scikit-image) as an image folder."""
    path = write_sample(name, out, force=force)
    images = path / "images" if (path / "images").is_dir() else path  # digit scenes also write masks/
    count = sum(1 for _ in images.rglob("*.png"))
    if as_json:
        print_json({"sample": name, "out": path, "images": count})
    else:
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
    counts = _counts_table(report["counts"], f"{report['root']} ({report['origin']})")
    if "masks" in report:
        counts.caption = "images containing each class (of the masks read)"
    console.print(counts)
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
    if "masks" in report:
        console.print(_masks_table(report))
        for note in report["notes"]:
            print(f"note: {note}")
    if "boxes" in report:
        console.print(_boxes_table(report))
        if report["boxes"]["per_image"]:
            per_image = report["boxes"]["per_image"]
            console.print(f"boxes per image min / median / max: {_spread(per_image)} (mean {per_image['mean']})")
        for note in report["notes"]:
            print(f"note: {note}")
    if report["unreadable"]:
        console.print(
            f"[yellow]{len(report['unreadable'])} file(s) have an unreadable header[/]; run imagerec data validate"
        )


def _masks_table(report: dict[str, Any]) -> Table:
    masks = report["masks"]
    splits = list(masks["pixel_share"])
    table = Table("pixel share", *splits, title=f"masks ({masks['kind']}, ignore_index {masks['ignore_index']})")
    for name in report["classes"]:
        table.add_row(name, *(f"{masks['pixel_share'][s][name]:.2%}" for s in splits))
    table.add_row("[dim]ignored (of all pixels)", *(f"{masks['ignored_share'][s]:.2%}" for s in splits))
    table.add_row("[dim]masks read", *(str(masks["read"][s]) for s in splits))
    table.add_row("[dim]width min / median / max", *([_spread(masks["width"])] + [""] * (len(splits) - 1)))
    table.add_row("[dim]height min / median / max", *([_spread(masks["height"])] + [""] * (len(splits) - 1)))
    return table


def _boxes_table(report: dict[str, Any]) -> Table:
    boxes = report["boxes"]
    splits = list(boxes["per_split"])
    table = Table("boxes", *splits, title=f"boxes ({report['format']} format)")
    table.add_row("boxes", *(str(boxes["per_split"][s]) for s in splits))
    for size, bound in (("small", "< 32²"), ("medium", "< 96²"), ("large", "≥ 96²")):
        table.add_row(f"  {size} ({bound} px)", *(str(boxes["sizes"][s][size]) for s in splits))
    table.add_row("images without boxes", *(str(boxes["images_without_boxes"][s]) for s in splits))
    table.add_row("marked ignore (crowd, difficult)", *(str(boxes["ignored"][s]) for s in splits))
    return table


@app.command("inspect")
def inspect(data: DataArg, as_json: JsonOpt = False, format: FormatOpt = "auto", quiet: QuietOpt = False) -> None:
    """Classes, counts per split and class, image sizes, channels, bit depths, formats and class imbalance;
    for detection data also boxes per split, their sizes, images without boxes and boxes per image; for mask
    data each class's pixel share per split and mask sizes."""
    from imagerec.data.checks import inspect_data

    with tally(status_console(quiet), "read image headers") as progress:
        report = inspect_data(data, format=format, progress=progress)
    if as_json:
        print_json(report)
    else:
        _print_inspection(Console(), report)


def _print_validation(report: dict[str, Any], data: Path) -> None:
    problems, warnings = report["problems"], report.get("warnings", [])
    for problem in [*problems, *warnings]:  # plain print: one unwrapped line each, never read as Rich markup
        print(f"{problem['kind']}: {problem['message']}")
    kinds = ", ".join(f"{n} {kind}" for kind, n in report["summary"].items())
    checked = f"checked {report['images']} images" + (f", {report['boxes']} boxes" if "boxes" in report else "")
    checked += f", {report['masks']} masks" if "masks" in report else ""
    line = f"{checked} in {data}: " + (f"{len(problems)} problem(s) ({kinds})" if problems else "no problems")
    if warnings:
        repaired = ", ".join(f"{n} {kind}" for kind, n in report["warning_summary"].items())
        line += f"; {len(warnings)} box(es) repaired when read ({repaired}: clipped or dropped)"
    print(line)


@app.command("validate")
def validate(
    data: DataArg,
    as_json: JsonOpt = False,
    format: FormatOpt = "auto",
    strict: Annotated[
        bool, Opt("--strict", help="Detection: boxes outside the image or of zero area are errors (exit 2).")
    ] = False,
    max_image_pixels: MaxImagePixels = MAX_IMAGE_PIXELS,
    quiet: QuietOpt = False,
) -> None:
    """Find corrupt or empty images (and those over --max-image-pixels), duplicates (across splits: leakage), odd
    channel counts and animated images (only their first frame is read); for detection
    data also inverted, unknown-category, duplicate and outside-the-image boxes; for mask data images without a
    mask, masks without an image, and masks of another size or with values that are no class.

    Prints one line per problem naming the file(s). Exit code 0: no problems (boxes clipped to their image or
    dropped for zero area are warnings); 1: problems found; 2: the data could not be read at all (missing path,
    malformed annotations), or --strict and some box had to be clipped or dropped.
    """
    from imagerec.data.checks import validate_data
    from imagerec.errors import UserError

    with tally(status_console(quiet), "validate") as progress:
        report = validate_data(data, format=format, max_image_pixels=max_image_pixels, progress=progress)
    if as_json:
        print_json(report)
    else:
        _print_validation(report, data)
    warnings = report.get("warnings", [])
    if strict and warnings:
        raise UserError(
            f"{data}: {len(warnings)} box(es) reach outside their image or have zero area (--strict); "
            f"fix them, first: {warnings[0]['message']}"
        )
    raise typer.Exit(1 if report["problems"] else 0)


@app.command("convert")
def convert(
    data: DataArg,
    out: Annotated[Path, typer.Argument(help="New folder to write the converted data into.")],
    to: Annotated[str, Opt("--to", help="Target format: coco, yolo or voc.")],
    format: FormatOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Write detection data as COCO JSON, YOLO or Pascal VOC (images hard-linked where possible), splits kept."""
    from imagerec.data.convert import convert_index
    from imagerec.data.formats import load_index

    report = convert_index(load_index(data, format=format), out, to=to)
    if as_json:
        print_json(dataclasses.asdict(report))
        return
    print(
        f"wrote {report.images} images and {report.boxes} boxes to {report.out} as {report.format} "
        f"({report.linked} hard-linked, {report.copied} copied)"
    )
    for what, n in report.left_out.items():
        print(f"left out {n} {what}")


@app.command("split")
def split(
    data: DataArg,
    out: Annotated[Path, typer.Argument(help="New folder to write OUT/{train,val,test}/<class>/ into.")],
    val: Annotated[float, Opt(help="Fraction of each class for validation.")] = 0.1,
    test: Annotated[float, Opt(help="Fraction of each class for testing.")] = 0.1,
    seed: Annotated[int, Opt(help="Random seed; the same seed gives the same split.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Write a stratified train/val/test split as folders (files hard-linked where possible, else copied)."""
    from imagerec.data.checks import split_dataset

    report = split_dataset(data, out, val=val, test=test, seed=seed)
    if as_json:
        print_json(report)
        return
    console = Console()
    console.print(_counts_table(report["counts"], f"{report['out']} (seed {seed})"))
    if report["pooled"]:
        console.print(f"the existing splits ({', '.join(report['pooled'])}) were pooled and split again")
    console.print(f"wrote {report['images']} images: {report['linked']} hard-linked, {report['copied']} copied")
