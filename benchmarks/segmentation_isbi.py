"""ISBI 2012 electron microscopy: compact U-Net against LR-ASPP at equal time budgets, from scratch.

The 30 labelled 512×512 images of `../shared/datasets/isbi2012-em/train` are split by number: train 0–21, val 22–24
(best checkpoint by validation miou, i.e. interior IoU), test 25–29, written as `images/{train,val,test}` +
`masks/{…}` symlinks in a temporary folder. The masks are 0 = membrane, 255 = cell interior; imagerec reads 0/255
as binary background/foreground, so its "background" is the membrane and "foreground" the interior.

Each model first trains one epoch (the probe) to measure its epoch time on this machine now, then from scratch for
epochs = budget / probe epoch time through `imagerec.train` with the default recipe (`--task segment --model M
--epochs N`: 256 px crops, augment `light`, batch 8, AdamW lr 1e-3, BCE + Dice) unless options say otherwise.
The budget counts training epochs (metrics.csv `epoch_time_s`); validation, checkpoints and the test evaluation
come on top and are in the wall seconds. One torch thread (see docs/benchmarks.md, "Detection", on why).

    python benchmarks/segmentation_isbi.py                     # unet and lraspp, 540 s each: ~28 min on 2 cores
    python benchmarks/segmentation_isbi.py --quick             # 60 s each
    python benchmarks/segmentation_isbi.py --models unet --augment heavy --imgsz 512
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
from _common import SHARED_DATASETS, markdown_table, print_machine, print_result, quiet_console, read_metrics, timed  # noqa: E402

ISBI = SHARED_DATASETS / "isbi2012-em" / "train"
SPLITS = {"train": range(22), "val": range(22, 25), "test": range(25, 30)}
MODELS = ("unet", "lraspp_mobilenet_v3_large")
NAMES = {"background": "membrane", "foreground": "interior"}  # imagerec's binary class names → ISBI's


def write_split(root: Path) -> Path:
    for split, numbers in SPLITS.items():
        for kind, source in (("images", "image"), ("masks", "label")):
            folder = root / kind / split
            folder.mkdir(parents=True)
            for n in numbers:
                (folder / f"{n}.png").symlink_to(ISBI / source / f"{n}.png")
    return root


def options(args: argparse.Namespace) -> dict:
    """Only what the command line set: everything else stays imagerec's default."""
    names = ("imgsz", "augment", "batch", "lr", "loss", "binary_head", "eval_every")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def train(data: Path, out: Path, model: str, epochs: int, args: argparse.Namespace) -> imagerec.Run:
    return imagerec.train(
        data, task="segment", model=model, epochs=epochs, seed=args.seed, out=out, console=quiet_console(),
        **options(args),
    )  # fmt: skip


def measure(data: Path, work: Path, model: str, args: argparse.Namespace) -> dict:
    probe = train(data, work / f"{model}-probe", model, 1, args)
    epoch_s = read_metrics(probe.path)[0]["epoch_time_s"]
    epochs = max(1, int(args.budget // epoch_s))
    with timed() as t:
        run = train(data, work / model, model, epochs, args)
    rows = read_metrics(run.path)
    m = run.metrics
    classes = {NAMES.get(name, name): scores for name, scores in m["per_class"].items()}
    result = {
        "model": model,
        "probe_s": epoch_s,
        "epochs": epochs,
        "best_epoch": run.best_epoch,
        "train_s": sum(r["epoch_time_s"] for r in rows),
        "wall_s": t.wall_s,
        "membrane_iou": classes["membrane"]["iou"],
        "membrane_dice": classes["membrane"]["dice"],
        "interior_iou": classes["interior"]["iou"],
        "interior_dice": classes["interior"]["dice"],
        "miou": m["miou"],
        "pixel_accuracy": m["pixel_accuracy"],
        "load": os.getloadavg()[0],
    }
    print_result(result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="60 s per model")
    parser.add_argument("--budget", type=float, default=None, help="training seconds per model (default 540)")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--imgsz", type=int, default=None, help="training crop (default: imagerec's, 256 here)")
    parser.add_argument("--augment", default=None, help="none | light | medium | heavy (default: imagerec's)")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--loss", default=None)
    parser.add_argument("--binary-head", default=None, help="sigmoid (one logit, default) | softmax (two)")
    parser.add_argument("--eval-every", type=int, default=None, help="validate every N epochs (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.budget = args.budget or (60.0 if args.quick else 540.0)
    torch.set_num_threads(args.threads)
    print_machine("ISBI 2012: segmenters trained from scratch at equal time budgets")
    print(f"budget {args.budget:.0f} s of training epochs per model; options {options(args) or 'imagerec defaults'}, "
          f"seed {args.seed}; train 0-21, val 22-24, test 25-29 (5 images)\n")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = write_split(work / "isbi")
        results = [measure(data, work, model, args) for model in args.models]
    header = ("model", "probe s/epoch", "epochs", "best epoch", "train s", "wall s", "membrane IoU", "membrane Dice",
              "interior IoU", "interior Dice", "miou", "pixel acc", "load 1m")  # fmt: skip
    rows = [
        (r["model"], f"{r['probe_s']:.1f}", r["epochs"], r["best_epoch"], f"{r['train_s']:.0f}", f"{r['wall_s']:.0f}",
         f"{r['membrane_iou']:.3f}", f"**{r['membrane_dice']:.3f}**", f"{r['interior_iou']:.3f}",
         f"{r['interior_dice']:.3f}", f"{r['miou']:.3f}", f"**{r['pixel_accuracy']:.3f}**", f"{r['load']:.1f}")
        for r in results
    ]  # fmt: skip
    print()
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
