"""`imagerec data ...`: sample, inspect, validate, split."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from imagerec.data.samples import SAMPLES, write_sample

app = typer.Typer(help="Write, inspect, validate and split datasets.", no_args_is_help=True)
Opt = typer.Option


@app.command("sample")
def sample(
    name: Annotated[str, typer.Argument(help=f"One of: {', '.join(SAMPLES.names())}.")],
    out: Annotated[Path, typer.Argument(help="Folder to write the images to.")],
) -> None:
    """Write embedded real data (shipped with scikit-learn / scikit-image) as an image folder."""
    path = write_sample(name, out)
    count = sum(1 for _ in path.rglob("*.png"))
    Console().print(f"wrote {count} images of {name!r} to {path}")
