"""Digit scenes: semantic segmentation (compact U-Net) and instance segmentation (Mask R-CNN), from scratch.

Digit scenes are 600/150/150 greyscale 128×128 canvases with 1–6 real digits; semantic masks have 11 classes
(background, "0".."9"), instance targets are COCO RLE masks. No flips (a mirrored digit is not a digit).

- Semantic: a one-epoch probe measures the epoch time, then `imagerec.train(task="segment", model="unet",
  flip=False, epochs=budget / probe)` with imagerec's defaults otherwise (crops 128 = the whole scene, augment
  `light`, batch 8, AdamW lr 1e-3, CE + Dice); test miou / dice (means over the 10 digit classes), pixel accuracy.
- Instance: Mask R-CNN (batch 2, imagerec's defaults otherwise) is too slow to probe whole: the probe trains one
  epoch on the first `--probe-images` training scenes (validation and test cut to 8 scenes) and extrapolates to
  600. If the budget holds at least one epoch, it trains that many on the full data and reports test mask map /
  map50; otherwise it reports the estimate (`--force` trains the one epoch anyway).

The budgets count training epochs (metrics.csv `epoch_time_s`); validation after every epoch, checkpoints and the
test evaluation come on top and are in the wall seconds. One torch thread (docs/benchmarks.md, "Detection").

    python benchmarks/segmentation_scenes.py            # unet 300 s, Mask R-CNN 600 s: ~15 min on 2 cores
    python benchmarks/segmentation_scenes.py --quick    # 60 s each
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import imagerec  # noqa: E402
from _common import markdown_table, print_machine, print_result, quiet_console, read_metrics, timed  # noqa: E402

INSTANCE = "maskrcnn_resnet50_fpn"
TRAIN_SCENES = 600


def train(data: Path, out: Path, model: str, epochs: int, args: argparse.Namespace) -> imagerec.Run:
    batch = args.instance_batch if model == INSTANCE else None
    return imagerec.train(
        data, task="segment", model=model, epochs=epochs, flip=False, batch=batch, seed=args.seed, out=out,
        console=quiet_console(),
    )  # fmt: skip


def subset(data: Path, root: Path, counts: dict[str, int]) -> Path:
    """The first counts[split] scenes of each split as a COCO dataset (annotations filtered, images linked)."""
    (root / "annotations").mkdir(parents=True)
    (root / "images").mkdir()
    for split, n in counts.items():
        coco = json.loads((data / "annotations" / f"instances_{split}.json").read_text())
        coco["images"] = coco["images"][:n]
        kept = {image["id"] for image in coco["images"]}
        coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in kept]
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
        (root / "images" / split).symlink_to(data / "images" / split)
    return root


def row(name: str, run: imagerec.Run | None, **values: float | int | str) -> dict:
    m = run.metrics if run is not None else {}
    values |= {k: m.get(k, float("nan")) for k in ("miou", "dice", "pixel_accuracy", "map", "map50")}
    result = {"model": name, **values, "load": os.getloadavg()[0]}
    print_result(result)
    return result


def semantic(data: Path, work: Path, args: argparse.Namespace) -> dict:
    probe = train(data, work / "unet-probe", "unet", 1, args)
    epoch_s = read_metrics(probe.path)[0]["epoch_time_s"]
    epochs = max(1, int(args.budget // epoch_s))
    with timed() as t:
        run = train(data, work / "unet", "unet", epochs, args)
    train_s = sum(r["epoch_time_s"] for r in read_metrics(run.path))
    return row("unet (semantic)", run, probe_s=epoch_s, epochs=epochs, train_s=train_s, wall_s=t.wall_s)


def instance(data: Path, work: Path, args: argparse.Namespace) -> dict:
    small = subset(data, work / "scenes-subset", {"train": args.probe_images, "val": 8, "test": 8})
    probe = train(small, work / "maskrcnn-probe", INSTANCE, 1, args)
    epoch_s = read_metrics(probe.path)[0]["epoch_time_s"] * TRAIN_SCENES / args.probe_images
    epochs = int(args.instance_budget // epoch_s)
    if epochs == 0 and not args.force:
        return row(f"{INSTANCE} (instance)", None, probe_s=epoch_s, epochs=0, train_s=0.0, wall_s=0.0)
    with timed() as t:
        run = train(data, work / "maskrcnn", INSTANCE, max(1, epochs), args)
    train_s = sum(r["epoch_time_s"] for r in read_metrics(run.path))
    return row(f"{INSTANCE} (instance)", run, probe_s=epoch_s, epochs=max(1, epochs), train_s=train_s, wall_s=t.wall_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="60 s each")
    parser.add_argument("--budget", type=float, default=None, help="U-Net training seconds (default 300)")
    parser.add_argument("--instance-budget", type=float, default=None, help="Mask R-CNN seconds (default 600)")
    parser.add_argument("--probe-images", type=int, default=32, help="training scenes in Mask R-CNN's probe")
    # Batch 2: the documented run dodged pycocotools' mask.area overflow past 255 masks per call (fixed in fd256cc).
    parser.add_argument("--instance-batch", type=int, default=2, help="Mask R-CNN batch (default 2, as measured)")
    parser.add_argument("--force", action="store_true", help="train Mask R-CNN one epoch even over budget")
    parser.add_argument("--skip", choices=("semantic", "instance"), default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.budget = args.budget or (60.0 if args.quick else 300.0)
    args.instance_budget = args.instance_budget or (60.0 if args.quick else 600.0)
    torch.set_num_threads(args.threads)
    print_machine("digit scenes: semantic and instance segmentation from scratch")
    print(f"budgets: unet {args.budget:.0f} s, {INSTANCE} {args.instance_budget:.0f} s of training epochs; no flips, "
          f"seed {args.seed}; reported on the test split (150 scenes)\n")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = imagerec.write_sample("digit-scenes", work / "scenes")
        results = [] if args.skip == "semantic" else [semantic(data, work, args)]
        results += [] if args.skip == "instance" else [instance(data, work, args)]
    header = ("model", "probe s/epoch", "epochs", "train s", "wall s", "miou", "dice", "pixel acc", "mask map",
              "mask map50", "load 1m")  # fmt: skip
    rows = [
        (r["model"], f"{r['probe_s']:.1f}", r["epochs"], f"{r['train_s']:.0f}", f"{r['wall_s']:.0f}",
         *(f"{r[k]:.3f}" if r[k] is not None else "n/a" for k in ("miou", "dice", "pixel_accuracy", "map", "map50")),
         f"{r['load']:.1f}")
        for r in results
    ]  # fmt: skip
    print()
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
