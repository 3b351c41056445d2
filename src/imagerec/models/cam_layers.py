"""Which layer of a model a class activation map weighs, and how to bring that layer's output to N×C×h×w.

Found by running the model once with forward hooks (`probe.probe_modules`, as the stages are found), so
every architecture imagerec builds — torchvision's and timm's CNNs, ViTs and Swin, detectors on any backbone, U-Nets
and smp's segmenters — is covered without a table of names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from imagerec.errors import UserError
from imagerec.models.detection import Detector
from imagerec.models.feature_maps import channels_first, is_channels_last
from imagerec.models.probe import ModuleCall, probe_modules
from imagerec.models.stages import find_backbone

Reshape = Callable[[torch.Tensor], torch.Tensor] | None
_GLOBAL_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
# A classifier's or segmenter's map is taken from the deepest layer whose map is at least this many positions on its
# shorter side. Chosen by the pointing game (docs/explain.md): on digit canvases resnet18's deepest maps (2×2 at 28
# and 64 px) put HiResCAM's peak in the digit's box for 1–5 % of the images, as random maps do; 7×7 and 8×8 maps
# for 42 %; 14×14 and 16×16 for 79–81 %. At 224 px it is ResNet's layer3 (14×14), not the customary layer4 (7×7).
MIN_MAP_SIDE = 14


def cam_layer(model: nn.Module, *, name: str, channels: int, imgsz: int) -> tuple[nn.Module, Reshape]:
    """The layer whose activations a class activation map weighs, and how to bring its output to N×C×h×w.

    - ViTs (torchvision's and timm's): the first norm of the last block, whose patch tokens still reach the class
      token through attention (the last block's own output does not: only its class token is read); the prefix
      tokens are dropped and the rest laid out on the patch grid.
    - Detectors: the finest backbone map the feature pyramid reads at stride 8 or more (stride 8 for every
      detector imagerec builds on a classifier). Each box is small: at stride 32 a 96-pixel image is a 3×3 map.
    - Every other model: the last module producing a spatial feature map (N×C×h×w) at least MIN_MAP_SIDE on its
      shorter side before any global pooling (else the widest map there is), inside the backbone for segmenters
      (models/stages.py tells which part that is).
    """
    vit = _vit_layer(model)
    if vit is not None:
        return vit
    try:
        found = find_backbone(model)
    except UserError:  # a segmenter with neither `encoder` nor `backbone`: look through the whole model
        found = None
    prefix = "" if found is None else found[0]
    x = torch.zeros(1, channels, imgsz, imgsz, device=next(model.parameters()).device)
    calls, outputs, body = _probe(model, x, keep=prefix)
    inside = [n for n in outputs if n == prefix or n.startswith(prefix + "." if prefix else "")]
    wanted = _pyramid_input(model, body) if isinstance(model, Detector) else None
    if wanted is not None:
        candidates = [(calls[n].exit, n) for n in inside if outputs[n].key == _key(wanted)]
    else:
        candidates = [(calls[n].exit, n) for n in inside if n != prefix and _spatial(calls[n], outputs[n])]
    if not candidates:
        raise UserError(
            f"{name}: no convolutional feature map or ViT token grid to take a class activation map from; "
            "use --method integrated-gradients, which works with any model"
        )
    wide = [c for c in candidates if _side(calls[c[1]]) >= MIN_MAP_SIDE] if wanted is None else candidates
    name = max(wide)[1] if wide else max(candidates, key=lambda c: (_side(calls[c[1]]), c[0]))[1]
    return model.get_submodule(name), (channels_first if is_channels_last(calls[name].shape) else None)


def map_side(model: nn.Module, layer: nn.Module, *, channels: int, imgsz: int) -> int | None:
    """The shorter side, in positions, of `layer`'s map for an `imgsz` input: how finely its heatmaps can point
    (None for a layer whose output is no N×C×h×w map, such as a ViT's tokens)."""
    found: list[int | None] = []
    hook = layer.register_forward_hook(
        lambda _m, _i, out: found.append(
            _min_side(tuple(out.shape)) if isinstance(out, torch.Tensor) and out.ndim == 4 else None
        )
    )
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, channels, imgsz, imgsz, device=next(model.parameters()).device))
    finally:
        hook.remove()
        model.train(training)
    return found[-1] if found else None


def _side(call: ModuleCall) -> int:
    return _min_side(call.shape)


def _min_side(shape: tuple[int, ...]) -> int:
    """The shorter side of an N×C×h×w (or N×h×w×C) map."""
    height, width = shape[1:3] if is_channels_last(shape) else shape[-2:]
    return int(min(height, width))


def _pyramid_input(detector: nn.Module, body: object) -> torch.Tensor | None:
    """Of the maps a detector's backbone body hands its feature pyramid (a dict, finest first), the finest at stride
    8 or more, measured against the padded input the model's transform makes."""
    maps = [v for v in body.values() if isinstance(v, torch.Tensor) and v.ndim == 4] if isinstance(body, dict) else []
    if not maps:
        return None
    transform = detector.model.transform
    side = -(-int(transform.max_size) // transform.size_divisible) * transform.size_divisible
    return next((m for m in maps if side / m.shape[-1] >= 8), maps[-1])


def _key(tensor: torch.Tensor) -> tuple[int, tuple[int, ...]]:
    """Which tensor this is, without holding on to it: its memory and shape. Whoever holds the tensor (the body's
    output) keeps its memory from being reused; an earlier tensor freed at the same place ran earlier."""
    return tensor.data_ptr(), tuple(tensor.shape)


@dataclass(frozen=True)
class _Output:
    """A module's last tensor output, beyond the shape `probe_modules` records."""

    key: tuple[int, tuple[int, ...]]  # which tensor it is (`_key`)
    pooled: bool  # a global pool's output, or one a container passed on unchanged


def _probe(model: nn.Module, x: torch.Tensor, keep: str) -> tuple[dict[str, ModuleCall], dict[str, _Output], object]:
    """`probe_modules`' records, each tensor-returning module's `_Output`, and the output of module `keep`."""
    outputs: dict[str, _Output] = {}
    pools: list[torch.Tensor] = []
    kept: list[object] = [None]

    def inspect(name: str, module: nn.Module, out: object) -> None:
        if name == keep:
            kept[0] = out
        outputs.pop(name, None)
        if isinstance(out, torch.Tensor):
            if isinstance(module, _GLOBAL_POOLS):
                pools.append(out)
            outputs[name] = _Output(_key(out), any(out is p for p in pools))

    return probe_modules(model, x, on_output=inspect), outputs, kept[0]


def _spatial(call: ModuleCall, output: _Output) -> bool:
    """A 4-D map with more than one position, in either layout, that is not a global pool's output."""
    shape = call.shape
    if shape is None or len(shape) != 4 or output.pooled:
        return False
    height, width = shape[1:3] if is_channels_last(shape) else shape[-2:]
    return height * width > 1


def _vit_layer(model: nn.Module) -> tuple[nn.Module, Reshape] | None:
    """(last block's first norm, token reshaping) for torchvision's and timm's ViTs; None for other models."""
    from torchvision.models import VisionTransformer

    if isinstance(model, VisionTransformer):
        side = model.image_size // model.patch_size
        return model.encoder.layers[-1].ln_1, _tokens_to_grid(1, (side, side))
    blocks, embed = getattr(model, "blocks", None), getattr(model, "patch_embed", None)
    grid = getattr(embed, "grid_size", None)
    if isinstance(blocks, nn.Sequential | nn.ModuleList) and grid is not None and hasattr(blocks[-1], "norm1"):
        return blocks[-1].norm1, _tokens_to_grid(int(getattr(model, "num_prefix_tokens", 1)), tuple(grid))
    return None


def _tokens_to_grid(prefix: int, grid: tuple[int, int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """N×(prefix + h·w)×D tokens → N×D×h×w, as pytorch-grad-cam's vit_reshape_transform does for one class token."""

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, prefix:, :]
        return patches.reshape(tokens.shape[0], grid[0], grid[1], tokens.shape[-1]).permute(0, 3, 1, 2)

    return reshape
