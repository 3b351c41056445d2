"""Training and prediction on a CUDA GPU, one short run per task (`pytest -m gpu`; benchmarks/gpu.sh runs them).

Each run trains on the embedded real data with `device="cuda"` and `precision="bf16-mixed"`; the engine puts
convolutional networks in channels_last on a GPU by itself (autotune.default_settings: there is no option for it),
and each test checks that run.yaml records both. Then the run's eager network predicts the same images on the GPU
and on the CPU, and the two must agree within a tolerance stated beside each check: both predict in fp32, but cuDNN
convolutions use TF32 by default (10-bit mantissa, about 1e-3 relative error) and sum in another order, so only
decisions far from their threshold must agree exactly.

Every test skips with its reason where `torch.cuda.is_available()` is False (CI, the CPU machines), and the
two-GPU test where fewer than two are visible. `IMAGEREC_GPU_TESTS_DEVICE=cpu` runs the same code on the CPU
(slowly, comparing the CPU with itself): a dry run of the tests themselves on a machine without a GPU.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from rich.console import Console

import imagerec
from imagerec.data.samples import write_digit_scenes
from imagerec.tasks.results import Detections, InstanceMasks, SegmentationMask

DEVICE = os.environ.get("IMAGEREC_GPU_TESTS_DEVICE", "cuda")
IMAGEREC = Path(sys.executable).with_name("imagerec")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        DEVICE == "cuda" and not torch.cuda.is_available(),
        reason="no CUDA GPU visible (torch.cuda.is_available() is False): GPU tests run on a GPU machine only",
    ),
]


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def train(data: Path, out: Path, **options) -> imagerec.Run:
    """A seeded bf16 run on DEVICE, with the checks every task shares: finite losses, and the compute it recorded."""
    run = imagerec.train(data, out=out, device=DEVICE, precision="bf16-mixed", seed=0, console=quiet(), **options)
    with (run.path / "metrics.csv").open() as handle:
        losses = [float(row["train_loss"]) for row in csv.DictReader(handle)]
    assert losses, "metrics.csv has no epoch"
    assert all(math.isfinite(v) for v in losses), losses
    compute = yaml.safe_load((run.path / "run.yaml").read_text())["resolved"]["compute"]
    assert compute["precision"] == "bf16-mixed", compute
    if DEVICE == "cuda":
        assert compute["channels_last"] is True, compute  # every model here is a convnet
    return run


def predictors(run: imagerec.Run) -> tuple[imagerec.Predictor, imagerec.Predictor]:
    """The run's best weights on DEVICE and on the CPU (both eager, fp32)."""
    gpu, cpu = imagerec.load(run, device=DEVICE), imagerec.load(run, device="cpu")
    assert gpu.device.type == DEVICE
    return gpu, cpu


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Digit scenes (COCO boxes and RLE masks, and index-PNG masks) at their own 128 px; read-only."""
    return write_digit_scenes(tmp_path_factory.mktemp("scenes") / "scenes", n_train=160, n_val=30, n_test=40)


@pytest.fixture(scope="module")
def binary_scenes(scenes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scenes with digit (255) / background (0) masks, as tests/test_segmentation_train.py trains them."""
    out = tmp_path_factory.mktemp("binary") / "scenes"
    for source in (scenes / "images").rglob("*.png"):
        target = out / source.relative_to(scenes)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
    for source in (scenes / "masks").rglob("*.png"):
        target = out / source.relative_to(scenes)
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(source) as mask:
            Image.fromarray(np.where(np.asarray(mask) > 0, 255, 0).astype(np.uint8)).save(target)
    return out


def test_classification_bf16(digits_dir: Path, tmp_path: Path) -> None:
    """seed_cnn on the 1,797 digits: chance is 0.10; 4 epochs reach ≥ 0.95 in fp32 on a CPU (tests/test_train.py),
    so 0.90 leaves bf16 room without letting a broken GPU path through."""
    run = train(digits_dir, tmp_path / "run", model="seed_cnn", imgsz=16, batch=64, epochs=4)
    assert run.metrics["accuracy"] >= 0.90, run.metrics

    gpu, cpu = predictors(run)
    files = sorted(Path(digits_dir).rglob("*.png"))[::7][:256]
    batch = torch.stack([cpu.preprocess(f) for f in files])
    on_gpu, on_cpu = gpu.probabilities(batch), cpu.probabilities(batch)
    # TF32 convolutions move probabilities by ~1e-4 here; 1e-2 would still catch a wrong kernel or layout.
    assert (on_gpu - on_cpu).abs().max().item() < 1e-2
    top2 = on_cpu.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.02  # a label may only flip where the CPU's top two are this close
    assert clear.float().mean() > 0.9
    assert torch.equal(on_gpu.argmax(1)[clear], on_cpu.argmax(1)[clear])
    assert [r.label for r in gpu.predict(files[:8])] == [r.label for r in cpu.predict(files[:8])]


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def _matched(confident: Detections, other: Detections) -> int:
    """How many of `confident`'s boxes have a box of the same label in `other` overlapping it by IoU ≥ 0.9."""
    return sum(
        any(label == lab and _iou(box, b) >= 0.9 for b, lab in zip(other.boxes, other.labels, strict=True))
        for box, label in zip(confident.boxes, confident.labels, strict=True)
    )


def test_detection_bf16(scenes: Path, tmp_path: Path) -> None:
    """fcos_lite on 160 digit scenes: the same network with fresh weights scores map50 0.000 and 8 fp32 epochs on a
    CPU reach 0.137 (tests/test_detection_train.py); 0.05 is far above chance and below what bf16 should give."""
    run = train(scenes, tmp_path / "run", task="detect", model="fcos_lite", epochs=8, batch=8, lr=2e-3, flip=False)
    assert run.metrics["map50"] > 0.05, run.metrics

    gpu, cpu = predictors(run)
    files = sorted((scenes / "images" / "test").glob("*.png"))
    # CPU boxes at score ≥ 0.2 against GPU boxes down to 0.1: a box whose score moved a little across the
    # threshold is not a disagreement. Same label and IoU ≥ 0.9 (under a pixel at these sizes) is a match; 95% must
    # match, since suppression can pick the other of two near-equal overlapping boxes.
    confident, loose = cpu.predict(files, conf=0.2), gpu.predict(files, conf=0.1)
    found = sum(len(r) for r in confident)
    assert found >= 5, f"too few confident boxes ({found}) to compare devices"
    matched = sum(_matched(c, g) for c, g in zip(confident, loose, strict=True))
    assert matched >= 0.95 * found, (matched, found)


def test_semantic_segmentation_bf16(binary_scenes: Path, tmp_path: Path) -> None:
    """unet at 64 px on the binary scenes: fresh weights give foreground IoU < 0.3 and 6 fp32 CPU epochs 0.95
    (tests/test_segmentation_train.py)."""
    run = train(
        binary_scenes, tmp_path / "run", task="segment", model="unet", imgsz=64, epochs=6, batch=8, lr=3e-3, flip=False
    )
    assert run.metrics["iou_fg"] > 0.6, run.metrics
    assert run.metrics["pixel_accuracy"] > 0.9, run.metrics

    gpu, cpu = predictors(run)
    files = sorted((binary_scenes / "images" / "test").glob("*.png"))
    for g, c in zip(gpu.predict(files), cpu.predict(files), strict=True):
        assert isinstance(g, SegmentationMask)
        assert g.mask.shape == c.mask.shape
        # Only pixels whose logit is within TF32 error of the boundary may change class: a thin edge, well
        # under 0.5% of a 128×128 scene.
        assert (g.mask == c.mask).mean() > 0.995, (g.source, (g.mask == c.mask).mean())


def test_instance_segmentation_bf16(scenes: Path, tmp_path: Path) -> None:
    """Mask R-CNN (ResNet-50 FPN, no pretrained weights) does not learn digits in the seconds a test may take, so no
    metric bar: one bf16 epoch must train with finite losses, evaluate to finite numbers, and predict masks at the
    image's size on the GPU."""
    run = train(scenes, tmp_path / "run", task="segment", model="maskrcnn_resnet50_fpn", epochs=1, batch=8, imgsz=96,
                flip=False)  # fmt: skip
    assert all(math.isfinite(float(v)) for v in run.metrics.values() if isinstance(v, int | float)), run.metrics

    gpu = imagerec.load(run, device=DEVICE)
    files = sorted((scenes / "images" / "test").glob("*.png"))[:4]
    for result in gpu.predict(files, conf=0.0):
        assert isinstance(result, InstanceMasks)
        assert result.error is None
        assert result.size == (128, 128)
        assert len(result.masks) == len(result.boxes)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs (torch.cuda.device_count() < 2)")
def test_two_gpu_ddp(digits_dir: Path, tmp_path: Path) -> None:
    """Two processes (Fabric's DDP over NCCL), one per GPU: one run directory, one row per epoch, a learnt model."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [str(IMAGEREC), "train", str(digits_dir), "--devices", "2", "--device", "cuda", "--epochs", "3"]
    done = subprocess.run(
        [*command, "--precision", "bf16-mixed", "--imgsz", "16", "--batch", "64", "--seed", "0"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1, runs
    with (runs[0] / "metrics.csv").open() as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2", "3"]
    test = json.loads((runs[0] / "evaluation" / "test.json").read_text())
    assert test["accuracy"] > 0.8, test
