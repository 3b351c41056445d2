"""Which layer of a model a class activation map weighs, and how to bring that layer's output to N×C×h×w.

Found by running the model once with forward hooks (as `stages.py` finds stages), so every architecture imagerec
builds — torchvision's and timm's CNNs, ViTs and Swin, detectors on any backbone, U-Nets and smp's segmenters —
is covered without a table of names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from imagerec.errors import UserError
from imagerec.models.feature_maps import channels_first, is_channels_last

Reshape = Callable[[torch.Tensor], torch.Tensor] | None
_GLOBAL_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def cam_layer(model: nn.Module, info: dict[str, Any]) -> tuple[nn.Module, Reshape]:
    """The layer whose activations a class activation map weighs, and how to bring its output to N×C×h×w.

    - ViTs (torchvision's and timm's): the first norm of the last block, whose patch tokens still reach the class
      token through attention (the last block's own output does not: only its class token is read); the prefix
      tokens are dropped and the rest laid out on the patch grid.
    - Detectors: the finest backbone map the feature pyramid reads at stride 8 or more (stride 8 for every
      detector imagerec builds on a classifier). Each box is small: at stride 32 a 96-pixel image is a 3×3 map.
    - Every other model: the last module producing a spatial feature map (N×C×h×w, h·w > 1) before any global
      pooling, inside the backbone for segmenters (models/stages.py tells which part that is).
    """
    vit = _vit_layer(model)
    if vit is not None:
        return vit
    from imagerec.models.detection import Detector
    from imagerec.models.stages import find_backbone

    try:
        found = find_backbone(model)
    except UserError:  # a segmenter with neither `encoder` nor `backbone`: look through the whole model
        found = None
    prefix = "" if found is None else found[0]
    x = torch.zeros(1, info["channels"], info["imgsz"], info["imgsz"], device=next(model.parameters()).device)
    calls, body = _probe(model, x, keep=prefix)
    inside = {n: c for n, c in calls.items() if n == prefix or n.startswith(prefix + "." if prefix else "")}
    wanted = _pyramid_input(model, body) if isinstance(model, Detector) else None
    if wanted is not None:
        candidates = [(c.exit, n) for n, c in inside.items() if c.key == _key(wanted)]
    else:
        candidates = [(c.exit, n) for n, c in inside.items() if c.spatial and n != prefix]
    if not candidates:
        raise UserError(
            f"{info['model']}: no convolutional feature map or ViT token grid to take a class activation map from; "
            "use --method integrated-gradients, which works with any model"
        )
    name = max(candidates)[1]
    return model.get_submodule(name), (channels_first if calls[name].channels_last else None)


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


@dataclass
class _Call:
    exit: int
    key: tuple[int, tuple[int, ...]] | None = None  # of a tensor output
    spatial: bool = False  # a 4-D map with more than one position, not a global pool's output
    channels_last: bool = False  # N×H×W×C (Swin)


@torch.no_grad()
def _probe(model: nn.Module, x: torch.Tensor, keep: str = "") -> tuple[dict[str, _Call], object]:
    """Run `x` once in evaluation mode and record, for each named module, when it last returned and what; returns
    the records and the output of module `keep`."""
    calls: dict[str, _Call] = {}
    kept: list[object] = [None]
    pooled: list[torch.Tensor] = []  # outputs of global pools (and so of containers that return them unchanged)
    clock = iter(range(1 << 62))

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, _inputs: object, out: object) -> None:
            calls[name] = call = _Call(next(clock))
            if name == keep:
                kept[0] = out
            if not isinstance(out, torch.Tensor):
                return
            call.key = _key(out)
            if out.ndim != 4:
                return
            if isinstance(module, _GLOBAL_POOLS):
                pooled.append(out)
            call.channels_last = is_channels_last(out.shape)
            sides = out.shape[1:3] if call.channels_last else out.shape[-2:]
            call.spatial = sides[0] * sides[1] > 1 and not any(out is p for p in pooled)

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        model.eval()(x)
    finally:
        for handle in handles:
            handle.remove()
    return calls, kept[0]


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
