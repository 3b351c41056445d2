"""Deployment runtimes side by side (docs/benchmarks.md, section 11): eager PyTorch vs torch.compile vs ONNX Runtime
vs OpenVINO, fp32 and int8, latency at batch 1 and throughput at batch 32, with the validation metric of each.

Four runs, trained here quickly (the metric of a short run is low, but what deployment costs is the *drop* from
eager, measured on the same images): resnet18 at 224 px and seed_cnn at 28 px on BreastMNIST (classification),
fcos_lite at 320 px on raccoon (detection), unet at 256 px on ISBI 2012 (segmentation). Each is then measured by
`imagerec.benchmark`: every runtime interleaved round by round, so load from other processes hits them alike;
medians, and ratios to eager fp32 from the same rounds. int8 is post-training quantisation calibrated on the run's
training images (ONNX Runtime static QDQ; OpenVINO through NNCF). Threads: 1 by default, for every runtime alike: on
a shared 2-core machine a second thread waits whenever another process holds the other core (see section 5), which
would measure the neighbours rather than the runtimes. Runs are reused from --work when they are there.

    python benchmarks/deploy.py                       # 4 runs: ~10 min training + ~20 min measuring on 2 cores
    python benchmarks/deploy.py --models seed_cnn --quick
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import imagerec  # noqa: E402
from _common import SHARED_DATASETS, markdown_table, print_machine, quiet_console, timed  # noqa: E402
from imagerec.outputs.benchmark import BenchmarkReport, BenchmarkRow, Timing  # noqa: E402
from imagerec.outputs.parity import Parity  # noqa: E402

ISBI = SHARED_DATASETS / "isbi2012-em" / "train"


@dataclass(frozen=True)
class Setup:
    """One run to train and measure."""

    model: str
    task: str
    imgsz: int
    epochs: int
    data: str  # breastmnist | raccoon | isbi
    options: dict[str, Any] = field(default_factory=dict)


SETUPS = {
    "resnet18": Setup("resnet18", "classify", 224, 1, "breastmnist", {"batch": 32}),
    "seed_cnn": Setup("seed_cnn", "classify", 28, 10, "breastmnist"),
    "fcos_lite": Setup("fcos_lite", "detect", 320, 6, "raccoon", {"batch": 8}),
    "unet": Setup("unet", "segment", 256, 8, "isbi", {"batch": 5}),
}


def data_path(name: str, work: Path) -> Path:
    if name == "breastmnist":
        return SHARED_DATASETS / "breastmnist"
    if name == "raccoon":
        return SHARED_DATASETS / "raccoon" / "data"
    root = work / "isbi"  # images 0-21 train, 22-24 val, 25-29 test (benchmarks/segmentation_isbi.py)
    if not root.exists():
        for split, numbers in {"train": range(22), "val": range(22, 25), "test": range(25, 30)}.items():
            for kind, source in (("images", "image"), ("masks", "label")):
                (root / kind / split).mkdir(parents=True)
                for n in numbers:
                    (root / kind / split / f"{n}.png").symlink_to(ISBI / source / f"{n}.png")
    return root


def trained(setup: Setup, work: Path, seed: int) -> Path:
    out = work / f"{setup.model}-{setup.imgsz}"
    if (out / "best.safetensors").exists() or (out / "last.safetensors").exists():
        print(f"  reusing {out}", flush=True)
        return out
    with timed() as t:
        imagerec.train(
            data_path(setup.data, work), task=setup.task, model=setup.model, imgsz=setup.imgsz, epochs=setup.epochs,
            seed=seed, out=out, console=quiet_console(), **setup.options,
        )  # fmt: skip
    print(f"  trained {out} in {t.wall_s:.0f} s", flush=True)
    return out


def saved(path: Path) -> BenchmarkReport:
    """A report written by an earlier run of this script (`--print-only`)."""
    data = json.loads(path.read_text())
    rows = tuple(
        BenchmarkRow(
            r["runtime"], r["precision"], r["runs_in"], tuple(Timing(**t) for t in r["timings"]),
            None if r["check"] is None else Parity(**{k: v for k, v in r["check"].items() if k != "metric_drop"}),
            r["setup_s"], r["skipped"],
        )
        for r in data.pop("rows")
    )  # fmt: skip
    return BenchmarkReport(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}, rows=rows)


def measured(name: str, args: argparse.Namespace) -> BenchmarkReport:
    setup = SETUPS[name]
    path = args.work / f"{name}-benchmark.json"
    if args.print_only:
        return saved(path)
    print(f"{name} at {setup.imgsz} ({setup.task})", flush=True)
    run = trained(setup, args.work, args.seed)
    with timed() as t:
        report = imagerec.benchmark(
            run, runtimes=args.runtimes, batches=args.batches, iterations=args.iterations, warmup=args.warmup,
            check_images=args.check_images, threads=args.threads,
        )  # fmt: skip
    print(f"  measured in {t.wall_s:.0f} s", flush=True)
    path.write_text(json.dumps(report.to_dict(), indent=2))
    return report


def cells(name: str, row: BenchmarkRow, large: int) -> list[str]:
    if row.skipped is not None:
        return [name, row.runtime, row.precision, row.skipped, "", "", "", "", "", ""]
    first, last = row.timing(1), row.timing(large)
    parity = row.parity
    setup = "" if row.setup_s is None else f"{row.setup_s:.0f}"
    return [
        name, row.runtime, row.precision, row.runs_in, f"{first.p50_ms:.1f}", f"{first.vs_eager:.2f}×",
        f"{last.images_per_s:.1f}", f"**{last.vs_eager:.2f}×**", f"{parity.exported:.4f} ({parity.metric})",
        f"{parity.metric_drop * 100:+.2f} / {parity.max_abs:.1e}" + (f" / {setup} s" if setup else ""),
    ]  # fmt: skip


def goals(report: BenchmarkReport, large: int) -> list[str]:
    """The issue's goals for resnet18: best fp32 runtime ≥ 2× eager, int8 ≥ 3× eager with ≤ 1 pt drop."""
    rows = [r for r in report.rows if r.skipped is None and r.runtime != "eager"]
    fp32 = max((r for r in rows if r.precision == "fp32"), key=lambda r: r.timing(large).vs_eager, default=None)
    int8 = [r for r in rows if r.precision == "int8"]
    lines = []
    if fp32 is not None:
        ratio = fp32.timing(large).vs_eager
        lines.append(f"best fp32 runtime {fp32.runtime}: {ratio:.2f}× eager at b{large} (goal ≥ 2×): "
                     f"{'met' if ratio >= 2 else 'missed'}")  # fmt: skip
    for row in int8:
        ratio, drop = row.timing(large).vs_eager, row.parity.metric_drop * 100
        ok = ratio >= 3 and drop <= 1
        lines.append(f"{row.runtime} int8: {ratio:.2f}× eager at b{large}, drop {drop:+.2f} pt (goal ≥ 3×, ≤ 1 pt): "
                     f"{'met' if ok else 'missed'}")  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--work", type=Path, default=Path("/tmp/imagerec-deploy-bench"))
    parser.add_argument("--runtimes", nargs="+", default=["eager", "compile", "onnx", "openvino"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--iterations", type=int, default=10, help="interleaved rounds per batch size")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--check-images", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="3 rounds, 1 warm-up, 50 check images")
    parser.add_argument("--print-only", action="store_true", help="print the tables saved in --work, measure nothing")
    args = parser.parse_args()
    if args.quick:
        args.iterations, args.warmup, args.check_images = 3, 1, 50
    if not args.print_only:
        print_machine("deployment runtimes")
    args.work.mkdir(parents=True, exist_ok=True)
    large, table, notes = max(args.batches), [], {}
    for name in args.models:
        report = measured(name, args)
        label = f"{name} {SETUPS[name].imgsz}"
        table += [cells(label, row, large) for row in report.rows]
        notes[label] = goals(report, large) if name == "resnet18" else []
    header = ("model", "runtime", "precision", "computes in", "p50 ms b1", "× eager b1", f"img/s b{large}",
              f"× eager b{large}", "val metric", "drop pt / max abs diff / setup")  # fmt: skip
    print(markdown_table(header, table))
    for label, lines in notes.items():
        for line in lines:
            print(f"- {label}: {line}")


if __name__ == "__main__":
    main()
