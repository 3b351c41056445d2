"""Batch prediction on Ray: the model loaded once per actor, fed batches by Ray Data, one row per image with the
columns `imagerec predict --out results.parquet` writes on this machine (`imagerec.outputs.tables`).

Ray is an optional extra (`pip install 'imagerec[ray]'`) and is imported only inside the functions here, so
importing this module (or `imagerec.batch`) costs no Ray import and works without it.

Image bytes are decoded with imagerec's own reader (`imagerec.data.images.read_array`), so 16-bit images, TIFF, EXIF
orientation and the pixel limit follow exactly the rules of a local prediction, and errors name the image's path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import torch
from typing_extensions import Unpack  # typing.Unpack for **kwargs needs Python 3.12

from imagerec.data.images import MAX_PIXELS, read_array
from imagerec.errors import UserError
from imagerec.outputs.predict import Predictor, load, to_tensor
from imagerec.outputs.sources import ImageLike, iter_sources, source_name
from imagerec.outputs.stream import PARQUET_SHARD, Written, prepare_output
from imagerec.outputs.tables import to_table
from imagerec.runs import make_folder, write_error
from imagerec.safe_read import printable
from imagerec.tasks.base import PredictSettings

if TYPE_CHECKING:
    import ray.data

INSTALL = "pip install 'imagerec[ray]'"
ANSWER_TIMEOUT_S = 5.0  # how long a cluster's head has to accept a connection: ray.init itself waits minutes
BLOCK_ROWS = 256  # images per Ray block in `predict_files` (or fewer, to give each actor a few blocks)
_PART = "part-{:05d}.parquet"  # the local engine's names (imagerec.outputs.stream), so both outputs read alike


def import_ray() -> Any:
    """The `ray` module with Ray Data, or a UserError naming the install command."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise UserError(f"batch prediction on Ray needs Ray, which is not installed: {INSTALL}") from None
    return ray


class _NamedBytes(io.BytesIO):
    """An image file's bytes that `read_array` reads as it reads the file: named (in its messages) and typed (by
    `suffix`: TIFF goes to tifffile) as the file is. No `__fspath__`: Pillow and tifffile must read the bytes."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.name, self.suffix = name, Path(name).suffix

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:  # Pillow's "cannot identify image file %r" names the file so
        return repr(self.name)


def read_bytes(data: bytes, name: str, *, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """An image file's bytes (as `ray.data.read_binary_files` gives them) as float32 C×H×W in [0, 1], decoded as
    `imagerec.data.images.read_image` decodes the file `name`; a UserError naming `name` when it cannot be."""
    array = read_array(_NamedBytes(data, name), max_pixels=max_pixels)  # type: ignore[arg-type]
    if array.ndim == 2:
        array = array[:, :, None]
    elif array.ndim != 3:
        raise UserError(f"{name}: expected a 2-D image, got an array of shape {array.shape}; save one page per file")
    return to_tensor(array)  # drops alpha and scales by bit depth as read_image does


def read_file(path: str, name: str, *, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """The image file at `path`, decoded by `read_bytes` and named `name` in errors (an actor reads an absolute
    path; the results name the image as it was given)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError(f"{name}: file not found") from None
    except OSError as error:
        raise UserError(f"{name}: cannot decode image ({error.strerror}); replace or remove the file") from None
    return read_bytes(data, name, max_pixels=max_pixels)


class PredictBatches:
    """The callable class Ray Data creates once per actor: the model is loaded in `__init__`, then each call
    predicts one batch (a dict of columns) and returns its rows as an Arrow table of `row_schema`'s columns."""

    def __init__(self, run: str, load_options: dict[str, Any], options: dict[str, Any]) -> None:
        self.predictor = load(run, **load_options)
        self.options = options

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        names = [str(n) for n in batch["source"]] if "source" in batch else [printable(str(p)) for p in batch["path"]]
        decoded = [self._decode(batch, row, name) for row, name in enumerate(names)]
        good = [image for image in decoded if not isinstance(image, str)]
        predicted = iter(self.predictor.predict_iter(good, batch=max(len(good), 1), **self.options))
        task = self.predictor.task
        results = [
            task.failed(name, image) if isinstance(image, str) else dataclasses.replace(next(predicted), source=name)
            for name, image in zip(names, decoded, strict=True)
        ]
        return to_table([result.to_row() for result in results], task.result_type)

    def _decode(self, batch: dict[str, np.ndarray], row: int, name: str) -> torch.Tensor | np.ndarray | str:
        """The image of `row`, or its error message (as a local prediction words it)."""
        limit = self.predictor.max_image_pixels
        try:
            if "bytes" in batch:
                return read_bytes(batch["bytes"][row], name, max_pixels=limit)
            if "image" in batch:
                return np.asarray(batch["image"][row])
            return read_file(str(batch["path"][row]), name, max_pixels=limit)
        except UserError as error:
            return printable(str(error))


def _resources(ray: Any, actors: int | None, gpus: bool) -> tuple[int, float, float]:
    """(actors, CPUs and GPUs per actor). GPU actors take one GPU each, one actor per GPU by default. CPU actors
    share the cluster's CPUs but one, one actor per CPU by default: the CPU left is for Ray Data's read tasks, which
    never start while actors hold every CPU (the dataset then waits forever)."""
    cluster = ray.cluster_resources()
    if gpus:
        return actors or max(1, int(cluster.get("GPU", 0))), 1.0, 1.0
    spare = max(float(cluster.get("CPU", 1)) - 1.0, 0.0)
    actors = actors or max(1, int(spare))
    return actors, min(1.0, spare / actors), 0.0


def _wants_gpu(ray: Any, predictor: Predictor, device: str) -> bool:
    """Whether actors run on GPUs: `device` cuda, or auto on a cluster with GPUs, for a run's own network."""
    eager = predictor.runtime in ("eager", "compile")
    has_gpus = ray.cluster_resources().get("GPU", 0) > 0
    if device == "cuda" and not (eager and has_gpus):
        why = "the Ray cluster has no GPU" if eager else f"--runtime {predictor.runtime} runs on the CPU"
        raise UserError(f"device cuda asked for, but {why}; use device cpu")
    return eager and device != "cpu" and has_gpus


def predict_dataset(
    dataset: ray.data.Dataset,
    run: str | Path,
    *,
    batch: int = 16,
    actors: int | None = None,
    runtime: str | None = None,
    device: str = "auto",
    imgsz: int | None = None,
    max_image_pixels: int = MAX_PIXELS,
    **options: Unpack[PredictSettings],
) -> ray.data.Dataset:
    """Predict the images of a Ray `dataset` with the run (a run directory, or a file `imagerec export` wrote) on a
    pool of `actors` that each load the model once; lazy, like every Ray Data transform.

    The dataset is one of: `ray.data.read_binary_files(paths, include_paths=True)` (columns `bytes`, `path`; decoded
    by imagerec as local files are), `ray.data.read_images(paths, include_paths=True)` (`image`, `path`; decoded by
    Ray, so its own rules for bit depth and orientation apply), or rows with only a `path` (each actor reads the
    file). An optional `source` column names the images in the results instead of `path`. The result has the columns
    of `imagerec.outputs.tables.row_schema` (those of `imagerec predict --out results.parquet`), one row per image;
    an unreadable image gets a row with `error` set. Rows keep the dataset's order when its
    `DataContext.execution_options.preserve_order` is set.

    `actors`: model copies (default: one per GPU, else one per CPU of the cluster but one). With `device` cuda, or
    auto on a cluster with GPUs, each actor takes one GPU (`num_gpus=1`); exported runtimes run on CPUs. The run
    must be readable at the same path on every node. `runtime`, `imgsz` and `max_image_pixels` are `load`'s;
    `options` are the prediction options (`topk`, `conf`, ...). The run is also loaded here, once, on the CPU, so
    a mistake in it or in the options is a UserError now rather than a failure in every actor.
    """
    ray = import_ray()
    columns = dataset.columns(fetch_if_missing=False)
    if columns is not None and "path" not in columns:
        raise UserError(
            f"the dataset has no `path` column (it has {', '.join(columns)}): read it with include_paths=True"
        )
    load_options = {"runtime": runtime, "imgsz": imgsz, "max_image_pixels": max_image_pixels}
    checked = _checked(run, load_options, options)
    return _map(ray, dataset, run, checked, load_options, options, batch=batch, actors=actors, device=device)


def _checked(run: str | Path, load_options: dict[str, Any], options: dict[str, Any]) -> Predictor:
    """The run loaded on the CPU, its prediction options checked: a mistake is one UserError before any actor."""
    predictor = load(run, device="cpu", **load_options)
    list(predictor.predict_iter([], **options))  # refuses options an exported graph cannot honour
    return predictor


def _map(
    ray: Any,
    dataset: ray.data.Dataset,
    run: str | Path,
    checked: Predictor,
    load_options: dict[str, Any],
    options: dict[str, Any],
    *,
    batch: int,
    actors: int | None,
    device: str,
) -> ray.data.Dataset:
    gpus = _wants_gpu(ray, checked, device)
    actors, cpus, gpus_each = _resources(ray, actors, gpus)
    load_options = {**load_options, "device": "cuda" if gpus else "cpu"}
    return dataset.map_batches(
        PredictBatches, fn_constructor_args=(os.path.abspath(run), load_options, options), batch_size=batch,
        batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus, num_gpus=gpus_each,
        udf_modifying_row_count=False,
    )  # fmt: skip


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UserError(
            f"--address {address}: give the cluster head's host:port (e.g. 10.0.0.5:6379) or ray://host:port"
        )
    return host.strip("[]"), int(port)


def connect(address: str | None = None) -> bool:
    """Connect to the Ray cluster at `address`, or start a local instance; False when Ray was already running here
    (it is then used as it is). A head that does not accept a connection within ANSWER_TIMEOUT_S is a UserError:
    `ray.init` would wait for it for minutes."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    if address not in (None, "auto", "local"):
        host, port = _host_port(address)
        try:
            socket.create_connection((host, port), timeout=ANSWER_TIMEOUT_S).close()
        except OSError as error:
            reason = "no answer" if isinstance(error, TimeoutError) else error.strerror or str(error)
            raise UserError(
                f"--address {address}: no Ray cluster answers there ({reason}); start one (`ray start --head`) or "
                "leave out --address to start a local Ray instance"
            ) from None
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    except ConnectionError as error:
        raise UserError(f"--address {address}: {str(error).splitlines()[0]}") from None
    return True


def _paths(sources: Sequence[ImageLike]) -> Iterator[dict[str, str]]:
    for position, source in enumerate(iter_sources(sources)):
        if not isinstance(source, str | Path):
            raise UserError("--engine ray predicts image files; in-memory images go to `imagerec.load(run).predict`")
        yield {"path": os.path.abspath(source), "source": source_name(source, position)}


def _write_parts(tables: Iterator[pa.Table], out: Path, on_rows: Callable[[pa.Table], None]) -> None:
    """`tables` as `part-00000.parquet`, … of PARQUET_SHARD rows, each written to a temporary name and renamed."""
    import pyarrow.parquet as pq

    pending: list[pa.Table] = []
    rows = shards = 0

    def flush(table: pa.Table) -> None:
        nonlocal shards
        path = out / _PART.format(shards)
        tmp = path.with_name(f".{path.name}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        shards += 1

    for table in tables:
        on_rows(table)
        pending.append(table)
        rows += table.num_rows
        while rows >= PARQUET_SHARD:
            whole = pa.concat_tables(pending)
            flush(whole.slice(0, PARQUET_SHARD))
            pending, rows = [whole.slice(PARQUET_SHARD)], rows - PARQUET_SHARD
    if rows:
        flush(pa.concat_tables(pending))


def predict_files(
    run: str | Path,
    sources: Sequence[ImageLike],
    out: str | Path,
    *,
    address: str | None = None,
    actors: int | None = None,
    batch: int = 16,
    runtime: str | None = None,
    imgsz: int | None = None,
    max_image_pixels: int = MAX_PIXELS,
    on_start: Callable[[int, int], None] | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    **options: Unpack[PredictSettings],
) -> Written:
    """What `imagerec predict --engine ray` does: predict `sources` (files, folders, `.txt` lists, globs) on Ray
    (the cluster at `address`, else a local instance started for this call and stopped after) and write `out`, a
    folder of Parquet files with the rows and files of a local `--out results.parquet`, in the sources' order.

    Missing or unreadable files get a row with their error, as locally. Every image is read by an actor at its
    absolute path, so on a cluster the images (and the run) must be at the same paths on every node. The results
    come back to this machine, which writes them. `on_start(total, 0)` is called once the sources are counted,
    `on_result(row)` after each image. No `--resume`: an interrupted output is written again whole.
    """
    ray = import_ray()
    out = Path(out)
    load_options = {"runtime": runtime, "imgsz": imgsz, "max_image_pixels": max_image_pixels}
    checked = _checked(run, load_options, options)  # before Ray starts: its mistakes come at once
    items = list(_paths(sources))
    prepare_output(out, "parquet")
    written = Written(out, "parquet", len(items))
    started = connect(address)
    if on_start is not None:
        on_start(len(items), 0)
    try:
        make_folder(out)
        with _ordered_and_quiet(ray):
            actors = _resources(ray, actors, _wants_gpu(ray, checked, "auto"))[0]
            dataset = _map(
                ray, ray.data.from_items(items, override_num_blocks=_blocks(len(items), batch, actors)), run, checked,
                load_options, options, batch=batch, actors=actors, device="auto",
            )  # fmt: skip
            tables = dataset.iter_batches(batch_size=None, batch_format="pyarrow")
            _write_parts(tables, out, _Tally(items, written, on_result))
    except OSError as error:
        raise write_error(out, error, if_full="; run the same command again once there is room") from None
    finally:
        if started:
            ray.shutdown()
    return written


def _blocks(images: int, batch: int, actors: int) -> int:
    """How many blocks `predict_files` cuts its images into: at least a batch each, and a few per actor, or
    BLOCK_ROWS each when that makes more (Ray's default, a block per image up to 200, is slow)."""
    batches = -(-images // batch)
    return max(1, min(batches, max(-(-images // BLOCK_ROWS), 4 * actors)))


@contextlib.contextmanager
def _ordered_and_quiet(ray: Any) -> Iterator[None]:
    """Ray Data keeps the rows in order and prints neither progress bars nor its INFO lines (the execution plan,
    its start and end) while this holds; its log file still gets them."""
    context = ray.data.DataContext.get_current()
    before = (context.execution_options.preserve_order, context.enable_progress_bars)
    consoles = [handler for handler in logging.getLogger("ray.data").handlers if handler.name == "console"]
    levels = [handler.level for handler in consoles]
    context.execution_options.preserve_order, context.enable_progress_bars = True, False
    for handler in consoles:
        handler.setLevel(logging.ERROR)
    try:
        yield
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = before
        for handler, level in zip(consoles, levels, strict=True):
            handler.setLevel(level)


class _Tally:
    """Counts the rows coming back, checking that they are the sources' images in order, and the unreadable ones."""

    def __init__(self, items: list[dict[str, str]], written: Written, on_result: Callable | None) -> None:
        self.items, self.written, self.on_result, self.done = items, written, on_result, 0

    def __call__(self, table: pa.Table) -> None:
        for row in table.to_pylist():
            due = self.items[self.done]["source"]
            if row["source"] != due:  # preserve_order keeps it; were Ray to scramble it, the output must not be
                raise RuntimeError(f"Ray returned the row of {row['source']!r} where {due!r} was due")
            self.done += 1
            if row["error"] is not None:
                self.written.unreadable += 1
                self.written.first_error = self.written.first_error or row["error"]
            if self.on_result is not None:
                self.on_result(row)
