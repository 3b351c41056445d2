"""`imagerec` entry point: the Typer app, and UserError → one line on stderr with exit code 2."""

from __future__ import annotations

import sys

import typer

from imagerec.cli import benchmark, data, embed, explain, export, predict, pretrain, report, serve, train
from imagerec.errors import UserError
from imagerec.safe_read import printable

app = typer.Typer(
    name="imagerec",
    help="Image recognition end to end: train, evaluate and predict from your own image folders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("train")(train.train)
app.command("pretrain")(pretrain.pretrain)
app.command("evaluate")(predict.evaluate)
app.command("predict")(predict.predict)
app.command("explain")(explain.explain)
app.command("report")(report.report)
app.command("embed")(embed.embed)
app.command("neighbors")(embed.neighbors)
app.command("export")(export.export)
app.command("benchmark")(benchmark.benchmark)
app.command("models")(train.models)
app.command("demo")(train.demo)
app.command("serve")(serve.serve)
app.add_typer(data.app, name="data")

EXIT_USER_ERROR = 2


def main() -> None:
    try:
        app()
    except UserError as error:
        # A file name whose bytes are not UTF-8 is printed as \xNN, as every output writes it.
        print(f"error: {printable(_one_line(error))}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def _one_line(error: UserError) -> str:
    """The message itself. A UserError raised in a DataLoader worker comes back re-created with the worker's
    whole traceback as its message; its last line is the original `imagerec.errors.UserError: <message>`."""
    text = str(error).strip()
    if "Traceback" not in text:
        return text
    last = text.splitlines()[-1]
    return last.split(f"{UserError.__module__}.{UserError.__name__}: ", 1)[-1]
