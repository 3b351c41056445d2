"""Kill a training process mid-run, resume it, and get exactly the run an uninterrupted one would have given."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console

import imagerec
from imagerec.cli.main import main
from imagerec.weights_io import load_weights

IMAGEREC = Path(sys.executable).with_name("imagerec")
EPOCHS = 6
# 16 px makes an epoch last long enough (about a second) to kill the process between two of them.
SLOW_ENOUGH = ["--imgsz", "16", "--batch", "64", "--seed", "0", "--device", "cpu"]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _finished_epoch(state: Path) -> int:
    try:
        return torch.load(state, map_location="cpu", weights_only=False)["fit"]["epoch"]
    except (FileNotFoundError, EOFError, RuntimeError):
        return 0


def _epochs_in_csv(run: Path) -> list[int]:
    with (run / "metrics.csv").open() as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


def _cli(monkeypatch, *args: object) -> int:
    monkeypatch.setattr(sys, "argv", ["imagerec", *map(str, args)])
    with pytest.raises(SystemExit) as caught:
        main()
    return caught.value.code


@pytest.mark.slow
def test_kill_and_resume(digits_dir, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    process = subprocess.Popen(
        [str(IMAGEREC), "train", str(digits_dir), "--epochs", str(EPOCHS), "--out", str(run), *SLOW_ENOUGH],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240
        while _finished_epoch(run / "state.pt") < 1:
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "no epoch finished in time"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    killed_at = _finished_epoch(run / "state.pt")
    assert 1 <= killed_at < EPOCHS, "the run finished before it could be killed: make epochs longer"

    monkeypatch.chdir(tmp_path)
    assert _cli(monkeypatch, "train", "--resume", run) == 0
    out = capsys.readouterr().out
    assert f"resuming {run} after epoch {killed_at}" in out.replace("\n", "")
    state = torch.load(run / "state.pt", weights_only=False)
    assert state["fit"]["epoch"] == EPOCHS
    assert _epochs_in_csv(run) == list(range(1, EPOCHS + 1))  # no epoch lost or repeated
    assert (run / "evaluation" / "test.json").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name != "run"] == []  # no second run directory

    assert _cli(monkeypatch, "train", "--resume", run) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "nothing to resume" in err
    assert "Traceback" not in err

    # More epochs than before: the finished run continues.
    assert _cli(monkeypatch, "train", "--resume", run, "--epochs", EPOCHS + 1) == 0
    assert _epochs_in_csv(run) == list(range(1, EPOCHS + 2))
    assert torch.load(run / "state.pt", weights_only=False)["fit"]["epoch"] == EPOCHS + 1


def _train(data, out, **options) -> imagerec.Run:
    return imagerec.train(
        data, out=out, imgsz=8, batch=64, seed=0, precision="32", console=Console(file=io.StringIO()), **options
    )


@pytest.mark.parametrize("scheduler", ["constant", "onecycle"])
def test_resume_with_more_epochs(digits_dir, tmp_path, scheduler):
    first = _train(digits_dir, tmp_path / "run", epochs=1, scheduler=scheduler)
    more = imagerec.train(resume=first.path, epochs=3, console=Console(file=io.StringIO()))
    assert more.epochs == 3
    assert _epochs_in_csv(first.path) == [1, 2, 3]
    state = torch.load(first.path / "state.pt", weights_only=False)
    assert state["scheduler"]["last_epoch"] == 3 * (1439 // 64)  # every step of all three epochs was scheduled
    assert more.metrics["accuracy"] > first.metrics["accuracy"]


def test_resumed_run_matches_an_uninterrupted_one(digits_dir, tmp_path):
    """Weights, optimizer, schedule, data order and RNG all come back: the numbers are those of one long run."""
    options = {"scheduler": "constant", "warmup_epochs": 0}  # a schedule that does not depend on the total
    straight = _train(digits_dir, tmp_path / "straight", epochs=2, **options)
    split = _train(digits_dir, tmp_path / "split", epochs=1, **options)
    imagerec.train(resume=split.path, epochs=2, console=Console(file=io.StringIO()))
    with (straight.path / "metrics.csv").open() as a, (split.path / "metrics.csv").open() as b:
        rows_a, rows_b = list(csv.DictReader(a)), list(csv.DictReader(b))
    for row_a, row_b in zip(rows_a, rows_b, strict=True):
        assert float(row_a["train_loss"]) == pytest.approx(float(row_b["train_loss"]), abs=1e-4)
        assert float(row_a["val_loss"]) == pytest.approx(float(row_b["val_loss"]), abs=1e-4)
    last_a, last_b = load_weights(straight.path / "last.safetensors"), load_weights(split.path / "last.safetensors")
    for key, value in last_a.items():
        torch.testing.assert_close(value, last_b[key], rtol=1e-3, atol=1e-4)
