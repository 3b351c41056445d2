"""Raccoon photos from scratch: imagerec's CPU detector against Ultralytics YOLOv8n at the same train time.

Data: ../shared/datasets/raccoon/data (box CSVs): imagerec trains on the `train_labels.csv` images (160; it
carves 10 % of them out for validation) and reports on the `test_labels.csv` images (40), best checkpoint by
validation map. No pretrained weights anywhere. imagerec's side trains `--epochs` epochs; its wall time for
`imagerec.train` (validation and test evaluation included) then becomes YOLOv8n's time limit (ultralytics'
`time=` option, which sets the epochs after the first one and fits its schedule into the limit). YOLOv8n is
built from `yolov8n.yaml` on the same split (train/val lists from imagerec's split.json, labels written by
`imagerec data convert --to yolo`), at the same imgsz, batch 16, its default augmentation (mosaic, HSV, flips,
scale), offline (no font or weight downloads; AMP check off), and evaluated on the same 40 test images with its
own COCO-style map. YOLO's side runs only when `ultralytics` is importable: install it in a separate venv, e.g.
`python3 -m venv /tmp/ultra && /tmp/ultra/bin/pip install -c requirements/constraints.txt -e . ultralytics`.
One torch thread on both sides (ultralytics picks one itself on 2 cores; see docs/benchmarks.md on threads);
both use 2 data-loader workers (ultralytics' choice on 2 cores).

    /tmp/ultra/bin/python benchmarks/detection_raccoon.py            # fcos_lite 320 px, then YOLOv8n, ~30 min
    /tmp/ultra/bin/python benchmarks/detection_raccoon.py --quick    # 3 epochs, then YOLOv8n as long, ~3 min
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import imagerec  # noqa: E402
from _common import SHARED_DATASETS, markdown_table, print_machine, quiet_console, read_metrics, timed  # noqa: E402

DATA = SHARED_DATASETS / "raccoon" / "data"


def ours(work: Path, args: argparse.Namespace) -> dict:
    options = {"backbone": args.backbone} if args.backbone else {}
    with timed() as t:
        run = imagerec.train(
            DATA, task="detect", model=args.model, imgsz=args.imgsz, epochs=args.epochs, batch=args.batch,
            lr=args.lr, augment=args.augment, workers=args.workers, seed=args.seed, out=work / "imagerec",
            console=quiet_console(), **options,
        )  # fmt: skip
    rows = read_metrics(run.path)
    name = f"imagerec {args.model}" + (f" on {args.backbone}" if args.backbone else "")
    return {
        "who": name, "epochs": len(rows), "train_s": sum(r["epoch_time_s"] for r in rows), "wall_s": t.wall_s,
        "map": run.metrics["map"], "map50": run.metrics["map50"], "split": run.path / "split.json",
    }  # fmt: skip


def yolo_data(work: Path, split_file: Path) -> Path:
    """YOLO labels for the raccoon images, with imagerec's train/val/test split as image lists."""
    converted = work / "yolo-data"
    imagerec_cli = Path(sys.executable).parent / "imagerec"
    subprocess.run([str(imagerec_cli), "data", "convert", str(DATA), str(converted), "--to", "yolo"], check=True,
                   capture_output=True)  # fmt: skip
    by_name = {p.name: p for p in converted.glob("images/*/*")}
    split = json.loads(split_file.read_text())
    lines = [f"path: {converted}", "names:", "  0: raccoon"]
    for part in ("train", "val", "test"):
        (converted / f"{part}.txt").write_text("".join(f"{by_name[Path(f).name]}\n" for f in split[part]))
        lines.append(f"{part}: {part}.txt")
    (converted / "data.yaml").write_text("\n".join(lines) + "\n")
    return converted / "data.yaml"


def yolo(work: Path, data_yaml: Path, seconds: float, args: argparse.Namespace) -> dict:
    os.environ["YOLO_OFFLINE"] = "1"  # no connectivity checks, hub or downloads
    os.environ["YOLO_CONFIG_DIR"] = str(work / "yolo-config")  # settings file and fonts stay in the temp dir
    from ultralytics import YOLO

    model = YOLO("yolov8n.yaml")
    common = {"imgsz": args.imgsz, "batch": 16, "device": "cpu", "plots": False, "verbose": False}
    with timed() as t:
        limit = {"epochs": args.yolo_epochs} if args.yolo_epochs else {"epochs": 1000, "time": seconds / 3600}
        model.train(data=str(data_yaml), pretrained=False, amp=False, workers=args.workers, seed=args.seed,
                    project=str(work), name="yolo", exist_ok=True, **limit, **common)  # fmt: skip
    epochs = sum(1 for _ in (work / "yolo" / "results.csv").open()) - 1
    box = model.val(data=str(data_yaml), split="test", project=str(work), name="yolo-test", **common).box
    return {"who": "YOLOv8n (yaml, from scratch)", "epochs": epochs, "train_s": t.wall_s, "wall_s": t.wall_s,
            "map": float(box.map), "map50": float(box.map50)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 epochs for imagerec, YOLO for as long")
    parser.add_argument("--model", default="fcos_lite")
    parser.add_argument("--backbone", default=None, help="for --model fcos/retinanet/fasterrcnn, e.g. resnet18")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--epochs", type=int, default=None, help="imagerec epochs (default 40, quick 3)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--augment", default="heavy")
    parser.add_argument("--workers", type=int, default=2, help="data-loader workers on both sides")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-yolo", action="store_true", help="imagerec's side only")
    parser.add_argument("--yolo-epochs", type=int, default=None, help="fixed YOLO epochs instead of equal time")
    args = parser.parse_args()
    args.epochs = args.epochs or (3 if args.quick else 40)
    torch.set_num_threads(args.threads)
    print_machine("raccoon, from scratch: imagerec against YOLOv8n at the same train time")
    print(f"train 160 photos (val 10 % of them), test 40; imgsz {args.imgsz}; threads {args.threads}\n")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results.append(ours(work, args))
        print(f"  {results[-1]}", flush=True)
        if not args.no_yolo and importlib.util.find_spec("ultralytics") is not None:
            results.append(yolo(work, yolo_data(work, results[0]["split"]), results[0]["wall_s"], args))
            print(f"  {results[-1]}", flush=True)
        elif not args.no_yolo:
            print("  ultralytics is not importable here: YOLOv8n side skipped")
    rows = [(r["who"], r["epochs"], f"{r['wall_s']:.0f}", f"**{r['map50']:.3f}**", f"{r['map']:.3f}") for r in results]
    print()
    print(markdown_table(("model", "epochs", "train wall s", "test map50", "test map"), rows))
    backbone = f" on {args.backbone}" if args.backbone else ""
    print(f"\nimagerec recipe: {args.model}{backbone}, imgsz {args.imgsz}, {args.epochs} epochs, batch {args.batch}, "
          f"lr {args.lr}, augment {args.augment}; load {os.getloadavg()[0]:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
