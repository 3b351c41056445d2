"""`imagerec` entry point: the Typer app, `--version`, and every UserError or command-line parse error → one line
on stderr with exit code 2."""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Any

import typer

from imagerec.cli import benchmark, data, embed, explain, export, predict, pretrain, report, serve, train
from imagerec.cli.shared import JsonOpt, print_json
from imagerec.errors import UserError
from imagerec.safe_read import printable

app = typer.Typer(
    name="imagerec",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


def version_numbers() -> dict[str, str | None]:
    """imagerec's version and those of what it runs on (cuda: None without a GPU)."""
    import platform
    from importlib.metadata import version

    import torch

    return {
        "imagerec": version("imagerec"), "torch": torch.__version__, "torchvision": version("torchvision"),
        "python": platform.python_version(), "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }  # fmt: skip


def versions() -> str:
    """The line `--version` prints."""
    v = version_numbers()
    device = f"CUDA {v['cuda']}" if v["cuda"] else "CPU only"
    return (
        f"imagerec {v['imagerec']} (torch {v['torch']}, torchvision {v['torchvision']}, Python {v['python']}, {device})"
    )


def _print_version(value: bool) -> None:
    if value:
        typer.echo(versions())
        raise typer.Exit


@app.callback(invoke_without_command=True)
def imagerec(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option("--version", "-V", callback=_print_version, is_eager=True, help="Print the versions and exit."),
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="Also print what the libraries log (Lightning, timm, Ray, …): for finding faults."
        ),
    ] = False,
) -> None:
    """Image recognition end to end: train, evaluate and predict from your own image folders. Each command's -q
    leaves only its results and errors."""
    if verbose:  # the entry point configures the process's logging, as its owner; the library never does
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if ctx.invoked_subcommand is None:  # bare `imagerec`: the help, as a request for it, not an error
        typer.echo(ctx.get_help())


@app.command("version")
def version(as_json: JsonOpt = False) -> None:
    """Print the versions of imagerec, torch, torchvision and Python, and whether CUDA is there."""
    if as_json:
        print_json(version_numbers())
    else:
        typer.echo(versions())


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
app.command("config")(train.config)
app.command("demo")(train.demo)
app.command("serve")(serve.serve)
app.add_typer(data.app, name="data")

EXIT_USER_ERROR = 2


def command() -> Any:
    """The app as the Click command `main` runs, its help written as the docs write commands: arguments by their
    names in capitals (`{RUN} {SOURCES}...`, where Typer writes `{run} {sources}...`) and flags without the `<bool>`
    placeholder Typer gives every option (a flag takes no value)."""
    built = typer.main.get_command(app)
    commands = [built]
    while commands:
        current = commands.pop()
        for param in current.params:
            if getattr(param, "is_flag", False):
                param.metavar = " "
            elif param.param_type_name == "argument" and param.metavar is None:  # RUN DATA..., as docs write them
                param.metavar = param.name.upper()
        current.get_help_option = _plain_help(current.get_help_option)  # -h is made anew for each context
        commands += getattr(current, "commands", {}).values()
    return built


def _plain_help(make: Any) -> Any:
    def help_option(ctx: Any) -> Any:
        option = make(ctx)
        if option is not None:
            option.metavar = " "
        return option

    return help_option


def main() -> None:
    # Outside Click's standalone mode its usage errors reach us, so that a misspelt option gets the one `error:`
    # line every other mistake gets instead of Typer's box.
    try:
        code = command()(prog_name="imagerec", standalone_mode=False)
    except UserError as error:
        # A file name whose bytes are not UTF-8 is printed as \xNN, as every output writes it.
        print(f"error: {printable(_one_line(error))}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except typer.TyperException as error:  # Click's errors (Typer's own copy of Click): usage and parameters
        context = getattr(error, "ctx", None)
        message = " ".join(error.format_message().split()).rstrip(".").replace(": Value error, ", ": ")
        print(f"error: {message}; see {context.command_path if context else 'imagerec'} -h", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except typer.Abort:  # Ctrl-C outside the commands that say what they kept
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


def _one_line(error: UserError) -> str:
    """The message itself. A UserError raised in a DataLoader worker comes back re-created with the worker's
    whole traceback as its message; its last line is the original `imagerec.errors.UserError: <message>`."""
    text = str(error).strip()
    if "Traceback" not in text:
        return text
    last = text.splitlines()[-1]
    return last.split(f"{UserError.__module__}.{UserError.__name__}: ", 1)[-1]
