"""Batch prediction on Ray (`imagerec predict --engine ray`, `imagerec.batch`): the rows, columns, files and order of
the local engine, from the CLI with one and two actors and from Ray datasets; Ray's absence and a dead cluster
address as one error line each.

One local Ray instance of 2 CPUs serves the module (started here, never a cluster on the network).
"""

from __future__ import annotations

import ast
import io
import shutil
import socket
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from helpers import invoke, user_error
from imagerec.data.images import read_image
from imagerec.errors import UserError
from imagerec.outputs import batch
from imagerec.outputs.tables import row_schema
from imagerec.tasks.results import Classification
from serve_runs import trained_run

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'imagerec[ray]'): Ray engine untested")

ROTATED = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00\x00\x00\x00\x00"
NOT_PARQUET = "error: --engine ray writes a folder of Parquet files: give --out results.parquet"
PROB_TOL = 1e-5  # the same network on the same pixels; only the batching around it differs


@pytest.fixture(scope="module")
def ray_instance() -> None:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    context = ray.data.DataContext.get_current()
    before = (context.enable_progress_bars, context.execution_options.preserve_order)
    context.enable_progress_bars, context.execution_options.preserve_order = False, True
    yield
    context.enable_progress_bars, context.execution_options.preserve_order = before
    ray.shutdown()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, digits_dir: Path) -> Path:
    return trained_run("classify", tmp_path_factory.getbasetemp(), digits_dir)


@pytest.fixture(scope="module")
def folder(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FOLDER/imgs/: 40 real digits (8-bit greyscale PNG) and a damaged PNG; FOLDER/images.txt lists them by paths
    relative to it, the damaged file 21st, a missing file 31st and the last digit twice."""
    folder = tmp_path_factory.mktemp("ray-images")
    (folder / "imgs").mkdir()
    names = []
    for i, path in enumerate(sorted(digits_dir.rglob("*.png"))[::45][:40]):
        shutil.copyfile(path, folder / "imgs" / f"{i:02d}_{path.name}")
        names.append(f"imgs/{i:02d}_{path.name}")
    (folder / "imgs" / "damaged.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    listed = [*names[:20], "imgs/damaged.png", *names[20:29], "missing.png", *names[29:], names[-1]]
    (folder / "images.txt").write_text("\n".join(listed) + "\n")
    return folder


@pytest.fixture(scope="module")
def local(run: Path, folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The local engine's output for images.txt (named from FOLDER, as given), and its error line."""
    out = tmp_path_factory.mktemp("local") / "results.parquet"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        with pytest.raises(UserError) as unreadable:
            invoke("predict", run, "images.txt", "--out", out)
    return out, f"error: {unreadable.value}"


def _one(folder: Path) -> Path:
    return next((folder / "imgs").glob("00_*.png"))


def _table(folder: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(part) for part in sorted(folder.glob("part-*.parquet")))


def assert_same_rows(got: pa.Table, expected: pa.Table) -> None:
    assert got.schema == expected.schema == row_schema(Classification)
    a, b = got.to_pylist(), expected.to_pylist()
    assert len(a) == len(b)
    for mine, theirs in zip(a, b, strict=True):
        for key in ("source", "label", "topk_labels", "error"):
            assert mine[key] == theirs[key], (key, mine, theirs)
        assert mine["prob"] == pytest.approx(theirs["prob"], abs=PROB_TOL)
        assert mine["topk_probs"] == pytest.approx(theirs["topk_probs"], abs=PROB_TOL)


@pytest.mark.usefixtures("ray_instance")
@pytest.mark.parametrize("actors", [1, 2])
def test_ray_engine_writes_what_the_local_engine_writes(capsys, monkeypatch, run, folder, local, tmp_path, actors):
    out = tmp_path / "results.parquet"
    monkeypatch.chdir(folder)
    line = user_error(capsys, monkeypatch, "predict", run, "images.txt", "--out", out, "--engine", "ray", "--actors",
                      actors)  # fmt: skip
    assert line == local[1].replace(str(local[0]), str(out))
    assert line.startswith("error: 2 of 43 image(s) could not be read: imgs/damaged.png: cannot decode image (")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in local[0].iterdir()) == ["part-00000.parquet"]
    assert_same_rows(_table(out), _table(local[0]))
    errors = [row for row in _table(out).to_pylist() if row["error"]]
    assert [(row["source"], row["error"]) for row in errors[1:]] == [("missing.png", "missing.png: file not found")]


def _local_rows(folder: Path, local: tuple[Path, str], *, errors: bool = True) -> tuple[list[str], pa.Table]:
    """The images listed (absolute, the missing one left out) and the local engine's rows for them, named as a Ray
    dataset of those paths names them."""
    listed = [str(folder / name) for name in (folder / "images.txt").read_text().split() if name != "missing.png"]
    rows = [row for row in _table(local[0]).to_pylist() if row["source"] != "missing.png"]
    for row in rows:
        row["source"] = str(folder / row["source"])
        row["error"] = row["error"] and row["error"].replace("imgs/", f"{folder}/imgs/")
    keep = [i for i, row in enumerate(rows) if errors or row["error"] is None]
    return [listed[i] for i in keep], pa.Table.from_pylist([rows[i] for i in keep], schema=row_schema(Classification))


@pytest.mark.usefixtures("ray_instance")
def test_predict_dataset_of_binary_files(run, folder, local):
    from imagerec.batch import predict_dataset

    images, expected = _local_rows(folder, local)
    files = ray.data.read_binary_files(images, include_paths=True)
    got = predict_dataset(files, run, batch=7).take_all()
    assert_same_rows(pa.Table.from_pylist(got, schema=row_schema(Classification)), expected)


@pytest.mark.usefixtures("ray_instance")
def test_images_ray_decoded(run, folder, local):
    """A batch of `ray.data.read_images` as an actor gets it (predicted here: no actor needed to check the rows)."""
    images, expected = _local_rows(folder, local, errors=False)
    arrays = ray.data.read_images(images, include_paths=True).take_batch(len(images), batch_format="numpy")
    predict = batch.PredictBatches(str(run), {"device": "cpu"}, {})
    assert_same_rows(predict(arrays), expected)


@pytest.mark.usefixtures("ray_instance")
def test_a_dataset_without_paths_is_refused(run):
    with pytest.raises(UserError, match="no `path` column .*include_paths=True"):
        batch.predict_dataset(ray.data.from_items([{"bytes": b""}]), run)


@pytest.mark.parametrize(
    ("mode", "name", "options"),
    [
        ("I;16", "deep.png", {}),
        ("RGBA", "alpha.png", {}),
        ("I;16", "deep.tif", {}),
        ("L", "grey.tif", {}),
        ("RGB", "turned.jpg", {"exif": ROTATED}),
        ("P", "palette.gif", {}),
    ],
)
def test_bytes_decode_as_files_do(make_image, tmp_path, mode, name, options):
    path = make_image(tmp_path / name, mode=mode, size=(9, 5), **options)
    assert batch.read_bytes(path.read_bytes(), str(path)).equal(read_image(path))


def test_bytes_refused_as_files_are(make_image, tmp_path):
    for path, limit in ((make_image(tmp_path / "big.png", size=(40, 30)), 1000),
                        (make_image(tmp_path / "big.tif", size=(40, 30)), 1000)):  # fmt: skip
        with pytest.raises(UserError) as local:
            read_image(path, max_pixels=limit)
        with pytest.raises(UserError) as remote:
            batch.read_bytes(path.read_bytes(), str(path), max_pixels=limit)
        assert str(remote.value) == str(local.value)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG")
    damaged = tmp_path / "cut.png"
    damaged.write_bytes(buffer.getvalue()[:40])
    with pytest.raises(UserError) as local:
        read_image(damaged)
    with pytest.raises(UserError) as remote:
        batch.read_bytes(damaged.read_bytes(), str(damaged))
    assert str(remote.value) == str(local.value)


def test_without_ray_one_line_names_the_install(capsys, monkeypatch, run, folder, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.data", None)
    line = user_error(
        capsys, monkeypatch, "predict", run, _one(folder), "--out", tmp_path / "r.parquet", "--engine", "ray"
    )
    assert line == "error: batch prediction on Ray needs Ray, which is not installed: pip install 'imagerec[ray]'"
    assert not (tmp_path / "r.parquet").exists()


def test_a_dead_address_is_one_line_in_seconds(capsys, monkeypatch, run, folder, tmp_path):
    with socket.socket() as unused:  # a port nothing listens on once closed
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # this module's own instance must not answer for it
    start = time.monotonic()
    out = tmp_path / "r.parquet"
    line = user_error(capsys, monkeypatch, "predict", run, _one(folder), "--out", out, "--engine", "ray", "--address",
                      f"127.0.0.1:{port}")  # fmt: skip
    assert time.monotonic() - start < 10
    assert line.startswith(f"error: --address 127.0.0.1:{port}: no Ray cluster answers there (")
    assert line.endswith("start one (`ray start --head`) or leave out --address to start a local Ray instance")
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], NOT_PARQUET),
        (["--out", "r.csv"], NOT_PARQUET),
        (["--out", "r.parquet", "--format", "jsonl"], NOT_PARQUET),
        (
            ["--out", "r.parquet", "--resume"],
            "error: --resume continues a prediction of --engine local; --engine ray "
            "writes its --out whole: leave out --resume, or use --engine local",
        ),  # fmt: skip
        (
            ["--out", "r.parquet", "--workers", "2"],
            "error: --workers applies to --engine local; leave it out with --engine ray",
        ),  # fmt: skip
        (["--out", "r.parquet", "--actors", "0"], "error: --actors 0: give 1 or more model copies"),
    ],
)
def test_ray_engine_refusals(capsys, monkeypatch, run, folder, tmp_path, args, expected):
    monkeypatch.chdir(tmp_path)
    assert user_error(capsys, monkeypatch, "predict", run, _one(folder), "--engine", "ray", *args) == expected


def test_engine_options_need_the_ray_engine(capsys, monkeypatch, run, folder):
    line = user_error(capsys, monkeypatch, "predict", run, _one(folder), "--address", "10.0.0.5:6379")
    assert line == "error: --address applies to --engine ray: add --engine ray, or leave out --address"
    line = user_error(capsys, monkeypatch, "predict", run, _one(folder), "--engine", "spark")
    assert line == "error: --engine 'spark': use local or ray"


def test_ray_is_imported_only_inside_the_functions_of_outputs_batch():
    """`import imagerec.batch` works without Ray and does not pay for importing it (test_package checks `imagerec`)."""
    src = Path(batch.__file__).parents[1]
    importers = []
    for path in sorted(src.rglob("*.py")):
        tree = ast.parse(path.read_text())
        top = {id(node) for node in tree.body if not isinstance(node, ast.If)}  # `if TYPE_CHECKING:` imports nothing
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [getattr(node, "module", "")]
            if isinstance(node, ast.Import | ast.ImportFrom) and any(n == "ray" or n.startswith("ray.") for n in names):
                importers.append((path.relative_to(src).as_posix(), "top" if id(node) in top else "inside"))
    assert importers
    assert set(importers) == {("outputs/batch.py", "inside")}
