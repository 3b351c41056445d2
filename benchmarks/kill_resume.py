"""Kill -9 at random moments, then --resume: does the run end exactly where an uninterrupted one does?

One classification run (seed_cnn on scikit-learn's 1,797 real digits at 16 px, fp32, one thread) is trained
uninterrupted as the reference. The same command is then started and SIGKILLed, each `imagerec train --resume`
killed in turn, until a resume finishes the run (then another run, until `--kills` kills are made). Each kill lands
at a random moment: after a random delay of up to half the reference run (anywhere: set-up, mid-epoch,
validation, a checkpoint, the test evaluation, the report), and half the time at the first checkpoint write after it,
the instant its temporary file (`.<name>.<pid>.tmp`) appears. After every kill the run folder must hold loadable
files; at the end of each run metrics.csv (less its wall-clock columns), the test metrics and the last and best
weights must equal the reference's (no epoch lost or repeated), with no temporary file left.

    python benchmarks/kill_resume.py                  # 20 kills, ~6 min on 2 shared cores
    python benchmarks/kill_resume.py --kills 5 --seed 1
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

from imagerec.data.samples import write_sample
from imagerec.weights_io import load_weights

IMAGEREC = Path(sys.executable).with_name("imagerec")
OPTIONS = ["--imgsz", "16", "--batch", "64", "--seed", "0", "--precision", "32", "--device", "cpu"]
TIMED = ("images_per_s", "epoch_time_s")


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "IMAGEREC_THREADS": "1", "OMP_NUM_THREADS": "1"}


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [str(IMAGEREC), *args], cwd=cwd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def _rows(run: Path) -> list[dict[str, str]]:
    if not (run / "metrics.csv").exists():
        return []
    with (run / "metrics.csv").open() as handle:
        return [{k: v for k, v in row.items() if k not in TIMED} for row in csv.DictReader(handle)]


def _committed(run: Path) -> int | None:
    """The epoch state.pt records (None: no state.pt); loading it is the check that it is whole."""
    if not (run / "state.pt").exists():
        return None
    return torch.load(run / "state.pt", map_location="cpu", weights_only=False)["fit"]["epoch"]


def _kill(process: subprocess.Popen, run: Path, rng: random.Random, span: float) -> str | None:
    """SIGKILL `process` after a random delay, half the time at the first checkpoint write (a temporary file in the
    run folder) after it; returns where it landed, or None when the process ended first."""
    on_write = rng.random() < 0.5
    deadline = time.monotonic() + rng.uniform(0, span)
    while process.poll() is None and (time.monotonic() < deadline or (on_write and not list(run.glob(".*.tmp")))):
        time.sleep(0.001 if on_write and time.monotonic() >= deadline else 0.01)
    if process.poll() is not None:
        return None
    writing = [p.name for p in run.glob(".*.tmp")]
    process.send_signal(signal.SIGKILL)
    process.wait()
    rows, committed = len(_rows(run)), _committed(run)
    where = f"writing {writing[0][1:].rsplit('.', 2)[0]}" if writing else "between writes"
    return f"{where}, {rows} rows in metrics.csv, state.pt at epoch {committed}"


def _finished(run: Path) -> bool:
    return (run / "report.html").exists() and (run / "evaluation" / "test.json").exists()


def _kill_and_resume(
    command: list[str], run: Path, kills: int, rng: random.Random, span: float, *, made: int = 0
) -> list[str]:
    """Train `command` into `run`, killing it and its resumes until it finishes or `kills` kills were made, then
    resume it to the end; returns where each kill landed."""
    landed: list[str] = []
    process = _start([*command, "--out", str(run)], run.parent)
    while True:
        where = _kill(process, run, rng, span) if len(landed) < kills else None
        if where is None:
            _, err = process.communicate()
            # 2: it was resumed after the kill had come once the run was complete ("nothing to resume").
            assert process.returncode == 0 or (process.returncode == 2 and _finished(run)), err.decode()
            return landed
        landed.append(where)
        print(f"kill {made + len(landed):2d}: {where}", flush=True)
        _check_loadable(run)
        # Killed before model.json was written, in set-up: there is no run yet, so the command starts it again.
        again = ["train", "--resume", str(run)] if (run / "model.json").exists() else [*command, "--out", str(run)]
        process = _start(again, run.parent)


def _check_loadable(run: Path) -> None:
    for name in ("last.safetensors", "best.safetensors"):
        if (run / name).exists():
            load_weights(run / name)
    _committed(run)


def _same_weights(a: Path, b: Path) -> bool:
    ours, theirs = load_weights(a), load_weights(b)
    return ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def _compare(run: Path, reference: Path) -> tuple[bool, bool, bool]:
    """Whether metrics.csv (less its wall-clock columns), the test metrics and the weights equal the reference's."""
    test, expected = (json.loads((r / "evaluation" / "test.json").read_text()) for r in (run, reference))
    weights = all(_same_weights(run / n, reference / n) for n in ("last.safetensors", "best.safetensors"))
    return _rows(run) == _rows(reference), test == expected | {"data": test["data"]}, weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--work", type=Path, default=None, help="folder for the data and runs (default: a temporary)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="kill-resume-"))
    data = work / "digits"
    if not data.exists():
        write_sample("digits", data)
    command = ["train", str(data), "--epochs", str(args.epochs), *OPTIONS]

    started = time.monotonic()
    reference = work / "reference"
    done = subprocess.run(
        [str(IMAGEREC), *command, "--out", str(reference)], cwd=work, env=_env(), stdout=subprocess.DEVNULL, check=False
    )
    assert done.returncode == 0, "the reference run failed"
    span = time.monotonic() - started
    print(f"reference run: {span:.0f} s", flush=True)

    rng = random.Random(args.seed)
    landed: list[str] = []
    rounds: list[tuple[bool, bool, bool]] = []
    while len(landed) < args.kills:  # a run that finishes before all kills are made is followed by another
        run = work / f"killed-{len(rounds) + 1}"
        landed += _kill_and_resume(command, run, args.kills - len(landed), rng, span / 2, made=len(landed))
        rounds.append(_compare(run, reference))
        print(f"round {len(rounds)}: equal to the reference (metrics.csv, test metrics, weights): {rounds[-1]}")
    left = [p for r in range(len(rounds)) for p in (work / f"killed-{r + 1}").rglob(".*.tmp")]
    writing = Counter(w.split(",")[0] for w in landed)
    print(f"\n{len(landed)} kills in {len(rounds)} runs ({dict(writing)}), total {time.monotonic() - started:.0f} s")
    print(
        f"runs equal to the reference in metrics.csv, test metrics and weights: {sum(map(all, rounds))}/{len(rounds)}"
    )
    print(f"temporary files left: {len(left)}")
    if not all(map(all, rounds)) or left:
        sys.exit(1)


if __name__ == "__main__":
    main()
