"""CPU speed: fp32/NCHW against the precision and memory format the engine chooses, and what it costs in accuracy.

Part 1 (speed). For each model, training steps (forward, loss, backward, AdamW step) at 224 px, batch 32, RGB,
in the four settings fp32/NCHW, fp32/channels_last, bf16-autocast/NCHW, bf16-autocast/channels_last. The four are
measured round-robin (the order rotating every round) and each figure is the median over rounds of the median
step time in that round, so machine load that comes and goes hits all four alike. Between rounds the engine's own
probe (`imagerec.engine.autotune.choose_cpu_settings`, what `imagerec.train` calls on CPU, recorded in run.yaml under
`resolved.compute`) is asked which setting it would train with, and so is the probe proposed for it (candidates
taking turns, fastest step kept, one thread; see `interleaved_probe`); how often each picked what is reported.

Part 3 (optional, `--probe-test N`). Both probes asked N times at the small size, on a quiet machine and with one
competing busy process, the common case on a shared CPU.

Part 2 (accuracy). Short runs of `imagerec.train` on the digits sample at a small size, per model and seed, with
`precision="32"` against `precision="auto"` (what the engine picks at that size), and `bf16-mixed` forced as well
where `auto` kept fp32, so bf16 numerics are checked even when the small-size probe does not choose them. Runs of
one seed share the split and the initial weights, so the per-seed difference from `32` is reported (mean ± sample
standard deviation) next to the test accuracy, with the steady-state training images/s from metrics.csv.

    python benchmarks/cpu_precision.py              # ~9 min on 2 cores
    python benchmarks/cpu_precision.py --quick      # ~4 min (one round, one probe, one seed)
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import imagerec  # noqa: E402
from _common import (  # noqa: E402
    markdown_table,
    print_machine,
    quiet_console,
    read_compute,
    read_metrics,
    spread,
    steady_images_per_s,
)
from imagerec.engine.autotune import MIN_GAIN, choose_cpu_settings  # noqa: E402
from imagerec.models import create_model  # noqa: E402

SETTINGS = [("32-true", False), ("32-true", True), ("bf16-mixed", False), ("bf16-mixed", True)]


def label(precision: str, channels_last: bool) -> str:
    return f"{'bf16' if precision.startswith('bf16') else 'fp32'}/{'CL' if channels_last else 'NCHW'}"


# -- part 1: speed ---------------------------------------------------------------------------------------------------
class Trainer:
    """One model copy, optimizer and batch in one setting; `run(n)` gives the median images/s of n steps."""

    def __init__(self, model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor, setting) -> None:
        self.precision, self.channels_last = setting
        self.model = copy.deepcopy(model).train()
        self.images = images
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.images = images.contiguous(memory_format=torch.channels_last)
        self.targets = targets
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)

    def run(self, steps: int) -> float:
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16-mixed"):
                logits = self.model(self.images)
            loss = F.cross_entropy(logits.float(), self.targets)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
        return len(self.images) / statistics.median(times)


def interleaved_probe(
    model: torch.nn.Module, batch, loss_fn, *, rounds: int = 2, steps: int = 2, threads: int | None = None
) -> str:
    """A probe proposed for the engine: the engine's candidates and 10% rule, but the candidates take turns
    (`rounds` times, order rotating) and each keeps its fastest step. Load from other processes only ever slows a
    step down, so the fastest step is the estimate it disturbs least, and taking turns spreads a busy spell over
    all candidates instead of letting it land on one. With `threads=1` the probe runs on one thread (restored
    afterwards): a thread of a parallel region that shares its core with another process stalls the whole region,
    while a lone thread simply gets the idle core.
    """
    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _interleaved(model, batch, loss_fn, rounds=rounds, steps=steps)
    finally:
        torch.set_num_threads(saved)


def _interleaved(model: torch.nn.Module, batch, loss_fn, *, rounds: int, steps: int) -> str:
    images, targets = batch
    probes = []
    for precision, channels_last in SETTINGS:
        probe = copy.deepcopy(model).train()
        x = images
        if channels_last:
            probe, x = probe.to(memory_format=torch.channels_last), images.contiguous(memory_format=torch.channels_last)
        probes.append((probe, x, precision == "bf16-mixed"))
    fastest = [float("inf")] * len(probes)
    for r in range(rounds + 1):  # round 0 warms up
        for i in [*range(r % len(probes), len(probes)), *range(r % len(probes))]:
            probe, x, bf16 = probes[i]
            for _ in range(steps if r else 1):
                start = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = loss_fn(probe, (x, targets))
                loss.backward()
                probe.zero_grad(set_to_none=True)
                if r:
                    fastest[i] = min(fastest[i], time.perf_counter() - start)
    best = min(range(len(probes)), key=fastest.__getitem__)
    if fastest[0] / fastest[best] < MIN_GAIN:
        best = 0
    return label(*SETTINGS[best])


def speed(name: str, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    model = create_model("classify", name, num_outputs=10, in_channels=3, imgsz=args.imgsz)
    images = torch.randn(args.batch, 3, args.imgsz, args.imgsz)
    targets = torch.randint(0, 10, (args.batch,))
    trainers = [Trainer(model, images, targets, s) for s in SETTINGS]
    for trainer in trainers:
        trainer.run(1)  # warm-up: kernel selection, allocator
    measured: dict[int, list[float]] = {i: [] for i in range(len(SETTINGS))}
    choices: Counter[str] = Counter()
    proposed: Counter[str] = Counter()

    def loss_fn(m: torch.nn.Module, batch) -> torch.Tensor:
        return F.cross_entropy(m(batch[0]).float(), batch[1])

    for r in range(args.rounds):
        order = list(range(len(SETTINGS)))
        order = order[r % len(order) :] + order[: r % len(order)]
        for i in order:
            measured[i].append(trainers[i].run(args.steps))
        if r < args.probes:
            chosen = choose_cpu_settings(model, (images[:32], targets[:32]), loss_fn)
            choices[label(chosen.precision, chosen.channels_last)] += 1
            proposed[interleaved_probe(model, (images[:32], targets[:32]), loss_fn, rounds=1, threads=1)] += 1
    speeds = {label(*SETTINGS[i]): statistics.median(v) for i, v in measured.items()}
    shown = ", ".join(f"{k} {v:.1f}" for k, v in speeds.items())
    print(f"  {name}: {shown} img/s; engine chose {dict(choices)}, proposed probe {dict(proposed)}", flush=True)
    return {"model": name, "speeds": speeds, "choices": choices, "proposed": proposed}


def speed_table(results: list[dict]) -> str:
    def expected(speeds: dict[str, float], choices: Counter[str]) -> float:
        """Mean speed of the probes' picks: what a run gets on average with that probe."""
        return sum(speeds[k] * n for k, n in choices.items()) / sum(choices.values())

    def picks(choices: Counter[str]) -> str:
        return ", ".join(f"{k} ×{n}" for k, n in choices.most_common())

    rows = []
    for r in results:
        s, base = r["speeds"], r["speeds"]["fp32/NCHW"]
        best = max(s, key=s.get)
        rows.append((
            r["model"], *(f"{s[label(*k)]:.1f}" for k in SETTINGS), picks(r["choices"]),
            f"**{expected(s, r['choices']) / base:.2f}×**", picks(r["proposed"]),
            f"{expected(s, r['proposed']) / base:.2f}×", f"{best} {s[best] / base:.2f}×",
        ))  # fmt: skip
    header = (
        "model", *(f"{label(*k)} img/s" for k in SETTINGS), "engine chose (probes)", "engine's pick vs fp32/NCHW",
        "proposed probe chose", "its pick vs fp32/NCHW", "fastest vs fp32/NCHW",
    )  # fmt: skip
    return markdown_table(header, rows)


# -- part 3 (optional): probe stability under load ---------------------------------------------------------------
def probe_stability(args: argparse.Namespace) -> str:
    """Ask both probes `args.probe_test` times at the small size, with and without one competing busy process.

    A machine shared with other work is the common case on CPU (here: colleagues' test suites); the busy process
    stands in for them. Reported: how often each probe picked each setting, and the mean speed of its picks relative
    to the fastest setting (measured round-robin in quiet conditions).
    """
    import subprocess

    torch.manual_seed(0)
    model = create_model("classify", "seed_cnn", num_outputs=2, in_channels=1, imgsz=args.small_imgsz)
    images = torch.randn(32, 1, args.small_imgsz, args.small_imgsz)
    targets = torch.randint(0, 2, (32,))

    def loss_fn(m: torch.nn.Module, batch) -> torch.Tensor:
        return F.cross_entropy(m(batch[0]).float(), batch[1])

    trainers = [Trainer(model, images, targets, s) for s in SETTINGS]
    speeds = {label(*SETTINGS[i]): 0.0 for i in range(len(SETTINGS))}
    for _ in range(3):
        for i, trainer in enumerate(trainers):
            speeds[label(*SETTINGS[i])] = max(speeds[label(*SETTINGS[i])], trainer.run(5))
    fastest = max(speeds.values())
    rows = []
    for loaded in (False, True):
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if loaded else None
        try:
            engine: Counter[str] = Counter()
            proposed: Counter[str] = Counter()
            single: Counter[str] = Counter()
            for _ in range(args.probe_test):
                chosen = choose_cpu_settings(model, (images, targets), loss_fn)
                engine[label(chosen.precision, chosen.channels_last)] += 1
                proposed[interleaved_probe(model, (images, targets), loss_fn)] += 1
                single[interleaved_probe(model, (images, targets), loss_fn, rounds=1, threads=1)] += 1
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
        candidates = (("engine probe", engine), ("interleaved probe", proposed), ("interleaved, 1 thread", single))
        for who, picks in candidates:
            mean = sum(speeds[k] * n for k, n in picks.items()) / sum(picks.values()) / fastest
            shown = ", ".join(f"{k} ×{n}" for k, n in picks.most_common())
            rows.append(("1 busy process" if loaded else "quiet", who, shown, f"{mean:.2f}"))
            print(f"  {rows[-1][0]}, {who}: {shown}; mean speed of picks {mean:.2f} of the fastest", flush=True)
    shown = ", ".join(f"{k} {v:.0f}" for k, v in speeds.items())
    print(f"  seed_cnn at {args.small_imgsz} px, batch 32, quiet round-robin: {shown} img/s")
    return markdown_table(("machine", "probe", "picks", "speed of picks ÷ fastest"), rows)


# -- part 2: accuracy ------------------------------------------------------------------------------------------------
def train_once(data: Path, out: Path, name: str, precision: str, seed: int, args: argparse.Namespace) -> dict:
    run = imagerec.train(
        data, model=name, imgsz=args.small_imgsz, epochs=args.epochs, precision=precision, seed=seed, out=out,
        console=quiet_console(),
    )  # fmt: skip
    compute = read_compute(run.path)
    return {
        "setting": label(compute["precision"], compute["channels_last"]),
        "accuracy": run.metrics["accuracy"],
        "speed": steady_images_per_s(read_metrics(run.path)),
    }


def accuracy(data: Path, work: Path, name: str, args: argparse.Namespace) -> list[dict]:
    """Per seed: `32` and `auto` (order alternating), plus forced `bf16-mixed` where `auto` kept fp32."""
    arms: dict[str, dict[int, dict]] = {"32": {}, "auto": {}, "bf16-mixed": {}}
    for seed in args.seeds:
        for precision in ("32", "auto") if seed % 2 == 0 else ("auto", "32"):
            arms[precision][seed] = train_once(data, work / f"{name}-{precision}-{seed}", name, precision, seed, args)
        if not arms["auto"][seed]["setting"].startswith("bf16"):
            arms["bf16-mixed"][seed] = train_once(data, work / f"{name}-bf16-{seed}", name, "bf16-mixed", seed, args)
    rows = []
    for precision, runs in arms.items():
        if not runs:
            continue
        # Paired by seed (same split, same initial weights): the difference the setting makes.
        delta = [runs[s]["accuracy"] - arms["32"][s]["accuracy"] for s in runs] if precision != "32" else []
        rows.append({
            "model": name, "asked": precision, "settings": ", ".join(sorted({r["setting"] for r in runs.values()})),
            "accuracy": [r["accuracy"] for r in runs.values()], "delta": delta,
            "speed": statistics.median(r["speed"] for r in runs.values()),
        })  # fmt: skip
        row = rows[-1]
        print(
            f"  {name} precision={precision}: {row['settings']}, test accuracy {spread(row['accuracy'])}"
            + (f", paired difference from 32 {spread(delta)}" if delta else "")
            + f", {row['speed']:.0f} img/s",
            flush=True,
        )
    return rows


def accuracy_table(rows: list[dict]) -> str:
    body = [
        (
            r["model"], r["asked"], r["settings"], spread(r["accuracy"]), spread(r["delta"]) if r["delta"] else "—",
            f"{r['speed']:.0f}",
        )
        for r in rows
    ]  # fmt: skip
    header = ("model", "precision asked", "resolved", "test accuracy", "paired difference from `32`", "train img/s")
    return markdown_table(header, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, one seed")
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v3_small", "seed_cnn"], help="part 1")
    parser.add_argument(
        "--accuracy-models", nargs="+", default=["seed_cnn", "resnet18"],
        help="part 2 (mobilenet_v3_small is left out: it does not learn in short runs, see docs/benchmarks.md)",
    )  # fmt: skip
    parser.add_argument("--imgsz", type=int, default=224, help="part 1 input size")
    parser.add_argument("--batch", type=int, default=32, help="part 1 batch size")
    parser.add_argument("--rounds", type=int, default=None, help="part 1 round-robin rounds (default 3, quick 1)")
    parser.add_argument("--steps", type=int, default=2, help="part 1 timed steps per setting per round")
    parser.add_argument("--probes", type=int, default=None, help="part 1 engine probes per model (default 2, quick 1)")
    parser.add_argument("--data", default="digits", help="part 2 data: 'digits' (the sample) or a folder")
    parser.add_argument("--small-imgsz", type=int, default=16, help="part 2 input size")
    parser.add_argument("--epochs", type=int, default=6, help="part 2 epochs per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="part 2 seeds (default 0 1 2, quick 0)")
    parser.add_argument("--probe-test", type=int, default=0, help="part 3: probes per condition (0: skip; try 10)")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    args = parser.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.probes = args.probes or (1 if args.quick else 2)
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    print_machine("CPU precision and memory format: fp32/NCHW vs the engine's choice")
    tables = []
    if not args.skip_speed:
        print(
            f"part 1: training steps at {args.imgsz} px, batch {args.batch}, {args.rounds} rounds × {args.steps} steps"
        )
        tables.append(speed_table([speed(name, args) for name in args.models]))
    if not args.skip_accuracy:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            data = imagerec.write_sample("digits", work / "digits") if args.data == "digits" else Path(args.data)
            print(f"\npart 2: imagerec.train on {data.name}, imgsz {args.small_imgsz}, {args.epochs} epochs, "
                  f"seeds {args.seeds}")  # fmt: skip
            tables.append(
                accuracy_table([row for name in args.accuracy_models for row in accuracy(data, work, name, args)])
            )
    if args.probe_test:
        print(f"\npart 3: probe stability, seed_cnn at {args.small_imgsz} px, {args.probe_test} probes per condition")
        tables.append(probe_stability(args))
    for table in tables:
        print()
        print(table)


if __name__ == "__main__":
    main()
