"""Accuracy: the digits sample with seed_cnn, and BreastMNIST against its published numbers, through imagerec.train.

Recipes were chosen on validation metrics only (`--search` re-runs that selection and prints validation metrics
alone); the test split is evaluated once per seed with the chosen recipe, by `imagerec.train` itself (best
checkpoint by validation accuracy, evaluated on `test`). Reported: test accuracy (and ROC AUC for the binary
task) as mean ± sample standard deviation over seeds, with wall and CPU seconds per run (CPU time is user + system
of every thread, start-up, validation and the test evaluation included).

- digits: scikit-learn's 1,797 real 8×8 scans written by `imagerec.write_sample("digits", ...)`; imagerec splits
  them 80/10/10, stratified, with the run's seed, so every seed has its own val and test images (about 180 each).
- breastmnist: `../shared/datasets/breastmnist`, the official MedMNIST split (train 546, val 78, test 156).
  Published (MedMNIST v2): ResNet-18 (28 px) accuracy 0.863 / AUC 0.901; Google AutoML Vision 0.861 / 0.919.
  Ultralytics YOLOv8n-cls from scratch on this machine: 0.827 / 0.852 in 54 s.

    python benchmarks/accuracy.py               # chosen recipes, 3 seeds each, plus imagerec's defaults; ~2 min
    python benchmarks/accuracy.py --quick       # chosen recipes, one seed; ~40 s
    python benchmarks/accuracy.py --search      # the validation-only recipe search (slow: ~25 min)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

import imagerec  # noqa: E402
from _common import (  # noqa: E402
    SHARED_DATASETS,
    markdown_table,
    print_machine,
    quiet_console,
    read_compute,
    read_metrics,
    spread,
    timed,
)

# The chosen recipes (docs/benchmarks.md lists the validation results that chose them).
RECIPES: dict[str, dict[str, Any]] = {
    "digits": {"model": "seed_cnn", "imgsz": 16, "epochs": 20, "augment": "light"},
    "breastmnist": {"model": "seed_cnn", "imgsz": 28, "epochs": 40, "augment": "light", "lr": 0.003},
}
TARGETS = {"digits": {"accuracy": 0.99}, "breastmnist": {"accuracy": 0.88, "auc": 0.92, "cpu_s": 120.0}}

# The candidates of the validation-only search. Rule: the highest mean over seeds of validation accuracy +
# validation AUC at the checkpoint imagerec keeps (the best epoch); ties go to the cheaper recipe.
_SMALL = {"model": "seed_cnn", "imgsz": 28, "augment": "light"}
SEARCH: dict[str, list[dict[str, Any]]] = {
    "digits": [
        {"model": "seed_cnn", "imgsz": 16, "epochs": 20, "augment": "light"},
        {"model": "seed_cnn", "imgsz": 16, "epochs": 30, "augment": "light"},
        {"model": "seed_cnn", "imgsz": 16, "epochs": 50, "augment": "light"},
        {"model": "seed_cnn", "imgsz": 32, "epochs": 30, "augment": "light"},
        {"model": "seed_cnn", "imgsz": 16, "epochs": 30, "augment": "none"},
    ],
    "breastmnist": [
        {**_SMALL, "epochs": 20},
        {**_SMALL, "epochs": 20, "augment": "none"},
        {**_SMALL, "epochs": 20, "augment": "medium"},
        {**_SMALL, "epochs": 40},
        {**_SMALL, "epochs": 60},
        {**_SMALL, "epochs": 40, "imgsz": 56},
        {**_SMALL, "epochs": 40, "lr": 0.003},
        {**_SMALL, "epochs": 60, "lr": 0.003},
        {**_SMALL, "epochs": 40, "batch": 32},
        {**_SMALL, "epochs": 40, "class_weights": True},
        {**_SMALL, "epochs": 40, "monitor": "val_auc"},
        {**_SMALL, "epochs": 40, "model": "resnet18"},
    ],
}


def data_path(name: str, work: Path) -> Path:
    if name == "digits":
        return imagerec.write_sample("digits", work / "digits")
    path = SHARED_DATASETS / name
    if not path.is_dir():
        raise SystemExit(f"{path}: not found; the shared datasets live in ../shared/datasets next to the repository")
    return path


def _split_probabilities(run: Path, data: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities of a run's kept weights on `data/<split>/<class>/*`, with the targets."""
    predictor = imagerec.load(run, device="cpu")
    files = sorted(p for p in (data / split).rglob("*.png"))
    targets = torch.tensor([predictor.classes.index(p.parent.name) for p in files])
    images = torch.stack([predictor.preprocess(p) for p in files])
    return predictor.probabilities(images), targets


def ensemble(res: dict, data: Path) -> dict:
    """The seeds' runs averaged (mean probability): an option the engine lacks, measured here with its public API."""
    found: dict[str, float] = {}
    for split in ("val", "test"):
        outputs = [_split_probabilities(r["path"], data, split) for r in res["runs"]]
        probs, targets = torch.stack([p for p, _ in outputs]).mean(0), outputs[0][1]
        found[f"{split}_accuracy"] = float((probs.argmax(1) == targets).float().mean())
        found[f"{split}_auc"] = float(roc_auc_score(targets.numpy(), probs[:, 1].numpy()))
    found["cpu_s"] = sum(r["cpu_s"] for r in res["runs"])
    print(
        f"  {res['name']} [ensemble of the {len(res['runs'])} chosen runs]: val accuracy {found['val_accuracy']:.4f}"
        f" AUC {found['val_auc']:.4f}; test accuracy {found['test_accuracy']:.4f} AUC {found['test_auc']:.4f}; "
        f"{found['cpu_s']:.0f} s CPU in all",
        flush=True,
    )
    return found


def train(data: Path, out: Path, options: dict[str, Any], seed: int) -> dict[str, Any]:
    with timed() as t:
        run = imagerec.train(data, out=out, seed=seed, console=quiet_console(), **options)
    rows = read_metrics(run.path)
    best = rows[run.best_epoch - 1] if run.best_epoch else rows[-1]
    compute = read_compute(run.path)
    return {
        "path": run.path,
        "test": run.metrics,
        "val_accuracy": best.get("val_accuracy", float("nan")),
        "val_auc": best.get("val_auc", float("nan")),
        "last_val_accuracy": rows[-1].get("val_accuracy", float("nan")),
        "last_val_auc": rows[-1].get("val_auc", float("nan")),
        "wall_s": t.wall_s,
        "cpu_s": t.cpu_s,
        "setting": f"{compute['precision']}/{'CL' if compute['channels_last'] else 'NCHW'}",
    }


def evaluate_recipe(name: str, data: Path, work: Path, options: dict[str, Any], seeds: list[int], tag: str) -> dict:
    runs = []
    for seed in seeds:
        r = train(data, work / f"{name}-{tag}-{seed}", options, seed)
        runs.append(r)
        auc = r["test"].get("auc", float("nan"))
        print(
            f"  {name} [{tag}] seed {seed}: test accuracy {r['test']['accuracy']:.4f} AUC {auc:.4f} "
            f"(val {r['val_accuracy']:.4f}), {r['wall_s']:.0f} s wall, {r['cpu_s']:.0f} s CPU, {r['setting']}",
            flush=True,
        )
    return {"name": name, "tag": tag, "options": options, "runs": runs}


def search(name: str, data: Path, work: Path, seeds: list[int]) -> None:
    """Validation metrics of every candidate; the test split is never looked at here."""
    print(f"\nvalidation-only search on {name}, seeds {seeds}")
    rows = []
    for i, options in enumerate(SEARCH[name]):
        runs = [train(data, work / f"search-{name}-{i}-{s}", options, s) for s in seeds]
        found = {
            k: statistics.mean(r[k] for r in runs)
            for k in ("val_accuracy", "val_auc", "last_val_accuracy", "last_val_auc", "cpu_s")
        }
        shown = ", ".join(f"{k}={v}" for k, v in options.items())
        score = found["val_accuracy"] + found["val_auc"]
        values = [f"{found[k]:.3f}" for k in ("val_accuracy", "val_auc", "last_val_accuracy", "last_val_auc")]
        rows.append((shown, *values, f"{score:.3f}", f"{found['cpu_s']:.0f}"))
        print(f"  {shown}: " + ", ".join(values) + f", score {score:.3f}, {found['cpu_s']:.0f} CPU s", flush=True)
    header = (
        "recipe",
        "val acc (kept epoch)",
        "val AUC (kept epoch)",
        "val acc (last)",
        "val AUC (last)",
        "score",
        "CPU s",
    )
    print()
    print(markdown_table(header, rows))


def summary_table(results: list[dict]) -> str:
    rows = []
    for res in results:
        runs, target = res["runs"], TARGETS.get(res["name"], {}) if res["tag"] == "chosen" else {}
        acc = [r["test"]["accuracy"] for r in runs]
        auc = [r["test"]["auc"] for r in runs if "auc" in r["test"]]
        cpu = [r["cpu_s"] for r in runs]
        met = []
        if "accuracy" in target:
            met.append(f"acc {'yes' if statistics.mean(acc) >= target['accuracy'] else 'no'}")
        if "auc" in target:
            met.append(f"AUC {'yes' if auc and statistics.mean(auc) >= target['auc'] else 'no'}")
        if "cpu_s" in target:
            met.append(f"CPU {'yes' if max(cpu) < target['cpu_s'] else 'no'}")
        options = ", ".join(f"{k}={v}" for k, v in res["options"].items()) or "(defaults)"
        rows.append((
            res["name"], res["tag"], options, len(runs), spread(acc), spread(auc) if auc else "—",
            f"{statistics.median(r['wall_s'] for r in runs):.0f}", f"{statistics.median(cpu):.0f} (max {max(cpu):.0f})",
            ", ".join(sorted({r["setting"] for r in runs})), "; ".join(met) or "—",
        ))  # fmt: skip
        if "ensemble" in res:
            e = res["ensemble"]
            rows.append((
                res["name"], f"mean of the {len(runs)} runs above", "(not an engine option)", 1,
                f"{e['test_accuracy']:.3f}", f"{e['test_auc']:.3f}", "", f"{e['cpu_s']:.0f} (sum)", "", "—",
            ))  # fmt: skip
    header = ("data", "recipe", "options", "seeds", "test accuracy", "test AUC", "wall s", "CPU s", "compute", "target")
    return markdown_table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one seed, no defaults baseline")
    parser.add_argument("--search", action="store_true", help="run the validation-only recipe search instead")
    parser.add_argument("--data", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (quick: 0)")
    args = parser.parse_args()
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    print_machine("accuracy: imagerec.train recipes, test metrics over seeds")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.data:
            data = data_path(name, work)
            if args.search:
                search(name, data, work, seeds)
                continue
            results.append(evaluate_recipe(name, data, work, RECIPES[name], seeds, "chosen"))
            if name == "breastmnist" and len(seeds) > 1:
                results[-1]["ensemble"] = ensemble(results[-1], data)
            if not args.quick and name == "breastmnist":
                results.append(evaluate_recipe(name, data, work, {}, seeds, "defaults"))
    if results:
        print()
        print(summary_table(results))


if __name__ == "__main__":
    main()
