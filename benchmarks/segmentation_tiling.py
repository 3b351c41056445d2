"""Tiled against whole-image inference on a 4096×4096 image: megapixels/s and peak memory.

The image is ISBI 2012 training image 0 (512×512 electron microscopy) repeated 8×8. The model is a compact U-Net
(`unet`) trained briefly on ISBI images 0–21 (128 px crops, fp32; speed does not depend on training, and a
trained model makes the agreement column meaningful), or the run given with `--run`. Each mode runs in its own
subprocess so that peak memories do not mix: `load(run).predict(image)` whole, or with `tile=T, overlap=64`, after
a warm-up prediction of a 512×512 crop. Reported: seconds, megapixels/s of the 16.8 MP image, the process's peak
resident memory (ru_maxrss) and its growth over the resident memory before the timed prediction, and the share of
pixels whose class equals the whole-image prediction's. fp32, one torch thread (docs/benchmarks.md, "Detection").

    python benchmarks/segmentation_tiling.py            # whole, tile 512, tile 1024: ~5 min on 2 cores
    python benchmarks/segmentation_tiling.py --quick    # 2048×2048, tiles 512 only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import imagerec  # noqa: E402
from _common import SHARED_DATASETS, markdown_table, print_machine, quiet_console  # noqa: E402

ISBI = SHARED_DATASETS / "isbi2012-em" / "train"
OVERLAP = 64


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def big_image(size: int) -> np.ndarray:
    tile = np.asarray(Image.open(ISBI / "image" / "0.png").convert("L"))
    reps = -(-size // tile.shape[0])
    return np.tile(tile, (reps, reps))[:size, :size]


def train_model(root: Path) -> Path:
    from segmentation_isbi import write_split

    data = write_split(root / "isbi")
    run = imagerec.train(
        data, task="segment", model="unet", epochs=15, imgsz=128, precision="32", out=root / "run",
        console=quiet_console(),
    )  # fmt: skip
    return run.path


def child(args: argparse.Namespace) -> None:
    """One mode in this process: time one prediction, print a JSON line, save the class map."""
    torch.set_num_threads(args.threads)
    predictor = imagerec.load(args.run, device="cpu")
    image = big_image(args.size)
    tile = None if args.mode == "whole" else int(args.mode)
    options = {} if tile is None else {"tile": tile, "overlap": OVERLAP}
    predictor.predict(image[:512, :512], **options)  # warm-up
    before = rss_mib()
    start = time.perf_counter()
    (result,) = predictor.predict(image, **options)
    seconds = time.perf_counter() - start
    if result.error:
        raise SystemExit(result.error)
    np.save(args.save, result.mask)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"mode": args.mode, "seconds": seconds, "peak_mib": peak, "before_mib": before}))


def run_mode(mode: str, run: Path, work: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", mode, "--run", str(run), "--size", str(args.size),
               "--threads", str(args.threads), "--save", str(work / f"{mode}.npy")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        return {"mode": mode, "error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["mp_per_s"] = args.size**2 / 1e6 / result["seconds"]
    result["load"] = os.getloadavg()[0]
    print("  " + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2048×2048, whole and tile 512")
    parser.add_argument("--size", type=int, default=None, help="image side (default 4096)")
    parser.add_argument("--modes", nargs="+", default=None, help="whole and/or tile sizes (default whole 512 1024)")
    parser.add_argument("--run", type=Path, default=None, help="a trained segmentation run (default: train one)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--save", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.size = args.size or (2048 if args.quick else 4096)
    args.modes = args.modes or (["whole", "512"] if args.quick else ["whole", "512", "1024"])
    if args.child:
        args.mode = args.child
        return child(args)
    torch.set_num_threads(args.threads)
    print_machine(f"tiled inference: unet on a {args.size}×{args.size} image")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run = args.run or train_model(work)
        results = [run_mode(mode, run, work, args) for mode in args.modes]
        reference = np.load(work / "whole.npy") if (work / "whole.npy").exists() else None
        for r in results:
            same = reference is not None and "error" not in r
            r["agree"] = float((np.load(work / f"{r['mode']}.npy") == reference).mean()) if same else float("nan")
    header = ("mode", "seconds", "MP/s", "peak RSS MiB", "growth MiB", "agrees with whole", "load 1m")
    rows = [
        (r["mode"] if r["mode"] == "whole" else f"tile {r['mode']}, overlap {OVERLAP}", r.get("error", "")
         or f"{r['seconds']:.1f}", f"{r.get('mp_per_s', 0):.2f}", f"{r.get('peak_mib', 0):.0f}",
         f"{r.get('peak_mib', 0) - r.get('before_mib', 0):.0f}", f"{r['agree']:.4f}", f"{r.get('load', 0):.1f}")
        for r in results
    ]  # fmt: skip
    print()
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
