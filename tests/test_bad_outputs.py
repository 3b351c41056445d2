"""Hostile images and unwritable outputs in every verb: decompression bombs refused from the header, GIFs read
(animated ones reported), read-only disks, file names that are not UTF-8, and predict / explain / embed agreeing
on unreadable inputs (each in the output, then exit 2 with one line)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

import imagerec
from helpers import claimed_size_png, invoke, read_only_copy, user_error
from imagerec.data.checks import validate_data
from imagerec.data.formats import load_index
from imagerec.data.images import MAX_PIXELS, read_image
from imagerec.data.samples import write_digit_scenes
from imagerec.errors import UserError
from imagerec.outputs.embed import read_embeddings

BAD_NAME = os.fsdecode(b"bad\xff\xfename.png")  # bytes that are not UTF-8: Python holds them as surrogate escapes
BAD_PRINTED = "bad\\xff\\xfename.png"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes of 12 small images, one of them named with bytes that are not UTF-8."""
    root = tmp_path_factory.mktemp("bad") / "data"
    rng = np.random.default_rng(0)
    for name, level in (("dark", 40), ("light", 200)):
        (root / name).mkdir(parents=True)
        for i in range(12):
            pixels = np.clip(rng.normal(level, 20, (12, 12)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / (BAD_NAME if (name, i) == ("dark", 0) else f"{name}_{i}.png"))
    return root


@pytest.fixture(scope="module")
def run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classifier trained one epoch on `data`: training itself reads the file whose name is not UTF-8."""
    out = tmp_path_factory.mktemp("bad") / "run"
    trained = imagerec.train(
        data, epochs=1, imgsz=8, batch=8, seed=0, precision="32", out=out, console=Console(file=io.StringIO())
    )
    return trained.path


@pytest.fixture
def inputs(tmp_path: Path, data: Path) -> Path:
    """A folder of one good image, one decompression bomb (40000×40000 claimed) and one truncated file."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    shutil.copy(data / "light" / "light_0.png", folder / "good.png")
    claimed_size_png(folder / "bomb.png", 40_000, 40_000)
    (folder / "truncated.png").write_bytes((data / "light" / "light_1.png").read_bytes()[:40])
    return folder


# --- decompression bombs ------------------------------------------------------------------------------------------


def test_a_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    bomb = claimed_size_png(tmp_path / "bomb.png", 40_000, 40_000)
    with pytest.raises(UserError, match=r"bomb\.png: 1,600,000,000 pixels is above the 178,956,970-pixel limit"):
        read_image(bomb)
    with pytest.raises(UserError, match="--max-image-pixels"):
        read_image(bomb)
    with pytest.raises(UserError, match="Pillow's own"):  # a limit above Pillow's cannot lift Pillow's
        read_image(bomb, max_pixels=2 * MAX_PIXELS)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_a_lower_limit_applies_before_decoding(make_image, tmp_path: Path, suffix: str) -> None:
    image = make_image(tmp_path / f"image{suffix}", size=(16, 12))
    assert read_image(image, max_pixels=16 * 12).shape == (3, 12, 16)
    with pytest.raises(UserError, match=r"16×12 pixels is above the 191-pixel limit"):
        read_image(image, max_pixels=16 * 12 - 1)


def test_predict_reports_each_unreadable_file_and_exits_2(run, inputs, tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "predictions.csv"
    line = user_error(capsys, monkeypatch, "predict", run, inputs, "--format", "csv", "--out", out)
    assert line.startswith("error: 2 of 3 image(s) could not be read: ")
    assert "bomb.png: 1,600,000,000 pixels" in line
    assert f"the other 1 results were written to {out}" in line
    rows = {Path(r["source"]).name: r for r in csv.DictReader(out.open(encoding="utf-8"))}
    assert rows["good.png"]["error"] == ""
    assert "--max-image-pixels" in rows["bomb.png"]["error"]
    assert "cannot decode" in rows["truncated.png"]["error"]


def test_explain_and_embed_agree_with_predict(run, inputs, tmp_path, capsys, monkeypatch) -> None:
    line = user_error(capsys, monkeypatch, "explain", run, inputs, "--out", tmp_path / "maps")
    assert line.startswith("error: 2 of 3 image(s) could not be read: ")
    explained = json.loads((tmp_path / "maps" / "explanations.json").read_text())
    assert sum("error" in e for e in explained) == 2

    line = user_error(capsys, monkeypatch, "embed", run, inputs, "--out", tmp_path / "e.npz")
    assert line.startswith("error: 2 of 3 image(s) could not be read: ")
    written = read_embeddings(tmp_path / "e.npz")
    assert [Path(p).name for p in written.paths] == ["good.png"]
    assert sorted(Path(f["path"]).name for f in written.meta["failed"]) == ["bomb.png", "truncated.png"]


def test_a_lower_limit_is_an_option_of_every_reading_verb(run, inputs, tmp_path, capsys, monkeypatch) -> None:
    (inputs / "bomb.png").unlink()
    (inputs / "truncated.png").unlink()
    for verb in (["predict"], ["explain", "--out", tmp_path / "maps"], ["embed", "--out", tmp_path / "e.npz"]):
        line = user_error(capsys, monkeypatch, *verb, run, inputs, "--max-image-pixels", 100)
        assert "good.png: 12×12 pixels is above the 100-pixel limit" in line


def test_train_and_evaluate_take_the_limit_too(run, data, tmp_path, capsys, monkeypatch) -> None:
    """Every image of `data` is 12×12: a 100-pixel limit refuses the first one read, before anything is trained."""
    line = user_error(capsys, monkeypatch, "train", data, "--max-image-pixels", 100, "--out", tmp_path / "run")
    assert "12×12 pixels is above the 100-pixel limit" in line
    assert not (tmp_path / "run").exists()
    line = user_error(capsys, monkeypatch, "evaluate", run, data, "--max-image-pixels", 100)
    assert "12×12 pixels is above the 100-pixel limit" in line
    assert invoke("evaluate", run, data, "--max-image-pixels", 144).exit_code == 0  # the limit is inclusive


def test_validate_names_the_bomb(data, tmp_path) -> None:
    copy = shutil.copytree(data, tmp_path / "data")
    claimed_size_png(copy / "light" / "bomb.png", 40_000, 40_000)
    report = validate_data(copy)
    assert report["summary"] == {"corrupt": 1}
    assert "1,600,000,000 pixels" in report["problems"][0]["message"]


def test_an_empty_folder_to_predict_is_an_error(run, tmp_path, capsys, monkeypatch) -> None:
    (tmp_path / "nothing" / "here").mkdir(parents=True)
    line = user_error(capsys, monkeypatch, "predict", run, tmp_path / "nothing")
    assert f"{tmp_path / 'nothing'}: no image files" in line


# --- GIF ----------------------------------------------------------------------------------------------------------


def test_gifs_are_images_and_animated_ones_are_reported(make_image_folder, tmp_path) -> None:
    root = make_image_folder(tmp_path / "data", {"a": 2, "b": 2})
    frames = [Image.new("RGB", (16, 12), (v, v, v)) for v in (10, 200)]
    frames[0].save(root / "a" / "still.gif")
    frames[0].save(root / "b" / "moving.gif", save_all=True, append_images=frames[1:], duration=100)
    index = load_index(root)
    assert sum(p.suffix == ".gif" for p in (s.path for s in index.all_samples())) == 2
    first = read_image(root / "b" / "moving.gif")
    assert first.shape[1:] == (12, 16)
    assert float(first.max()) == pytest.approx(10 / 255)  # the first frame
    report = validate_data(root)
    assert report["summary"] == {"animated": 1}
    assert "moving.gif: animated (2 frames); only the first frame is read" in report["problems"][0]["message"]


# --- names that are not UTF-8 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "json", "table"])
def test_names_that_are_not_utf8_are_written_escaped(run, data, fmt, capsys, monkeypatch) -> None:

    result = invoke("predict", run, data / "dark", "--format", fmt)
    assert result.exit_code == 0, result.output
    if fmt == "json":
        assert BAD_PRINTED in {Path(r["source"]).name for r in json.loads(result.stdout)}
    else:
        assert BAD_PRINTED in result.stdout


def test_embed_and_explain_write_names_that_are_not_utf8(run, data, tmp_path) -> None:

    assert invoke("embed", run, data / "dark", "--out", tmp_path / "e.parquet").exit_code == 0
    assert BAD_PRINTED in {Path(p).name for p in read_embeddings(tmp_path / "e.parquet").paths}
    assert invoke("explain", run, data / "dark" / BAD_NAME, "--out", tmp_path / "maps").exit_code == 0
    explained = json.loads((tmp_path / "maps" / "explanations.json").read_text(encoding="utf-8"))
    assert Path(explained[0]["source"]).name == BAD_PRINTED


# --- read-only outputs ----------------------------------------------------------------------------------------


@pytest.fixture
def read_only(tmp_path: Path, run: Path) -> Iterator[Path]:
    with read_only_copy(tmp_path / "disk", {"run": run}) as folder:
        yield folder


def test_every_writing_verb_refuses_a_read_only_place(run, data, read_only, tmp_path, capsys, monkeypatch) -> None:
    image = data / "light" / "light_0.png"
    commands = {
        "predict --out": ("predict", run, image, "--format", "json", "--out", read_only / "p.json"),
        "predict --save-images": ("predict", run, image, "--save-images", read_only / "empty"),
        "evaluate": ("evaluate", read_only / "run", data),
        "report": ("report", run, "--no-eval", "--out", read_only / "report"),
        "embed": ("embed", run, image, "--out", read_only / "e.npz"),
        "explain": ("explain", run, image, "--out", read_only / "maps"),
        "data split": ("data", "split", data, read_only / "split"),
        "data sample": ("data", "sample", "faces", read_only / "empty"),
    }
    for verb, args in commands.items():
        line = user_error(capsys, monkeypatch, *args)
        assert str(read_only) in line, verb
        assert "Read-only file system" in line or "Permission denied" in line, verb


# --- folders that hold something already, data of another task ------------------------------------------------


def test_data_sample_refuses_a_folder_that_holds_files(tmp_path, capsys, monkeypatch) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    line = user_error(capsys, monkeypatch, "data", "sample", "faces", folder)
    assert "--force" in line
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]

    assert invoke("data", "sample", "faces", folder, "--force").exit_code == 0
    assert sorted(p.name for p in folder.iterdir()) == ["face", "non_face", "notes.txt"]


def test_a_run_evaluated_on_data_of_another_task_names_both(run, data, tmp_path, capsys, monkeypatch) -> None:
    scenes = write_digit_scenes(tmp_path / "scenes", n_train=2, n_val=1, n_test=1, size=32)
    line = user_error(capsys, monkeypatch, "evaluate", run, scenes)
    assert "--task classify" in line
    assert "--task detect" in line


def test_an_error_naming_a_file_that_is_not_utf8_is_printed(run, tmp_path, capsys, monkeypatch) -> None:
    """The error line itself, not only the outputs, writes such a name's bytes as \\xNN (it used to crash)."""
    line = user_error(capsys, monkeypatch, "predict", run, tmp_path / BAD_NAME)
    assert BAD_PRINTED in line
