"""What several commands share: options spelled once, and how a batch with unreadable files ends."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Annotated, Any

import typer

from imagerec.errors import UserError

if TYPE_CHECKING:
    from rich.console import Console

    from imagerec.runs import Run

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout (progress goes to stderr).")]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="Results and errors only: no progress bars, notes or next steps.")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Any setting as KEY=VALUE, repeatable (e.g. --set optimizer=sgd --set ema=0.999); "
        "imagerec config --print lists them.",
    ),
]


def status_console(quiet: bool = False, **options: Any) -> Console:
    """Where a command shows its progress and says what it did: stderr, so that results on stdout pipe cleanly;
    silent with --quiet."""
    from rich.console import Console

    return Console(stderr=True, quiet=quiet, **options)


def print_json(value: Any) -> None:
    """A command's result as JSON on stdout (paths and other objects as their text)."""
    print(json.dumps(value, indent=2, default=str))


def with_settings(settings: Sequence[str] | None) -> dict[str, Any]:
    """The `--set KEY=VALUE` settings as keyword options of the Python API (a key given twice: the last wins)."""
    from imagerec.config import parse_setting

    return dict(parse_setting(text) for text in settings or ())


MaxImagePixels = Annotated[
    int,
    typer.Option(
        min=1,
        help="Refuse image files whose header claims more pixels than this (a decompression bomb), before decoding.",
    ),
]


def fail_if_unreadable(errors: Sequence[str], total: int, *, done: str, count: int | None = None) -> None:
    """Exit 2 with one line when some of `total` inputs could not be read (`errors`, one message each, or the first
    few of `count`), after everything else was written; `done` says what became of the others."""
    count = len(errors) if count is None else count
    if count:
        more = f" (and {count - 1} more)" if count > 1 else ""
        raise UserError(
            f"{count} of {total} image(s) could not be read: {errors[0]}{more}; the other {total - count} {done}"
        )


def finish_run(console: Console, run: Run, *, as_json: bool, steps: Sequence[str], quiet: bool = False) -> None:
    """The end of `train` and `pretrain`: where the run and its report are, and (unless `quiet`) what to do next;
    with `as_json`, the run's summary as JSON on stdout instead (the console then writes to stderr)."""
    report = run.path / "report.html"
    if as_json:
        print_json({"run": run.path, "split": run.split, "best_epoch": run.best_epoch, "epochs": run.epochs,
                    "metrics": run.metrics, "report": report if report.exists() else None})  # fmt: skip
        return
    console.print(f"saved to [bold]{run.path}[/]")
    if report.exists():
        console.print(f"report: {report} (open it in a browser)", markup=False)
    for step in () if quiet else steps:
        console.print(f"next: {step}", markup=False)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send stdout to stderr, down to the file descriptor: the ONNX tracer and the quantisers print to it (graph
    dumps, progress bars), and `--json` must print JSON alone."""
    sys.stdout.flush()
    try:
        out, err = sys.stdout.fileno(), sys.stderr.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):  # a captured stdout (tests) has no descriptor
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    saved = os.dup(out)
    os.dup2(err, out)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, out)
        os.close(saved)
