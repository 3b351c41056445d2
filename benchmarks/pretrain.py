"""Self-supervised pretraining (`imagerec.pretrain`): which method, and does it pay off downstream?

Three parts, each runnable alone (results are kept as JSON under --work, so parts can run in separate processes,
e.g. one per core, and `--part report` prints every table from what is there):

- methods: on BreastMNIST's 546 training images only (a folder of symlinks holding train/ and val/; val is the
  k-NN monitor, test is never seen), resnet18 at 28 px is pretrained with simclr, byol and dino at the same time
  budget, seed 0, each in a child process (peak RSS from getrusage). Reported: val k-NN accuracy and embedding
  spread at the kept epoch, epochs, images/s, wall time, peak RSS; plus the leave-one-out k-NN accuracy of a
  randomly initialised resnet18's features on the same val images. The method with the best val k-NN accuracy is
  chosen (validation only).
- breast: the chosen method's run (from `methods`, or a new one with --breast-time) is the `weights=` of resnet18
  fine-tuning runs against scratch at 10 / 25 / 100 % labels, seeds 0 1 2, with section 7's budget (batch 16,
  60 / 30 / 12 epochs, precision 32, augment light, lr 1e-3); stratified subsets drawn as in
  transfer_breastmnist.py (seed s draws subset s; val and test whole). Also frozen-feature k-NN heads
  (`head="knn"`) on the pretrained run. Arms: --arms scratch pretrained knn.
- raccoon: resnet18 pretrained on the raccoon training photos only (the images of train_labels.csv, no labels)
  at the detection imgsz, then `fcos` on resnet18 from those weights for T seconds, against scratch for T plus
  the pretraining budget (equal total time); test map50 / map on the test_labels.csv images, as
  detection_raccoon.py. Arms: --arms scratch pretrained.

    python benchmarks/pretrain.py --work /dev/shm/pretrain-bench --part methods
    python benchmarks/pretrain.py --work /dev/shm/pretrain-bench --part breast
    python benchmarks/pretrain.py --work /dev/shm/pretrain-bench --part raccoon
    python benchmarks/pretrain.py --work /dev/shm/pretrain-bench --part report
    python benchmarks/pretrain.py --quick                # ~1-2 min smoke of every part, tiny budgets
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("IMAGEREC_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np  # noqa: E402
import torch  # noqa: E402

from _common import (  # noqa: E402
    SHARED_DATASETS,
    label_subset,
    markdown_table,
    median,
    print_machine,
    quiet_console,
    read_metrics,
    symlink_files,
)

BREAST = SHARED_DATASETS / "breastmnist"
RACCOON = SHARED_DATASETS / "raccoon"
METHODS = ("simclr", "byol", "dino")
SSL_IMGSZ = 28
METHOD_TIME = "4m"
FINETUNE = {"model": "resnet18", "imgsz": 28, "precision": "32", "augment": "light", "batch": 16, "lr": 1e-3}
EPOCHS = {0.10: 60, 0.25: 30, 1.00: 12}  # section 7's budget per label fraction
QUICK_EPOCHS = {0.10: 2}
DETECT = {"task": "detect", "model": "fcos", "backbone": "resnet18", "imgsz": 160, "batch": 16, "lr": 2e-3,
          "augment": "heavy"}  # fmt: skip
RACCOON_PRETRAIN = "4m"
RACCOON_FINETUNE_S = 360


def save(work: Path, name: str, value: Any) -> None:
    (work / "results").mkdir(parents=True, exist_ok=True)
    (work / "results" / f"{name}.json").write_text(json.dumps(value, indent=1, default=str))


def load(work: Path, name: str) -> Any:
    path = work / "results" / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def breast_ssl_folder(work: Path) -> Path:
    """BreastMNIST's train (pretrained on) and val (the k-NN monitor) splits, never test."""
    out = work / "breast-ssl"
    if not out.exists():
        for split in ("train", "val"):
            for class_dir in sorted(p for p in (BREAST / split).iterdir() if p.is_dir()):
                symlink_files(sorted(class_dir.glob("*.png")), out / split / class_dir.name)
    return out


def raccoon_photos(work: Path) -> Path:
    """The raccoon training photos (train_labels.csv's files) as a flat folder of images, no labels."""
    out = work / "raccoon-train-photos"
    if not out.exists():
        with (RACCOON / "data" / "train_labels.csv").open() as f:
            names = sorted({row["filename"] for row in csv.DictReader(f)})
        symlink_files([RACCOON / "images" / n for n in names], out)
    return out


# --- pretraining in a child process (peak memory of that run alone) -------------------------------------------


def child_main(spec_path: str) -> None:
    import imagerec

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(1)
    start = time.perf_counter()
    found: dict[str, Any] = {"spec": spec}
    try:
        run = imagerec.pretrain(spec["data"], console=quiet_console(), **spec["options"])
        found |= {"path": str(run.path), "metrics": run.metrics, "best_epoch": run.best_epoch, "epochs": run.epochs}
        rows = read_metrics(run.path)
        found["rows"] = rows
    except Exception as error:  # noqa: BLE001 - the benchmark reports imagerec's errors as they are
        found["error"] = f"{type(error).__name__}: {error}"
    found["wall_s"] = time.perf_counter() - start
    found["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    found["peak_rss_workers_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    Path(spec["result"]).write_text(json.dumps(found, default=str))


def pretrain_child(work: Path, name: str, data: Path, **options: Any) -> dict[str, Any]:
    """`imagerec.pretrain(data, **options)` in a child process; its run is reused when already there."""
    cached = load(work, f"pretrain-{name}")
    if cached and "error" not in cached and Path(cached["path"]).exists():
        print(f"  pretrain {name}: reused {cached['path']}", flush=True)
        return cached
    out = work / f"pretrain-{name}"
    shutil.rmtree(out, ignore_errors=True)
    spec = {"data": str(data), "options": {**options, "out": str(out)}, "result": str(work / f"child-{name}.json")}
    (work / f"spec-{name}.json").write_text(json.dumps(spec))
    subprocess.run([sys.executable, __file__, "--child", str(work / f"spec-{name}.json")], check=True)
    found = json.loads(Path(spec["result"]).read_text())
    save(work, f"pretrain-{name}", found)
    if "error" in found:
        print(f"  pretrain {name}: ERROR {found['error']}", flush=True)
    else:
        print(f"  pretrain {name}: {summary(found)}", flush=True)
    return found


def limit(budget: str) -> dict[str, Any]:
    """`time=` for a budget such as "4m"; "1 epoch" (the --quick smoke: imagerec refuses budgets under one
    estimated epoch) becomes epochs=1."""
    if budget == "1 epoch":
        return {"epochs": 1}
    return {"epochs": int(budget[:-6])} if budget.endswith("epochs") else {"time": budget}


def images_per_s(found: dict[str, Any]) -> float:
    values = [r["images_per_s"] for r in found.get("rows", []) if "images_per_s" in r]
    return median(values[1:] or values)


def summary(found: dict[str, Any]) -> str:
    m, nan = found.get("metrics", {}), float("nan")
    return (f"val k-NN {m.get('knn_accuracy', nan):.3f}, spread {m.get('embedding_spread', nan):.3f}, "
            f"kept epoch {found.get('best_epoch')}/{found.get('epochs')}, {images_per_s(found):.0f} img/s, "
            f"{found['wall_s']:.0f} s, peak RSS {found['peak_rss_mb']:.0f} MB")  # fmt: skip


# --- part 1: methods -------------------------------------------------------------------------------------------


def random_knn(seed: int = 0) -> dict[str, float]:
    """Leave-one-out k-NN accuracy (and spread) of a randomly initialised resnet18's pooled features on val."""
    from PIL import Image

    from imagerec.metrics.embedding import leave_one_out_knn, spread
    from imagerec.models import create_model
    from imagerec.models.ssl import headless

    def read(split: str) -> tuple[np.ndarray, np.ndarray]:
        classes = sorted(p.name for p in (BREAST / split).iterdir() if p.is_dir())
        pairs = [(f, i) for i, c in enumerate(classes) for f in sorted((BREAST / split / c).glob("*.png"))]
        images = np.stack([np.asarray(Image.open(f).convert("L"), dtype=np.float32) / 255 for f, _ in pairs])
        return images, np.array([i for _, i in pairs])

    train, _ = read("train")
    mean, std = float(train.mean()), float(train.std())
    val, labels = read("val")
    torch.manual_seed(seed)
    network = create_model("classify", "resnet18", num_outputs=2, in_channels=1, imgsz=SSL_IMGSZ)
    headless(network)
    network.eval()
    with torch.no_grad():
        features = network(torch.from_numpy((val - mean) / std)[:, None])
    return {"knn_accuracy": leave_one_out_knn(features.numpy(), labels), "embedding_spread": spread(features)}


def part_methods(work: Path, quick: bool) -> None:
    data = breast_ssl_folder(work)
    budget = "1 epoch" if quick else METHOD_TIME
    results = {}
    for method in METHODS:
        results[method] = pretrain_child(work, f"breast-{method}", data, method=method, model="resnet18",
                                         imgsz=SSL_IMGSZ, seed=0, **limit(budget))  # fmt: skip
    rand = random_knn()
    print(f"  random resnet18: val k-NN {rand['knn_accuracy']:.3f}, spread {rand['embedding_spread']:.3f}")
    ok = {m: r for m, r in results.items() if "error" not in r}
    chosen = max(ok, key=lambda m: ok[m]["metrics"].get("knn_accuracy", -1)) if ok else None
    save(work, "methods", {"budget": budget, "random": rand, "chosen": chosen})
    print(f"  chosen on val k-NN accuracy: {chosen}")


def methods_table(work: Path) -> str:
    summary_ = load(work, "methods")
    if not summary_:
        return "methods: not run"
    rows = []
    for method in METHODS:
        r = load(work, f"pretrain-breast-{method}")
        if r is None:
            continue
        if "error" in r:
            rows.append((method, summary_["budget"], "ERROR", r["error"][:80], "", "", "", "", ""))
            continue
        m, epoch_s = r["metrics"], [row.get("epoch_time_s", float("nan")) for row in r["rows"]]
        mark, knn = ("**" if method == summary_["chosen"] else ""), m.get("knn_accuracy", float("nan"))
        rows.append((f"{mark}{method}{mark}", summary_["budget"], f"{mark}{knn:.3f}{mark}",
                     f"{m.get('embedding_spread', float('nan')):.3f}", f"{r['best_epoch']}/{r['epochs']}",
                     f"{images_per_s(r):.0f}", f"{median(epoch_s):.1f}", f"{r['wall_s']:.0f}",
                     f"{r['peak_rss_mb']:.0f} (+{r['peak_rss_workers_mb']:.0f})"))  # fmt: skip
    rand = summary_["random"]
    rows.append(("random init (no training)", "—", f"{rand['knn_accuracy']:.3f}", f"{rand['embedding_spread']:.3f}",
                 "—", "—", "—", "—", "—"))  # fmt: skip
    header = ("method", "budget", "val k-NN acc (kept epoch)", "val spread", "kept/done epochs", "img/s (median)",
              "s/epoch", "wall s", "peak RSS MB (largest worker)")  # fmt: skip
    return markdown_table(header, rows)


# --- part 2: BreastMNIST label fractions -------------------------------------------------------------------------


def breast_source(work: Path, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    method = args.method or (load(work, "methods") or {}).get("chosen") or "simclr"
    if args.breast_time is None and seed == 0 and load(work, f"pretrain-breast-{method}"):
        return load(work, f"pretrain-breast-{method}")  # the methods part's run: same data, method and seed
    budget = "1 epoch" if args.quick else (args.breast_time or METHOD_TIME)
    return pretrain_child(work, f"breast-{method}-{budget}-s{seed}", breast_ssl_folder(work), method=method,
                          model="resnet18", imgsz=SSL_IMGSZ, seed=seed, **limit(budget))  # fmt: skip


def finetune(work: Path, fraction: float, seed: int, arm: str, epochs: int, source: dict[str, Any] | None) -> None:
    import imagerec

    name = f"breast-{round(fraction * 100)}-s{seed}-{arm}"
    if load(work, name):
        return
    subset = label_subset(BREAST, fraction, seed, work)
    if arm == "knn":
        options: dict[str, Any] = {"model": "resnet18", "imgsz": 28, "seed": seed, "head": "knn",
                                   "weights": source["path"]}  # fmt: skip
    else:
        options = {**FINETUNE, "epochs": epochs, "seed": seed}
        if arm == "pretrained":
            options["weights"] = source["path"]
    out = work / f"run-{name}"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    try:
        run = imagerec.train(subset, out=out, console=quiet_console(), **options)
    except Exception as error:  # noqa: BLE001
        found = {"error": f"{type(error).__name__}: {error}", "wall_s": time.perf_counter() - start}
        print(f"  {name}: ERROR {found['error']}", flush=True)
        save(work, name, found)
        return
    wall = time.perf_counter() - start
    found = {"test": {k: float(run.metrics[k]) for k in ("accuracy", "auc")}, "best_epoch": run.best_epoch,
             "epochs": epochs, "wall_s": wall, "source": source["path"] if source else None}  # fmt: skip
    if arm != "knn":
        rows = read_metrics(run.path)
        kept = rows[run.best_epoch - 1] if run.best_epoch else rows[-1]
        found["val"] = {k: kept.get(f"val_{k}", float("nan")) for k in ("accuracy", "auc")}
        losses = [r.get("train_loss", float("nan")) for r in rows]
        found["train_loss_first_last_max"] = [losses[0], losses[-1], max(losses)]
    save(work, name, found)
    shutil.rmtree(run.path)  # ~200 MB of checkpoints per run
    print(f"  {name}: test acc {found['test']['accuracy']:.3f} AUC {found['test']['auc']:.3f} "
          f"(epoch {run.best_epoch}/{epochs}), {wall:.0f} s", flush=True)  # fmt: skip


def part_breast(work: Path, args: argparse.Namespace) -> None:
    fractions = QUICK_EPOCHS if args.quick else {f: max(1, round(e * args.epoch_scale)) for f, e in EPOCHS.items()}
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    arms = args.arms or ["scratch", "pretrained", "knn"]
    sources = {}
    for seed in seeds:
        if set(arms) & {"pretrained", "knn"}:
            sources[seed] = sources.get(0) if args.one_source and seed else breast_source(work, args, seed)
    for fraction, epochs in fractions.items():
        for seed in seeds:
            for arm in arms:
                finetune(work, fraction, seed, arm, epochs, sources.get(seed))


def span(values: list[float]) -> str:
    """Mean of the seeds (the issue's goal is stated in means) and their range."""
    return f"{statistics.mean(values):.3f} ({min(values):.3f}–{max(values):.3f})" if values else "not run"


def breast_tables(work: Path) -> str:
    rows, gains = [], []
    for fraction in EPOCHS:
        cells = {}
        for arm in ("scratch", "pretrained", "knn"):
            cells[arm] = {s: load(work, f"breast-{round(fraction * 100)}-s{s}-{arm}") for s in range(3)}
            cells[arm] = {s: r for s, r in cells[arm].items() if r and "error" not in r}
            if not cells[arm]:
                continue
            cell = list(cells[arm].values())
            rows.append((f"{round(fraction * 100)} %", arm, len(cell), span([r["test"]["accuracy"] for r in cell]),
                         span([r["test"]["auc"] for r in cell]),
                         "—" if arm == "knn" else span([r["val"]["auc"] for r in cell])))  # fmt: skip
        for arm in ("pretrained", "knn"):
            pairs = [(cells[arm][s], cells["scratch"][s]) for s in cells.get(arm, {}) if s in cells["scratch"]]
            if not pairs:
                continue
            d_acc = [a["test"]["accuracy"] - b["test"]["accuracy"] for a, b in pairs]
            d_auc = [a["test"]["auc"] - b["test"]["auc"] for a, b in pairs]
            gains.append((f"{round(fraction * 100)} %", f"{arm} − scratch", f"{statistics.mean(d_acc):+.3f}",
                          f"{statistics.mean(d_auc):+.3f}", ", ".join(f"{d:+.3f}" for d in d_auc),
                          f"{sum(d > 0 for d in d_auc)} of {len(pairs)}"))  # fmt: skip
    header = ("labels", "arm", "seeds", "test accuracy", "test AUC", "val AUC (kept epoch)")
    gain_header = ("labels", "difference", "test acc (mean)", "test AUC (mean)", "AUC per seed", "AUC higher")
    return markdown_table(header, rows) + "\n\n" + markdown_table(gain_header, gains)


# --- part 3: raccoon detection at equal total time ---------------------------------------------------------------


def detect(work: Path, arm: str, seconds: float, weights: str | None, seed: int) -> None:
    import imagerec

    name = f"raccoon-{arm}-s{seed}"
    if load(work, name):
        return
    options = {**DETECT, "seed": seed, **({"time": f"{round(seconds)}s"} if seconds else {"epochs": 1})}
    if weights:
        options["weights"] = weights
    start = time.perf_counter()
    try:
        run = imagerec.train(RACCOON / "data", out=work / f"run-{name}", console=quiet_console(), **options)
    except Exception as error:  # noqa: BLE001
        found = {"error": f"{type(error).__name__}: {error}", "wall_s": time.perf_counter() - start}
        print(f"  {name}: ERROR {found['error']}", flush=True)
        save(work, name, found)
        return
    rows = read_metrics(run.path)
    found = {"map": float(run.metrics["map"]), "map50": float(run.metrics["map50"]), "epochs": len(rows),
             "best_epoch": run.best_epoch, "budget_s": seconds, "wall_s": time.perf_counter() - start,
             "val_map_kept": rows[run.best_epoch - 1].get("val_map") if run.best_epoch else None}  # fmt: skip
    save(work, name, found)
    shutil.rmtree(run.path, ignore_errors=True)
    print(f"  {name}: test map50 {found['map50']:.3f} map {found['map']:.3f}, {found['epochs']} epochs, "
          f"{found['wall_s']:.0f} s", flush=True)  # fmt: skip


def part_raccoon(work: Path, args: argparse.Namespace) -> None:
    from imagerec.config import duration_seconds

    method = args.method or (load(work, "methods") or {}).get("chosen") or "simclr"
    budget = "1 epoch" if args.quick else args.raccoon_pretrain
    finetune_s = 0 if args.quick else args.raccoon_finetune_s
    arms = args.arms or ["pretrained", "scratch"]
    seed = (args.seeds or [0])[0]
    if "pretrained" in arms:
        source = pretrain_child(work, f"raccoon-{method}-{budget}", raccoon_photos(work), method=method,
                                model="resnet18", imgsz=DETECT["imgsz"], seed=seed, **limit(budget))  # fmt: skip
        if "error" not in source:
            detect(work, "pretrained", finetune_s, source["path"], seed)
    if "scratch" in arms:  # equal total time: the pretraining's budget, or its measured wall time for an epochs budget
        found = load(work, f"pretrain-raccoon-{method}-{budget}") or {}
        spent = found.get("wall_s", 0) if "epoch" in budget else duration_seconds(budget)
        detect(work, "scratch", finetune_s + (0 if args.quick else round(spent)), None, seed)


def raccoon_table(work: Path) -> str:
    rows = []
    for name in sorted(p.stem for p in (work / "results").glob("raccoon-*.json")):
        r = load(work, name)
        if name.startswith("raccoon-scratch") or name.startswith("raccoon-pretrained"):
            if "error" in r:
                rows.append((name, "ERROR", r["error"][:100], "", "", ""))
            else:
                rows.append((name, f"{r['budget_s']:.0f}", r["epochs"], f"{r['wall_s']:.0f}", f"{r['map50']:.3f}",
                             f"{r['map']:.3f}"))  # fmt: skip
        elif "error" not in r:
            rows.append((f"{name} (pretraining)", r["spec"]["options"]["time"], r["epochs"], f"{r['wall_s']:.0f}",
                         f"spread {r['metrics'].get('embedding_spread', float('nan')):.3f}", "—"))  # fmt: skip
    return markdown_table(("run", "time budget", "epochs", "wall s", "test map50", "test map"), rows)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child_main(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", nargs="+", default=["methods", "breast", "raccoon", "report"],
                        choices=["methods", "breast", "raccoon", "report"])  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true", help="smoke: one epoch per pretraining and detection, 2 at 10 %%"
    )
    parser.add_argument("--work", type=Path, default=None, help="runs and result JSONs (reused); default a temp dir")
    parser.add_argument("--method", choices=METHODS, default=None, help="default: the one chosen by `methods`")
    parser.add_argument(
        "--arms", nargs="+", default=None, help="breast: scratch pretrained knn; raccoon: scratch pretrained"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument(
        "--breast-time", default=None, help="new breast pretraining budget (default: reuse methods' run)"
    )
    parser.add_argument("--one-source", action="store_true", help="breast: seed 0's pretraining for every seed")
    parser.add_argument("--epoch-scale", type=float, default=1.0, help="breast: fine-tuning epochs times this")
    parser.add_argument("--raccoon-pretrain", default=RACCOON_PRETRAIN)
    parser.add_argument("--raccoon-finetune-s", type=float, default=RACCOON_FINETUNE_S)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not BREAST.is_dir():
        print(f"skipped: {BREAST} not found (the shared datasets live in ../shared/datasets)")
        return
    print_machine("self-supervised pretraining: methods, BreastMNIST label fractions, raccoon detection")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if "methods" in args.part:
            part_methods(work, args.quick)
        if "breast" in args.part:
            part_breast(work, args)
        if "raccoon" in args.part:
            part_raccoon(work, args)
        if "report" in args.part:
            print("\n" + methods_table(work) + "\n\n" + breast_tables(work) + "\n\n" + raccoon_table(work))
    print(f"\nwall time {time.perf_counter() - start:.0f} s; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
