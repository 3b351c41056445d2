"""Explanation speed: images explained per second, per method, for seed_cnn and resnet18 classifiers at 64 px.

Each model is trained for one epoch on 300 of the real scikit-learn digits (the weights do not change the cost),
then `imagerec.outputs.explain.explain` is timed on `--images` digits per method: the median of `--repeats` runs
(after one warm-up image), in images per second of wall time and in CPU milliseconds per image (which other
processes on the same cores disturb less). Decoding and preprocessing are inside the timing, as in `imagerec
explain`; writing the overlay PNGs and `.npy` files is timed once more for Grad-CAM (`gradcam + files`).

    python benchmarks/explain_speed.py              # both models, 16 images, 3 repeats, 2 threads: ~2.5 min
    python benchmarks/explain_speed.py --quick      # seed_cnn only, 4 images: ~15 s
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import imagerec  # noqa: E402
from _common import markdown_table, print_machine, quiet_console, timed  # noqa: E402
from imagerec.outputs.explain import METHODS, explain  # noqa: E402
from imagerec.outputs.predict import load  # noqa: E402


def subset(digits: Path, out: Path, per_class: int) -> Path:
    for folder in sorted(p for p in digits.iterdir() if p.is_dir()):
        (out / folder.name).mkdir(parents=True)
        for path in sorted(folder.glob("*.png"))[:per_class]:
            shutil.copy(path, out / folder.name / path.name)
    return out


def speed(predictor, files: list[Path], method: str, repeats: int, out: Path | None = None) -> tuple[float, float]:
    """(images per second of wall time, CPU milliseconds per image), medians over `repeats` runs."""
    explain(predictor, files[:1], method=method)  # warm-up: first use of the library, the target layer's probe
    walls, cpus = [], []
    for _ in range(repeats):
        with timed() as t:
            explain(predictor, files, method=method, out=out)
        walls.append(t.wall_s)
        cpus.append(t.cpu_s)
    return len(files) / statistics.median(walls), 1000 * statistics.median(cpus) / len(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="seed_cnn only, 4 images")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--imgsz", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (2: the two cores)")
    args = parser.parse_args()
    models = ["seed_cnn"] if args.quick else ["seed_cnn", "resnet18"]
    count = 4 if args.quick else args.images
    torch.set_num_threads(args.threads)
    print_machine(f"explanation speed: images/s per method, {args.imgsz} px, median of {args.repeats}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        digits = imagerec.write_sample("digits", work / "digits")
        data = subset(digits, work / "train", per_class=30)
        files = sorted(digits.rglob("*.png"))[-count:]
        for model in models:
            run = imagerec.train(data, out=work / model, model=model, imgsz=args.imgsz, epochs=1, batch=32,
                                 seed=0, precision="32", console=quiet_console())  # fmt: skip
            predictor = load(run.path, device="cpu")
            row = [model]
            for method, out in [(m, None) for m in METHODS] + [("gradcam", work / "out")]:
                per_s, cpu_ms = speed(predictor, files, method, args.repeats, out)
                label = method if out is None else f"{method} + files"
                print(f"  {model:9s} {label:22s} {per_s:8.1f} images/s {cpu_ms:9.1f} ms CPU per image", flush=True)
                row.append(f"{per_s:.1f} ({cpu_ms:.0f} ms)")
            rows.append(row)
    print()
    print("images/s of wall time (CPU milliseconds per image), median of the repeats")
    print(markdown_table(["model", *METHODS, "gradcam + files"], rows))


if __name__ == "__main__":
    main()
