"""Golden outputs: a fixed tiny run of each task kind gives the predictions and metrics stored in tests/golden/.

The stored files were written by this test (`IMAGEREC_WRITE_GOLDEN=1`) on main before the task contract, the typed
run records and the single evaluation path were introduced, so a refactor that changes any number fails here. They
are kept per kind of CPU (`cpu_kind`): those of the Intel Xeon (AVX512, AMX) they were first written on, and those
of an AMD EPYC (AVX512) written from commit 1eb7491, whose outputs matched the Xeon's stored ones in CI.
Everything is pinned (fp32, one thread, seed 0, fixed data, and the NCHW layout: in tests autotune never times,
see conftest.py); the tolerance only absorbs the last bits that another CPU's vector units may round differently.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

import imagerec
from imagerec.data.samples import write_digit_scenes

GOLDEN = Path(__file__).parent / "golden"
WRITE = os.environ.get("IMAGEREC_WRITE_GOLDEN") == "1"
TOLERANCE = 1e-4


def cpu_kind() -> str:
    """The kind of CPU the stored outputs belong to: vendor, vector ISA and AMX. Two epochs of training amplify
    the last-bit differences of another vendor's kernels (oneDNN picks others on an AMD EPYC than on an Intel Xeon
    with AMX: detection mAP50 0.0332 against 0.0328), so the outputs are stored per kind."""
    import torch

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    vendor = next((line.split(":")[1].strip() for line in info.splitlines() if line.startswith("vendor_id")), "")
    amx = "-amx" if " amx_bf16" in info else ""
    return f"{vendor or 'unknown'}-{torch.backends.cpu.get_cpu_capability()}{amx}".lower()


# (task, model, extra options): each trains in seconds on the data written below. The recipe's choices are pinned
# to the defaults the stored outputs were made with (augment light, no label smoothing, the task's monitor), so
# that what is compared is the engine, not the recipe.
PINNED = {"augment": "light", "label_smoothing": 0.0, "class_weights": False}
CASES = {
    "classify": ("classify", "seed_cnn", {"imgsz": 8, "epochs": 2, "batch": 64, "monitor": "val_accuracy", **PINNED}),
    "detect": ("detect", "fcos_lite", {"epochs": 2, "batch": 8, "lr": 2e-3, "flip": False, "imgsz": 96, **PINNED}),
    "semantic": ("segment", "unet", {"epochs": 2, "batch": 8, "imgsz": 64, "lr": 3e-3, "flip": False, **PINNED}),
    "instance": (
        "segment", "maskrcnn_resnet50_fpn", {"epochs": 1, "batch": 4, "imgsz": 96, "flip": False, **PINNED}
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digit_scenes(tmp_path_factory.mktemp("golden") / "scenes", n_train=24, n_val=8, n_test=8, size=96)


def _data(case: str, digits_dir: Path, scenes: Path) -> Path:
    return digits_dir if case == "classify" else scenes


def _sources(case: str, data: Path) -> list[Path]:
    if case == "classify":
        return [sorted((data / str(d)).glob("*.png"))[0] for d in range(10)]
    return sorted((data / "images" / "test").glob("*.png"))[:4]


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


def _prediction(result: Any) -> dict[str, Any]:
    """A result as comparable JSON: a segmentation class map by digest and pixel counts."""
    if isinstance(result, imagerec.Classification):
        return {"labels": list(result.labels), "probs": list(result.probs)}
    if hasattr(result, "boxes"):
        data = {"boxes": [list(b) for b in result.boxes], "labels": list(result.labels), "scores": list(result.scores)}
        if hasattr(result, "masks"):
            data["mask_pixels"] = [int(_decode(m).sum()) for m in result.masks]
        return data
    return {"areas": result.areas, "digest": hashlib.sha256(np.ascontiguousarray(result.mask)).hexdigest()[:16]}


def _decode(rle: dict[str, Any]) -> np.ndarray:
    from pycocotools import mask as coco_mask

    return coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")})


def _close(got: Any, want: Any, where: str) -> None:
    if isinstance(want, dict):
        assert set(got) == set(want), f"{where}: keys {sorted(set(got) ^ set(want))} differ"
        for key in want:
            _close(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), f"{where}: {len(got)} items, golden {len(want)}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _close(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and not (isinstance(got, float) and math.isnan(got) and math.isnan(want)):
        assert got == pytest.approx(want, abs=TOLERANCE, rel=TOLERANCE), f"{where}: {got} != golden {want}"
    else:
        assert got == want, f"{where}: {got!r} != golden {want!r}"


@pytest.mark.parametrize("case", list(CASES))
def test_golden_run(case: str, digits_dir: Path, scenes: Path, tmp_path: Path) -> None:
    """Train, predict a few test images and evaluate the test split; compare with the stored outputs."""
    task, model, options = CASES[case]
    data = _data(case, digits_dir, scenes)
    console = Console(file=io.StringIO())
    run = imagerec.train(
        data, task=task, model=model, precision="32", seed=0, out=tmp_path / "run", console=console, **options
    )
    predictor = imagerec.load(run.path, device="cpu")
    sources = _sources(case, data)
    conf = {"instance": {"conf": 0.0}, "detect": {"conf": 0.25}}.get(case, {})
    predictions = {Path(r.source).name: _prediction(r) for r in predictor.predict(sources, **conf)}
    evaluated = imagerec.evaluate(run.path, data, split="test", device="cpu")
    info = json.loads((run.path / "model.json").read_text())
    got = _rounded({
        "train_metrics": run.metrics, "best_epoch": run.best_epoch, "evaluate": {k: v for k, v in evaluated.items()
        if k != "data"}, "predictions": predictions, "model_json": info,
    })  # fmt: skip
    path = GOLDEN / cpu_kind() / f"{case}.json"
    if WRITE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    if not path.exists():
        kinds = ", ".join(sorted(p.name for p in GOLDEN.iterdir() if p.is_dir()))
        pytest.skip(
            f"no golden outputs for this CPU ({cpu_kind()}; stored for {kinds}): record them with "
            "IMAGEREC_WRITE_GOLDEN=1 on a commit whose outputs match the stored ones on a CPU that has them"
        )
    want = json.loads(path.read_text())
    # model.json and the metrics may gain fields (the typed record's; scores at a decision threshold chosen after
    # the golden outputs were stored); every field they had keeps its value.
    for key, name in (("model_json", "model.json"), ("train_metrics", "train_metrics"), ("evaluate", "evaluate")):
        assert set(want[key]) <= set(got[key]), f"{name}: lost {sorted(set(want[key]) - set(got[key]))}"
        _close({k: got[key][k] for k in want[key]}, want[key], name)
    for key in ("best_epoch", "predictions"):
        _close(got[key], want[key], key)
