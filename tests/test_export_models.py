"""Export parity per registered model family: one cheap representative of each, at the smallest input size it takes,
exported by `imagerec export`'s own writers and run by its runtimes, gives eager PyTorch's outputs within the fp32
tolerance (tests/export_parity.py: 1e-3 of logits, per-pixel logits, detection scores and box coordinates in hundreds
of pixels). The whole registry, the heavy models (Mask R-CNN, VGG, MaxViT, ...) included, is measured by
benchmarks/export_sweep.py (docs/deploy-models.md), which is what `imagerec models` states."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from export_parity import FP32_ATOL, Case, export_and_compare, model_info
from helpers import invoke
from imagerec.outputs.graphs import FORMATS, OPSET, export_record
from imagerec.outputs.runtimes import RUNTIMES, Exported
from imagerec.tasks.build import task_from_info

pytest.importorskip("onnxruntime")

FAMILIES = [
    Case("classify", "seed_cnn", 32),
    Case("classify", "resnet18", 32),
    Case("classify", "mobilenet_v3_small", 32),
    Case("classify", "efficientnet_b0", 32),
    Case("classify", "regnet_x_400mf", 32),
    Case("classify", "shufflenet_v2_x0_5", 32),
    Case("classify", "mnasnet0_5", 32),
    Case("classify", "squeezenet1_1", 64),
    Case("classify", "timm:resnet18", 32),
    Case("detect", "fcos_lite", 64),  # FCOS head
    Case("detect", "retinanet", 64, "mobilenet_v3_small"),  # RetinaNet head on a classifier's stages
    Case("detect", "fasterrcnn", 64, "mobilenet_v3_small"),  # region proposals, RoI pooling
    Case("segment", "unet", 64),  # padded inside: the second input is not a multiple of 16
    Case("segment", "smp_unet", 64),
    Case("segment", "lraspp_mobilenet_v3_large", 64),
]


@pytest.mark.parametrize("case", FAMILIES, ids=lambda c: c.label)
def test_onnx_export_matches_eager(case: Case, tmp_path: Path) -> None:
    measured = export_and_compare(case, "onnx", tmp_path)
    assert measured.ok, (
        f"{case.label}: max abs diff {measured.max_abs:.2e} (tolerance {FP32_ATOL} × {measured.scale:.1f})"
    )
    if case.kind == "detect":
        assert measured.boxes >= 10, "too few boxes compared to mean anything"


@pytest.mark.parametrize(
    ("case", "fmt"),
    [
        (Case("classify", "seed_cnn", 32), "torchscript"),
        (Case("detect", "fcos_lite", 64), "torchscript"),
        (Case("segment", "unet", 64), "torchscript"),
        (Case("classify", "seed_cnn", 32), "openvino"),
        (Case("segment", "unet", 64), "openvino"),  # detectors convert in 30 s: measured by the sweep only
    ],
    ids=lambda v: v.label if isinstance(v, Case) else v,
)
def test_other_formats_match_eager(case: Case, fmt: str, tmp_path: Path) -> None:
    if fmt == "openvino":
        pytest.importorskip("openvino")
    measured = export_and_compare(case, fmt, tmp_path)
    assert measured.ok, f"{case.label} ({fmt}): max abs diff {measured.max_abs:.2e}"


def test_vision_transformer_attention_exports(tmp_path: Path) -> None:
    """torchvision's ViT family (and Swin's heads) run nn.MultiheadAttention, whose inference fast path traced to an
    operator ONNX lacks; a one-layer ViT of the same class stands in for vit_b_16's 86 M parameters."""
    from torchvision.models import VisionTransformer

    info = model_info(Case("classify", "vit_b_16", 32))
    torch.manual_seed(0)
    model = VisionTransformer(32, 16, num_layers=1, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=3).eval()
    torch.nn.init.normal_(model.heads.head.weight, std=0.1)  # its head starts at zero
    sig = task_from_info(info).export_signature(model, info, dynamic_batch=True)
    FORMATS.get("onnx").write(sig, {}, tmp_path / "vit.onnx", OPSET)
    record = export_record(sig, "onnx", int8=False, dynamic_batch=True, opset=OPSET)
    graph = RUNTIMES.get("onnx")(Exported(tmp_path / "vit.onnx", "onnx", info, record))
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(images)
    assert expected.abs().max() > 0.01
    torch.testing.assert_close(graph(images), expected, rtol=0, atol=FP32_ATOL)
    assert torch.backends.mha.get_fastpath_enabled(), "export leaves the fast path as it found it"


def test_models_lists_what_exports() -> None:
    for task in ("classify", "detect", "segment"):
        result = invoke("models", "--task", task)
        assert result.exit_code == 0, result.output
        assert "export" in result.output.splitlines()[1]
        assert "onnx" in result.output
    rows = json.loads(invoke("models", "--task", "classify", "--json").output)
    assert {"name", "source", "export"} <= set(rows[0])
