"""Progress bars, one look for training, validation, testing, evaluation and reading a dataset's files: what is
running, how much is done of all, a status (loss, images or files per second), time spent and time left. They are
transient: the lines each epoch or command prints stay, the bars go."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def image_progress(console: Console, *, enabled: bool = True) -> Progress:
    """A Rich Progress whose tasks carry a `status` field (empty until there is something to say). Shown only on a
    terminal or in a notebook: in a log file a transient bar would leave nothing but blank lines."""
    shown = enabled and (console.is_interactive or console.is_jupyter)
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not shown, transient=True,
    )  # fmt: skip


@contextlib.contextmanager
def image_counter(progress: Progress, description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A bar of `progress` over `total` images while the block runs; yields the callback that advances it by n
    images (and shows images/s)."""
    bar = progress.add_task(description, total=total, status="")
    start, done = time.perf_counter(), 0

    def advance(images: int) -> None:
        nonlocal done
        done += images
        rate = done / max(time.perf_counter() - start, 1e-9)
        progress.update(bar, completed=done, status=f"{rate:.0f} img/s")

    try:
        yield advance
    finally:
        progress.remove_task(bar)


@contextlib.contextmanager
def counting(console: Console | None, description: str, total: int) -> Iterator[Callable[[int], None] | None]:
    """A bar of its own over `total` images while the block runs (None without a console: nothing shown)."""
    if console is None:
        yield None
        return
    with image_progress(console) as progress, image_counter(progress, description, total) as advance:
        yield advance


@contextlib.contextmanager
def tally(console: Console, description: str) -> Iterator[Callable[[int, int], None]]:
    """A bar while the block runs, for work that learns its total as it goes: yields `progress(done, total)`."""
    with image_progress(console) as progress:
        bar = progress.add_task(description, total=None, status="")
        start = time.perf_counter()

        def update(done: int, total: int) -> None:
            rate = done / max(time.perf_counter() - start, 1e-9)
            progress.update(bar, completed=done, total=total, status=f"{rate:.0f} files/s")

        yield update
