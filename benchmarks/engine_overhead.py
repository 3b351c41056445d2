"""Engine overhead: imagerec's training throughput against a plain PyTorch loop, side by side in one run.

Both sides train the same model (imagerec's builder, fresh weights) on the same images (the digits sample, on
the train split imagerec records), with the same batch size, no augmentation (resize only), AdamW with a per-step
cosine schedule, the same threads, and the same precision and memory format: the plain loop copies whatever the
engine resolved (run.yaml `resolved.compute`), so `--precision 32` and the engine's `auto` choice are both
compared like for like.

What is compared is steady-state training throughput: images/s per epoch with data loading included, the first
epoch left out on both sides (kernel and allocator warm-up). imagerec's figure is the `images_per_s` column of
metrics.csv; the plain loop times its epochs the same way. One-off costs (indexing, channel statistics, the
precision probe, validation, checkpoints, the test evaluation; on the plain side building the dataset and model)
are reported separately as "fixed s". Runs alternate engine/plain and plain/engine so that drifting machine load
hits both sides alike; ratios are taken per adjacent pair, and their median is reported.

    python benchmarks/engine_overhead.py              # seed_cnn and resnet18, ~5 min on 2 cores
    python benchmarks/engine_overhead.py --quick      # seed_cnn only, one pair per setting, ~40 s
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parent))
import imagerec  # noqa: E402
from _common import (  # noqa: E402
    markdown_table,
    median,
    print_machine,
    quiet_console,
    read_compute,
    read_metrics,
    steady_images_per_s,
    timed,
)
from imagerec.models import create_model  # noqa: E402
from imagerec.runs import RunDir  # noqa: E402

TARGET = 0.95


@dataclass
class Side:
    steady: float  # images/s, median over epochs 2..N
    best: float  # images/s, fastest of epochs 2..N (the least disturbed by other load on the machine)
    first: float  # images/s of epoch 1
    fixed_s: float  # wall seconds outside the timed training epochs


def side(speeds: list[float], fixed_s: float) -> Side:
    rows = [{"images_per_s": s} for s in speeds]
    return Side(steady_images_per_s(rows), max(speeds[1:] or speeds), speeds[0], fixed_s)


# -- the plain loop --------------------------------------------------------------------------------------------------
class CachedImages(Dataset):
    """PNG files decoded once to float tensors in [0, 1] (as the engine caches them), transformed per item."""

    def __init__(self, root: Path, files: list[str], classes: list[str], transform: v2.Transform) -> None:
        self.images = [
            torch.from_numpy(np.asarray(Image.open(root / f).convert("L"), np.float32) / 255)[None] for f in files
        ]
        self.targets = [classes.index(f.split("/")[0]) for f in files]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[i]), self.targets[i]


def plain_epoch(model, optimizer, scheduler, batches, *, bf16: bool, channels_last: bool) -> float:
    """One hand-written training epoch over `batches`; images/s with data loading included."""
    model.train()
    seen, loss_sum, start = 0, 0.0, time.perf_counter()
    for images, targets in batches:
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.item() * len(images)
        seen += len(images)
    return seen / (time.perf_counter() - start)


def plain_loop(data: Path, record: Path, args: argparse.Namespace, precision: str, channels_last: bool) -> Side:
    """The loop a PyTorch user would write by hand, timed per epoch exactly like the engine's metrics.csv."""
    start = time.perf_counter()
    info = RunDir(record).read_model_info()
    files = json.loads((record / "split.json").read_text())["train"]
    transform = v2.Compose([
        v2.Resize(args.imgsz, antialias=True), v2.CenterCrop(args.imgsz), v2.Normalize(info.mean, info.std)
    ])  # fmt: skip
    dataset = CachedImages(data, files, info.classes, transform)
    loader = DataLoader(dataset, batch_size=args.batch, shuffle=True, drop_last=True)
    torch.manual_seed(0)
    model = create_model("classify", args.model, num_outputs=len(info.classes), in_channels=1, imgsz=args.imgsz)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    total = args.epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    bf16 = precision.startswith("bf16")
    fixed = time.perf_counter() - start
    speeds = [plain_epoch(model, optimizer, scheduler, loader, bf16=bf16, channels_last=channels_last)
              for _ in range(args.epochs)]  # fmt: skip
    return side(speeds, fixed)


# -- where the difference lies --------------------------------------------------------------------------------------
def _drain(dataset: Dataset, batch: int) -> float:
    start, seen = time.perf_counter(), 0
    for images, _ in DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True):
        seen += len(images)
    return seen / (time.perf_counter() - start)


def decompose(data: Path, record: Path, args: argparse.Namespace, precision: str, channels_last: bool) -> dict:
    """The data pipeline alone and the training loop alone, engine against plain, interleaved epoch by epoch.

    Data: imagerec's dataset and preset (what `imagerec.train` builds) against the plain dataset, drained by the
    same DataLoader. Loop: `imagerec.engine.train_one_epoch` on Fabric (with its progress bar) against the plain
    epoch, both over the same list of already collated batches.
    """
    from lightning_fabric import Fabric
    from rich.progress import Progress

    from imagerec.data.datasets import ClassificationDataset
    from imagerec.data.formats import load_index
    from imagerec.data.split import apply_split_record
    from imagerec.engine import train_one_epoch
    from imagerec.tasks.classification import ClassificationTask
    from imagerec.transforms.classification import train_transform

    info = RunDir(record).read_model_info()
    split = json.loads((record / "split.json").read_text())
    index = apply_split_record(load_index(data), split)
    size = {"imgsz": args.imgsz, "mean": info.mean, "std": info.std}
    engine_set = ClassificationDataset(
        index.samples("train"), channels=1, num_classes=len(info.classes),
        transform=train_transform("none", channels=1, **size),
    )  # fmt: skip
    plain_transform = v2.Compose([v2.Resize(args.imgsz, antialias=True), v2.CenterCrop(args.imgsz),
                                  v2.Normalize(info.mean, info.std)])  # fmt: skip
    plain_set = CachedImages(data, split["train"], info.classes, plain_transform)
    batches = list(DataLoader(plain_set, batch_size=args.batch, shuffle=True, drop_last=True))

    def setup() -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        torch.manual_seed(0)
        net = create_model("classify", args.model, num_outputs=len(info.classes), in_channels=1, imgsz=args.imgsz)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.05)
        return net, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)

    fabric = Fabric(accelerator="cpu", devices=1, precision=precision)
    net, optimizer, engine_scheduler = setup()
    model, engine_optimizer = fabric.setup(net, optimizer)
    plain_model, plain_optimizer, plain_scheduler = setup()
    task = ClassificationTask(info.classes)
    bf16 = precision.startswith("bf16")
    runs: dict[str, list[float]] = {"data engine": [], "data plain": [], "loop engine": [], "loop plain": []}
    with Progress(console=quiet_console()) as progress:
        for r in range(args.rounds + 1):  # round 0 warms up and is dropped
            engine_first = r % 2 == 0
            for who in ("engine", "plain") if engine_first else ("plain", "engine"):
                runs[f"data {who}"].append(_drain(engine_set if who == "engine" else plain_set, args.batch))
            for who in ("engine", "plain") if engine_first else ("plain", "engine"):
                if who == "engine":
                    row = train_one_epoch(fabric, task, model, engine_optimizer, engine_scheduler, batches,
                                          progress=progress)  # fmt: skip
                    runs["loop engine"].append(row["images_per_s"])
                else:
                    runs["loop plain"].append(plain_epoch(plain_model, plain_optimizer, plain_scheduler, batches,
                                                          bf16=bf16, channels_last=channels_last))  # fmt: skip
    found = {k: median(v[1:]) for k, v in runs.items()}
    setting = f"{precision}/{'CL' if channels_last else 'NCHW'}"
    print(f"  {args.model} {setting}: " + ", ".join(f"{k} {v:.0f}" for k, v in found.items()) + " img/s", flush=True)
    return {"model": args.model, "setting": setting, **found}


# -- the engine ------------------------------------------------------------------------------------------------------
def engine(data: Path, out: Path, args: argparse.Namespace, precision: str) -> tuple[Side, dict]:
    with timed() as t:
        run = imagerec.train(
            data, model=args.model, imgsz=args.imgsz, batch=args.batch, epochs=args.epochs, augment="none",
            precision=precision, seed=0, out=out, console=quiet_console(),
        )  # fmt: skip
    rows = read_metrics(run.path)
    fixed = t.wall_s - sum(r["epoch_time_s"] for r in rows)
    return side([r["images_per_s"] for r in rows], fixed), read_compute(run.path)


def compare(data: Path, work: Path, args: argparse.Namespace, precision: str) -> dict:
    """`args.repeats` adjacent engine/plain pairs, alternating which goes first."""
    pairs, chosen, last = [], [], work
    for rep in range(args.repeats):
        out = work / f"{args.model}-{precision}-{rep}"
        if rep % 2 == 0:
            mine, compute = engine(data, out, args, precision)
            theirs = plain_loop(data, out, args, compute["precision"], compute["channels_last"])
        else:
            # The plain loop goes first, so it copies the settings the engine chose in the previous pair.
            theirs = plain_loop(data, last, args, compute["precision"], compute["channels_last"])
            mine, compute2 = engine(data, out, args, precision)
            if (compute2["precision"], compute2["channels_last"]) != (compute["precision"], compute["channels_last"]):
                theirs = plain_loop(data, out, args, compute2["precision"], compute2["channels_last"])
            compute = compute2
        last = out
        chosen.append(f"{compute['precision']}/{'CL' if compute['channels_last'] else 'NCHW'}")
        pairs.append((mine, theirs))
        print(
            f"  {args.model} precision={precision} pair {rep + 1}: engine {mine.steady:.1f} img/s ({chosen[-1]}), "
            f"plain {theirs.steady:.1f} img/s, ratio {mine.steady / theirs.steady:.3f} "
            f"(fastest epochs {mine.best:.1f} / {theirs.best:.1f}); load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
    ratios = [m.steady / p.steady for m, p in pairs]
    return {
        "model": args.model,
        "asked": precision,
        "chosen": ", ".join(sorted(set(chosen))),
        "engine": median([m.steady for m, _ in pairs]),
        "plain": median([p.steady for _, p in pairs]),
        "ratio": median(ratios),
        "best_ratio": max(m.best for m, _ in pairs) / max(p.best for _, p in pairs),
        "range": (min(ratios), max(ratios)),
        "first": (median([m.first for m, _ in pairs]), median([p.first for _, p in pairs])),
        "fixed": (median([m.fixed_s for m, _ in pairs]), median([p.fixed_s for _, p in pairs])),
        "last": (last, compute["precision"], compute["channels_last"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="seed_cnn only, one pair per precision")
    parser.add_argument("--models", nargs="+", default=None, help="default: seed_cnn resnet18 (quick: seed_cnn)")
    parser.add_argument("--precisions", nargs="+", default=["32", "auto"])
    parser.add_argument("--imgsz", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4, help="per run; the first is warm-up and not compared")
    parser.add_argument("--rounds", type=int, default=None, help="decomposition rounds (default 4, quick 2)")
    parser.add_argument("--no-decompose", action="store_true", help="skip the data / loop decomposition")
    parser.add_argument("--repeats", type=int, default=None, help="engine/plain pairs per setting (default 3, quick 1)")
    args = parser.parse_args()
    models = args.models or (["seed_cnn"] if args.quick else ["seed_cnn", "resnet18"])
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.rounds = args.rounds or (2 if args.quick else 4)
    print_machine("engine overhead: imagerec.train vs a plain PyTorch loop (steady-state training images/s)")
    print(f"digits sample, imgsz {args.imgsz}, batch {args.batch}, augment none, {args.epochs} epochs per run "
          f"(epoch 1 excluded), {args.repeats} alternating pair(s) per setting\n")  # fmt: skip
    results, parts = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = imagerec.write_sample("digits", work / "digits")
        for name in models:
            args.model = name
            for precision in args.precisions:
                results.append(compare(data, work, args, precision))
        if not args.no_decompose:
            print("\nwhere the difference lies (data pipeline alone, training loop alone; interleaved by epoch):")
            for r in results:
                args.model = r["model"]
                record, precision, channels_last = r["last"]
                parts.append(decompose(data, record, args, precision, channels_last))
    rows = [
        (
            r["model"], r["asked"], r["chosen"], f"{r['engine']:.1f}", f"{r['plain']:.1f}", f"**{r['ratio']:.3f}**",
            f"{r['range'][0]:.3f}–{r['range'][1]:.3f}", f"{r['best_ratio']:.3f}",
            f"{r['first'][0]:.0f} / {r['first'][1]:.0f}",
            f"{r['fixed'][0]:.1f} / {r['fixed'][1]:.1f}", "yes" if r["ratio"] >= TARGET else "no",
        )
        for r in results
    ]  # fmt: skip
    header = (
        "model", "precision asked", "engine chose", "engine img/s", "plain img/s", "ratio (median of pairs)",
        "ratio range", "ratio of fastest epochs", "epoch-1 img/s engine / plain", "fixed s engine / plain",
        f"≥ {TARGET}",
    )  # fmt: skip
    print()
    print(markdown_table(header, rows))
    if parts:
        print()
        print(decomposition_table(parts))


def decomposition_table(parts: list[dict]) -> str:
    rows = []
    for p in parts:
        gap_us = 1e6 / p["data engine"] - 1e6 / p["data plain"]
        rows.append((
            p["model"], p["setting"], f"{p['data engine']:.0f}", f"{p['data plain']:.0f}", f"{gap_us:+.0f}",
            f"{p['loop engine']:.0f}", f"{p['loop plain']:.0f}", f"{p['loop engine'] / p['loop plain']:.3f}",
        ))  # fmt: skip
    header = ("model", "setting", "data img/s engine", "data img/s plain", "data µs/img engine − plain",
              "loop img/s engine", "loop img/s plain", "loop ratio")  # fmt: skip
    return markdown_table(header, rows)


if __name__ == "__main__":
    main()
