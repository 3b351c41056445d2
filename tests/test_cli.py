"""The command line: happy paths through Typer's runner, and every mistake a user can make → one line, exit 2."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import imagerec
from helpers import invoke, user_error
from imagerec.cli.main import app, main
from imagerec.errors import UserError

IMAGEREC = Path(sys.executable).with_name("imagerec")
TINY = ["--imgsz", "8", "--batch", "64", "--seed", "0"]
CONTRACT_KEYS = {
    "accuracy", "precision_macro", "recall_macro", "f1_macro", "f1_weighted", "auc", "per_class", "confusion_matrix",
    "top5",
}  # fmt: skip


@pytest.fixture(scope="module")
def cli_trained(digits_dir, tmp_path_factory):
    """`imagerec train` through the command line (2 epochs at 8 px: enough to predict well): its run and output."""
    out = tmp_path_factory.mktemp("cli") / "run"
    result = invoke("train", digits_dir, "--epochs", 2, "--out", out, *TINY)
    assert result.exit_code == 0, result.output
    return out, result


@pytest.fixture(scope="module")
def cli_run(cli_trained) -> Path:
    return cli_trained[0]


# --- happy paths ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["--version"], ["-V"], ["version"]])
def test_version_is_printed_three_ways(args):
    from importlib.metadata import version

    import torch

    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"imagerec {version('imagerec')} (torch {torch.__version__}, torchvision ")


@pytest.mark.parametrize("args", [[], ["-h"], ["--help"], ["train", "-h"], ["data", "inspect", "-h"]])
def test_help_is_a_request_not_an_error(args):
    """Bare `imagerec` prints the help and exits 0, as `-h` and `--help` do for every command."""
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "Usage: imagerec" in result.stdout
    assert re.search(r"--help\s+-h\s", result.stdout), result.stdout  # the short form is listed beside the long


def test_shell_completion_can_be_installed():
    result = invoke("--help")
    assert "--install-completion" in result.stdout
    assert "--show-completion" in result.stdout


def test_train_prints_metrics_and_writes_the_run(cli_run, cli_trained, digits_dir):
    lines = cli_trained[1].stdout.splitlines()
    metrics = next(i for i, line in enumerate(lines) if line.strip() == "test metrics (best epoch 2)")
    saved = lines.index(f"saved to {cli_run}")
    assert metrics < saved  # the metrics, then where the run and its report are, then what to do next
    assert lines[saved + 1 :] == [
        f"report: {cli_run / 'report.html'} (open it in a browser)", f"next: imagerec predict {cli_run} IMAGES",
        f"next: imagerec evaluate {cli_run} {digits_dir} --split test", f"next: imagerec export {cli_run}",
        f"next: tensorboard --logdir {cli_run / 'tensorboard'}",
    ]  # fmt: skip
    assert (cli_run / "best.safetensors").is_file()
    with (cli_run / "metrics.csv").open() as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2"]
    assert json.loads((cli_run / "evaluation" / "test.json").read_text())["accuracy"] >= 0.9


def test_evaluate_json_has_the_contract_keys(cli_run, digits_dir):
    result = invoke("evaluate", cli_run, digits_dir, "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert set(metrics) >= CONTRACT_KEYS
    assert metrics["split"] == "test"
    assert metrics["count"] == 179
    assert metrics["accuracy"] >= 0.9
    assert metrics["top5"] >= metrics["accuracy"]
    assert len(metrics["confusion_matrix"]) == 10
    assert sum(map(sum, metrics["confusion_matrix"])) == 179
    assert metrics == json.loads((cli_run / "evaluation" / "test.json").read_text())


def test_evaluate_table(cli_run, digits_dir):
    result = invoke("evaluate", cli_run, digits_dir, "--split", "val")
    assert result.exit_code == 0, result.output
    assert "val metrics" in result.stdout
    assert "accuracy" in result.stdout
    assert "support" in result.stdout


@pytest.fixture
def images(digits_dir, tmp_path) -> Path:
    """Three real digits (named by their class) and one unreadable file."""
    folder = tmp_path / "images"
    folder.mkdir()
    for digit in ("0", "5", "9"):
        shutil.copy(sorted((Path(digits_dir) / digit).glob("*.png"))[0], folder / f"{digit}.png")
    (folder / "broken.png").write_bytes(b"definitely not an image")
    return folder


def _invoke_failing(*args: object):
    """`imagerec ARGS` that writes its output, then fails with a UserError (an input could not be read)."""
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    assert isinstance(result.exception, UserError), result.output
    return result


def test_predict_json(cli_run, images):
    result = _invoke_failing("predict", cli_run, images, "--format", "json", "--topk", 2)
    rows = {Path(r["source"]).stem: r for r in json.loads(result.stdout)}
    assert set(rows) == {"0", "5", "9", "broken"}
    assert rows["broken"]["labels"] == []
    assert "broken.png" in rows["broken"]["error"]
    for digit in ("0", "5", "9"):
        assert rows[digit]["error"] is None
        assert len(rows[digit]["labels"]) == len(rows[digit]["probs"]) == 2
    assert sum(rows[d]["labels"][0] == d for d in ("0", "5", "9")) >= 2
    assert "1 of 4 image(s) could not be read" in str(result.exception)


def test_predict_csv_to_file(cli_run, images, tmp_path):
    out = tmp_path / "predictions.csv"
    result = invoke("predict", cli_run, images / "0.png", images / "9.png", "--format", "csv", "--out", out)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert [Path(r["source"]).name for r in rows] == ["0.png", "9.png"]
    assert list(rows[0]) == ["source", "label", "prob", "topk_labels", "topk_probs", "error"]
    assert all(0 < float(r["prob"]) <= 1 and len(r["topk_labels"].split(";")) == 5 for r in rows)
    assert result.stdout == ""


def test_predict_table(cli_run, images):
    result = _invoke_failing("predict", cli_run, images)
    assert "unreadable" in result.stdout
    for name in ("0.png", "5.png", "9.png", "broken.png"):
        assert name in result.stdout


def test_models_lists_every_family():
    result = invoke("models")
    assert result.exit_code == 0
    for name in ("seed_cnn", "resnet18", "efficientnet_b0", "vit_b_16", "timm:<name>"):
        assert name in result.stdout


def test_help_lists_the_verbs():
    result = invoke("--help")
    assert result.exit_code == 0
    for verb in ("train", "evaluate", "predict", "models", "demo", "data"):
        assert verb in result.stdout


# --- user errors: exit 2, one line, no traceback ----------------------------------------------------------------


def test_train_missing_path(capsys, monkeypatch, tmp_path):
    line = user_error(capsys, monkeypatch, "train", tmp_path / "nowhere")
    assert "nowhere" in line
    assert "no such file or folder" in line


def test_train_without_data(capsys, monkeypatch):
    assert "no data given" in user_error(capsys, monkeypatch, "train")


def test_unknown_model_suggests_close_matches(capsys, monkeypatch, digits_dir, tmp_path):
    line = user_error(capsys, monkeypatch, "train", digits_dir, "--model", "resnet19", "--out", tmp_path / "r", *TINY)
    assert "resnet19" in line
    assert "did you mean" in line
    assert "resnet18" in line
    assert not (tmp_path / "r" / "state.pt").exists()


def test_unknown_timm_model(capsys, monkeypatch, digits_dir, tmp_path):
    line = user_error(capsys, monkeypatch, "train", digits_dir, "--model", "timm:resnet19", "--out", tmp_path / "r")
    assert "timm:resnet18" in line


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--imgsz", "0"], "invalid setting data.imgsz"),
        (["--epochs", "-1"], "invalid setting train.epochs"),
        (["--batch", "0"], "invalid setting data.batch"),
        (["--lr", "-0.1"], "invalid setting train.lr"),
        (["--augment", "extreme"], "'--augment': 'extreme' is not one of 'none', 'light', 'medium', 'heavy'"),
        (["--precision", "8"], "'--precision': '8' is not one of 'auto', '32',"),
        (["--device", "tpu"], "'--device' / '-d': 'tpu' is not one of"),
    ],
)
def test_invalid_settings(capsys, monkeypatch, digits_dir, tmp_path, args, expected):
    line = user_error(capsys, monkeypatch, "train", digits_dir, "--out", tmp_path / "r", *args)
    assert expected in line  # out of range: the config's check; not a choice: the command line's
    assert not (tmp_path / "r").exists()


def test_bad_config_file(capsys, monkeypatch, digits_dir, tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text("train: {epochs: [unclosed\n")
    assert "cfg.yaml" in user_error(capsys, monkeypatch, "train", digits_dir, "--config", config)
    config.write_text("train:\n  epoch: 3\n")  # misspelt option
    assert "train.epoch" in user_error(capsys, monkeypatch, "train", digits_dir, "--config", config)


def test_evaluate_with_a_label_the_model_does_not_know(capsys, monkeypatch, cli_run, digits_dir, tmp_path):
    data = tmp_path / "data"
    for name, source in (("3", "3"), ("cat", "8")):
        shutil.copytree(Path(digits_dir) / source, data / name)
    line = user_error(capsys, monkeypatch, "evaluate", cli_run, data)
    assert "'cat'" in line
    assert "not one of the model's classes" in line
    assert str(data) in line


def _copy_run(run: Path, tmp_path: Path, **changes) -> Path:
    copy = tmp_path / "run-copy"
    shutil.copytree(run, copy)
    info = json.loads((copy / "model.json").read_text())
    (copy / "model.json").write_text(json.dumps({**info, **changes}))
    return copy


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_run_of_another_task(capsys, monkeypatch, cli_run, digits_dir, tmp_path, command):
    run = _copy_run(cli_run, tmp_path, task="pose")
    line = user_error(capsys, monkeypatch, command, run, digits_dir)
    assert "a pose run" in line
    assert "classify" in line
    assert str(run) in line


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_run_of_an_incompatible_format(capsys, monkeypatch, cli_run, digits_dir, tmp_path, command):
    run = _copy_run(cli_run, tmp_path, format=99)
    line = user_error(capsys, monkeypatch, command, run, digits_dir)
    assert "incompatible" in line
    assert "99" in line
    assert str(run) in line


def test_damaged_run_files(capsys, monkeypatch, cli_run, digits_dir, tmp_path):
    run = tmp_path / "run-copy"
    shutil.copytree(cli_run, run)
    (run / "best.safetensors").write_bytes(b"garbage")
    assert "damaged weights" in user_error(capsys, monkeypatch, "predict", run, digits_dir)
    (run / "model.json").write_text("{not json")
    assert "model.json" in user_error(capsys, monkeypatch, "evaluate", run, digits_dir)


def test_not_a_run_directory(capsys, monkeypatch, digits_dir, tmp_path):
    assert "no such run directory" in user_error(capsys, monkeypatch, "evaluate", tmp_path / "nope", digits_dir)
    line = user_error(capsys, monkeypatch, "predict", digits_dir, digits_dir)  # a data folder, not a run
    assert "model.json" in line


def test_resume_of_a_finished_run(capsys, monkeypatch, cli_run):
    line = user_error(capsys, monkeypatch, "train", "--resume", cli_run)
    assert "finished all 2 epochs" in line
    assert "--epochs" in line


def test_resume_before_any_epoch_finished(capsys, monkeypatch, cli_run, tmp_path):
    run = tmp_path / "run-copy"
    shutil.copytree(cli_run, run)
    (run / "state.pt").unlink()  # killed during the first epoch: run.yaml and model.json exist, no state yet
    line = user_error(capsys, monkeypatch, "train", "--resume", run, "--epochs", "3")
    assert "nothing to resume" in line


def test_resume_refuses_data_and_model_changes(capsys, monkeypatch, cli_run):
    line = user_error(capsys, monkeypatch, "train", "--resume", cli_run, "--epochs", "3", "--model", "resnet18")
    assert "model" in line
    assert "--resume" in line


def test_train_into_an_existing_run(capsys, monkeypatch, cli_run, digits_dir):
    line = user_error(capsys, monkeypatch, "train", digits_dir, "--out", cli_run, *TINY)
    assert "already holds a run" in line
    assert "--resume" in line


def test_predict_missing_path(capsys, monkeypatch, cli_run, tmp_path):
    line = user_error(capsys, monkeypatch, "predict", cli_run, tmp_path / "missing.png")
    assert "missing.png" in line
    assert "no such file" in line


@pytest.mark.parametrize(("args", "expected"), [(["--format", "xml"], "--format"), (["--topk", "0"], "--topk")])
def test_predict_bad_options(capsys, monkeypatch, cli_run, images, args, expected):
    assert expected in user_error(capsys, monkeypatch, "predict", cli_run, images, *args)


# --- the installed executable, in a real process ----------------------------------------------------------------


def _run_cli(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [str(IMAGEREC), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_executable_reports_user_errors_in_one_line(digits_dir, tmp_path):
    cases = [
        (["train", tmp_path / "missing"], "no such file or folder"),
        (["train", digits_dir, "--model", "resnt18", "--imgsz", "8"], "did you mean"),
    ]
    for args, expected in cases:
        done = _run_cli(*args, cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("error: ")
        assert expected in done.stderr
        assert done.stderr.count("\n") == 1
        assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "runs").exists()  # nothing written for a run that never started


@pytest.mark.parametrize("workers", [0, 1])
def test_training_on_a_truncated_image_names_it_in_one_line(digits_dir, tmp_path, capsys, monkeypatch, workers):
    """Decoding fails in the main process (workers 0) or in a DataLoader worker, where torch re-raises the
    UserError with the worker's traceback as its message: either way the user sees one line naming the file."""
    data = tmp_path / "digits"
    shutil.copytree(digits_dir, data)
    broken = data / "3" / "digit_0003.png"
    broken.write_bytes(broken.read_bytes()[:60])
    config = tmp_path / "run.yaml"
    config.write_text(f"data: {{workers: {workers}, cache: false}}\n")
    monkeypatch.setattr(sys, "argv", ["imagerec", "train", str(data), "--epochs", "1", "--imgsz", "8",
                                      "--config", str(config), "--out", str(tmp_path / "run")])  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert len(err.splitlines()) == 1
    assert err.startswith("error: ")
    assert "digit_0003.png" in err
    assert "Traceback" not in err


def test_predict_save_images_draws_the_top_labels(cli_run, digits_dir, tmp_path):
    """Classification too: each image enlarged (8 px scans → 192 px) above a band of its top labels, in the
    class colours, most probable first."""
    import numpy as np
    from PIL import Image

    from imagerec.outputs.visualize import class_colour

    images = sorted((digits_dir / "3").glob("*.png"))[:2]
    result = invoke("predict", cli_run, *images, "--save-images", tmp_path / "drawn", "--topk", 2, "--format", "json")
    assert result.exit_code == 0, result.output
    predictions = json.loads(result.stdout)
    for image, prediction in zip(images, predictions, strict=True):
        drawn = np.asarray(Image.open(tmp_path / "drawn" / image.name).convert("RGB"))
        assert drawn.shape[1] == 192  # 24× the 8-px scan
        assert drawn.shape[0] > 192  # plus the label band
        band = drawn[192:].reshape(-1, 3)
        top = int(prediction["labels"][0])  # the digits' class names are their positions
        colour = np.array([int(class_colour(top)[i : i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(band.astype(int) - colour).sum(axis=1) < 30).sum() > 20  # the top label's text is drawn


def test_a_drawn_prediction_keeps_its_input_format(cli_run, digits_dir, tmp_path):
    from PIL import Image

    photo, scan = tmp_path / "in" / "photo.JPG", tmp_path / "in" / "scan.gif"
    photo.parent.mkdir()
    source = Image.open(next((digits_dir / "3").glob("*.png"))).convert("RGB")
    source.save(photo, format="JPEG")
    source.save(scan, format="GIF")
    result = invoke("predict", cli_run, photo, scan, "--save-images", tmp_path / "drawn", "--format", "json")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == ["photo.jpg", "scan.png"]  # GIF: drawn as PNG
    assert Image.open(tmp_path / "drawn" / "photo.jpg").format == "JPEG"
    assert Image.open(tmp_path / "drawn" / "scan.png").format == "PNG"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["train", "data", "--epoch", "3"],
            "error: No such option: --epoch (Possible options: --epochs, --warmup-epochs); see imagerec train -h",
        ),
        (
            ["train", "data", "--epochs", "many"],
            "error: Invalid value for '--epochs' / '-e': Input should be a valid integer",
        ),
        (["nosuch"], "error: No such command 'nosuch'; see imagerec -h"),
        (["data", "inspect"], "error: Missing argument 'DATA'; see imagerec data inspect -h"),
    ],
)
def test_parse_errors_are_one_line_like_every_other_error(capsys, monkeypatch, args, expected):
    assert user_error(capsys, monkeypatch, *args).startswith(expected)


def test_every_setting_is_reachable_with_set_and_listed_by_config_print(digits_dir, tmp_path, capsys, monkeypatch):
    import yaml

    from imagerec.config import SECTIONS

    printed = invoke("config", "--print", "--task", "detect")
    assert printed.exit_code == 0, printed.output
    defaults = yaml.safe_load(printed.stdout)
    assert {s: set(defaults[s]) for s in SECTIONS} == {s: set(f.model_fields) for s, f in SECTIONS.items()}
    assert (defaults["task"], defaults["model"]["name"], defaults["train"]["optimizer"]) == (
        "detect",
        "fcos_lite",
        "adamw",
    )

    out = tmp_path / "run"
    result = invoke("train", digits_dir, "--epochs", 1, "--out", out, *TINY, "--set", "optimizer=sgd",
                    "--set", "label-smoothing=0.1", "--set", "mean=[0.5]", "--set", "std=[0.25]")  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((out / "run.yaml").read_text())
    assert (saved["train"]["optimizer"], saved["train"]["label_smoothing"]) == ("sgd", 0.1)
    assert (saved["data"]["mean"], saved["data"]["std"]) == ([0.5], [0.25])
    line = user_error(capsys, monkeypatch, "train", digits_dir, "--set", "optimiser=sgd")
    assert "'optimiser' is no setting; did you mean optimizer" in line
    assert "invalid setting train.optimizer" in user_error(
        capsys, monkeypatch, "train", digits_dir, "--set", "optimizer=rmsprop"
    )


def test_every_setting_is_an_option_of_train_with_its_default_in_the_help(digits_dir, tmp_path):
    """The options are generated from the config schema: none is missing, each says its default (or who chooses it),
    and a config-only setting of old (--optimizer, --ema, --label-smoothing) reaches the run like any other."""
    import typer
    import yaml

    from imagerec.config import setting_names

    command = typer.main.get_command(app).commands["train"]
    options = {p.name for p in command.params if p.param_type_name == "option"}
    assert set(setting_names()) <= options
    shown = CliRunner().invoke(app, ["train", "-h"], env={"COLUMNS": "200"}).output
    assert "adamw | adam | sgd; default: adamw" in shown
    assert "default: chosen from the data, see --dry-run" in shown  # augment, ema, …: the recipe's
    out = tmp_path / "run"
    result = invoke("train", digits_dir, "-e", 1, "-o", out, *TINY, "--optimizer", "sgd", "--ema", "0.9",
                    "--label-smoothing", "0.1", "--no-cache")  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((out / "run.yaml").read_text())
    assert (saved["train"]["optimizer"], saved["train"]["ema"], saved["train"]["label_smoothing"]) == ("sgd", 0.9, 0.1)
    assert (saved["train"]["epochs"], saved["data"]["cache"]) == (1, False)


@pytest.mark.parametrize(
    ("task", "args", "expected"),
    [
        ("detect", ["--binary-head", "softmax"], "binary_head (--binary-head) applies to --task classify or segment"),
        ("segment", ["--anchor-sizes", "8"], "anchor_sizes (--anchor-sizes) applies to --task detect; drop it"),
        ("detect", ["--class-weights"], "class_weights (--class-weights) applies to --task classify; drop it"),
    ],
)
def test_a_setting_of_another_task_is_refused(capsys, monkeypatch, tmp_path, task, args, expected):
    from imagerec.data.samples import write_digit_scenes

    scenes = write_digit_scenes(tmp_path / "scenes", n_train=4, n_val=2, n_test=2, size=64)
    line = user_error(capsys, monkeypatch, "train", scenes, "--task", task, "--dry-run", *args)
    assert expected in line
    assert f"for --task {task}" in line


def test_a_task_setting_in_the_python_api_is_refused_for_pretraining(digits_dir, tmp_path):
    with pytest.raises(UserError, match=r"positive \(--positive\) applies to --task classify; drop it for pretraining"):
        imagerec.pretrain(digits_dir, out=tmp_path / "p", positive="1")
    with pytest.raises(TypeError, match="unknown training option 'epoch'"):
        imagerec.train(digits_dir, out=tmp_path / "t", epoch=3)


def test_the_python_api_types_every_setting_as_the_schema_does():
    """`imagerec.train(data, **Settings)`: the TypedDict editors and type checkers read holds every setting, each with
    the schema's type (a sequence where the schema keeps a tuple), so the two cannot drift apart."""
    from collections.abc import Sequence
    from typing import Union, get_args, get_origin, get_type_hints

    from imagerec.cli.options import option_name, value_type
    from imagerec.config import SECTIONS, Settings, setting_names

    hints = get_type_hints(Settings)
    assert list(hints) == setting_names()
    for schema in SECTIONS.values():
        for field, info in schema.model_fields.items():
            if field == "path":
                continue
            hint = hints[option_name(field)]
            if get_origin(hint) is Union or type(hint).__name__ == "UnionType":
                hint = next(k for k in get_args(hint) if k is not type(None))
            expected = value_type(info.annotation)
            assert hint == (Sequence[float] if get_origin(expected) is tuple else expected), field


def test_quiet_leaves_the_results_alone(capsys, monkeypatch, cli_run, digits_dir):
    """-q: the metrics table and the predictions on stdout, nothing on stderr (no bar, no "saved to")."""
    evaluated = invoke("evaluate", cli_run, digits_dir, "-q")
    assert evaluated.exit_code == 0, evaluated.output
    assert ("accuracy" in evaluated.stdout, evaluated.stderr) == (True, "")
    image = next((digits_dir / "3").glob("*.png"))
    predicted = invoke("predict", cli_run, image, "--json", "-q")
    assert (json.loads(predicted.stdout)[0]["source"], predicted.stderr) == (str(image), "")
    assert "--json is --format json" in user_error(
        capsys, monkeypatch, "predict", cli_run, image, "--json", "--format", "csv"
    )


def test_verbose_is_a_switch_of_the_whole_command_line():
    result = subprocess.run([IMAGEREC, "-v", "version", "--json"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["imagerec"]


def test_help_names_arguments_in_capitals_and_gives_flags_no_placeholder():
    shown = subprocess.run([IMAGEREC, "predict", "-h"], capture_output=True, text=True, check=True,
                           env={**os.environ, "COLUMNS": "160"}).stdout  # fmt: skip
    assert "Usage: imagerec predict [OPTIONS] {RUN} {SOURCES}..." in shown
    assert "<bool>" not in shown
    assert all(flag in shown for flag in ("--json ", "--save-images", "--quiet"))
