"""Which export formats each registered model reaches, as `imagerec models` states it.

The table is what benchmarks/export_sweep.py measured (docs/deploy-models.md): every registered model built with
fresh weights, exported by `imagerec export`'s writers and compared with eager PyTorch. Every model it ran exported
to ONNX, OpenVINO and TorchScript within the fp32 tolerance, so `LIMITS` is empty; re-run the sweep after upgrading
torch, torchvision, timm, segmentation-models-pytorch, ONNX Runtime or OpenVINO, and enter what fails here.
"""

from __future__ import annotations

FORMATS = ("onnx", "openvino", "torchscript")

# Model name (or a prefix such as "timm:") → {format: why it does not export to it}.
LIMITS: dict[str, dict[str, str]] = {}

_HEAD_BACKBONES = (
    "backbones measured: resnet18, mobilenet_v3_small, efficientnet_b0, convnext_tiny, regnet_x_400mf, timm:resnet18, "
    "timm:efficientnet_b0"
)
# Names standing for more models than the sweep can run, and the part of them it measured.
MEASURED_ONLY = {
    "timm:": "timm families measured: resnet, efficientnet, mobilenetv3, convnext, vit, deit, swin",
    "fcos": _HEAD_BACKBONES,
    "retinanet": _HEAD_BACKBONES,
    "fasterrcnn": _HEAD_BACKBONES,
}


def _lookup(table: dict[str, str] | dict[str, dict[str, str]], name: str) -> object:
    """`name`'s own entry, else that of the longest prefix ending in ':' it starts with (None: neither)."""
    if name in table:
        return table[name]
    prefixes = sorted((p for p in table if p.endswith(":") and name.startswith(p)), key=len, reverse=True)
    return table[prefixes[0]] if prefixes else None


def export_support(name: str) -> str:
    """`imagerec models`'s export column: the formats `name` exports to, and why not the others."""
    limits: dict[str, str] = _lookup(LIMITS, name) or {}  # type: ignore[assignment]
    works = [f for f in FORMATS if f not in limits]
    reasons = "; ".join(sorted(set(limits.values())))
    text = ", ".join(works) if works else "no"
    if reasons:
        text += f" (not {', '.join(f for f in FORMATS if f in limits)}: {reasons})" if works else f": {reasons}"
    note = _lookup(MEASURED_ONLY, name)
    return f"{text} ({note})" if note else text
