"""What several commands share: options spelled once, and how a batch with unreadable files ends."""

from __future__ import annotations

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


def fail_if_unreadable(errors: list[str], total: int, *, done: str) -> None:
    """Exit 2 with one line when some of `total` inputs could not be read (`errors`, one message each), after
    everything else was written; `done` says what became of the others."""
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise UserError(
            f"{len(errors)} of {total} image(s) could not be read: {errors[0]}{more}; the other "
            f"{total - len(errors)} {done}"
        )
