"""What several commands share: options spelled once, and how a batch with unreadable files ends."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

import typer

from imagerec.errors import UserError

if TYPE_CHECKING:
    from rich.console import Console

    from imagerec.runs import Run

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout (progress goes to stderr).")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Any setting as KEY=VALUE, repeatable (e.g. --set optimizer=sgd --set ema=0.999); "
        "imagerec config --print lists them.",
    ),
]


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


def finish_run(console: Console, run: Run, *, as_json: bool, steps: Sequence[str]) -> None:
    """The end of `train` and `pretrain`: where the run and its report are, and what to do next; with `as_json`,
    the run's summary as JSON on stdout instead (the console then writes to stderr)."""
    report = run.path / "report.html"
    if as_json:
        summary = {"run": str(run.path), "split": run.split, "best_epoch": run.best_epoch, "epochs": run.epochs,
                   "metrics": run.metrics, "report": str(report) if report.exists() else None}  # fmt: skip
        print(json.dumps(summary, indent=2, default=str))
        return
    console.print(f"saved to [bold]{run.path}[/]")
    if report.exists():
        console.print(f"report: {report} (open it in a browser)", markup=False)
    for step in steps:
        console.print(f"next: {step}", markup=False)
