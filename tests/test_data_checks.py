"""`imagerec data inspect | validate | split`: the Python functions and the CLI, on real digits and planted faults."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from imagerec.cli import main as cli_main
from imagerec.cli.main import app
from imagerec.data.checks import inspect_data, split_dataset, validate_data
from imagerec.data.formats import load_index
from imagerec.data.images import read_image
from imagerec.data.split import ensure_splits
from imagerec.errors import UserError

runner = CliRunner()


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _copy(source: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, dest)
    return dest


@pytest.fixture
def planted(digits_dir: Path, make_image, tmp_path: Path) -> tuple[Path, dict[str, list[Path]]]:
    """Real digits in train/test folders with one fault of every kind planted; returns the root and the faults."""
    root = tmp_path / "planted"
    for split, start, count in (("train", 0, 6), ("test", 6, 3)):
        for digit in ("0", "1"):
            for source in sorted((digits_dir / digit).glob("*.png"))[start : start + count]:
                _copy(source, root / split / digit / source.name)
    train0, train1 = sorted((root / "train" / "0").glob("*.png")), sorted((root / "train" / "1").glob("*.png"))
    leak = _copy(train0[0], root / "test" / "0" / "renamed.png")
    relabelled = _copy(train1[1], root / "test" / "0" / "relabelled.png")
    twin = _copy(train1[0], root / "train" / "1" / "twin.png")
    cut = make_image(root / "train" / "1" / "cut.png", size=(64, 64))
    cut.write_bytes(cut.read_bytes()[:300])
    empty = root / "train" / "0" / "empty.png"
    empty.write_bytes(b"")
    colour = make_image(root / "test" / "1" / "colour.png", mode="RGB", size=(8, 8))
    faults = {
        "leak": [train0[0], leak],
        "relabelled": [train1[1], relabelled],
        "duplicate": [train1[0], twin],
        "corrupt": [cut],
        "empty": [empty],
        "channels": [colour],
    }
    return root, faults


# --- inspect -------------------------------------------------------------------------------------------------


def test_inspect_digits(digits_dir):
    calls = []
    report = inspect_data(digits_dir, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(n, 1797) for n in range(1, 1798)]  # the progress bar's: every header, once, in order
    assert report["classes"] == [str(d) for d in range(10)]
    assert report["images"] == 1797
    assert report["splits"] == {"all": 1797}
    assert sum(report["counts"]["all"].values()) == 1797
    assert report["class_totals"]["3"] == 183
    assert report["class_totals"]["8"] == 174
    assert report["imbalance_ratio"] == round(183 / 174, 3)
    assert report["width"] == report["height"] == {"min": 8, "median": 8, "max": 8}
    assert report["channels"] == {"1": 1797}
    assert report["bit_depths"] == {"8": 1797}
    assert report["modes"] == {"L": 1797}
    assert report["formats"] == {"PNG": 1797}
    assert report["multilabel"] is False
    assert report["unreadable"] == []


def _oriented_jpeg(path: Path) -> Path:
    image = Image.fromarray(np.zeros((10, 20, 3), np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6  # shown rotated: 10 wide, 20 high
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, exif=exif.tobytes())
    return path


def test_inspect_headers_agree_with_decoding(make_image, tmp_path):
    files = [
        make_image(tmp_path / "a" / "grey.png", mode="L", size=(10, 6)),
        make_image(tmp_path / "a" / "deep.png", mode="I;16", size=(12, 8)),
        make_image(tmp_path / "a" / "alpha.webp", mode="RGBA", size=(9, 9), lossless=True),
        _oriented_jpeg(tmp_path / "b" / "turned.jpg"),
        make_image(tmp_path / "b" / "scan.tif", mode="RGB", size=(30, 4)),
        make_image(tmp_path / "b" / "old.bmp", mode="RGB", size=(5, 7)),
    ]
    report = inspect_data(tmp_path)
    decoded = [read_image(f).shape for f in files]
    widths, heights = sorted(s[2] for s in decoded), sorted(s[1] for s in decoded)
    assert report["width"] == {"min": widths[0], "median": widths[2], "max": widths[-1]}
    assert report["height"] == {"min": heights[0], "median": heights[2], "max": heights[-1]}
    assert report["channels"] == {"1": 2, "3": 4} == {str(c): sum(s[0] == c for s in decoded) for c in (1, 3)}
    assert report["bit_depths"] == {"16": 1, "8": 5}
    assert report["formats"] == {"BMP": 1, "JPEG": 1, "PNG": 2, "TIFF": 1, "WEBP": 1}
    assert report["modes"]["I;16"] == 1
    assert report["modes"]["RGBA"] == 1
    assert report["imbalance_ratio"] == 1.0


def test_inspect_lists_unreadable_files_instead_of_failing(make_image_folder, tmp_path):
    make_image_folder(tmp_path, {"cat": 2, "dog": 4})
    (tmp_path / "dog" / "junk.png").write_bytes(b"not an image at all")
    report = inspect_data(tmp_path)
    assert report["images"] == 7
    assert report["unreadable"] == [str(tmp_path / "dog" / "junk.png")]
    assert report["imbalance_ratio"] == 2.5
    assert report["formats"] == {"PNG": 6}


def test_inspect_multilabel_csv(make_image, tmp_path):
    for name in ("a", "b", "c"):
        make_image(tmp_path / f"{name}.png")
    (tmp_path / "labels.csv").write_text('path,label\na.png,"x;y"\nb.png,x\nc.png,x\n')
    report = inspect_data(tmp_path / "labels.csv")
    assert report["multilabel"] is True
    assert report["class_totals"] == {"x": 3, "y": 1}
    assert report["imbalance_ratio"] == 3.0


def test_inspect_shared_breastmnist(shared_datasets):
    report = inspect_data(shared_datasets / "breastmnist")
    assert report["counts"] == {
        "train": {"malignant": 147, "normal_or_benign": 399},
        "val": {"malignant": 21, "normal_or_benign": 57},
        "test": {"malignant": 42, "normal_or_benign": 114},
    }
    assert report["width"] == report["height"] == {"min": 28, "median": 28, "max": 28}
    assert report["channels"] == {"1": 780}


# --- validate ------------------------------------------------------------------------------------------------


def test_validate_clean_data_has_no_problems(digits_dir):
    report = validate_data(digits_dir)
    assert report["images"] == 1797
    assert report["problems"] == []
    assert report["summary"] == {}


def test_validate_finds_every_planted_fault(planted):
    root, faults = planted
    calls = []
    report = validate_data(root, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (report["images"], report["images"]) == (len(_files(root)), len(_files(root)))
    found = sorted((p["kind"], sorted(p["files"])) for p in report["problems"])
    expected = sorted(
        [("leak", sorted(map(str, faults["leak"]))), ("leak", sorted(map(str, faults["relabelled"])))]
        + [(kind, sorted(map(str, faults[kind]))) for kind in ("duplicate", "corrupt", "empty", "channels")]
    )
    assert found == expected
    assert report["summary"] == {"leak": 2, "corrupt": 1, "empty": 1, "duplicate": 1, "channels": 1}
    assert [p["kind"] for p in report["problems"]] == ["leak", "leak", "corrupt", "empty", "duplicate", "channels"]
    messages = {p["files"][-1]: p["message"] for p in report["problems"]}
    relabelled = messages[str(faults["relabelled"][1])]
    assert "train and test" in relabelled
    assert "labelled differently" in relabelled
    assert "labelled differently" not in messages[str(faults["leak"][1])]
    assert "truncated" in messages[str(faults["corrupt"][0])]
    for problem in report["problems"]:
        assert "\n" not in problem["message"]
        assert all(f in problem["message"] for f in problem["files"])


def test_validate_flags_duplicates_in_unsplit_data(make_image_folder, tmp_path):
    make_image_folder(tmp_path, {"cat": 3, "dog": 3})
    shutil.copyfile(tmp_path / "cat" / "cat_0.png", tmp_path / "dog" / "copy.png")
    (problem,) = validate_data(tmp_path)["problems"]
    assert problem["kind"] == "duplicate"
    assert "unsplit" in problem["message"]
    assert "labelled differently" in problem["message"]


def test_validate_flags_a_file_listed_twice_in_a_csv(make_image, tmp_path):
    for name in ("a", "b", "c"):
        make_image(tmp_path / f"{name}.png")
    (tmp_path / "labels.csv").write_text("path,label,split\na.png,x,train\nb.png,y,train\na.png,x,test\nc.png,y,test\n")
    (problem,) = validate_data(tmp_path / "labels.csv")["problems"]
    assert problem["kind"] == "leak"
    assert problem["files"] == [str((tmp_path / "a.png").resolve())] * 2


# --- split ---------------------------------------------------------------------------------------------------


def test_split_digits(digits_dir, tmp_path):
    out = tmp_path / "out"
    report = split_dataset(digits_dir, out, val=0.1, test=0.2, seed=3)
    assert sorted(p.name for p in out.iterdir()) == ["test", "train", "val"]
    assert report["images"] == len(_files(out)) == 1797
    assert report["linked"] == 1797
    assert report["copied"] == 0
    index = load_index(out)
    assert index.origin == "folders"
    assert index.classes == [str(d) for d in range(10)]
    for split, fraction in (("train", 0.7), ("val", 0.1), ("test", 0.2)):
        assert index.counts(split) == list(report["counts"][split].values())
        totals = load_index(digits_dir).counts("all")
        assert all(abs(n - fraction * t) <= 1 for n, t in zip(index.counts(split), totals, strict=True))
    for sample in index.all_samples():
        source = digits_dir / index.classes[sample.target] / sample.path.name
        assert os.path.samefile(source, sample.path)  # a hard link to the original, in the right class


def test_split_matches_the_split_train_makes(digits_dir, tmp_path):
    split_dataset(digits_dir, tmp_path / "out", val=0.1, test=0.1, seed=11)
    index = ensure_splits(load_index(digits_dir), val=0.1, test=0.1, seed=11)
    for split, samples in index.splits.items():
        expected = sorted(f"{split}/{index.classes[s.target]}/{s.path.name}" for s in samples)
        assert sorted(f for f in _files(tmp_path / "out") if f.startswith(f"{split}/")) == expected


def test_split_is_reproducible(digits_dir, tmp_path):
    split_dataset(digits_dir, tmp_path / "a", val=0.1, test=0.1, seed=5)
    split_dataset(digits_dir, tmp_path / "b", val=0.1, test=0.1, seed=5)
    split_dataset(digits_dir, tmp_path / "c", val=0.1, test=0.1, seed=6)
    assert _files(tmp_path / "a") == _files(tmp_path / "b") != _files(tmp_path / "c")


def test_split_pools_existing_splits_and_keeps_same_named_files(make_image, tmp_path):
    data = tmp_path / "data"
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            for i in range(3):
                make_image(data / split / cls / f"img_{i}.png")  # the same names in train and test
    report = split_dataset(data, tmp_path / "out", val=0.0, test=0.5, seed=0)
    assert report["pooled"] == ["train", "test"]
    assert report["counts"] == {"train": {"cat": 3, "dog": 3}, "test": {"cat": 3, "dog": 3}}
    written = _files(tmp_path / "out")
    assert len(written) == 12
    assert {Path(f).name for f in written} >= {"img_0.png", "img_0-1.png"}


def test_split_copies_when_hard_links_fail(make_image_folder, tmp_path, monkeypatch):
    data = make_image_folder(tmp_path / "data", {"a": 4, "b": 4})

    def no_links(source, dest):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    report = split_dataset(data, tmp_path / "out", val=0.25, test=0.25, seed=0)
    assert report["linked"] == 0
    assert report["copied"] == 8
    for written in (tmp_path / "out").rglob("*.png"):
        source = data / written.parent.name / written.name
        assert not os.path.samefile(source, written)
        assert source.read_bytes() == written.read_bytes()


def test_interrupted_split_leaves_nothing(make_image_folder, tmp_path, monkeypatch):
    data = make_image_folder(tmp_path / "data", {"a": 5, "b": 5})
    real_link, calls = os.link, []

    def interrupted(source, dest):
        calls.append(dest)
        if len(calls) == 4:
            raise KeyboardInterrupt
        real_link(source, dest)

    monkeypatch.setattr(os, "link", interrupted)
    with pytest.raises(KeyboardInterrupt):
        split_dataset(data, tmp_path / "out", val=0.2, test=0.2, seed=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no OUT, no half-written hidden folder


def test_split_refusals(make_image_folder, tmp_path):
    data = make_image_folder(tmp_path / "data", {"a": 5, "b": 5})
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match=r"taken: already exists and is not empty"):
        split_dataset(data, taken, val=0.2, test=0.2, seed=0)
    assert _files(taken) == ["keep.txt"]
    with pytest.raises(UserError, match=r"is inside the data folder"):
        split_dataset(data, data / "split", val=0.2, test=0.2, seed=0)
    (tmp_path / "empty").mkdir()
    assert split_dataset(data, tmp_path / "empty", val=0.2, test=0.2, seed=0)["images"] == 10


def test_split_class_with_one_image(make_image_folder, tmp_path):
    data = make_image_folder(tmp_path / "data", {"a": 5, "b": 1})
    with pytest.raises(UserError, match=r"class 'b' has 1 image"):
        split_dataset(data, tmp_path / "out", val=0.1, test=0.1, seed=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_split_refuses_multilabel(make_image, tmp_path):
    for name in ("a", "b"):
        make_image(tmp_path / f"{name}.png")
    (tmp_path / "labels.csv").write_text('path,label\na.png,"x;y"\nb.png,y\n')
    with pytest.raises(UserError, match="multi-label"):
        split_dataset(tmp_path / "labels.csv", tmp_path / "out", val=0.0, test=0.5, seed=0)


# --- CLI -----------------------------------------------------------------------------------------------------


def test_cli_inspect(digits_dir):
    result = runner.invoke(app, ["data", "inspect", str(digits_dir)])
    assert result.exit_code == 0, result.output
    assert "1797" in result.stdout
    assert "PNG" in result.stdout
    assert "imbalance" in result.stdout
    result = runner.invoke(app, ["data", "inspect", "--json", str(digits_dir)])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == inspect_data(digits_dir)


def test_cli_validate_exit_codes(planted, make_image_folder, tmp_path):
    clean = make_image_folder(tmp_path / "clean", {"a": 2, "b": 2})
    result = runner.invoke(app, ["data", "validate", str(clean)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith("no problems")
    root, faults = planted
    result = runner.invoke(app, ["data", "validate", str(root)])
    assert result.exit_code == 1
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 7  # six problems, one summary
    assert lines[-1].endswith("6 problem(s) (2 leak, 1 corrupt, 1 empty, 1 duplicate, 1 channels)")
    for kind, files in faults.items():
        kind = "leak" if kind == "relabelled" else kind
        assert any(line.startswith(f"{kind}: ") and all(str(f) in line for f in files) for line in lines), kind
    result = runner.invoke(app, ["data", "validate", "--json", str(root)])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["summary"]["leak"] == 2


def test_cli_split(digits_dir, tmp_path):
    result = runner.invoke(
        app, ["data", "split", str(digits_dir), str(tmp_path / "out"), "--val", "0.2", "--test", "0"]
    )
    assert result.exit_code == 0, result.output
    assert "1797 hard-linked" in result.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["train", "val"]


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["data", "validate", "{tmp}/missing"], "missing: no such file or folder"),
        (["data", "inspect", "{tmp}/data/one"], "only one class"),
        (["data", "split", "{tmp}/data", "{tmp}/out"], "class 'b' has 1 image(s)"),
    ],
)
def test_cli_user_errors_exit_2(make_image_folder, tmp_path, monkeypatch, capsys, command, message):
    make_image_folder(tmp_path / "data", {"a": 5, "b": 1})
    make_image_folder(tmp_path / "data" / "one", {"x": 2})
    monkeypatch.setattr(sys, "argv", ["imagerec", *(arg.format(tmp=tmp_path) for arg in command)])
    with pytest.raises(SystemExit) as exit_info:
        cli_main.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert message in err
    assert err.count("\n") == 1


def test_installed_command_exits_2_on_a_user_error(tmp_path):
    script = Path(sys.executable).with_name("imagerec")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "imagerec"]
    done = subprocess.run(
        [*command, "data", "validate", str(tmp_path / "nope")], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    hint = "no such file or folder; give the folder holding your class subfolders or a CSV"
    assert done.stderr == f"error: {tmp_path / 'nope'}: {hint}\n"
