"""Prediction over many images: memory, speed per engine, and kill -9 then --resume.

The images are scikit-learn's 1,797 real digits written again and again as PNG files (1,000 per folder) up to
`--images`; the run is seed_cnn trained one epoch at 8 px (the model is tiny on purpose: the measurement is of the
streaming, decoding and writing around it). Every `imagerec predict` runs as its own process, one thread.

1. Peak RSS (the process's high-water mark, `ru_maxrss`) and images/s of `predict --out x.parquet` over 1,000 and
   over all images: streaming keeps RSS flat (goal: below 1.5× the RSS at 1,000 images).
2. Speed of the same command per engine, side by side: local, and `--engine ray --actors 1` and `--actors 2` (a local
   Ray instance of as many CPUs as the machine has; wall time includes Ray's start). Ray's actors are processes of
   their own: their memory is not in the driver's RSS.
3. kill -9 at a random moment (in start-up, or within about one kill's share of the work), `--kills` times, each
   continuing the same output with --resume, then a last --resume to the end: the output must hold every image
   exactly once and equal an uninterrupted run's (bytes for JSON Lines, rows for Parquet).

    python benchmarks/predict_stream.py                            # 100,000 images; ~25 min on 2 shared cores
    python benchmarks/predict_stream.py --images 20000 --engines local --kills 5
"""

from __future__ import annotations

import argparse
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

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine  # noqa: E402

IMAGEREC = Path(sys.executable).with_name("imagerec")
# Runs the command given after it and prints its peak RSS: ru_maxrss of RUSAGE_CHILDREN is the largest of the
# waited-for children, and this wrapper has exactly one.
RSS = "import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); " \
      "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)"  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "IMAGEREC_THREADS": "1", "OMP_NUM_THREADS": "1"}


def write_images(folder: Path, count: int) -> Path:
    """`count` PNG files of real digits, 1,000 per subfolder; returns a .txt list naming them all."""
    from sklearn.datasets import load_digits

    digits = load_digits().images
    listing = folder / "all.txt"
    if listing.exists() and len(listing.read_text().splitlines()) == count:
        return listing
    names = []
    for i in range(count):
        path = folder / f"{i // 1000:04d}" / f"{i:07d}.png"
        if i % 1000 == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((digits[i % len(digits)] * 255 / 16).astype(np.uint8)).save(path)
        names.append(str(path))
    listing.write_text("\n".join(names) + "\n")
    return listing


def predict(run: Path, listing: Path, out: Path, *extra: str) -> tuple[float, int]:
    """Wall seconds and peak RSS (MiB) of `imagerec predict RUN LISTING --out OUT`."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", RSS, str(IMAGEREC), "predict", str(run), str(listing), "--out", str(out), *extra],
        env=_env(), capture_output=True, text=True, check=False,
    )  # fmt: skip
    wall = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-2000:]
    return wall, int(done.stderr.strip().splitlines()[-1]) // 1024


def memory_and_engines(run: Path, work: Path, total: int, engines: list[str]) -> None:
    small = work / "small.txt"
    small.write_text("".join((work / "images" / "all.txt").read_text().splitlines(keepends=True)[:1000]))
    listing = work / "images" / "all.txt"
    print("\n| engine | images | wall s | images/s | peak RSS MiB | RSS ÷ RSS at 1,000 |")
    print("|---|---|---|---|---|---|")
    base_wall, base_rss = predict(run, small, work / "small.parquet")
    print(f"| local | 1,000 | {base_wall:.1f} | {1000 / base_wall:.0f} | {base_rss} | 1.00 |", flush=True)
    speeds = {}
    for engine in engines:
        extra = [] if engine == "local" else ["--engine", "ray", "--actors", engine.removeprefix("ray")]
        out = work / f"{engine}.parquet"
        wall, rss = predict(run, listing, out, *extra)
        rows = pq.read_table(out, columns=["source"]).num_rows
        assert rows == total, f"{engine}: {rows} rows for {total} images"
        speeds[engine] = total / wall
        name = engine if engine == "local" else f"ray, {engine.removeprefix('ray')} actor(s)"
        print(f"| {name} | {total:,} | {wall:.1f} | {speeds[engine]:.0f} | {rss} | {rss / base_rss:.2f} |", flush=True)
    if "local" in speeds:
        print("\nspeed ÷ local: " + ", ".join(f"{e} {s / speeds['local']:.2f}" for e, s in speeds.items()))


def _start(run: Path, listing: Path, out: Path, resume: bool) -> subprocess.Popen:
    command = [str(IMAGEREC), "predict", str(run), str(listing), "--out", str(out), "--batch", "32"]
    return subprocess.Popen(
        [*command, *(["--resume"] if resume else [])], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def kill_and_resume(run: Path, work: Path, kills: int, count: int, seed: int) -> bool:
    """kill -9 `kills` times at random moments of a prediction over `count` images, resuming each time, then to the
    end; True when the output equals an uninterrupted run's, for JSON Lines and for Parquet."""
    listing = work / "kill.txt"
    listing.write_text("".join((work / "images" / "all.txt").read_text().splitlines(keepends=True)[:count]))
    rng, same = random.Random(seed), True
    one = work / "one.txt"
    one.write_text(listing.read_text().splitlines(keepends=True)[0])
    started = time.monotonic()
    assert _start(run, one, work / "one.jsonl", False).wait() == 0
    startup = time.monotonic() - started
    for suffix in ("jsonl", "parquet"):
        reference = work / f"reference.{suffix}"
        started = time.monotonic()
        assert _start(run, listing, reference, False).wait() == 0
        work_s = time.monotonic() - started - startup
        out, landed = work / f"killed.{suffix}", []
        for _ in range(kills):
            process = _start(run, listing, out, True)  # --resume: starts when nothing is written yet
            # Anywhere in start-up or in about one kill's share of the work, so that the kills land before the end.
            time.sleep(rng.uniform(0, startup + work_s / kills))
            if process.poll() is not None:
                break  # finished before the kill came
            process.send_signal(signal.SIGKILL)
            process.wait()
            record = out.with_name(f".{out.name}.progress.json")
            if out.exists() and not record.exists():
                break  # complete: it finished just before the kill
            landed.append(json.loads(record.read_text())["done"] if record.exists() else 0)
        process = _start(run, listing, out, True)
        _, err = process.communicate()
        assert process.returncode == 0 or b"complete" in err, err.decode()
        if suffix == "jsonl":
            sources = [json.loads(line)["source"] for line in out.read_text().splitlines()]
            equal = out.read_bytes() == reference.read_bytes()
        else:
            sources = pq.read_table(out).column("source").to_pylist()
            equal = pq.read_table(out).to_pylist() == pq.read_table(reference).to_pylist()
        once = Counter(Counter(sources).values()) == Counter({1: count})
        print(f"{suffix}: {len(landed)} kills (images committed when killed: {landed}); every image exactly once: "
              f"{once}; equal to the uninterrupted output: {equal}", flush=True)  # fmt: skip
        same = same and once and equal
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--engines", default="local,ray1,ray2", help="comma-separated: local, ray1, ray2, …")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--kill-images", type=int, default=5000, help="images of the kill -9 prediction")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--work", type=Path, default=None, help="folder for images and outputs (default: temporary)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="predict-stream-"))
    print("machine:", ", ".join(f"{k}={v}" for k, v in machine().items()))
    started = time.monotonic()
    write_images(work / "images", args.images)
    print(f"{args.images:,} images written in {time.monotonic() - started:.0f} s", flush=True)
    run = work / "run"
    if not (run / "best.safetensors").exists():
        from imagerec.data.samples import write_sample

        write_sample("digits", work / "digits")
        subprocess.run(
            [str(IMAGEREC), "train", str(work / "digits"), "--epochs", "1", "--imgsz", "8", "--seed", "0", "--out",
             str(run)], env=_env(), stdout=subprocess.DEVNULL, check=True,
        )  # fmt: skip
    memory_and_engines(run, work, args.images, [e for e in args.engines.split(",") if e])
    if args.kills:
        ok = kill_and_resume(run, work, args.kills, min(args.kill_images, args.images), args.seed)
        print(f"\nkill -9 × {args.kills} then --resume, every image exactly once and output unchanged: {ok}")
        if not ok:
            sys.exit(1)
    print(f"total {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
