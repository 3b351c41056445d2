"""A run's weights files (safetensors), below every layer that saves or loads them: the engine writes them,
predictions read them, and a run directory given as `--weights` starts another model from them."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from imagerec.errors import UserError
from imagerec.runs import atomic_write

MODULE_VERSIONS = "torch_module_versions"  # safetensors metadata key


def save_weights(path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    """Write `state_dict` to `path` atomically, keeping the modules' state-dict versions."""
    # clone(): safetensors refuses tensors that share memory (tied weights) or are not contiguous.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    # Modules' state-dict versions (e.g. MNASNet refuses to load without them) are not tensors: keep them as metadata.
    versions = getattr(state_dict, "_metadata", None)
    metadata = {MODULE_VERSIONS: json.dumps(versions)} if versions is not None else None
    # Bytes through a Python file, not safetensors' save_file: its Rust writer reports a full disk as a
    # SafetensorError without an errno, which atomic_write could not tell from a bug.
    atomic_write(path, lambda tmp: tmp.write_bytes(save(tensors, metadata=metadata)))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """The state dict `save_weights` wrote to `path`; a UserError when it is missing or damaged."""
    try:
        tensors = OrderedDict(load_file(str(path)))
        with safe_open(str(path), framework="pt") as handle:
            versions = (handle.metadata() or {}).get(MODULE_VERSIONS)
        if versions is not None:
            tensors._metadata = OrderedDict(json.loads(versions))  # type: ignore[attr-defined]
        return tensors
    except FileNotFoundError:
        raise UserError(f"{path}: weights missing; the run did not finish an epoch") from None
    except (SafetensorError, OSError) as error:
        raise UserError(f"{path}: damaged weights file ({error}); use the other checkpoint or retrain") from None
