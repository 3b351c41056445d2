"""A corpus of bad inputs through every verb on every task (docs/errors.md).

Each case ends with exit 2 and one `error:` line naming what is wrong — never a traceback — and leaves every file
that existed before it byte for byte as it was, with no temporary file behind. The cases are generated from small
real data (scikit-learn's digits, digit scenes made from them): one good copy per task, then one fault per copy.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import claimed_size_png, read_only_copy
from imagerec.cli.main import main
from imagerec.data.convert import convert_data
from imagerec.data.samples import write_digit_scenes
from serve_runs import trained_run

TASKS = ("classify", "detect", "segment")


@dataclass(frozen=True)
class World:
    """The good inputs every case starts from: data per task and a trained run per task (read-only)."""

    root: Path
    data: dict[str, Path]
    runs: dict[str, Path]
    only: dict[str, Path]  # data that only this task can read: COCO without masks, masks without COCO
    disk: Path | None = None  # a read-only disk holding a copy of each run, for the cases that need one


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, digits_dir: Path) -> World:
    root = tmp_path_factory.mktemp("bad-inputs")
    digits = root / "digits"
    for label in ("0", "1", "2"):
        (digits / label).mkdir(parents=True)
        for path in sorted((digits_dir / label).glob("*.png"))[:8]:
            shutil.copyfile(path, digits / label / path.name)
    scenes = write_digit_scenes(root / "scenes", n_train=16, n_val=2, n_test=2, size=32)
    base = tmp_path_factory.getbasetemp()
    runs = {task: trained_run(task, base, digits_dir) for task in TASKS}
    boxes, masks = root / "boxes-only", root / "masks-only"
    shutil.copytree(scenes, boxes, ignore=shutil.ignore_patterns("masks", "classes.yaml"))
    shutil.copytree(scenes, masks, ignore=shutil.ignore_patterns("annotations"))
    only = {"classify": digits, "detect": boxes, "segment": masks}
    for to in ("yolo", "voc"):
        convert_data(boxes, root / to, to=to)
    return World(root, {"classify": digits, "detect": scenes, "segment": scenes}, runs, only)


@pytest.fixture(scope="module")
def read_only_disk(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with read_only_copy(tmp_path_factory.mktemp("disk") / READ_ONLY, world.runs) as disk:
        yield disk


# ---------------------------------------------------------------- faults: each writes a bad copy of good data


def _first_image(data: Path, task: str) -> Path:
    return sorted(data.glob("0/*.png") if task == "classify" else (data / "images" / "train").glob("*.png"))[0]


IMAGE_FAULTS: dict[str, Callable[[Path], None]] = {
    "corrupt": lambda p: p.write_bytes(bytes(range(256)) * 4),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "empty": lambda p: p.write_bytes(b""),
    "bomb": lambda p: claimed_size_png(p, 40_000, 40_000),
    "text": lambda p: p.write_text("not an image\n"),
}


def _coco(data: Path, edit: Callable[[dict], None]) -> None:
    path = data / "annotations" / "instances_train.json"
    coco = json.loads(path.read_text())
    edit(coco)
    path.write_text(json.dumps(coco))


def _set(path: list, value: object) -> Callable[[dict], None]:
    def edit(coco: dict) -> None:
        node = coco
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


COCO_FAULTS: dict[str, Callable[[Path], None]] = {
    "box-outside": lambda d: _coco(d, _set(["annotations", 0, "bbox"], [40.0, 40.0, 10.0, 10.0])),  # all of it
    "box-negative": lambda d: _coco(d, _set(["annotations", 0, "bbox"], [2.0, 2.0, -5.0, 4.0])),
    "box-nan": lambda d: _coco(d, _set(["annotations", 0, "bbox"], [float("nan"), 1.0, 4.0, 4.0])),
    "box-short": lambda d: _coco(d, _set(["annotations", 0, "bbox"], [1.0, 1.0])),
    "box-text": lambda d: _coco(d, _set(["annotations", 0, "bbox"], "1 2 3 4")),
    "unknown-category": lambda d: _coco(d, _set(["annotations", 0, "category_id"], 99)),
    "category-id-list": lambda d: _coco(d, _set(["annotations", 0, "category_id"], [1])),
    "image-id-list": lambda d: _coco(d, _set(["images", 0, "id"], [1])),
    "category-name-list": lambda d: _coco(d, _set(["categories", 0, "name"], ["zero"])),
    "width-nan": lambda d: _coco(d, _set(["images", 0, "width"], float("nan"))),
    "no-images-key": lambda d: _coco(d, lambda coco: coco.pop("images")),
    "missing-file": lambda d: _coco(d, _set(["images", 0, "file_name"], "nowhere.png")),
    "not-json": lambda d: (d / "annotations" / "instances_train.json").write_text("{'images': ["),
    "deep-json": lambda d: (d / "annotations" / "instances_train.json").write_text(_nested(100_000)),
    "json-list": lambda d: (d / "annotations" / "instances_train.json").write_text("[1, 2, 3]"),
}


def _label_file(data: Path) -> Path:
    return sorted((data / "labels" / "train").glob("*.txt"))[0]


def _first_line(text: str) -> Callable[[Path], None]:
    """Replace the first line of the first YOLO label file."""

    def edit(data: Path) -> None:
        path = _label_file(data)
        lines = path.read_text().splitlines()
        path.write_text("\n".join([text, *lines[1:]]) + "\n")

    return edit


def _data_yaml(text: str) -> Callable[[Path], None]:
    return lambda d: (d / "data.yaml").write_text("train: images/train\nval: images/val\n" + text)


YOLO_FAULTS: dict[str, Callable[[Path], None]] = {
    "class-out-of-range": _first_line("42 0.5 0.5 0.2 0.2"),
    "class-negative": _first_line("-1 0.5 0.5 0.2 0.2"),
    "not-a-number": _first_line("3 half 0.5 0.2 0.2"),
    "nan": _first_line("3 nan 0.5 0.2 0.2"),
    "three-columns": _first_line("3 0.5 0.5"),
    "outside": _first_line("3 1.5 1.5 0.4 0.4"),
    "names-mixed": _data_yaml("names: [zero, 1, [2]]\n"),
    "names-dict-text-ids": _data_yaml("names: {a: zero, b: one}\n"),
    "names-scalar": _data_yaml("names: 7\n"),
    "yaml-bomb": lambda d: (d / "data.yaml").write_text(_yaml_bomb()),
    "yaml-broken": _data_yaml("names: [zero, one\n"),
    "yaml-list": lambda d: (d / "data.yaml").write_text("- 1\n- 2\n"),
}


def _voc_file(data: Path) -> Path:
    return sorted((data / "Annotations").glob("*.xml"))[0]


def _voc(edit: Callable[[str], str]) -> Callable[[Path], None]:
    def write(data: Path) -> None:
        path = _voc_file(data)
        path.write_text(edit(path.read_text()))

    return write


_ENTITY_BOMB = (
    '<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;">'
    '<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>\n<annotation><filename>&lol3;</filename></annotation>\n'
)
_EXTERNAL = (
    '<?xml version="1.0"?>\n<!DOCTYPE a [<!ENTITY secret SYSTEM "file:///etc/hostname">]>\n'
    "<annotation><filename>&secret;</filename></annotation>\n"
)
VOC_FAULTS: dict[str, Callable[[Path], None]] = {
    "entity-bomb": lambda d: _voc_file(d).write_text(_ENTITY_BOMB),
    "external-entity": lambda d: _voc_file(d).write_text(_EXTERNAL),
    "not-xml": lambda d: _voc_file(d).write_text("<annotation><object>"),
    "no-bndbox": _voc(lambda xml: re.sub(r"<bndbox>.*?</bndbox>", "", xml, count=1, flags=re.S)),
    "inverted-box": _voc(lambda xml: xml.replace("<xmin>", "<xmin>9999", 1)),
    "text-coordinate": _voc(lambda xml: re.sub(r"<ymin>\d+", "<ymin>top", xml, count=1)),
}


def _masks(data: Path) -> Path:
    return sorted((data / "masks" / "train").glob("*.png"))[0]


def _classes_yaml(text: str) -> Callable[[Path], None]:
    return lambda d: (d / "classes.yaml").write_text(text)


def _yaml_bomb() -> str:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in "bcdefghi":
        previous = chr(ord(level) - 1)
        lines.append(f"{level}: &{level} [" + ", ".join([f"*{previous}"] * 9) + "]")
    return "\n".join([*lines, "names: *i"]) + "\n"


MASK_FAULTS: dict[str, Callable[[Path], None]] = {
    "mask-size": lambda d: Image.new("L", (20, 20)).save(_masks(d)),
    "mask-unknown-value": lambda d: Image.fromarray(np.full((32, 32), 77, np.uint8)).save(_masks(d)),
    "mask-corrupt": lambda d: _masks(d).write_bytes(b"\x89PNG\r\n\x1a\nbroken"),
    "mask-missing": lambda d: _masks(d).unlink(),
    "no-masks": lambda d: shutil.rmtree(d / "masks"),
    "colours-scalar": _classes_yaml("names: [background, a, b]\ncolours: 7\n"),
    "names-mixed": _classes_yaml("names: [background, 1, {a: b}]\n"),
    "names-missing": _classes_yaml("colours: [[0, 0, 0]]\n"),
    "yaml-broken": _classes_yaml("names: [background, a\n"),
    "yaml-bomb": _classes_yaml(_yaml_bomb()),
}


def _drop_class_folders(data: Path) -> None:
    for folder in sorted(data.iterdir())[1:]:
        shutil.rmtree(folder)


def _csv_table(rows: str) -> Callable[[Path], None]:
    def write(data: Path) -> None:
        (data / "labels.csv").write_text(rows)

    return write


FOLDER_FAULTS: dict[str, Callable[[Path], None]] = {
    "one-class": _drop_class_folders,
    "no-images": lambda d: [p.unlink() for p in d.rglob("*.png")],
    "only-text-files": lambda d: [p.rename(p.with_suffix(".txt")) for p in d.rglob("*.png")],
}
CSV_FAULTS: dict[str, str] = {  # classification tables: the data argument is the CSV file itself
    "csv-folder-path": "path,label\n0,zero\n1,one\n",
    "csv-missing-file": "path,label\n0/nowhere.png,zero\n1/also-nowhere.png,one\n",
    "csv-no-label-column": "path\n0/x.png\n",
    "csv-empty": "",
    "csv-binary": "\x00\x01\x02,\x03\n",
}


# ---------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    """One bad input: `make(world, folder)` prepares it under `folder` and returns the command line."""

    id: str
    make: Callable[[World, Path], list[str]]
    expect: str = ""  # a fragment the error line must hold (lower case), where one is certain
    findings: bool = False  # `data validate` lists what it found (exit 1) instead of stopping at the first problem


def _copy_of(world: World, task: str, folder: Path, source: str = "") -> Path:
    data = folder / "data"
    shutil.copytree(world.root / source if source else world.data[task], data)
    return data


def _on_data(task: str, fault: Callable[[Path], None], verb: str, target: str = "data", source: str = "") -> Callable:
    """A command of `verb` on a copy of the task's data (or of `source` under the world's root) after `fault` was
    applied to the copy (or to its first image)."""

    def make(world: World, folder: Path) -> list[str]:
        data = _copy_of(world, task, folder, source)
        fault(_first_image(data, task) if target == "image" else data)
        return _command(verb, task, world, data, folder)

    return make


def _command(verb: str, task: str, world: World, data: Path, folder: Path) -> list[str]:
    task_flag = _task_flag(task)
    format_flag = ["--format", "masks"] if task == "segment" else []  # scenes hold COCO boxes too: auto reads those
    return {
        "train": ["train", data, *task_flag, "--epochs", "1", "--out", folder / "run"],
        "evaluate": ["evaluate", world.runs[task], data, "--split", "train"],
        "inspect": ["data", "inspect", data, *format_flag],
        "validate": ["data", "validate", data, *format_flag],
        "split": ["data", "split", data, folder / "split"],
        "predict": ["predict", world.runs[task], data, "--out", folder / "predictions.json"],
        "explain": ["explain", world.runs[task], data, "--out", folder / "explained"],
        "embed": ["embed", world.runs[task], data, "--out", folder / "embeddings.parquet"],
        "report": ["report", world.runs[task], "--data", data, "--split", "train", "--out", folder / "report"],
    }[verb]


DATA_VERBS = ("train", "evaluate", "inspect", "validate")
IMAGE_VERBS = ("train", "evaluate", "validate", "predict", "explain", "embed")


def _data_cases() -> Iterator[Case]:
    """Each fault of images, annotations, masks, folders and tables, through each verb that reads data."""
    faults = [
        (task, f"image-{name}", fault, IMAGE_VERBS, "image", "")
        for task in TASKS
        for name, fault in IMAGE_FAULTS.items()
    ]
    faults += [
        (task, name, fault, DATA_VERBS, "data", "")
        for task, table in (("detect", COCO_FAULTS), ("segment", MASK_FAULTS), ("classify", FOLDER_FAULTS))
        for name, fault in table.items()
    ]
    faults += [
        ("detect", f"{source}-{name}", fault, DATA_VERBS, "data", source)
        for source, table in (("yolo", YOLO_FAULTS), ("voc", VOC_FAULTS))
        for name, fault in table.items()
    ]
    for task, name, fault, verbs, target, source in faults:
        for verb in verbs:
            if (name, verb) == ("box-outside", "inspect"):
                continue  # inspect describes boxes (it counts those outside); validate and training refuse them
            make = _on_data(task, fault, verb, target, source)
            yield Case(f"{task}-{name}-{verb}", make, findings=verb == "validate")
    for name, rows in CSV_FAULTS.items():
        for verb in DATA_VERBS:
            yield Case(f"classify-{name}-{verb}", _on_csv(rows, verb), findings=verb == "validate")


def _path_cases() -> Iterator[Case]:
    """Data and runs that do not exist, and runs given data of another task."""
    for task in TASKS:
        for verb in (*DATA_VERBS, "split", "predict", "explain", "embed", "report"):
            yield Case(f"{task}-missing-data-{verb}", _missing_data(task, verb), "no-such-data")
        for verb in ("evaluate", "predict", "explain", "embed", "report", "export", "benchmark", "serve"):
            yield Case(f"{task}-missing-run-{verb}", _missing_run(task, verb), "no-such-run")
        for other in TASKS:
            if other != task:
                for verb in ("evaluate", "report"):
                    yield Case(f"{task}-run-on-{other}-data-{verb}", _wrong_task(task, other, verb))


def _read_only_cases() -> Iterator[Case]:
    """Every verb that writes, told to write on a read-only disk (or into a run that lives on one)."""
    for task in TASKS:
        for verb in READ_ONLY_COMMANDS:
            if verb not in ("data split", "data sample") or task == "classify":
                yield Case(f"{task}-read-only-{verb.replace(' ', '-')}", _on_read_only(task, verb), READ_ONLY)


def _option_cases() -> Iterator[Case]:
    """Settings that cannot work, given on the command line or in a config file."""
    for task in TASKS:
        for name, args in OPTION_FAULTS.items():
            yield Case(f"{task}-option-{name}", _with_options(task, args))
        for name, text in CONFIG_FAULTS.items():
            yield Case(f"{task}-config-{name}", _with_config(task, text))
    for task in ("detect", "segment"):
        yield Case(f"{task}-option-imgsz-3", _with_options(task, ["--imgsz", "3"]), "imgsz")


def _cases() -> Iterator[Case]:
    yield from _data_cases()
    yield from _path_cases()
    yield from _read_only_cases()
    yield from _option_cases()


READ_ONLY = "read-only-disk"  # the folder's name, which every error about it must show
READ_ONLY_COMMANDS: dict[str, Callable[[str, World, Path, Path], list]] = {
    "train": lambda task, world, disk, data: [
        "train",
        data,
        *_task_flag(task),
        "--epochs",
        "1",
        "--out",
        disk / "empty" / "run",
    ],
    "predict-out": lambda task, world, disk, data: [
        "predict",
        world.runs[task],
        _first_image(data, task),
        "--out",
        disk / "p.json",
    ],
    "predict-save-images": lambda task, world, disk, data: [
        "predict",
        world.runs[task],
        _first_image(data, task),
        "--save-images",
        disk / "empty",
    ],
    "evaluate": lambda task, world, disk, data: ["evaluate", disk / task, data],
    "report-out": lambda task, world, disk, data: ["report", world.runs[task], "--no-eval", "--out", disk / "report"],
    "report-in-run": lambda task, world, disk, data: ["report", disk / task, "--no-eval"],
    "embed": lambda task, world, disk, data: [
        "embed",
        world.runs[task],
        _first_image(data, task),
        "--out",
        disk / "e.parquet",
    ],
    "explain": lambda task, world, disk, data: [
        "explain",
        world.runs[task],
        _first_image(data, task),
        "--out",
        disk / "maps",
    ],
    "export-out": lambda task, world, disk, data: ["export", world.runs[task], "--out", disk / "model.onnx"],
    "export-in-run": lambda task, world, disk, data: ["export", disk / task],
    "data split": lambda task, world, disk, data: ["data", "split", data, disk / "split"],
    "data sample": lambda task, world, disk, data: ["data", "sample", "digits", disk / "empty"],
}
OPTION_FAULTS: dict[str, list[str]] = {
    "epochs-0": ["--epochs", "0"],
    "batch-0": ["--batch", "0"],
    "lr-negative": ["--lr", "-1"],
    "imgsz-negative": ["--imgsz", "-32"],
    "unknown-model": ["--model", "no_such_net"],
    "device-unknown": ["--device", "tpu9"],
    "precision-unknown": ["--precision", "fp7"],
    "weights-missing": ["--weights", "no-such-weights.safetensors"],
}
CONFIG_FAULTS: dict[str, str] = {
    "epochs-bool": "epochs: true\n",
    "epochs-list": "epochs: [1, 2]\n",
    "unknown-key": "epoch: 3\n",
    "not-a-mapping": "- epochs\n",
    "broken": "epochs: [1\n",
    "bomb": _yaml_bomb().replace("names:", "model:"),
}


def _task_flag(task: str) -> list[str]:
    return [] if task == "classify" else ["--task", task]


def _on_read_only(task: str, verb: str) -> Callable:
    def make(world: World, folder: Path) -> list[str]:
        assert world.disk is not None
        return READ_ONLY_COMMANDS[verb](task, world, world.disk, world.only[task])

    return make


def _with_options(task: str, args: list[str]) -> Callable:
    def make(world: World, folder: Path) -> list[str]:
        return ["train", world.only[task], *_task_flag(task), "--epochs", "1", *args, "--out", folder / "run"]

    return make


def _with_config(task: str, text: str) -> Callable:
    def make(world: World, folder: Path) -> list[str]:
        (folder / "config.yaml").write_text(text)
        return [
            "train",
            world.only[task],
            *_task_flag(task),
            "--config",
            folder / "config.yaml",
            "--out",
            folder / "run",
        ]

    return make


def _on_csv(rows: str, verb: str) -> Callable:
    def make(world: World, folder: Path) -> list[str]:
        data = _copy_of(world, "classify", folder)
        _csv_table(rows)(data)
        return _command(verb, "classify", world, data / "labels.csv", folder)

    return make


def _missing_data(task: str, verb: str) -> Callable:
    return lambda world, folder: _command(verb, task, world, folder / "no-such-data", folder)


def _missing_run(task: str, verb: str) -> Callable:
    def make(world: World, folder: Path) -> list[str]:
        missing = folder / "no-such-run"
        if verb in ("evaluate", "report"):
            return ["evaluate", missing, world.data[task]] if verb == "evaluate" else ["report", missing]
        if verb in ("predict", "explain", "embed"):
            out = folder / ("out.parquet" if verb == "embed" else "out.json")
            return [verb, missing, _first_image(world.data[task], task), "--out", out]
        return [verb, missing]

    return make


def _wrong_task(task: str, other: str, verb: str) -> Callable:
    def make(world: World, folder: Path) -> list[str]:
        data = world.only[other]
        if verb == "evaluate":
            return ["evaluate", world.runs[task], data]
        return ["report", world.runs[task], "--data", data, "--out", folder / "report"]

    return make


CASES = list(_cases())


def test_the_corpus_is_large_and_covers_every_task() -> None:
    assert len(CASES) >= 250
    for task in TASKS:
        assert sum(case.id.startswith(task) for case in CASES) >= 40, task


# ---------------------------------------------------------------- the check


def _snapshot(*roots: Path) -> dict[Path, str]:
    return {
        path: hashlib.sha1(path.read_bytes()).hexdigest()
        for root in roots
        if root.exists()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_ends_in_one_error_line(
    case: Case, world: World, tmp_path: Path, request, capsys, monkeypatch
) -> None:
    if case.expect == READ_ONLY:
        world = replace(world, disk=request.getfixturevalue("read_only_disk"))
    args = [str(a) for a in case.make(world, tmp_path)]
    before = _snapshot(tmp_path, *world.runs.values())
    monkeypatch.setattr(sys, "argv", ["imagerec", *args])
    with pytest.raises(SystemExit) as caught:
        main()
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    if case.findings and caught.value.code == 1:  # the documented report: each problem on its own line, counted
        assert "problem" in captured.out + captured.err
    else:
        assert caught.value.code == 2, captured.err + captured.out
        # Above the error there may be what was done (predict, explain and embed report each unreadable file in
        # their output, write the rest, then fail counting them); the error is one line, the last.
        errors = [line for line in captured.err.strip().splitlines() if line.startswith("error:")]
        assert len(errors) == 1, captured.err
        assert captured.err.strip().splitlines()[-1] == errors[0], captured.err
        assert case.expect in errors[0].lower()
    after = _snapshot(tmp_path, *world.runs.values())
    changed = [str(path) for path, digest in before.items() if after.get(path) != digest]
    assert not changed, changed
    leftovers = [str(path) for path in after if path.name.endswith(".tmp")]
    assert not leftovers, leftovers


def test_the_executable_prints_no_traceback_for_a_bomb(world: World, tmp_path: Path) -> None:
    """The installed entry point, not only `main()`: a decompression bomb is one line on stderr, exit 2."""
    bomb = claimed_size_png(tmp_path / "bomb.png", 40_000, 40_000)
    done = subprocess.run(
        [sys.executable, "-m", "imagerec", "predict", str(world.runs["classify"]), str(bomb)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
