"""Streaming prediction: results written as they are made (Parquet, JSON Lines, CSV, JSON), list files and globs as
sources, and `--resume` after a crash or Ctrl-C giving exactly the output of an uninterrupted run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from helpers import invoke, user_error
from imagerec.outputs import stream
from imagerec.outputs.predict import Predictor, load
from imagerec.outputs.stream import progress_path
from imagerec.outputs.tables import row_schema
from imagerec.outputs.writers import render
from imagerec.tasks.results import Classification

BATCH = ["--batch", "4"]


@pytest.fixture(scope="module")
def run(digits_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stream") / "run"
    result = invoke("train", digits_dir, "--epochs", 1, "--out", out, "--imgsz", "8", "--batch", "64", "--seed", "0")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def images(digits_dir, tmp_path_factory) -> Path:
    """30 real digits in three class folders."""
    folder = tmp_path_factory.mktemp("stream") / "images"
    for digit in ("1", "4", "7"):
        (folder / digit).mkdir(parents=True)
        for path in sorted((Path(digits_dir) / digit).glob("*.png"))[:10]:
            shutil.copy(path, folder / digit / path.name)
    return folder


def _sources(out: Path) -> list[str]:
    if out.suffix == ".parquet":
        return pq.read_table(out).column("source").to_pylist()
    if out.suffix == ".jsonl":
        return [json.loads(line)["source"] for line in out.read_text().splitlines()]
    if out.suffix == ".json":
        return [entry["source"] for entry in json.loads(out.read_text())]
    return [line.split(",")[0] for line in out.read_text().splitlines()[1:]]


def _crash_after(monkeypatch, count: int, error: type[BaseException]) -> None:
    """Make prediction stop with `error` after `count` results, as a killed or interrupted process would."""
    original = Predictor.predict_iter

    def predict_iter(self, *args, **kwargs):
        for made, result in enumerate(original(self, *args, **kwargs)):
            if made == count:
                raise error("stopped here")
            yield result

    monkeypatch.setattr(Predictor, "predict_iter", predict_iter)


def test_every_format_streams_the_results_that_render_gives(run, images, tmp_path):
    """Each format holds one result per image in the folder's sorted order, text formats byte for byte what the
    whole-list renderer writes; Parquet has the task's typed columns; decoding in 2 workers keeps the order."""
    predictor = load(run, device="cpu")
    expected = predictor.predict([images], batch=4)
    assert len(expected) == 30
    for suffix in ("jsonl", "csv", "json"):
        out = tmp_path / f"results.{suffix}"
        result = invoke("predict", run, images, "--out", out, *BATCH)
        assert result.exit_code == 0, result.output
        assert out.read_bytes() == render(expected, suffix, predictor.info).encode()
        assert not progress_path(out).exists()  # complete: the progress record is gone
    out = tmp_path / "results.parquet"
    result = invoke("predict", run, images, "--out", out, *BATCH, "--workers", "2")
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.schema.remove_metadata() == row_schema(Classification)
    assert table.to_pylist() == [r.to_row() for r in expected]


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "json", "parquet"])
def test_resume_after_a_crash_gives_the_uninterrupted_output(run, images, tmp_path, monkeypatch, suffix):
    """A crash after 13 images, with half-written data after the last commit, then --resume: the output equals a
    run that was never interrupted (bytes for text, rows for Parquet), every image exactly once."""
    monkeypatch.setattr(stream, "PARQUET_SHARD", 8)
    clean = tmp_path / f"clean.{suffix}"
    assert invoke("predict", run, images, "--out", clean, *BATCH).exit_code == 0
    out = tmp_path / f"results.{suffix}"
    with monkeypatch.context() as patch:
        _crash_after(patch, 13, RuntimeError)
        with pytest.raises(RuntimeError, match="stopped here"):
            invoke("predict", run, images, "--out", out, *BATCH)
    record = json.loads(progress_path(out).read_text())
    assert record["done"] == (8 if suffix == "parquet" else 12)  # the last commit: one shard, or three batches
    if suffix == "parquet":  # a shard written but not recorded, and a temporary one, as a crash can leave them
        shutil.copy(out / "part-00000.parquet", out / "part-00001.parquet")
        (out / ".part-00002.parquet.tmp").write_bytes(b"PAR1 half")
    else:
        with out.open("a") as handle:
            handle.write('{"source": "half a li')
    result = invoke("predict", run, images, "--out", out, *BATCH, "--resume")
    assert result.exit_code == 0, result.output
    assert f"30 results ({record['done']} of them before --resume)" in result.output
    if suffix == "parquet":
        assert pq.read_table(out).to_pylist() == pq.read_table(clean).to_pylist()
        assert sorted(p.name for p in out.iterdir()) == [f"part-0000{i}.parquet" for i in range(4)]
    else:
        assert out.read_bytes() == clean.read_bytes()
    assert not progress_path(out).exists()


def test_ctrl_c_keeps_what_was_made_and_says_how_to_go_on(run, images, tmp_path, monkeypatch):
    out = tmp_path / "results.jsonl"
    with monkeypatch.context() as patch:
        _crash_after(patch, 6, KeyboardInterrupt)
        result = invoke("predict", run, images, "--out", out, *BATCH)
    assert result.exit_code == 130
    assert "interrupted: 6 of 30 images are written" in result.output
    assert "--resume" in result.output
    assert len(out.read_text().splitlines()) == 6  # the batch under way when Ctrl-C came was kept too
    assert invoke("predict", run, images, "--out", out, *BATCH, "--resume").exit_code == 0
    assert _sources(out) == [str(p) for p in sorted(images.rglob("*.png"))]


def _interrupted(run: Path, images: Path, out: Path, monkeypatch) -> None:
    with monkeypatch.context() as patch:
        _crash_after(patch, 9, RuntimeError)
        with pytest.raises(RuntimeError):
            invoke("predict", run, images, "--out", out, *BATCH)


def test_an_interrupted_output_is_not_overwritten_or_resumed_differently(run, images, tmp_path, monkeypatch, capsys):
    out = tmp_path / "results.csv"
    _interrupted(run, images, out, monkeypatch)
    line = user_error(capsys, monkeypatch, "predict", run, images, "--out", out, *BATCH)
    assert "holds an interrupted prediction (8 of 30 images written)" in line
    assert "add --resume" in line
    line = user_error(capsys, monkeypatch, "predict", run, images, "--out", out, *BATCH, "--topk", "3", "--resume")
    assert "other options than the interrupted prediction (topk was 5, now 3)" in line
    line = user_error(capsys, monkeypatch, "predict", run, images, "--out", out, "--batch", "8", "--resume")
    assert "batch was 4, now 8" in line
    first = sorted((images / "1").glob("*.png"))[0]
    moved = tmp_path / "moved.png"
    shutil.move(first, moved)
    try:
        line = user_error(capsys, monkeypatch, "predict", run, images, "--out", out, *BATCH, "--resume")
    finally:
        shutil.move(moved, first)
    assert "the images are not those the interrupted prediction began with" in line
    with monkeypatch.context() as patch:  # killed before its first commit: the record of none done lets it resume
        _crash_after(patch, 0, RuntimeError)
        with pytest.raises(RuntimeError):
            invoke("predict", run, images, "--out", tmp_path / "early.csv", *BATCH)
    assert invoke("predict", run, images, "--out", tmp_path / "early.csv", *BATCH, "--resume").exit_code == 0
    clean = tmp_path / "clean.csv"
    assert invoke("predict", run, images, "--out", clean, *BATCH, "--resume").exit_code == 0  # nothing yet: starts
    line = user_error(capsys, monkeypatch, "predict", run, images, "--out", clean, *BATCH, "--resume")
    assert "complete (no interrupted prediction is recorded); remove it to predict again" in line


def test_a_list_file_and_a_glob_are_sources(run, images, tmp_path, capsys, monkeypatch):
    """A .txt list: relative paths from its folder, absolute ones, comments and blank lines; a missing file gets an
    error row in its place and the command exits 2 after writing the rest. A quoted glob expands sorted."""
    listed = sorted((images / "4").glob("*.png"))[:3]
    shutil.copy(listed[0], tmp_path / "here.png")
    (tmp_path / "list.txt").write_text(
        f"# scans for Monday\nhere.png\n\n{listed[1]}\nmissing/scan.png\n{listed[2]}\n", encoding="utf-8"
    )
    out = tmp_path / "results.jsonl"
    line = user_error(capsys, monkeypatch, "predict", run, tmp_path / "list.txt", "--out", out)
    assert "1 of 4 image(s) could not be read" in line
    assert "missing/scan.png: file not found" in line
    rows = [json.loads(text) for text in out.read_text().splitlines()]
    assert [Path(r["source"]).name for r in rows] == ["here.png", listed[1].name, "scan.png", listed[2].name]
    assert rows[2]["error"].endswith("file not found")
    readable = [tmp_path / "here.png", listed[1], listed[2]]
    predicted = load(run, device="cpu").predict(readable)
    assert [r for r in rows if r["error"] is None] == [r.to_dict() for r in predicted]
    out = tmp_path / "globbed.csv"
    assert invoke("predict", run, f"{images}/[14]/*.png", "--out", out).exit_code == 0
    assert _sources(out) == [str(p) for p in sorted(images.glob("[14]/*.png"))]
    line = user_error(capsys, monkeypatch, "predict", run, f"{images}/*/none*.png")
    assert "no image files match this pattern" in line


def test_parquet_needs_a_folder_of_its_own(run, images, tmp_path, capsys, monkeypatch):
    taken = tmp_path / "taken.parquet"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    line = user_error(capsys, monkeypatch, "predict", run, images, "--out", taken)
    assert "is not a folder of results imagerec wrote" in line
    assert (taken / "notes.txt").read_text() == "mine"
    single = tmp_path / "part-00000.parquet"  # a file, not a folder: replacing it would lose someone's data
    single.write_bytes(b"PAR1")
    line = user_error(capsys, monkeypatch, "predict", run, images, "--out", single)
    assert "is not a folder of results imagerec wrote" in line
    line = user_error(capsys, monkeypatch, "predict", run, images, "--format", "parquet")
    assert "add --out results.parquet" in line


def test_folders_are_walked_as_rglob_orders_them_without_entering_links(images, tmp_path):
    """The lazy walk gives `sorted(rglob)`'s order; a link to a folder (here one that loops) is not entered."""
    from imagerec.outputs.sources import walk_images

    folder = tmp_path / "scans"
    shutil.copytree(images, folder)
    (folder / "1" / "back").symlink_to(folder, target_is_directory=True)
    expected = sorted(p for p in folder.rglob("*.png") if "back" not in p.parts)
    assert list(walk_images(folder)) == expected
    assert len(expected) == 30
