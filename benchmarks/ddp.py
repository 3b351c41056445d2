"""DDP against one process, per task, on the CPU (gloo): do two processes train as one does, and at what cost?

For each task, the settings of tests/test_ddp.py: classify (seed_cnn on the 1,797 digits, 8 px, gradual unfreezing,
2 epochs), detect (fcos_lite on 32 digit scenes of 64 px, 4 epochs) and segment (the compact U-Net on the same
scenes with digit/background masks, 32 px, 4 epochs). Each seed trains twice, as users run it: `imagerec train
--devices 2 --batch B` and `imagerec train --devices 1 --batch 2B` (the same images per optimizer step; the learning
rate is not scaled, in our code or here). Printed per task:

- the largest difference between the two, over seeds, of the last epoch's train loss and validation metric and of
  the test metrics: what tests/test_ddp.py's tolerances are set from;
- the spread of the same metrics between seeds of one process: how large a difference data order alone makes;
- the wall-time ratio, two processes over one, median over seeds, of the whole command (start-up, planning, the
  report included) and of the training epochs alone (metrics.csv epoch_time_s).

On a CPU, gloo is expected to be slower: the two processes share the cores one process already uses, and they
exchange every gradient. This proves correctness, not speed.

    python benchmarks/ddp.py                 # 3 seeds per task, ~6 min on 2 quiet cores
    python benchmarks/ddp.py --seeds 1       # one seed: the differences, no seed spread
    python benchmarks/ddp.py --task segment
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, median, print_machine, read_metrics  # noqa: E402
from imagerec.data.samples import write_digit_scenes, write_sample  # noqa: E402

IMAGEREC = Path(sys.executable).with_name("imagerec")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "IMAGEREC_THREADS": "1"}


@dataclass(frozen=True)
class Setting:
    data: str  # digits | scenes | masks
    options: tuple[object, ...]
    batch: int  # per process under DDP; one process gets twice it
    compared: tuple[str, ...]  # "last_<column>" of metrics.csv's last row, "test_<key>" of evaluation/test.json


SETTINGS = {
    "classify": Setting(
        "digits", ("--finetune", "gradual", "--imgsz", 8, "--epochs", 2), 32,
        ("last_train_loss", "last_val_accuracy", "test_accuracy", "test_loss"),
    ),
    "detect": Setting(
        "scenes", ("--task", "detect", "--model", "fcos_lite", "--epochs", 4, "--lr", 5e-3, "--no-flip",
                   "--precision", 32), 4,
        ("last_train_loss", "last_val_map50", "test_map50", "test_map"),
    ),
    "segment": Setting(
        "masks", ("--task", "segment", "--model", "unet", "--epochs", 4, "--imgsz", 32, "--lr", 3e-3, "--no-flip"), 4,
        ("last_train_loss", "last_val_iou_fg", "test_iou_fg", "test_loss"),
    ),
}  # fmt: skip


def write_data(root: Path) -> dict[str, Path]:
    """The digits, 48 digit scenes (32 train, 8 val, 8 test) and the same scenes with digit/background masks."""
    scenes = write_digit_scenes(root / "scenes", n_train=32, n_val=8, n_test=8, size=64)
    masks = write_digit_scenes(root / "masks", n_train=32, n_val=8, n_test=8, size=64)
    for path in (masks / "masks").rglob("*.png"):
        with Image.open(path) as mask:
            Image.fromarray(np.where(np.asarray(mask) > 0, 255, 0).astype(np.uint8)).save(path)
    (masks / "classes.yaml").unlink()
    return {"digits": write_sample("digits", root / "digits"), "scenes": scenes, "masks": masks}


@dataclass
class Measured:
    metrics: dict[str, float]
    wall_s: float
    epochs_s: float


def train(data: Path, setting: Setting, *, processes: int, seed: int, out: Path) -> Measured:
    batch = setting.batch * (2 // processes)
    command = [str(IMAGEREC), "train", str(data), *map(str, setting.options), "--batch", str(batch)]
    command += ["--devices", str(processes), "--device", "cpu", "--seed", str(seed), "--out", str(out)]
    start = time.perf_counter()
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    rows = read_metrics(out)
    test = json.loads((out / "evaluation" / "test.json").read_text())
    metrics = {}
    for key in setting.compared:
        source, name = key.split("_", 1)
        metrics[key] = float(rows[-1][name] if source == "last" else test[name])
    return Measured(metrics, wall, sum(r["epoch_time_s"] for r in rows))


def compare(task: str, data: Path, seeds: list[int], work: Path) -> list[list[object]]:
    setting = SETTINGS[task]
    pairs = []
    for seed in seeds:
        # Alternate which side runs first, so that drifting load on the machine hits both alike.
        order = (1, 2) if seed % 2 == 0 else (2, 1)
        runs = {n: train(data, setting, processes=n, seed=seed, out=work / f"{task}-{n}-{seed}") for n in order}
        pairs.append((runs[1], runs[2]))
        differences = {k: round(runs[2].metrics[k] - runs[1].metrics[k], 4) for k in setting.compared}
        print(
            f"  {task} seed {seed}: one process {runs[1].metrics}, {runs[1].wall_s:.1f} s; two "
            f"{runs[2].metrics}, {runs[2].wall_s:.1f} s; two − one {differences}",
            flush=True,
        )
    rows = []
    for key in setting.compared:
        largest = max(abs(two.metrics[key] - one.metrics[key]) for one, two in pairs)
        singles = [one.metrics[key] for one, _ in pairs]
        between = max(singles) - min(singles) if len(singles) > 1 else float("nan")
        rows.append([task, key, f"{statistics.mean(singles):.4f}", f"{largest:.4f}", f"{between:.4f}"])
    wall = median([two.wall_s / one.wall_s for one, two in pairs])
    epochs = median([two.epochs_s / one.epochs_s for one, two in pairs])
    rows.append([task, "wall time, 2 ÷ 1", "command / epochs", f"{wall:.2f}", f"{epochs:.2f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=[*SETTINGS, "all"], default="all")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per task (0, 1, …)")
    args = parser.parse_args()
    print_machine("DDP (2 processes, gloo) against 1 process on the CPU")
    tasks = list(SETTINGS) if args.task == "all" else [args.task]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = write_data(Path(tmp) / "data")
        for task in tasks:
            rows += compare(task, data[SETTINGS[task].data], list(range(args.seeds)), Path(tmp))
    print()
    header = ["task", "metric", "1 process (mean over seeds)", "largest |2 − 1| over seeds", "spread between seeds"]
    print(markdown_table(header, rows))
    print("\nwall-time rows: the median ratio of the whole command, then of the training epochs alone")


if __name__ == "__main__":
    main()
