"""Detection inference speed on CPU: images/s at batch 1 and batch 16 for every registered detector.

Each detector is built with fresh weights (speed does not depend on training) for 10 greyscale classes, as
`imagerec.train` builds it for the digit scenes, at each imgsz (default 128, the digit scenes' size, and 320).
Input images are already at imgsz, so the figure is the model's forward alone: the resize, normalisation and
padding inside the model, backbone, head, box decoding and NMS. Score threshold 0.25 (what `predict` uses by
default); untrained heads give few boxes above it, so NMS costs less than on a trained model. fp32, one thread by
default: on a shared 2-core machine two OpenMP threads wait for each other whenever another process holds a core,
and fcos_lite ran 115× slower with 2 threads than with 1 under a load of 5 (see docs/benchmarks.md). Per
setting: a warm-up call, then the median over `--repeats` timed repeats of at least `--min-images` images;
models are measured one after another, so the machine's load is printed per row.

    python benchmarks/detection_inference.py            # 12 detectors × 2 sizes × 2 batches, ~22 min on 2 cores
    python benchmarks/detection_inference.py --quick    # 128 px, 3 small detectors, ~15 s
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, median, print_machine  # noqa: E402
from imagerec.models.detection import DetectorSpec, create_detector, list_detectors, thresholds  # noqa: E402

CONF = 0.25
BACKBONE_HEADS = ("fcos", "retinanet", "fasterrcnn")  # their default backbone (resnet18) is what is measured


@torch.inference_mode()
def images_per_s(model: torch.nn.Module, imgsz: int, batch: int, *, repeats: int, min_images: int) -> float:
    images = list(torch.rand(batch, 1, imgsz, imgsz))
    calls = max(1, -(-min_images // batch))  # calls per timed repeat
    model(images)  # warm-up
    speeds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            model(images)
        speeds.append(calls * batch / (time.perf_counter() - start))
    return median(speeds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="128 px, fcos_lite, ssdlite and fasterrcnn-mobilenet")
    parser.add_argument("--models", nargs="+", default=None, help="default: every registered detector")
    parser.add_argument("--imgsz", nargs="+", type=int, default=None, help="default: 128 320 (quick: 128)")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per setting (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--min-images", type=int, default=8, help="images per timed repeat, at least")
    args = parser.parse_args()
    quick_models = ["fcos_lite", "ssdlite320_mobilenet_v3_large", "fasterrcnn_mobilenet_v3_large_320_fpn"]
    models = args.models or (quick_models if args.quick else [d["name"] for d in list_detectors()])
    sizes = args.imgsz or ([128] if args.quick else [128, 320])
    repeats = args.repeats or 3
    torch.set_num_threads(args.threads)
    print_machine("detection inference: images/s on CPU, fresh weights, fp32")
    print(f"10 classes, 1 channel, score threshold {CONF}, warm-up 1 call, median of {repeats} repeats of "
          f"≥ {args.min_images} images; backbone heads ({', '.join(BACKBONE_HEADS)}) on resnet18\n")  # fmt: skip
    rows = []
    for name in models:
        params = None
        for imgsz in sizes:
            torch.manual_seed(0)
            spec = DetectorSpec(num_classes=10, in_channels=1, imgsz=imgsz, mean=[0.5], std=[0.25])
            model = create_detector(name, spec).eval()
            params = params or sum(p.numel() for p in model.parameters()) / 1e6
            with thresholds(score=CONF):
                speeds = [images_per_s(model, imgsz, b, repeats=repeats, min_images=args.min_images)
                          for b in args.batches]  # fmt: skip
            row = (name, f"{params:.1f}", imgsz, *(f"{s:.1f}" for s in speeds), f"{os.getloadavg()[0]:.1f}")
            print("  " + "  ".join(str(c) for c in row), flush=True)
            rows.append(row)
    print()
    header = ("model", "params (M)", "imgsz", *(f"img/s batch {b}" for b in args.batches), "load 1m")
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
