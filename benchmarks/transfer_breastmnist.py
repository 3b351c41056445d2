"""Transfer learning on BreastMNIST with weights trained here: scratch vs linear probe vs full fine-tuning.

No internet here, so no ImageNet weights: a resnet18 (28 px, one channel) is pretrained on a larger source task
built from data embedded in our dependencies, then fine-tuned through `imagerec.train(..., weights=SOURCE_RUN,
finetune=...)` on `../shared/datasets/breastmnist` (official split: train 546, val 78, test 156) using 10 %, 25 %
and 100 % of its training labels. Subsets are stratified, drawn per seed (seed s draws subset s and trains with
seed s) and written as folders of symlinks; val and test stay whole. At each fraction the three strategies get
the same optimizer steps (same epochs and batch), the same augmentation (`light`) and the same selection: the
epoch with the best validation accuracy (imagerec's default monitor; ties to the lower validation loss), whose
weights imagerec evaluates once on test. Reported: median and min-max over seeds of test accuracy and AUC.

Sources (chosen on breastmnist's validation split with `--pilot`, which prints validation metrics only):
- digits: scikit-learn's 1,797 real 8x8 handwritten digit scans (`imagerec.write_sample("digits", ...)`), 10 classes.
- textures: random square patches (side 28-56 px, resized to 28) of 14 real photographs bundled with scikit-image
  (camera, coins, moon, page, text, brick, grass, gravel, clock, cell; astronaut, coffee, chelsea and
  immunohistochemistry converted to grey), labelled by the photo they come from.

    python benchmarks/transfer_breastmnist.py            # the benchmark, 3 seeds per cell (~20 min on 1 thread)
    python benchmarks/transfer_breastmnist.py --quick    # smoke: tiny budgets, one seed, 10 % only (~30 s)
    python benchmarks/transfer_breastmnist.py --pilot    # source and learning-rate choice on val only (~20 min)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import imagerec  # noqa: E402
from _common import (  # noqa: E402
    SHARED_DATASETS,
    label_subset,
    markdown_table,
    median,
    print_machine,
    quiet_console,
    read_metrics,
)

DATA = SHARED_DATASETS / "breastmnist"
PUBLISHED = {"accuracy": 0.863, "auc": 0.901}  # MedMNIST v2, ResNet-18 (28 px), all 546 training labels
MODEL = {"model": "resnet18", "imgsz": 28, "precision": "32", "augment": "light"}
BATCH = 16  # 64 (the default) would make one optimizer step per epoch of the 55 images at 10 %
# Epochs per label fraction: about 180 / 240 / 400 optimizer steps of 16 images, the same for every strategy.
EPOCHS = {0.10: 60, 0.25: 30, 1.00: 12}
QUICK_EPOCHS = {0.10: 4}
# Chosen with --pilot on validation metrics (docs/benchmarks.md, section 7).
SOURCE = "textures"
LR = {"scratch": 1e-3, "linear": 3e-2, "full": 1e-3, "logistic": 0.0, "knn": 0.0}
HEADS = ("logistic", "knn")  # `train --head`: fitted on frozen embeddings, added after the first run
SOURCE_EPOCHS = {"digits": 20, "textures": 12}
PILOT = [("scratch", 1e-3), ("full", 1e-3), ("linear", 1e-3), ("linear", 1e-2), ("linear", 3e-2)]

TEXTURE_PHOTOS = ("camera", "coins", "moon", "page", "text", "brick", "grass", "gravel", "clock", "cell")
TEXTURE_COLOUR_PHOTOS = ("astronaut", "coffee", "chelsea", "immunohistochemistry")


def write_textures(out: Path, *, per_class: int = 250, seed: int = 0) -> Path:
    """Random patches of scikit-image's bundled real photos as `out/<photo>/*.png`, 28x28 greyscale."""
    import skimage.data
    from skimage.color import rgb2gray

    rng = np.random.default_rng(seed)
    photos = {name: getattr(skimage.data, name)() for name in TEXTURE_PHOTOS}
    photos |= {name: np.round(rgb2gray(getattr(skimage.data, name)()) * 255) for name in TEXTURE_COLOUR_PHOTOS}
    for name, photo in photos.items():
        photo = Image.fromarray(np.asarray(photo, dtype=np.uint8))
        (out / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            side = int(rng.integers(28, 57))
            x, y = (int(rng.integers(0, limit - side + 1)) for limit in photo.size)
            patch = photo.crop((x, y, x + side, y + side)).resize((28, 28), Image.Resampling.BILINEAR)
            patch.save(out / name / f"{name}_{i:04d}.png")
    return out


def pretrain(source: str, work: Path, epochs: int) -> tuple[Path, dict[str, Any]]:
    """The source run (reused when `work` already holds it): resnet18 at 28 px, 80/10/10 split of the source."""
    run_dir = work / f"source-{source}"
    if (run_dir / "best.safetensors").exists():
        return run_dir, {"reused": True}
    data = work / f"data-{source}"
    if source == "textures" and not data.exists():
        write_textures(data)
    elif not data.exists():
        imagerec.write_sample("digits", data)
    start = time.perf_counter()
    run = imagerec.train(data, out=run_dir, epochs=epochs, seed=0, console=quiet_console(), **MODEL)
    found = {"test_accuracy": run.metrics["accuracy"], "epochs": epochs, "wall_s": time.perf_counter() - start}
    print(f"  source {source}: {epochs} epochs, source test accuracy {found['test_accuracy']:.3f}, "
          f"{found['wall_s']:.0f} s", flush=True)  # fmt: skip
    return run.path, found


@dataclass
class Result:
    fraction: float
    strategy: str
    lr: float
    seed: int
    test: dict[str, float]
    val_accuracy: float
    val_auc: float
    steps: int
    best_epoch: int
    wall_s: float
    frozen: bool | None  # linear: every backbone tensor equal to the source's after training


def backbone_unchanged(source_run: Path, run: Path) -> bool:
    """Whether every tensor of `run`'s kept weights that also exists in the source run (same shape, head aside)
    is equal to the source's: what `finetune="linear"` must guarantee, BatchNorm statistics included."""
    from safetensors.torch import load_file

    before, after = load_file(str(source_run / "best.safetensors")), load_file(str(run / "best.safetensors"))
    shared = [k for k, v in after.items() if not k.startswith("fc.") and k in before and before[k].shape == v.shape]
    return bool(shared) and all(torch.equal(before[k], after[k]) for k in shared)


def finetune(subset: Path, work: Path, *, strategy: str, lr: float, epochs: int, seed: int, source_run: Path | None,
             fraction: float) -> Result:  # fmt: skip
    options: dict[str, Any] = {**MODEL, "epochs": epochs, "lr": lr, "batch": BATCH, "seed": seed}
    if strategy in HEADS:  # scikit-learn on the source's frozen embeddings: no epochs, k or C chosen on val
        options = {**MODEL, "seed": seed, "weights": str(source_run), "head": strategy}
    elif strategy != "scratch":
        options |= {"weights": str(source_run), "finetune": strategy}
    out = work / f"run-{subset.name}-{strategy}-{lr:g}"
    start = time.perf_counter()
    run = imagerec.train(subset, out=out, console=quiet_console(), **options)
    wall = time.perf_counter() - start
    if strategy in HEADS:
        chosen = max(imagerec.load(run.path).info.head["search"], key=lambda row: row["val_accuracy"])
        kept = {"val_accuracy": chosen["val_accuracy"]}
    else:
        rows = read_metrics(run.path)
        kept = rows[run.best_epoch - 1] if run.best_epoch else rows[-1]
    n_train = sum(1 for _ in (subset / "train").rglob("*.png"))
    frozen = backbone_unchanged(source_run, run.path) if strategy == "linear" and source_run else None
    result = Result(
        fraction, strategy, lr, seed, {k: float(run.metrics[k]) for k in ("accuracy", "auc")},
        kept.get("val_accuracy", float("nan")), kept.get("val_auc", float("nan")),
        0 if strategy in HEADS else epochs * (n_train // BATCH if n_train > BATCH else 1), run.best_epoch, wall, frozen,
    )  # fmt: skip
    shutil.rmtree(run.path)  # ~200 MB of checkpoints per run
    print(f"  {round(fraction * 100)}% seed {seed} {strategy} lr {lr:g}: val acc {result.val_accuracy:.3f} "
          f"AUC {result.val_auc:.3f} (epoch {run.best_epoch}/{epochs}), {wall:.0f} s"
          + ("" if frozen is None else f", backbone unchanged: {frozen}"), flush=True)  # fmt: skip
    return result


def span(values: list[float]) -> str:
    """median (min-max), as text."""
    return f"{median(values):.3f} ({min(values):.3f}–{max(values):.3f})" if values else "not run"


def results_table(results: list[Result]) -> str:
    rows = []
    for fraction in sorted({r.fraction for r in results}):
        for strategy in ("scratch", "linear", "full", *HEADS):
            cell = [r for r in results if r.fraction == fraction and r.strategy == strategy]
            if not cell:
                rows.append((f"{round(fraction * 100)} %", strategy, "—", "—", "not run", "not run", "—", "—"))
                continue
            frozen = {r.frozen for r in cell}
            frozen_text = "—" if frozen == {None} else "yes" if frozen == {True} else "NO"
            rows.append((
                f"{round(fraction * 100)} %", strategy, f"{cell[0].lr:g}", len(cell),
                span([r.test["accuracy"] for r in cell]), span([r.test["auc"] for r in cell]),
                f"{median([r.steps for r in cell]):.0f}", frozen_text,
            ))  # fmt: skip
    header = ("labels", "strategy", "lr", "seeds", "test accuracy", "test AUC", "steps", "backbone frozen")
    return markdown_table(header, rows)


def gains_table(results: list[Result]) -> str:
    """Transfer minus scratch, paired by seed (same subset, same training seed)."""
    rows = []
    for fraction in sorted({r.fraction for r in results}):
        scratch = {r.seed: r for r in results if r.fraction == fraction and r.strategy == "scratch"}
        for strategy in ("linear", "full", *HEADS):
            pairs = [(r, scratch[r.seed]) for r in results if r.fraction == fraction and r.strategy == strategy
                     and r.seed in scratch]  # fmt: skip
            if not pairs:
                continue
            d_acc = [a.test["accuracy"] - b.test["accuracy"] for a, b in pairs]
            d_auc = [a.test["auc"] - b.test["auc"] for a, b in pairs]
            wins = sum(d > 0 for d in d_auc)
            rows.append((f"{round(fraction * 100)} %", f"{strategy} − scratch", f"{median(d_acc):+.3f}",
                         f"{median(d_auc):+.3f}", f"{wins} of {len(pairs)}"))  # fmt: skip
    return markdown_table(("labels", "difference", "test accuracy (median)", "test AUC (median)", "AUC higher"), rows)


def pilot(work: Path, sources: list[str], strategies: list[str], seeds: list[int]) -> None:
    """Validation metrics only, at 10 % labels: which source, which learning rate per strategy."""
    fraction, rows = 0.10, []
    runs = {s: pretrain(s, work, SOURCE_EPOCHS[s])[0] for s in sources}
    for strategy, lr in PILOT:
        if strategy not in strategies:
            continue
        for source in ["—"] if strategy == "scratch" else sources:
            cell = [
                finetune(label_subset(DATA, fraction, s, work), work, strategy=strategy, lr=lr, epochs=EPOCHS[fraction],
                         seed=s, source_run=runs.get(source), fraction=fraction)
                for s in seeds
            ]  # fmt: skip
            acc, auc = [r.val_accuracy for r in cell], [r.val_auc for r in cell]
            rows.append((source, strategy, f"{lr:g}", span(acc), span(auc), f"{median(acc) + median(auc):.3f}"))
    print()
    print(markdown_table(("source", "strategy", "lr", "val accuracy", "val AUC", "score (sum of medians)"), rows))


def benchmark(work: Path, *, quick: bool, seeds: list[int], strategies: list[str]) -> list[Result]:
    source_run, _ = pretrain(SOURCE, work, 1 if quick else SOURCE_EPOCHS[SOURCE])
    fractions = QUICK_EPOCHS if quick else EPOCHS
    results = []
    for fraction, epochs in fractions.items():
        for seed in seeds:
            subset = label_subset(DATA, fraction, seed, work)
            for strategy in strategies:
                results.append(finetune(subset, work, strategy=strategy, lr=LR[strategy], epochs=epochs, seed=seed,
                                        source_run=source_run, fraction=fraction))  # fmt: skip
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke mode: 10 %% only, one seed, a few epochs")
    parser.add_argument("--pilot", action="store_true", help="the validation-only source and lr choice instead")
    parser.add_argument("--sources", nargs="+", default=["digits", "textures"], choices=["digits", "textures"])
    parser.add_argument("--strategies", nargs="+", default=["scratch", "linear", "full", *HEADS],
                        choices=["scratch", "linear", "full", *HEADS])  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (quick: 0)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: shared cores)")
    parser.add_argument("--work", type=Path, default=None, help="keep subsets and source runs here (reused)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not DATA.is_dir():
        print(f"skipped: {DATA} not found (the shared datasets live in ../shared/datasets next to the repository)")
        return
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    print_machine("transfer: BreastMNIST with a resnet18 pretrained here; scratch vs linear vs full fine-tuning")
    start = time.perf_counter()
    shm = Path("/dev/shm")  # checkpoints of ~200 MB per run are written every epoch: keep them in memory
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else None) as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.pilot:
            pilot(work, args.sources, args.strategies, seeds)
        else:
            results = benchmark(work, quick=args.quick, seeds=seeds, strategies=args.strategies)
            print()
            print(results_table(results))
            print()
            print(gains_table(results))
            print(f"\npublished ResNet-18 (28 px, all 546 training labels): accuracy "
                  f"{PUBLISHED['accuracy']:.3f}, AUC {PUBLISHED['auc']:.3f}")  # fmt: skip
    print(f"\nwall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
