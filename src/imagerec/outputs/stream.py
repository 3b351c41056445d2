"""Writing predictions while they are made, so that memory stays flat whatever the number of images and an
interrupted run continues where its written results end (`--resume`).

Results go out in commits: the encoded results first (appended to a CSV, JSON Lines or JSON file and synced, or one
Parquet file more in the output folder), then a small progress record beside the output (`.<name>.progress.json`,
replaced atomically) saying how many images, bytes and Parquet files are complete. A crash between the two leaves
data the record does not count: `--resume` cuts it away (the file is truncated to the recorded size; Parquet files
past the recorded count are deleted), checks that the options and the first images are those of the interrupted
run, and carries on after them. So every image is written exactly once. The record is removed when the output is
complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

from typing_extensions import Unpack  # typing.Unpack for **kwargs needs Python 3.12

from imagerec.errors import UserError
from imagerec.outputs.predict import Predictor
from imagerec.outputs.sources import Fingerprint, ImageLike, iter_sources, source_name
from imagerec.outputs.writers import TEXT_FORMATS, check_image_ids, choose_format, coco_image_ids
from imagerec.runs import make_folder, write_error, write_json
from imagerec.safe_read import load_json
from imagerec.tasks.base import PredictSettings
from imagerec.tasks.results import Result

PARQUET_SHARD = 1024  # images per Parquet file: fewer rows make Parquet slow to read; more lose more work to a crash
_PART = "part-{:05d}.parquet"


@dataclass
class Progress:
    """The progress record of an unfinished output: what it was started with (`plan`), how many of the `total`
    images are written (`done`, the digest of their names), and where the complete data ends (`size` bytes of a
    text file, `items` JSON values written, `shards` Parquet files)."""

    plan: dict[str, Any]
    total: int
    done: int = 0
    digest: str = ""
    size: int = 0
    items: int = 0
    shards: int = 0


@dataclass
class Written:
    """What `write_predictions` did: `total` images (of which `skipped` had been written by the interrupted run this
    one resumed), and those that could not be read (`unreadable`, with the `first_error`)."""

    out: Path | None
    format: str
    total: int
    skipped: int = 0
    unreadable: int = 0
    first_error: str | None = None


def progress_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.progress.json")


def plan_of(predictor: Predictor, sources: Sequence[ImageLike], fmt: str, batch: int, options: dict[str, Any]) -> dict:
    """What a resumed run must share with the interrupted one: the model (its run or file, runtime and ModelInfo),
    the sources as given, the format, the batch (a detector's boxes can depend on the images batched with it) and
    the prediction options."""
    info = json.dumps(predictor.info.to_json(), sort_keys=True)
    return {
        "model": str(predictor.run.path.resolve()) if predictor.run is not None else predictor.info.model,
        "model_info": hashlib.sha256(info.encode()).hexdigest()[:16],
        "runtime": predictor.runtime,
        "sources": [str(Path(s).expanduser().absolute()) if isinstance(s, str | Path) else repr(s) for s in sources],
        "format": fmt,
        "batch": batch,
        "max_image_pixels": predictor.max_image_pixels,
        **{key: value for key, value in options.items() if value is not None},
    }


def _differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    keys = list(dict.fromkeys([*before, *now]))
    return [f"{key} was {before.get(key)!r}, now {now.get(key)!r}" for key in keys if before.get(key) != now.get(key)]


class _Sink:
    """Where committed results go: a text file, the screen, or a folder of Parquet files."""

    def commit(self, encoded: list[Any], progress: Progress) -> None:
        raise NotImplementedError

    def finish(self, progress: Progress) -> None:
        """Complete the output (a JSON array's closing bracket)."""

    def close(self) -> None:
        """Let go of what the sink holds open."""


class _Text(_Sink):
    """CSV, JSON Lines or a JSON array, appended to a file (synced at each commit), or printed (no `handle`)."""

    def __init__(self, handle: BinaryIO | None, *, array: bool) -> None:
        self.handle, self.array = handle, array

    def write(self, text: str) -> None:
        if self.handle is None:
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        self.handle.write(text.encode("utf-8"))
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def commit(self, encoded: list[str], progress: Progress) -> None:
        if self.array:  # JSON values, each after "[" or a comma, on their own lines
            encoded = [("[\n" if i == 0 else ",\n") + text for i, text in enumerate(encoded, start=progress.items)]
            progress.items += len(encoded)
        self.write("".join(encoded))
        progress.size = self.handle.tell() if self.handle is not None else 0

    def finish(self, progress: Progress) -> None:
        if self.array:
            self.write("\n]\n" if progress.items else "[]\n")

    def close(self) -> None:
        if self.handle is not None:
            with contextlib.suppress(OSError):  # the error that brought us here is the news
                self.handle.close()


class _Parquet(_Sink):
    """Parquet files `part-00000.parquet`, … in a folder, each written under a temporary name and renamed."""

    def __init__(self, folder: Path, result_type: type) -> None:
        self.folder, self.result_type = folder, result_type

    def commit(self, encoded: list[dict[str, Any]], progress: Progress) -> None:
        import pyarrow.parquet as pq

        from imagerec.outputs.tables import to_table

        path = self.folder / _PART.format(progress.shards)
        tmp = path.with_name(f".{path.name}.tmp")
        pq.write_table(to_table(encoded, self.result_type), tmp)
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        progress.shards += 1


class ResultStream:
    """Results encoded as they come and committed every `every` images (see the module's docstring)."""

    def __init__(
        self,
        sink: _Sink,
        encode: Callable[[list[Result], int], list[Any]],
        progress: Progress,
        fingerprint: Fingerprint,
        *,
        every: int,
        record: Path | None,
    ) -> None:
        self.sink, self.encode, self.progress, self.fingerprint = sink, encode, progress, fingerprint
        self.every, self.record = every, record
        self.pending: list[Any] = []
        self.images = 0

    def add(self, result: Result) -> None:
        # Encoded at once: a segmentation result's full-size mask is not kept until the commit.
        self.pending += self.encode([result], self.progress.done + self.images + 1)
        self.fingerprint.add(result.source)
        self.images += 1
        if self.images >= self.every:
            self.commit()

    def commit(self) -> None:
        if not self.images:
            return
        self.sink.commit(self.pending, self.progress)
        self.progress.done += self.images
        self.progress.digest = self.fingerprint.hexdigest()
        self.pending, self.images = [], 0
        self.save()

    def save(self) -> None:
        """Replace the progress record (a new output has one from its start, so `--resume` always finds it)."""
        if self.record is not None:
            write_json(self.record, asdict(self.progress))

    def finish(self) -> None:
        self.commit()
        self.sink.finish(self.progress)
        if self.record is not None:
            self.record.unlink(missing_ok=True)


def _read_progress(out: Path) -> Progress | None:
    record = progress_path(out)
    if not record.exists():
        return None
    try:
        return Progress(**load_json(record))
    except (TypeError, ValueError, UserError):
        raise UserError(f"{record}: not a progress record imagerec wrote; remove it and {out} to start again") from None


def _count(sources: Sequence[ImageLike], done: int) -> tuple[int, Fingerprint]:
    """How many images `sources` holds, and the fingerprint of the names of the first `done`."""
    fingerprint, total = Fingerprint(), 0
    for position, source in enumerate(iter_sources(sources)):
        if position < done:
            fingerprint.add(source_name(source, position))
        total += 1
    return total, fingerprint


def _resume(out: Path, plan: dict[str, Any], sources: Sequence[ImageLike]) -> tuple[Progress, Fingerprint]:
    progress = _read_progress(out)
    if progress is None and out.exists():
        raise UserError(f"{out}: complete (no interrupted prediction is recorded); remove it to predict again")
    if progress is None or not out.exists():
        return _start(out, plan, sources, resume=False)  # nothing was written yet: --resume starts
    changed = _differences(progress.plan, plan)
    if changed:
        raise UserError(
            f"{out}: --resume with other options than the interrupted prediction ({'; '.join(changed)}); give the "
            f"same ones, or remove {out} to start again"
        )
    total, fingerprint = _count(sources, progress.done)
    if total < progress.done or fingerprint.hexdigest() != progress.digest:
        raise UserError(
            f"{out}: the images are not those the interrupted prediction began with (files were added, removed or "
            f"renamed among its first {progress.done}); remove {out} to start again"
        )
    progress.total = total
    return progress, fingerprint


def prepare_output(out: Path, fmt: str) -> None:
    """Make room for a new output at `out` (an earlier complete one is replaced), refusing to overwrite an
    interrupted one, or for Parquet anything but a folder of results imagerec wrote."""
    progress = _read_progress(out)
    if progress is not None and out.exists():
        raise UserError(
            f"{out}: holds an interrupted prediction ({progress.done} of {progress.total} images written); add "
            f"--resume to continue it, or remove {out} to start again"
        )
    if fmt == "parquet" and out.exists():
        parts = list(out.iterdir()) if out.is_dir() else None
        if parts is None or any(not p.name.startswith("part-") or p.suffix != ".parquet" for p in parts):
            raise UserError(f"{out}: exists and is not a folder of results imagerec wrote; choose another --out")
        shutil.rmtree(out)


def _open_sink(out: Path | None, fmt: str, progress: Progress, result_type: type[Result]) -> _Sink:
    """The sink for `fmt` at `out` (the screen when None), cut back to what `progress` records as written."""
    try:
        if fmt == "parquet":
            return _open_parquet(out, progress, result_type)
        return _open_text(out, progress, TEXT_FORMATS[fmt].header(result_type), array=TEXT_FORMATS[fmt].array)
    except OSError as error:
        raise write_error(out or Path("<stdout>"), error, if_full="before anything was written") from None


def _open_parquet(folder: Path, progress: Progress, result_type: type[Result]) -> _Parquet:
    make_folder(folder)
    for stale in folder.glob(".part-*.tmp"):
        stale.unlink()
    for extra in folder.glob("part-*.parquet"):  # written after the last record: they are made again
        if int(extra.stem.removeprefix("part-")) >= progress.shards:
            extra.unlink()
    return _Parquet(folder, result_type)


def _open_text(out: Path | None, progress: Progress, header: str, *, array: bool) -> _Text:
    if out is not None and progress.done:
        handle = out.open("r+b")
        if os.fstat(handle.fileno()).st_size < progress.size:
            handle.close()
            raise UserError(f"{out}: shorter than its progress record says; remove {out} to start again")
        handle.truncate(progress.size)  # what the crash wrote after the last record
        handle.seek(progress.size)
        return _Text(handle, array=array)
    if out is not None:
        make_folder(out.parent)
    sink = _Text(None if out is None else out.open("wb"), array=array)
    sink.write(header)
    progress.size = sink.handle.tell() if sink.handle is not None else 0
    return sink


def write_predictions(
    predictor: Predictor,
    sources: Sequence[ImageLike],
    out: Path | None = None,
    *,
    fmt: str | None = None,
    resume: bool = False,
    batch: int = 16,
    workers: int = 0,
    image_ids: Path | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_result: Callable[[Result], None] | None = None,
    **options: Unpack[PredictSettings],
) -> Written:
    """Predict `sources` (files, folders, `.txt` lists, globs) with `predictor` and write the results to `out` as
    they are made: `.parquet` (a folder of Parquet files, one row per image; see `imagerec.outputs.tables`),
    `.jsonl`, `.csv` or `.json` (or `fmt`: csv, jsonl, json, coco, parquet); with no `out`, printed. Memory does not
    grow with the number of images. `resume` continues an interrupted `out` after the images it holds (refused
    when the options or those images differ). `on_start(total, skipped)` is called once the sources are counted,
    `on_result(result)` after each image. Unreadable or missing images are written with their error and counted in
    the returned `Written`.
    """
    out = Path(out) if out is not None else None
    fmt = choose_format(fmt, out, predictor.task.result_type)
    if fmt == "table":
        raise UserError("write_predictions writes files or text; give an --out file or another --format")
    check_image_ids(image_ids, fmt)
    progress, fingerprint = _start(out, plan_of(predictor, sources, fmt, batch, options), sources, resume=resume)
    ids = coco_image_ids(image_ids, (Path(s) for s in iter_sources(sources))) if image_ids is not None else None
    sink = _open_sink(out, fmt, progress, predictor.task.result_type)
    stream = ResultStream(
        sink, _encoder(fmt, predictor, ids), progress, fingerprint, every=PARQUET_SHARD if fmt == "parquet" else batch,
        record=progress_path(out) if out is not None else None,
    )  # fmt: skip
    stream.save()
    written = Written(out, fmt, progress.total, skipped=progress.done)
    if on_start is not None:
        on_start(progress.total, progress.done)
    try:
        for result in predictor.predict_iter(sources, batch=batch, workers=workers, skip=progress.done, **options):
            stream.add(result)
            _tally(written, result)
            if on_result is not None:
                on_result(result)
        stream.finish()
    except KeyboardInterrupt:
        stream.commit()  # the results made before Ctrl-C are complete: keep them for --resume
        raise
    except OSError as error:
        raise write_error(out or Path("<stdout>"), error, if_full="; what was written is kept: free some space, "
                          "then run the same command with --resume") from None  # fmt: skip
    finally:
        sink.close()
    return written


def _start(
    out: Path | None, plan: dict[str, Any], sources: Sequence[ImageLike], *, resume: bool
) -> tuple[Progress, Fingerprint]:
    """The progress to start from: the interrupted run's (checked against `plan`), or none yet."""
    if resume:
        if out is None:
            raise UserError("--resume continues an output file: give the --out of the interrupted prediction")
        return _resume(out, plan, sources)
    total, fingerprint = _count(sources, 0)
    if out is not None:
        prepare_output(out, plan["format"])
    return Progress(plan=plan, total=total, digest=fingerprint.hexdigest()), fingerprint


def _encoder(
    fmt: str, predictor: Predictor, ids: dict[str, int | str] | None
) -> Callable[[list[Result], int], list[Any]]:
    """How results are encoded for `fmt`: text items, or rows of a table (Parquet)."""
    if fmt == "parquet":
        return lambda results, first: [r.to_row() for r in results]
    text = TEXT_FORMATS[fmt]
    return lambda results, first: text.items(results, predictor.info, ids, first)


def _tally(written: Written, result: Result) -> None:
    if result.error is not None:
        written.unreadable += 1
        written.first_error = written.first_error or result.error
