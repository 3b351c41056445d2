"""Faults during training never lose work, and training refuses what cannot work: kills at chosen moments then
--resume, a full disk, a read-only disk, a second training into the same folder, a diverging loss, inputs too small
for the model, config values of the wrong type."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from rich.console import Console

import imagerec
from helpers import tmpfs, user_error
from imagerec.api import plan
from imagerec.data.samples import write_digit_scenes
from imagerec.errors import UserError
from imagerec.runs import RunDir, run_lock
from imagerec.weights_io import load_weights, save_weights

EPOCHS = 3
OPTIONS = {"epochs": EPOCHS, "imgsz": 8, "batch": 32, "seed": 0, "precision": "32", "device": "cpu"}
CLI = [arg for key, value in OPTIONS.items() for arg in (f"--{key}", str(value))]
TIMED = ("images_per_s", "epoch_time_s")  # wall-clock columns of metrics.csv: the only ones a rerun may change


class Killed(BaseException):
    """Stands for SIGKILL in-process: nothing catches it, so no cleanup of the interrupted write runs."""


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


@pytest.fixture(scope="module")
def digits(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 real digits per class: epochs of a fraction of a second, so a run is mostly its set-up."""
    root = tmp_path_factory.mktemp("digits") / "digits"
    for folder in sorted(p for p in digits_dir.iterdir() if p.is_dir()):
        (root / folder.name).mkdir(parents=True)
        for image in sorted(folder.iterdir())[:20]:
            shutil.copy(image, root / folder.name / image.name)
    return root


@pytest.fixture(scope="module")
def reference(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run every interrupted one must end up equal to."""
    return imagerec.train(digits, out=tmp_path_factory.mktemp("ref") / "run", console=quiet(), **OPTIONS).path


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as handle:
        return [{k: v for k, v in row.items() if k not in TIMED} for row in csv.DictReader(handle)]


def _test_metrics(run: Path) -> dict:
    return json.loads((run / "evaluation" / "test.json").read_text())


def _assert_same_run(run: Path, reference: Path) -> None:
    """No finished epoch lost or duplicated, loadable checkpoints, and the numbers of the uninterrupted run."""
    assert _rows(run) == _rows(reference)
    assert torch.load(run / "state.pt", weights_only=False)["fit"]["epoch"] == EPOCHS
    for name in ("last.safetensors", "best.safetensors"):
        ours, theirs = load_weights(run / name), load_weights(reference / name)
        assert ours.keys() == theirs.keys()
        for key, value in theirs.items():
            assert torch.equal(ours[key], value), f"{name}: {key}"
    assert _test_metrics(run) == _test_metrics(reference)
    assert (run / "report.html").is_file()
    assert not list(run.rglob(".*.tmp"))


def _resume(run: Path) -> str:
    console = quiet()
    imagerec.train(resume=run, console=console)
    return console.file.getvalue()


# --- kills ------------------------------------------------------------------------------------------------------

# Runs the CLI; with PAUSE_AT_EPOCH set, the write of that epoch's state.pt stops once its temporary file is
# complete and before the rename, and says so in MARKER: a kill then lands exactly inside a checkpoint write.
_PAUSING_CLI = """
import os, pathlib, sys, time, torch
real_save = torch.save
def save(obj, f, *args, **kwargs):
    real_save(obj, f, *args, **kwargs)
    if isinstance(obj, dict) and obj.get("fit", {}).get("epoch") == int(os.environ.get("PAUSE_AT_EPOCH", 0)):
        ready = pathlib.Path(os.environ["MARKER"] + ".tmp")
        ready.write_text(getattr(f, "name", str(f)))
        ready.rename(os.environ["MARKER"])
        time.sleep(600)
torch.save = save
from imagerec.cli.main import main
sys.argv = ["imagerec", *sys.argv[1:]]
main()
"""


def _start(args: list[str], tmp_path: Path, **env: str) -> subprocess.Popen:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "IMAGEREC_THREADS": "1", "OMP_NUM_THREADS": "1", **env}
    return subprocess.Popen(
        [sys.executable, "-c", _PAUSING_CLI, *args], cwd=tmp_path, env=environment,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def _kill_when(process: subprocess.Popen, ready: Callable[[], bool]) -> None:
    """SIGKILL `process` once `ready()` holds, or leave it be if it ends first (the assertions hold either way)."""
    deadline = time.monotonic() + 300
    try:
        while process.poll() is None and not ready():
            assert time.monotonic() < deadline, "the training neither got there nor ended"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        _, err = process.communicate()
    assert process.returncode in (0, -signal.SIGKILL), err.decode()


def test_sigkill_inside_a_checkpoint_write_and_mid_epoch(digits, reference, tmp_path):
    run = tmp_path / "run"
    marker = tmp_path / "paused"
    first = _start(["train", str(digits), "--out", str(run), *CLI], tmp_path, PAUSE_AT_EPOCH="2", MARKER=str(marker))
    _kill_when(first, marker.exists)
    assert Path(marker.read_text()).name.startswith(".state.pt.")  # killed between the write and its rename
    assert torch.load(run / "state.pt", weights_only=False)["fit"]["epoch"] == 1  # the commit point

    second = _start(["train", "--resume", str(run)], tmp_path)
    _kill_when(second, lambda: (run / "metrics.csv").exists() and len(_rows(run)) >= 3)

    if not (run / "report.html").exists():  # else the kill came after the run had finished
        _resume(run)  # the lock of the killed processes is gone with them
    _assert_same_run(run, reference)


def test_kill_during_the_first_state_write_starts_the_run_again(digits, reference, tmp_path, monkeypatch):
    run = tmp_path / "run"

    def killed(obj: object, f: io.BufferedWriter, *args: object, **kwargs: object) -> None:
        f.write(b"half a state")
        raise Killed

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(Killed):
        imagerec.train(digits, out=run, console=quiet(), **OPTIONS)
    monkeypatch.undo()
    assert len(_rows(run)) == 1  # metrics.csv and the weights got one epoch ahead of state.pt
    assert not (run / "state.pt").exists()
    assert list(run.glob(".state.pt.*.tmp"))

    assert "training starts again from epoch 1" in _resume(run)
    _assert_same_run(run, reference)


def test_kill_during_the_test_evaluation_is_completed_by_resume(digits, reference, tmp_path, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setattr("imagerec.training._test", lambda *args: (_ for _ in ()).throw(Killed))
    with pytest.raises(Killed):
        imagerec.train(digits, out=run, console=quiet(), **OPTIONS)
    monkeypatch.undo()
    assert not (run / "evaluation").exists()

    assert "completing the test evaluation" in _resume(run)
    _assert_same_run(run, reference)


def test_resume_of_a_finished_run_refuses(reference, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    line = user_error(capsys, monkeypatch, "train", "--resume", run)
    assert "nothing to resume" in line


# --- a second training, a finished run ----------------------------------------------------------------------


def test_a_second_training_into_a_locked_folder_is_refused(digits, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    with run_lock(RunDir(run)):  # as a training running in another process holds it
        line = user_error(capsys, monkeypatch, "train", digits, "--out", run, *CLI)
    assert "another training is running" in line
    assert sorted(p.name for p in run.iterdir()) == ["run.lock"]


def test_resume_into_a_locked_folder_is_refused(reference, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    before = (run / "metrics.csv").read_bytes()
    with run_lock(RunDir(run)):
        line = user_error(capsys, monkeypatch, "train", "--resume", run, "--epochs", EPOCHS + 1)
    assert "another training is running" in line
    assert (run / "metrics.csv").read_bytes() == before


@pytest.mark.parametrize("left", ["model.json", "metrics.csv", "best.safetensors"])
def test_a_run_without_state_is_not_overwritten(digits, reference, tmp_path, capsys, monkeypatch, left):
    """A --head knn run, or a finished run whose state.pt was deleted to save space, still holds a run."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(reference / left, run / left)
    line = user_error(capsys, monkeypatch, "train", digits, "--out", run, *CLI)
    assert "already holds a run" in line
    assert sorted(p.name for p in run.iterdir()) == [left]


# --- disks ------------------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MB tmpfs (a run, with a state.pt being replaced, takes about 20 MB)."""
    with tmpfs(tmp_path / "disk") as disk:
        yield disk


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    done = subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64K"], capture_output=True)
    assert b"No space left" in done.stderr
    return filler


def test_full_disk_during_a_checkpoint(digits, reference, small_disk, capsys, monkeypatch):
    from imagerec.engine.checkpoint import Checkpointer

    run = small_disk / "run"
    real_save = Checkpointer.save_epoch

    def fill_then_save(self: Checkpointer, **kwargs: object) -> None:
        if self.run.state.exists():  # epoch 1 is saved: its checkpoint must survive the full disk of epoch 2's
            _fill(small_disk)
        real_save(self, **kwargs)

    monkeypatch.setattr(Checkpointer, "save_epoch", fill_then_save)
    line = user_error(capsys, monkeypatch, "train", digits, "--out", run, *CLI)
    monkeypatch.undo()
    assert "out of disk space while saving" in line
    assert "--resume" in line
    assert torch.load(run / "state.pt", weights_only=False)["fit"]["epoch"] == 1  # the previous checkpoint intact
    load_weights(run / "last.safetensors")
    assert not list(run.rglob(".*.tmp"))

    (small_disk / "filler").unlink()
    _resume(run)
    _assert_same_run(run, reference)


def test_full_disk_during_a_weights_write(small_disk):
    """safetensors' own writer reports a full disk without an errno: weights go through a Python file instead."""
    path = small_disk / "last.safetensors"
    save_weights(path, {"w": torch.zeros(4)})
    filler = _fill(small_disk)
    filler.write_bytes(filler.read_bytes()[: -(256 << 10)])  # room for a little, not for 4 MB of weights
    with pytest.raises(UserError, match="out of disk space while saving; the previous last.safetensors is intact"):
        save_weights(path, {"w": torch.zeros(1 << 20)})
    assert load_weights(path)["w"].shape == (4,)
    assert not list(small_disk.glob(".*.tmp"))


def test_resume_on_a_read_only_disk(reference, small_disk, capsys, monkeypatch):
    run = small_disk / "run"
    shutil.copytree(reference, run)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    line = user_error(capsys, monkeypatch, "train", "--resume", run, "--epochs", EPOCHS + 1)
    assert "Read-only file system" in line


# --- what cannot work ---------------------------------------------------------------------------------------


def test_a_diverging_loss_stops_training(digits, tmp_path, capsys, monkeypatch):
    line = user_error(capsys, monkeypatch, "train", digits, "--out", tmp_path / "run", *CLI, "--lr", "1e30")
    assert "diverged" in line
    assert "epoch 1, step" in line
    assert "no epoch had finished" in line
    assert "lower --lr" in line
    assert not list((tmp_path / "run").glob("*.safetensors"))


def test_a_loss_diverging_in_epoch_2_keeps_epoch_1(digits, tmp_path, capsys, monkeypatch):
    from imagerec.engine.checkpoint import Checkpointer
    from imagerec.tasks.classification import ClassificationTask

    real_step, real_save, saved, steps = ClassificationTask.step, Checkpointer.save_epoch, [], []

    def save_epoch(self: Checkpointer, **kwargs: object) -> None:
        real_save(self, **kwargs)
        saved.append(1)

    def step(self: ClassificationTask, model: torch.nn.Module, batch: object) -> dict[str, torch.Tensor]:
        out = real_step(self, model, batch)
        steps.extend([1] if saved else [])
        return {**out, "loss": out["loss"] * torch.nan} if len(steps) == 3 else out  # step 3 after epoch 1

    monkeypatch.setattr(ClassificationTask, "step", step)
    monkeypatch.setattr(Checkpointer, "save_epoch", save_epoch)
    run = tmp_path / "run"
    line = user_error(capsys, monkeypatch, "train", digits, "--out", run, *CLI)
    assert "epoch 2, step 3 of 5" in line
    assert "the last good checkpoint, epoch 1, is kept" in line
    assert torch.load(run / "state.pt", weights_only=False)["fit"]["epoch"] == 1
    for name in ("last.safetensors", "best.safetensors"):
        assert all(torch.isfinite(v).all() for v in load_weights(run / name).values())
    assert len(_rows(run)) == 1


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digit_scenes(tmp_path_factory.mktemp("scenes") / "scenes", n_train=24, n_val=4, n_test=4, size=64)


@pytest.mark.parametrize(("task", "model", "smallest"), [("detect", "fcos_lite", 32), ("segment", "unet", 16)])
def test_an_image_size_below_the_model_stride_is_refused(scenes, tmp_path, capsys, monkeypatch, task, model, smallest):
    args = ["train", scenes, "--task", task, "--model", model, "--out", tmp_path / "run", "--epochs", "1"]
    line = user_error(capsys, monkeypatch, *args, "--imgsz", smallest - 1)
    assert f"--imgsz {smallest - 1} is below the smallest input {model} can learn from, {smallest} px" in line
    assert not (tmp_path / "run" / "model.json").exists()


@pytest.mark.parametrize(("key", "value"), [("epochs", "true"), ("epochs", "'3'"), ("lr", "false")])
def test_config_values_of_the_wrong_type(digits, tmp_path, capsys, monkeypatch, key, value):
    config = tmp_path / "config.yaml"
    config.write_text(f"train:\n  {key}: {value}\n")
    line = user_error(capsys, monkeypatch, "train", digits, "--config", config)
    assert str(config) in line
    assert f"train.{key}" in line


def test_config_number_written_without_a_decimal_point(digits, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("train:\n  lr: 1e-3\n  epochs: 2\n")  # YAML reads 1e-3 as a string
    assert plan(digits, config=config).cfg.train.lr == 0.001
