"""Good models by default: `imagerec train DATA --time T` with no other option, against peers at the same time.

Each dataset is trained by imagerec with only the data and a time budget (the recipe chooses everything else, and
the choices are printed), then by its peers under the same wall-clock budget, side by side in one run:

- **breastmnist** (`../shared/datasets/breastmnist`, official train/val/test): imagerec `--time 2m` against a
  plain PyTorch loop (a 4-block CNN, AdamW, cosine, flips and small affine changes, best epoch by validation AUC)
  given the same 2 minutes, and Ultralytics YOLOv8n-cls from `yolov8n-cls.yaml` (no pretrained weights) with
  `time=` 2 minutes, when ultralytics is importable. Test accuracy and AUC.
- **raccoon** (`test_labels.csv` split): imagerec `--task` inferred, `--time 10m` against YOLOv8n from its YAML
  with `time=` the same (as benchmarks/detection_raccoon.py runs it). Test map50 and map.
- **isbi** (train 0–24, hold-out 25–29; imagerec carves its validation images out of 0–24): imagerec `--time 10m`.
  Membrane Dice and pixel accuracy on the hold-out.

Everything is chosen on validation only; test figures are read once at the end of each run. One torch thread on
every side (see docs/benchmarks.md on threads on 2 cores). YOLO's sides need `ultralytics` (a separate venv:
`python3 -m venv /tmp/ultra && /tmp/ultra/bin/pip install -c requirements/constraints.txt -e . ultralytics`).

    /tmp/ultra/bin/python benchmarks/defaults.py breastmnist --seeds 0 1 2    # ~20 min
    /tmp/ultra/bin/python benchmarks/defaults.py raccoon --time 10m           # ~25 min
    python benchmarks/defaults.py isbi --time 10m                             # ~11 min
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import imagerec  # noqa: E402
from _common import SHARED_DATASETS, markdown_table, print_machine, quiet_console, read_metrics, timed  # noqa: E402
from imagerec.config import duration_seconds  # noqa: E402
from imagerec.data.images import read_image  # noqa: E402

BREAST = SHARED_DATASETS / "breastmnist"
ISBI = SHARED_DATASETS / "isbi2012-em" / "train"


def recipe_lines(run: Path) -> list[str]:
    import yaml

    resolved = yaml.safe_load((run / "run.yaml").read_text())["resolved"]
    return [f"{c['setting']} = {c['value']}" for c in resolved.get("recipe", [])]


def ours(data: Path, out: Path, budget: str, seed: int, **options) -> tuple[imagerec.Run, float]:
    with timed() as t:
        run = imagerec.train(data, time=budget, seed=seed, out=out, console=quiet_console(), **options)
    return run, t.wall_s


# -- BreastMNIST peers -------------------------------------------------------------------------------------------


def _tensors(split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    classes = sorted(p.name for p in (BREAST / split).iterdir())
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((BREAST / split / name).glob("*.png")):
            images.append(read_image(path)[:1])
            labels.append(label)
    return torch.stack(images), torch.tensor(labels), classes


def _cnn() -> nn.Module:
    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
        )  # fmt: skip

    return nn.Sequential(
        block(1, 32), nn.MaxPool2d(2), block(32, 64), nn.MaxPool2d(2), block(64, 128), nn.MaxPool2d(2),
        block(128, 256), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(256, 2),
    )  # fmt: skip


def _scores(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x).softmax(1)[:, 1]


def plain_loop(seconds: float, seed: int) -> dict:
    """A plain PyTorch loop given `seconds`: epochs planned from the first epoch's time, best epoch by val AUC."""
    from sklearn.metrics import roc_auc_score

    torch.manual_seed(seed)
    start = time.monotonic()
    (xt, yt, _), (xv, yv, _), (xs, ys, _) = _tensors("train"), _tensors("val"), _tensors("test")
    mean, std = xt.mean(), xt.std()
    xt, xv, xs = ((x - mean) / std for x in (xt, xv, xs))
    model = _cnn()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    loader = DataLoader(TensorDataset(xt, yt), batch_size=64, shuffle=True, drop_last=True)
    epochs, epoch, best, best_state = 1, 0, -1.0, None
    scheduler = None
    while epoch < epochs:
        began = time.monotonic()
        model.train()
        for x, y in loader:
            flip = torch.rand(len(x)) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            shift = torch.randint(-2, 3, (2,))
            x = torch.roll(x, shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
        epoch += 1
        auc = roc_auc_score(yv.numpy(), _scores(model, xv).numpy())
        if auc > best:
            best, best_state = auc, {k: v.clone() for k, v in model.state_dict().items()}
        if epoch == 1:  # plan the rest from the first epoch's time, keep 5 % for the test evaluation
            left = seconds * 0.95 - (time.monotonic() - start)
            epochs = 1 + max(0, int(left // (time.monotonic() - began)))
            steps = (epochs - 1) * len(loader)
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))
    model.load_state_dict(best_state)
    scores = _scores(model, xs)
    accuracy = float(((scores >= 0.5).long() == ys).float().mean())
    return {"who": "plain PyTorch loop (4-block CNN)", "epochs": epochs, "wall_s": time.monotonic() - start,
            "accuracy": accuracy, "auc": float(roc_auc_score(ys.numpy(), scores.numpy()))}  # fmt: skip


def yolo_cls(work: Path, seconds: float, seed: int) -> dict:
    """YOLOv8n-cls from its YAML (no pretrained weights), `time=` the same budget, on the same folders."""
    from sklearn.metrics import roc_auc_score

    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_CONFIG_DIR"] = str(work / "yolo-config")
    from ultralytics import YOLO

    start = time.monotonic()
    model = YOLO("yolov8n-cls.yaml")
    model.train(data=str(BREAST), imgsz=32, epochs=1000, time=seconds / 3600, batch=64, workers=0, seed=seed,
                pretrained=False, amp=False, plots=False, project=str(work), name=f"yolo-{seed}", exist_ok=True,
                verbose=False)  # fmt: skip
    wall = time.monotonic() - start
    epochs = sum(1 for _ in (work / f"yolo-{seed}" / "results.csv").open()) - 1
    names = model.names
    positive = next(i for i, n in names.items() if n == "normal_or_benign")
    truth, scores, hits = [], [], []
    for label, name in enumerate(sorted(p.name for p in (BREAST / "test").iterdir())):
        files = sorted(str(p) for p in (BREAST / "test" / name).glob("*.png"))
        for result in model.predict(files, imgsz=32, verbose=False, stream=True):
            probs = result.probs.data.cpu().numpy()
            truth.append(label)
            scores.append(float(probs[positive]))
            hits.append(names[int(np.argmax(probs))] == name)
    return {"who": "YOLOv8n-cls (yaml, from scratch)", "epochs": epochs, "wall_s": wall,
            "accuracy": float(np.mean(hits)), "auc": float(roc_auc_score(truth, scores))}  # fmt: skip


def breastmnist(work: Path, args: argparse.Namespace) -> None:
    seconds = duration_seconds(args.time)
    rows = []
    for seed in args.seeds:
        run, wall = ours(BREAST, work / f"imagerec-{seed}", args.time, seed)
        m = run.metrics
        result = {
            "who": "imagerec, no options", "epochs": run.epochs, "wall_s": wall, "accuracy": m["accuracy"],
            "auc": m["auc"], "sensitivity": m.get("sensitivity"), "specificity": m.get("specificity"),
        }  # fmt: skip
        print(f"  seed {seed}: {result}\n    recipe: {'; '.join(recipe_lines(run.path))}", flush=True)
        rows.append((seed, result))
        peer = plain_loop(seconds, seed)
        print(f"  seed {seed}: {peer}", flush=True)
        rows.append((seed, peer))
        if importlib.util.find_spec("ultralytics") is not None:
            peer = yolo_cls(work, seconds, seed)
            print(f"  seed {seed}: {peer}", flush=True)
            rows.append((seed, peer))
    table = []
    for who in dict.fromkeys(r["who"] for _, r in rows):
        mine = [r for _, r in rows if r["who"] == who]

        def stat(key: str, mine: list[dict] = mine) -> str:
            values = [r[key] for r in mine if r.get(key) is not None]
            if not values:
                return "—"
            sd = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
            return f"{statistics.mean(values):.3f}{sd}"

        table.append((who, len(mine), stat("epochs"), stat("wall_s"), stat("accuracy"), stat("auc")))
    print(markdown_table(("who", "seeds", "epochs", "wall s", "test accuracy", "test AUC"), table))


def raccoon(work: Path, args: argparse.Namespace) -> None:
    from detection_raccoon import DATA, yolo, yolo_data

    run, wall = ours(DATA, work / "imagerec", args.time, args.seeds[0], workers=2)
    print(f"  imagerec: epochs {run.epochs}, wall {wall:.0f} s, map50 {run.metrics['map50']:.3f}, "
          f"map {run.metrics['map']:.3f}\n    recipe: {'; '.join(recipe_lines(run.path))}", flush=True)  # fmt: skip
    rows = [("imagerec, no options", run.epochs, f"{wall:.0f}", run.metrics["map50"], run.metrics["map"])]
    if importlib.util.find_spec("ultralytics") is not None:
        settings = argparse.Namespace(imgsz=320, workers=2, seed=args.seeds[0], yolo_epochs=None)
        theirs = yolo(work, yolo_data(work, run.path / "split.json"), duration_seconds(args.time), settings)
        print(f"  {theirs}", flush=True)
        rows.append((theirs["who"], theirs["epochs"], f"{theirs['wall_s']:.0f}", theirs["map50"], theirs["map"]))
    print(markdown_table(("who", "epochs", "wall s", "test map50", "test map"),
                         [(*r[:3], f"{r[3]:.3f}", f"{r[4]:.3f}") for r in rows]))  # fmt: skip


def isbi(work: Path, args: argparse.Namespace) -> None:
    data = work / "isbi"
    for split, numbers in {"train": range(25), "test": range(25, 30)}.items():
        for kind, source in (("images", "image"), ("masks", "label")):
            folder = data / kind / split
            folder.mkdir(parents=True)
            for n in numbers:
                (folder / f"{n}.png").symlink_to(ISBI / source / f"{n}.png")
    run, wall = ours(data, work / "imagerec", args.time, args.seeds[0])
    m = run.metrics
    membrane = m["per_class"]["background"]  # imagerec reads the 0/255 masks as background (membrane) / foreground
    rows = read_metrics(run.path)
    print(f"  recipe: {'; '.join(recipe_lines(run.path))}")
    print(markdown_table(
        ("who", "epochs", "train s", "wall s", "membrane Dice", "pixel accuracy"),
        [("imagerec, no options", run.epochs, f"{sum(r['epoch_time_s'] for r in rows):.0f}", f"{wall:.0f}",
          f"{membrane['dice']:.3f}", f"{m['pixel_accuracy']:.3f}")],
    ))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=("breastmnist", "raccoon", "isbi"))
    parser.add_argument("--time", default=None, help="budget per side (default: 2m, 10m, 10m)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    args.time = args.time or {"breastmnist": "2m", "raccoon": "10m", "isbi": "10m"}[args.dataset]
    torch.set_num_threads(1)
    print_machine(f"{args.dataset}: imagerec with no options (--time {args.time}) against peers at the same time")
    with tempfile.TemporaryDirectory() as tmp:
        {"breastmnist": breastmnist, "raccoon": raccoon, "isbi": isbi}[args.dataset](Path(tmp), args)
    print(f"load average {os.getloadavg()[0]:.1f}; {json.dumps(vars(args))}")


if __name__ == "__main__":
    main()
