"""Digit scenes at equal time budgets: fcos_lite, SSDlite and Faster R-CNN-MobileNet, test map / map50.

Each model first trains one epoch (the probe) to measure its epoch time on this machine now; it then trains from
scratch for epochs = budget / probe epoch time (at least 1) through `imagerec.train`, and is reported on the test
split with the best checkpoint by validation map. Digit scenes are 600/150/150 greyscale 128×128 canvases with
2–5 real digits (16–48 px) each; no horizontal flips (a mirrored digit is not a digit). The budget counts the
training epochs (metrics.csv `epoch_time_s`); validation after every epoch, checkpoints and the test evaluation
come on top and are in the wall seconds. One torch thread (see docs/benchmarks.md, "Detection", on why).

Per-model recipe (lr, batch): see RECIPES; checked against the defaults (AdamW lr 1e-3, batch 8) at the 60 s
budget on the validation split; docs/benchmarks.md says what moved and why.

    python benchmarks/detection_scenes.py            # 300 s per model, ~30 min on 2 cores (17 of them Faster R-CNN)
    python benchmarks/detection_scenes.py --quick    # 60 s per model, ~6 min + ~20 for Faster R-CNN
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import imagerec  # noqa: E402
from _common import markdown_table, print_machine, print_result, quiet_console, read_metrics, timed  # noqa: E402

MODELS = ("fcos_lite", "ssdlite320_mobilenet_v3_large", "fasterrcnn_mobilenet_v3_large_320_fpn")
RECIPES: dict[str, dict[str, float | int]] = {
    "fcos_lite": {"lr": 2e-3, "batch": 16},
    "ssdlite320_mobilenet_v3_large": {"lr": 2e-3, "batch": 16},
    "fasterrcnn_mobilenet_v3_large_320_fpn": {"lr": 1e-3, "batch": 8},
}


def recipe(model: str, args: argparse.Namespace) -> dict[str, float | int]:
    return {"lr": 1e-3, "batch": 8} if args.defaults else RECIPES.get(model, {})


def train(data: Path, out: Path, model: str, epochs: int, args: argparse.Namespace) -> imagerec.Run:
    return imagerec.train(
        data, task="detect", model=model, epochs=epochs, flip=False, imgsz=args.imgsz, augment=args.augment,
        seed=args.seed, out=out, console=quiet_console(), **recipe(model, args),
    )  # fmt: skip


def measure(data: Path, work: Path, model: str, args: argparse.Namespace) -> dict:
    probe = train(data, work / f"{model}-probe", model, 1, args)
    epoch_s = read_metrics(probe.path)[0]["epoch_time_s"]
    epochs = max(1, int(args.budget // epoch_s))
    with timed() as t:
        run = train(data, work / model, model, epochs, args)
    rows = read_metrics(run.path)
    best = max(rows, key=lambda r: r.get("val_map", -1))
    result = {
        "model": model,
        "recipe": recipe(model, args),
        "probe_s": epoch_s,
        "epochs": epochs,
        "best_epoch": int(best["epoch"]),
        "val_map": best.get("val_map", float("nan")),
        "train_s": sum(r["epoch_time_s"] for r in rows),
        "wall_s": t.wall_s,
        "map": run.metrics["map"],
        "map50": run.metrics["map50"],
        "load": os.getloadavg()[0],
    }
    print_result(result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="60 s per model")
    parser.add_argument("--budget", type=float, default=None, help="training seconds per model (default 300)")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--imgsz", type=int, default=128)
    parser.add_argument("--augment", default="light")
    parser.add_argument("--defaults", action="store_true", help="imagerec's lr and batch instead of RECIPES")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.budget = args.budget or (60.0 if args.quick else 300.0)
    torch.set_num_threads(args.threads)
    print_machine("digit scenes: detectors trained from scratch at equal time budgets")
    print(f"budget {args.budget:.0f} s of training epochs per model, imgsz {args.imgsz}, augment {args.augment}, "
          f"no flips, seed {args.seed}; reported on the test split (150 images)\n")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = imagerec.write_sample("digit-scenes", work / "scenes")
        results = [measure(data, work, model, args) for model in args.models]
    header = ("model", "lr", "batch", "probe s/epoch", "epochs", "best epoch", "val map", "train s", "wall s",
              "test map", "test map50", "load 1m")  # fmt: skip
    rows = [
        (r["model"], r["recipe"].get("lr"), r["recipe"].get("batch"), f"{r['probe_s']:.1f}", r["epochs"],
         r["best_epoch"], f"{r['val_map']:.3f}", f"{r['train_s']:.0f}", f"{r['wall_s']:.0f}",
         f"**{r['map']:.3f}**", f"{r['map50']:.3f}", f"{r['load']:.1f}")
        for r in results
    ]  # fmt: skip
    print()
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
