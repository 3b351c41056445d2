"""`imagerec embed` and `imagerec neighbors`."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from imagerec.cli.shared import JsonOpt, MaxImagePixels, QuietOpt, fail_if_unreadable, print_json, status_console
from imagerec.config import MAX_IMAGE_PIXELS
from imagerec.errors import UserError
from imagerec.progress import counting

Opt = typer.Option
TABLE_ROWS = 100  # most similar duplicate pairs shown in the table


@contextmanager
def _warnings_to(console: Console) -> Iterator[None]:
    """UserWarnings (e.g. fresh random weights) as one yellow line each, not Python's warning format."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        yield
    for warning in caught:
        console.print(f"[yellow]warning[/]: {warning.message}")


def embed(
    run_or_model: Annotated[str, typer.Argument(help="Run directory, or a classifier name (resnet18, timm:NAME).")],
    sources: Annotated[list[Path], typer.Argument(help="Image files and/or folders (searched recursively).")],
    out: Annotated[Path, Opt(help="FILE.parquet or FILE.npz to write.")],
    layer: Annotated[
        str | None, Opt(help="Module whose output to take, pooled (default: the classifier's input features).")
    ] = None,
    weights: Annotated[str | None, Opt(help="Model name: DEFAULT, a weights file or a run (default: fresh).")] = None,
    batch: Annotated[int, Opt(help="Images per batch.")] = 64,
    imgsz: Annotated[int | None, Opt(help="Model name: input size (default: the weights', else 224).")] = None,
    workers: Annotated[int, Opt(help="Processes decoding images in parallel.")] = 0,
    max_image_pixels: MaxImagePixels = MAX_IMAGE_PIXELS,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write one embedding per image (path, vector, class folder) to a Parquet or NPZ file. An unreadable file is
    left out (listed under `failed` in the file's metadata); after the others are written, the command then fails
    (exit 2) with one line counting them."""
    from imagerec.outputs.embed import check_suffix, embed, open_embedder, with_labels

    check_suffix(out)
    console = status_console(quiet)
    with _warnings_to(console):
        embedder = open_embedder(
            run_or_model, layer=layer, weights=weights, imgsz=imgsz, max_image_pixels=max_image_pixels
        )
    with counting(console, "embed", len(with_labels(sources))) as advance:
        result = embed(run_or_model, sources, batch=batch, workers=workers, embedder=embedder, progress=advance)
    result.save(out)
    where = f"layer {layer}" if layer else "default features"
    errors = [error for _, error in result.failed]
    if as_json:
        failed = [{"source": source, "error": error} for source, error in result.failed]
        print_json({"out": out, "count": len(result), "dim": result.dim, "layer": layer, "failed": failed})
    fail_if_unreadable(errors, len(result) + len(errors), done=f"embeddings were written to {out}")
    console.print(f"{len(result)} embeddings of {result.dim} values ({where}) written to {out}")
    console.print(f"next: imagerec neighbors QUERY --index {out}, or imagerec neighbors --duplicates --index {out}")


def _neighbors_table(results: list) -> Table:
    table = Table("query", "neighbour", "similarity", "label")
    for result in results:
        if result.error:
            table.add_row(result.query, "[red]unreadable[/]", "", result.error)
        elif not result.matches:
            table.add_row(result.query, "-", "", "")
        for i, match in enumerate(result.matches):
            table.add_row(result.query if i == 0 else "", match.path, f"{match.similarity:.4f}", match.label or "")
    return table


def neighbors(
    run_or_model: Annotated[
        str | None,
        typer.Argument(
            help="Run directory or model name that made the index: optional, the index records it (omit with "
            "--duplicates)."
        ),
    ] = None,
    queries: Annotated[list[Path] | None, typer.Argument(help="Query images and/or folders.")] = None,
    index: Annotated[Path | None, Opt(help="Embeddings file written by imagerec embed.")] = None,
    k: Annotated[int, Opt("--k", help="Neighbours per query.")] = 5,
    threshold: Annotated[
        float | None, Opt(help="Least cosine similarity to list (default: none; 0.98 with --duplicates).")
    ] = None,
    duplicates: Annotated[bool, Opt("--duplicates", help="List near-duplicate pairs inside the index.")] = False,
    as_json: Annotated[bool, Opt("--json", help="Print JSON instead of a table.")] = False,
    batch: Annotated[int, Opt(help="Query images per batch.")] = 64,
    quiet: QuietOpt = False,
) -> None:
    """Nearest indexed images to each query by cosine similarity, or (--duplicates) near-duplicate pairs."""
    if index is None:
        raise UserError("--index FILE is needed: the .parquet or .npz file imagerec embed wrote")
    if duplicates:
        if run_or_model is not None or queries:
            raise UserError("--duplicates searches the index itself; drop RUN and QUERY")
        _duplicates(index, 0.98 if threshold is None else threshold, as_json=as_json)
        return
    if run_or_model is not None and _is_query(run_or_model):  # `neighbors QUERY… --index F`: F names its run
        queries, run_or_model = [Path(run_or_model), *(queries or [])], None
    if not queries:
        raise UserError("give QUERY images or folders to look up in the index (or --duplicates)")
    from imagerec.outputs.embed import with_labels
    from imagerec.outputs.neighbors import neighbors as find

    console = status_console(quiet)
    with _warnings_to(console), counting(console, "embed queries", len(with_labels(queries))) as advance:
        results = find(run_or_model, queries, index=index, k=k, threshold=threshold, batch=batch, progress=advance)
    if as_json:
        print_json([r.to_dict() for r in results])
    else:
        Console().print(_neighbors_table(results))


def _is_query(argument: str) -> bool:
    """An image or folder of images, not a run directory; a name that is no path is a model name."""
    from imagerec.runs import RunDir

    path = Path(argument).expanduser()
    return path.exists() and not RunDir(path).model_info.exists()


def _duplicates(index: Path, threshold: float, *, as_json: bool) -> None:
    from imagerec.outputs.embed import read_embeddings
    from imagerec.outputs.neighbors import duplicates

    found = read_embeddings(index)
    pairs = duplicates(found, threshold=threshold)
    if as_json:
        print_json([p.to_dict() for p in pairs])
        return
    title = f"{len(pairs)} pair(s) at least {threshold} similar"
    more = len(pairs) - TABLE_ROWS
    caption = f"… and {more} more: --json lists them all, a higher --threshold fewer" if more > 0 else None
    table = Table("image", "near-duplicate", "similarity", title=title, caption=caption)
    for pair in pairs[:TABLE_ROWS]:
        table.add_row(pair.a, pair.b, f"{pair.similarity:.4f}")
    Console().print(table)
