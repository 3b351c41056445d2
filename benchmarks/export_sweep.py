"""Export every registered model of every task and check it against eager PyTorch: what exports, what does not and
why, and how far the exported outputs are from eager ones. Writes docs/deploy-models.md; its failures are what
src/imagerec/models/exportable.py states in `imagerec models`.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/export_sweep.py [--only NAME ...] [--formats onnx,openvino,torchscript]

Each model is built by its task's own builder with fresh weights (pretrained ones are not needed to test a graph) at
the smallest input size it takes from 32, 64, 96, 128 and 224 px (detection 128, segmentation 64), written by the
product's own writers (`imagerec.outputs.export.FORMATS`), run by the product's runtimes and compared with eager on
two inputs (tests/export_parity.py: random images for classifiers and segmenters, a real digit scene for detectors).
ONNX is tried for every model; OpenVINO and TorchScript for the first model of each family (and for every one
with `--formats`). Results go to a JSON-lines file as they come, so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from export_parity import FP32_ATOL, Case, export_and_compare, model_info  # noqa: E402
from imagerec.errors import UserError  # noqa: E402

SIZES = (32, 64, 96, 128, 224)  # classifiers: the first of these the model takes
TIMEOUT_S = 90  # per model and format; a model past it is recorded as timed out
TIMM = [  # a few representative timm families (their registry holds over a thousand models)
    "timm:resnet18", "timm:efficientnet_b0", "timm:mobilenetv3_small_100", "timm:convnext_atto",
    "timm:vit_tiny_patch16_224", "timm:deit_tiny_patch16_224", "timm:swin_tiny_patch4_window7_224",
]  # fmt: skip
# Detectors convert to OpenVINO in 30 s or more each here: the other formats are tried on one model per kind of head.
DETECTORS_IN_EVERY_FORMAT = {"fcos_lite", "fasterrcnn", "ssdlite320_mobilenet_v3_large", "maskrcnn_resnet50_fpn"}
DETECTION_BACKBONES = {
    "fcos": ["mobilenet_v3_small", "efficientnet_b0", "convnext_tiny", "regnet_x_400mf", "swin_t", "timm:resnet18",
             "timm:efficientnet_b0"],
    "retinanet": ["mobilenet_v3_small"],
    "fasterrcnn": ["mobilenet_v3_small"],
}  # fmt: skip
SMP_ENCODERS = {"smp_unet": ["mobilenet_v2", "efficientnet-b0", "timm-efficientnet-b0"], "smp_fpn": ["mobilenet_v2"]}
BIG = 12_000_000  # parameters: larger models are run only as their family's smallest (time on 2 cores)
FAMILIES = (  # longest first: a model's family is the first prefix its name starts with
    "efficientnet_v2", "efficientnet", "mobilenet_v2", "mobilenet_v3", "regnet_x", "regnet_y", "swin_v2", "swin",
    "shufflenet_v2", "wide_resnet", "resnext", "resnet", "vgg", "vit", "convnext", "densenet", "squeezenet", "mnasnet",
    "maxvit", "fasterrcnn_mobilenet", "fasterrcnn_resnet50", "retinanet_resnet50", "unet", "deeplabv3", "fcn",
    "maskrcnn",
)  # fmt: skip


def family(label: str) -> str:
    name = label.split("+")[0]
    if name.startswith("timm:"):
        return name
    return next((f for f in FAMILIES if name.startswith(f)), name)


def parameters(name: str) -> int:
    """A torchvision classifier's size from its weights' metadata (no download, no build); 0 for the others."""
    from torchvision.models import get_model_weights

    try:
        return get_model_weights(name).DEFAULT.meta["num_params"]
    except (ValueError, KeyError):
        return 0


def cases() -> list[Case]:
    """Every registered model, classifiers smallest first within each family (the first of a family is its
    representative: run in every format, whatever its size)."""
    from imagerec.models.classification import CLASSIFIERS
    from imagerec.models.detection import DETECTORS
    from imagerec.models.segmentation import INSTANCE_SEGMENTERS, SEGMENTERS

    names = sorted(CLASSIFIERS.names(), key=lambda n: (family(n), parameters(n)))
    found = [Case("classify", name, 0) for name in [*names, *TIMM]]
    found += [Case("detect", name, 128) for name in DETECTORS.names()]
    found += [Case("detect", head, 128, backbone) for head, names in DETECTION_BACKBONES.items() for backbone in names]
    found += [Case("segment", name, 64) for name in SEGMENTERS.names()]
    found += [Case("segment", name, 64, encoder) for name, encoders in SMP_ENCODERS.items() for encoder in encoders]
    found += [Case("instance", name, 128) for name in INSTANCE_SEGMENTERS.names()]
    return found


@torch.no_grad()
def smallest_size(case: Case) -> int:
    """The first of `SIZES` the classifier runs at (size 0 in `cases`); the others keep theirs."""
    if case.imgsz:
        return case.imgsz
    from dataclasses import replace

    from imagerec.tasks.build import task_from_info

    for size in SIZES:
        info = model_info(replace(case, imgsz=size))
        try:
            task_from_info(info).build_model(info).eval()(torch.zeros(1, case.channels, size, size))
            return size
        except (RuntimeError, ValueError, AssertionError, TypeError):
            continue
    raise UserError(f"runs at none of {SIZES} px")


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"over {seconds} s on this machine")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:240] if text else ''}"


def run_case(case: Case, fmt: str, skip: str | None = None) -> dict[str, Any]:
    """One model in one format: ok (with the differences), the first line of what went wrong, or `skip`."""
    from dataclasses import replace

    row: dict[str, Any] = {"task": case.kind, "model": case.label, "family": family(case.label), "format": fmt}
    if skip:
        return row | {"status": "skipped", "reason": skip}
    start = time.perf_counter()
    try:
        with time_limit(TIMEOUT_S), tempfile.TemporaryDirectory() as tmp:
            sized = replace(case, imgsz=smallest_size(case))
            row["imgsz"] = sized.imgsz
            measured = export_and_compare(sized, fmt, Path(tmp))
    except (UserError, RuntimeError, ValueError, AssertionError, TypeError, TimeoutError, MemoryError) as error:
        return row | {"status": "failed", "reason": first_line(error), "seconds": time.perf_counter() - start}
    status = "ok" if measured.ok else "differs"
    return row | {
        "status": status, "export_s": round(measured.seconds, 2), "max_abs": measured.max_abs,
        "max_rel": measured.max_rel, "scale": measured.scale, "boxes": measured.boxes,
        "mask_disagreement": measured.mask_disagreement, "seconds": time.perf_counter() - start,
    }  # fmt: skip


def sweep(out: Path, formats: list[str], every_format: bool, only: list[str] | None) -> None:
    done = {(r["model"], r["format"]) for r in read_rows(out)}
    representatives: dict[str, str] = {}
    for case in cases():
        if only and case.label not in only and family(case.label) not in only:
            continue
        first = representatives.setdefault(family(case.label), case.label)
        size = parameters(case.name)
        skip = None
        if first != case.label and size > BIG:
            skip = f"not run ({size / 1e6:.0f} M parameters, for time on 2 cores); its family's {first} was"
        for fmt in formats:
            detector = case.kind in ("detect", "instance") and case.label not in DETECTORS_IN_EVERY_FORMAT
            if (fmt != "onnx" and not (every_format or (first == case.label and not detector))) or (
                (case.label, fmt) in done
            ):
                continue
            row = run_case(case, fmt, skip)
            print(json.dumps(row), flush=True)
            with out.open("a") as file:
                file.write(json.dumps(row) + "\n")


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "—"
    if row["status"] in ("ok", "differs"):
        extra = f", masks {row['mask_disagreement']:.1e}" if row.get("mask_disagreement") else ""
        mark = "yes" if row["status"] == "ok" else "**differs**"
        return f"{mark} ({row['max_abs']:.1e}{extra})"
    return "skipped" if row["status"] == "skipped" else "**no**"


def write_doc(rows: list[dict[str, Any]], dest: Path, seconds: float) -> None:
    """docs/deploy-models.md: one line per model, then every failure with its reason."""
    by_model: dict[str, dict[str, dict[str, Any]]] = {}
    order = {"classify": 0, "detect": 1, "segment": 2, "instance": 3}
    for row in sorted(rows, key=lambda r: order[r["task"]]):  # stable: the sweep's order within a task
        by_model.setdefault(row["model"], {})[row["format"]] = row
    lines = [
        "# Which models export",
        "",
        "Measured by `benchmarks/export_sweep.py` on this machine (2 cores; torch "
        f"{torch.__version__.split('+')[0]}, ONNX opset 17 through torch.onnx's TorchScript-based exporter, "
        f"ONNX Runtime and OpenVINO on the CPU, OpenVINO in f32; {seconds / 60:.0f} min of model time): "
        "every registered model with fresh weights at the smallest input size it takes, exported by "
        "`imagerec export`'s own writers and compared with eager PyTorch on two inputs (the second of another "
        "batch size, or for segmenters and detectors another image size). A cell reads *yes (largest absolute "
        "difference of outputs)*: logits, per-pixel logits, or for detectors the scores and box coordinates "
        "(in hundreds of pixels) of the eager model's 20 best boxes against their exported twins; Mask R-CNN "
        "adds the largest share of a mask's pixels that disagree. The fp32 tolerance is "
        f"{FP32_ATOL:g} (times the largest output where that is above 1), and 1% of a mask's pixels. "
        "ONNX was run on every model but the large members of a family (stated), OpenVINO and TorchScript on "
        "the smallest model of each family; `imagerec models` states what this table found "
        "(src/imagerec/models/exportable.py).",
        "",
        "| task | model | size | ONNX | OpenVINO | TorchScript | export s |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, formats in by_model.items():
        onnx = formats.get("onnx", {})
        lines.append(
            f"| {onnx.get('task', '')} | {model} | {onnx.get('imgsz', '')} | {_cell(formats.get('onnx'))} | "
            f"{_cell(formats.get('openvino'))} | {_cell(formats.get('torchscript'))} | {onnx.get('export_s', '')} |"
        )
    failures = [r for r in rows if r["status"] in ("failed", "differs")]
    lines += ["", "## What does not export, and why", ""]
    lines += [f"- **{r['model']}** ({r['format']}): {r.get('reason') or _differs(r)}" for r in failures] or ["None."]
    skipped = [f"{r['model']} ({_millions(r['reason'])})" for r in rows if r["status"] == "skipped"]
    lines += ["", "## Not run", "", "Larger members of a family whose smallest member exported (time on 2 cores): "]
    lines[-1] += ", ".join(skipped) + "." if skipped else "none."
    dest.write_text("\n".join(lines) + "\n")


def _millions(reason: str) -> str:
    found = re.search(r"\d+ M parameters", reason)
    return found.group(0) if found else reason


def _differs(row: dict[str, Any]) -> str:
    return f"exports, but outputs differ from eager by up to {row['max_abs']:.1e} (over the {FP32_ATOL:g} tolerance)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "export_sweep.jsonl")
    parser.add_argument("--formats", default="onnx,openvino,torchscript")
    parser.add_argument("--every-format", action="store_true", help="OpenVINO and TorchScript for every model too")
    parser.add_argument("--only", nargs="*", help="model names or families")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "deploy-models.md")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.disable(logging.WARNING)  # the exporter logs whole graphs on failure; the first line is kept
    start = time.perf_counter()
    sweep(args.out, args.formats.split(","), args.every_format, args.only)
    rows = read_rows(args.out)
    write_doc(rows, args.doc, sum(r.get("seconds", 0.0) for r in rows) or time.perf_counter() - start)
    print(f"{len(rows)} results in {args.out}; table in {args.doc}")


if __name__ == "__main__":
    main()
