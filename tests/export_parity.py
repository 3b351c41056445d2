"""What the export parity tests and benchmarks/export_sweep.py share: a fresh model of any registered name built by its
task's own builder, exported through the product's writers, run by the product's runtimes and compared with eager
PyTorch on the same inputs.

Fresh weights are enough to test a graph, with one correction: zero-initialised heads (ViT's) output zeros whatever
the graph does, so all-zero parameters get small noise. Batch norm keeps its initial statistics: estimated on random
images, the last 1×1 stages of a small input see near-identical features, and the tiny variances blow logits up to
1e10, where fp32 rounding differs by more than any tolerance (efficientnet).
"""

from __future__ import annotations

import functools
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imagerec.data.images import read_image
from imagerec.outputs.graphs import FORMATS, OPSET, export_record
from imagerec.outputs.runtimes import RUNTIMES, Exported
from imagerec.records import ModelInfo
from imagerec.tasks.base import Task
from imagerec.tasks.build import task_from_info

# fp32 tolerance: the largest difference of outputs (logits, per-pixel logits, detection scores, box coordinates in
# hundreds of pixels) from eager, times the largest output where that is above 1: fresh weights can put logits at
# 1e4 (inception_v3), where fp32 rounding alone differs by about 1e-3.
FP32_ATOL = 1e-3
MASK_TOLERANCE = 0.01  # Mask R-CNN: the largest share of a matched mask's pixels that may differ (see below)
NUM_CLASSES = 3
TOP_BOXES = 20  # detections compared: the best this many of the eager model's, each to its nearest exported box
LOW_SCORE = 0.01  # fresh detectors score most boxes near their prior; keep enough of them to compare


@dataclass(frozen=True)
class Case:
    """One model to export: its task kind (classify, detect, instance, segment), name, input size and backbone."""

    kind: str
    name: str
    imgsz: int
    backbone: str | None = None
    channels: int = 3

    @property
    def label(self) -> str:
        return f"{self.name}+{self.backbone}" if self.backbone else self.name


def model_info(case: Case) -> ModelInfo:
    """The run record a training run would write for `case` (record version 1 fields; the rest is derived)."""
    task = "segment" if case.kind in ("segment", "instance") else case.kind
    record: dict[str, Any] = {
        "format": 1, "task": task, "model": case.name, "classes": [f"c{i}" for i in range(NUM_CLASSES)],
        "channels": case.channels, "imgsz": case.imgsz, "mean": [0.5] * case.channels,
        "std": [0.25] * case.channels, "resize": "",
    }  # fmt: skip
    if case.kind == "classify":
        record |= {"multilabel": False, "num_outputs": NUM_CLASSES}
    elif case.kind in ("detect", "instance"):
        record |= {"instance": case.kind == "instance", "backbone": case.backbone, "anchor_sizes": None}
    else:
        record |= {"backbone": case.backbone, "ignore_index": 255, "binary_head": None}
    return ModelInfo.model_validate(record)


def inputs(case: Case) -> list[Any]:
    """Two inputs per case, the second of another batch size (or, for graphs with dynamic sizes, another size):
    normalised noise for classifiers, noise in [0, 1] for segmenters, a real digit scene for detectors."""
    gen = torch.Generator().manual_seed(1)
    size, c = case.imgsz, case.channels
    if case.kind == "classify":
        return [torch.randn(2, c, size, size, generator=gen), torch.randn(3, c, size, size, generator=gen)]
    if case.kind == "segment":
        other = (size + 8, size - 24)  # neither a multiple of 32: the graph pads inside as eager does
        return [torch.rand(2, c, size, size, generator=gen), torch.rand(1, c, *other, generator=gen)]
    scene = scene_image(size).expand(c, -1, -1).contiguous()
    return [scene, scene[:, : size * 3 // 4, :].contiguous()]  # the second one not square


@functools.cache
def scene_image(size: int) -> torch.Tensor:
    """One real digit scene (scikit-learn's scanned digits on a canvas) as a 1×size×size tensor in [0, 1]."""
    from imagerec.data.samples import write_digit_scenes

    with tempfile.TemporaryDirectory() as tmp:
        write_digit_scenes(tmp, n_train=1, n_val=1, n_test=1, size=size, seed=0)
        return read_image(next((Path(tmp) / "images" / "val").glob("*.png")))[:1].float().clone()


def fresh_model(case: Case, seed: int = 0) -> tuple[Task, ModelInfo, nn.Module]:
    """The task, its record and the model its builder makes, in eval mode, prepared as the module docstring says."""
    info = model_info(case)
    task = task_from_info(info)
    torch.manual_seed(seed)
    model = task.build_model(info).eval()
    with torch.no_grad():
        for param in model.parameters():
            if not param.any():
                param.normal_(0, 0.01)
    owner = getattr(model, "thresholds_owner", None)
    if owner is not None:
        owner().score_thresh = LOW_SCORE
    return task, info, model


@dataclass
class Measured:
    """One export: seconds to write it, and the largest difference from eager over the inputs (`max_abs`, and
    relative to the largest eager output `max_rel`); `boxes` counts eager detections compared."""

    seconds: float
    max_abs: float = 0.0
    max_rel: float = 0.0
    boxes: int = 0
    mask_disagreement: float = 0.0  # the largest share of a matched mask's pixels that differ (Mask R-CNN)
    scale: float = 1.0  # the largest eager output, at least 1

    @property
    def ok(self) -> bool:
        """Within the fp32 tolerance (`FP32_ATOL`, `MASK_TOLERANCE`)."""
        return self.max_abs <= FP32_ATOL * self.scale and self.mask_disagreement <= MASK_TOLERANCE


def export_and_compare(case: Case, fmt: str, folder: Path, *, runtime: str | None = None) -> Measured:
    """Export `case`'s fresh model to `fmt` in `folder` as `imagerec export` writes it, run it with `runtime`
    (default: the format's), and compare with eager on `inputs(case)`. Export errors propagate (UserError)."""
    task, info, model = fresh_model(case)
    sig = task.export_signature(model, info, dynamic_batch=True)
    spec = FORMATS.get(fmt)
    dest = folder / f"{case.label.replace(':', '_')}{spec.suffix}"
    start = time.perf_counter()
    spec.write(sig, {}, dest, OPSET)
    measured = Measured(seconds=time.perf_counter() - start)
    if any(m.training for m in model.modules()):  # tracing restores the mode it found on the graph it was given
        raise AssertionError("exporting left the eager model in training mode")
    record = export_record(sig, fmt, int8=False, dynamic_batch=True, opset=OPSET)
    graph = RUNTIMES.get(runtime or spec.runtime)(Exported(dest, fmt, info, record))
    with torch.no_grad():
        for x in inputs(case):
            if case.kind in ("detect", "instance"):
                _compare_detections(measured, model([x])[0], graph([x])[0])
            else:
                _compare(measured, model(x), graph(x))
    return measured


def _compare(measured: Measured, eager: torch.Tensor, exported: torch.Tensor) -> None:
    if eager.shape != exported.shape:
        raise AssertionError(f"exported output {tuple(exported.shape)}, eager {tuple(eager.shape)}")
    diff = float((eager - exported.float()).abs().max()) if eager.numel() else 0.0
    measured.max_abs = max(measured.max_abs, diff)
    scale = float(eager.abs().max()) if eager.numel() else 0.0
    measured.max_rel = max(measured.max_rel, diff / max(scale, 1e-12))
    measured.scale = max(measured.scale, scale)


def _compare_detections(measured: Measured, eager: dict[str, torch.Tensor], exported: dict[str, torch.Tensor]) -> None:
    """Each of the eager model's best `TOP_BOXES` detections against the exported detection of its class nearest
    to it (score and box coordinates in hundreds of pixels): suppression orders boxes of near-equal scores either
    way, so positions in the lists are not compared, only that every box has its twin. Mask R-CNN's masks are
    pasted into the image by another routine in ONNX (torchvision's), which differs on a few edge pixels: they are
    compared as the binary masks predict draws (probability > 0.5), by the share of pixels that disagree."""
    order = eager["scores"].argsort(descending=True)[:TOP_BOXES]
    measured.boxes += len(order)
    for i in order.tolist():
        same = (exported["labels"] == eager["labels"][i]).nonzero().flatten()
        if not len(same):
            raise AssertionError(f"eager box {i} (score {float(eager['scores'][i]):.3f}) has no exported twin")
        scores = (exported["scores"][same].float() - eager["scores"][i]).abs()
        boxes = (exported["boxes"][same].float() - eager["boxes"][i]).abs().max(dim=1).values / 100
        diff, k = torch.maximum(scores, boxes).min(dim=0)
        measured.max_abs = max(measured.max_abs, float(diff))
        measured.max_rel = max(measured.max_rel, float(diff) / max(float(eager["scores"][i]), 1e-12))
        if "masks" in eager:
            twin = exported["masks"][same[k]] > 0.5
            disagree = float((twin != (eager["masks"][i] > 0.5)).float().mean())
            measured.mask_disagreement = max(measured.mask_disagreement, disagree)
