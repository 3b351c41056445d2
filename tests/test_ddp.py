"""Two-process DDP on CPU (gloo): Fabric launches the second process; one run directory, one row per epoch."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

IMAGEREC = Path(sys.executable).with_name("imagerec")


@pytest.mark.slow
def test_two_processes_on_cpu(digits_dir, tmp_path):
    """One run directory and one row per epoch from two processes; parameters that join training after DDP wrapped
    the model (gradual unfreezing opens the last stage at epoch 2) are synchronised too."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [str(IMAGEREC), "train", str(digits_dir), "--devices", "2", "--epochs", "2", "--device", "cpu"]
    done = subprocess.run(
        [*command, "--finetune", "gradual", "--imgsz", "8", "--batch", "32", "--seed", "0"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "finetune gradual" in done.stdout
    runs = list((tmp_path / "runs").iterdir())
    assert [p.name for p in runs] == ["classify-001"]  # rank 0 chose it; rank 1 did not make its own
    run = runs[0]
    with (run / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert {int(row["val_count"]) for row in rows} == {179}  # every rank evaluates the whole val split
    test = json.loads((run / "evaluation" / "test.json").read_text())
    assert test["count"] == 179
    assert test["accuracy"] > 0.5
    assert not list(run.glob(".*.tmp"))
