"""What several commands share: options spelled once, and how a batch with unreadable files ends."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import typer

from imagerec.errors import UserError

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
