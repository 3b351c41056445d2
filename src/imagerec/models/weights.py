"""Pretrained weights: where they come from, how they fit a model, and the preprocessing they expect.

`--weights` takes four kinds of source, all ending as one state dict that is matched to the model by name:

- `DEFAULT` or a named weight (`IMAGENET1K_V2`, `timm:resnet50.a1_in1k`): the published files of torchvision
  and timm, read from their caches (or `IMAGEREC_WEIGHTS_DIR`), downloaded by those libraries when online;
- a file: `.pth`/`.pt`/`.bin` (a bare state dict, or a torchvision, timm, Lightning or Fabric checkpoint) or
  `.safetensors`;
- an imagerec run directory (of any task: a classifier's backbone can start a detector or a segmenter).

Matching is by parameter name after aligning prefixes (`module.`, a Lightning module's `model.`, our detection
wrapper's `model.backbone.body.` …). A tensor whose shape differs is refused, except the class-dependent output
layers (kept fresh: the head is rebuilt for the new class list) and the first convolution, whose RGB filters
are summed or repeated for greyscale or multi-band input by timm's `adapt_input_conv`. What was loaded, kept
fresh and left out is reported, never silent.
"""

from __future__ import annotations

import os
import re
import socket
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imagerec.errors import UserError
from imagerec.models.classification import TIMM_PREFIX

WEIGHTS_DIR_ENV = "IMAGEREC_WEIGHTS_DIR"
DEFAULT_WEIGHTS_DIR = Path("~/.cache/imagerec/weights")
CONNECT_TIMEOUT_S = 3.0
# Layers whose shape depends on the class list: a mismatch there means "new head", not "other architecture".
_HEAD_PART = re.compile(r"head|classifier|predictor|logits|^fc$|^last_linear$|^aux|^bbox_pred$")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_STATE_KEYS = ("state_dict", "model", "model_state_dict", "module", "net", "network", "weights", "params")


@dataclass
class LoadReport:
    """What `apply_weights` did, for the console and run.yaml."""

    source: str
    loaded: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)  # in the model, not taken from the file (head, new layers)
    ignored: list[str] = field(default_factory=list)  # in the file, not used by the model
    adapted: list[str] = field(default_factory=list)  # first convolution adapted to the input's channels

    def summary(self) -> str:
        def few(names: list[str]) -> str:
            return f" ({', '.join(names[:3])}{', …' if len(names) > 3 else ''})" if names else ""

        parts = [f"weights {self.source}: loaded {len(self.loaded)} tensors"]
        parts.append(f"new {len(self.fresh)}{few(self.fresh)}")
        parts.append(f"ignored {len(self.ignored)}{few(self.ignored)}")
        if self.adapted:
            parts.append(f"channels adapted: {', '.join(self.adapted)}")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "loaded": len(self.loaded),
            "new": self.fresh,
            "ignored": self.ignored,
            "adapted": self.adapted,
        }


# -- where weights come from --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Published:
    """A published weight file: its URL, the name to cache it under, and its preprocessing."""

    name: str  # as the user would recognise it, e.g. "ResNet18_Weights.IMAGENET1K_V1"
    url: str
    filename: str
    cache: Path | None  # where the owning library caches it (None: the Hugging Face cache, looked up by name)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    imgsz: int | None  # the input size of classification weights
    hf: tuple[str, str] | None = None  # (repo id, file) on the Hugging Face hub


def weights_dir() -> Path:
    """Where imagerec looks for weight files copied in by hand (`IMAGEREC_WEIGHTS_DIR`)."""
    return Path(os.environ.get(WEIGHTS_DIR_ENV) or DEFAULT_WEIGHTS_DIR).expanduser()


def is_published(source: str) -> bool:
    """Whether `source` names published weights rather than a file or a run directory."""
    if source.startswith(TIMM_PREFIX) or source == "DEFAULT":
        return True
    return not Path(source).exists() and re.fullmatch(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)?", source) is not None


def _torchvision_weights(source: str, model: str) -> _Published:
    import torchvision

    try:
        options = torchvision.models.get_model_weights(model)
    except (ValueError, KeyError):
        raise UserError(
            f"--weights {source}: {model!r} has no torchvision weights; give a weights file or an imagerec run"
        ) from None
    name = source.split(".")[-1]
    if name not in options.__members__:
        raise UserError(
            f"--weights {source}: not a weight of {model}; choose DEFAULT or {', '.join(options.__members__)}"
        )
    weight = options[name]
    transform = weight.transforms()
    # Every torchvision weight was trained on ImageNet-normalised input; detection presets normalise inside the
    # model (GeneralizedRCNNTransform) and so do not say it.
    mean, std = getattr(transform, "mean", IMAGENET_MEAN), getattr(transform, "std", IMAGENET_STD)
    crop = getattr(transform, "crop_size", None)  # classification weights only
    filename = weight.url.rsplit("/", 1)[-1]
    return _Published(
        name=str(weight),
        url=weight.url,
        filename=filename,
        cache=Path(torch.hub.get_dir()) / "checkpoints" / filename,
        mean=tuple(mean),
        std=tuple(std),
        imgsz=int(crop[0]) if crop else None,
    )


def _timm_weights(source: str, model: str) -> _Published:
    import timm

    name = source[len(TIMM_PREFIX) :] if source.startswith(TIMM_PREFIX) else model
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        tags = timm.list_pretrained(f"{name.split('.')[0]}.*")[:5]
        hint = f"published: {', '.join(TIMM_PREFIX + t for t in tags)}" if tags else "see timm.list_pretrained()"
        raise UserError(f"--weights {source}: timm has no weights {name!r} ({hint})")
    tagged = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
    if cfg.hf_hub_id:
        file = cfg.hf_hub_filename or "model.safetensors"
        url = f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/{file}"
        hf: tuple[str, str] | None = (cfg.hf_hub_id, file)
    else:
        url, hf = cfg.url, None
    return _Published(
        name=f"timm:{tagged}",
        url=url,
        filename=f"{tagged}{Path(url).suffix or '.pth'}",
        cache=None,
        mean=tuple(cfg.mean),
        std=tuple(cfg.std),
        imgsz=int(cfg.input_size[-1]),
        hf=hf,
    )


def _published(source: str, model: str) -> _Published:
    """Resolve DEFAULT / a weight name / `timm:tag` for classifier (or backbone) `model`."""
    if source.startswith(TIMM_PREFIX) or model.startswith(TIMM_PREFIX):
        return _timm_weights(source, model[len(TIMM_PREFIX) :] if model.startswith(TIMM_PREFIX) else model)
    if model.startswith("tu-"):  # segmentation-models-pytorch's name for a timm encoder
        return _timm_weights(source, model[3:])
    return _torchvision_weights(source, model)


def _online(url: str) -> bool:
    """A quick check that the weights' host answers: the libraries' own downloads wait and retry for long."""
    host = re.sub(r"^https?://([^/]+).*", r"\1", url)
    try:
        socket.create_connection((host, 443), timeout=CONNECT_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def _fetch(weights: _Published) -> Path:
    """The local file of published weights: from imagerec's folder, the library's cache, or a download."""
    candidates = [weights_dir() / weights.filename] + ([weights.cache] if weights.cache else [])
    if weights.hf is not None:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(*weights.hf)
        if isinstance(cached, str):
            candidates.append(Path(cached))
    for path in candidates:
        if path.is_file():
            return path
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not _online(weights.url):
        where = weights_dir() / weights.filename
        also = f" (or {weights.cache})" if weights.cache else ""
        raise UserError(
            f"offline, and {weights.name} is not on this machine: on a connected machine download {weights.url} "
            f"and copy it to {where}{also}; {WEIGHTS_DIR_ENV} sets that folder"
        )
    if weights.hf is not None:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(*weights.hf))
    target = weights.cache or weights_dir() / weights.filename
    target.parent.mkdir(parents=True, exist_ok=True)
    # torchvision's file names carry the start of their SHA-256: checked as torch.hub does for its own downloads.
    digest = torch.hub.HASH_REGEX.search(weights.filename)
    torch.hub.download_url_to_file(weights.url, str(target), hash_prefix=digest.group(1) if digest else None)
    return target


# -- reading a state dict -------------------------------------------------------------------------------------------
def _tensors(obj: object) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    return None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: a bare state dict, or one inside a checkpoint (Lightning, Fabric, timm…)."""
    if not path.is_file():
        raise UserError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path)
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - every reader failure means the same thing to the user
        # torch.load(weights_only=True) refuses pickled Python objects: a whole saved model rather than weights.
        detail = "it holds pickled Python objects" if "Unsupported global" in str(error) else "corrupt or truncated"
        raise UserError(
            f"{path}: not a readable weights file ({detail}); give a state dict saved with "
            "torch.save(model.state_dict(), ...) or safetensors"
        ) from None
    state = _tensors(obj)
    for key in _STATE_KEYS:
        if state is not None:
            break
        if isinstance(obj, dict):
            state = _tensors(obj.get(key))
            if state is None and isinstance(obj.get(key), dict):  # e.g. {"model": {"state_dict": ...}}
                state = next((s for k in _STATE_KEYS if (s := _tensors(obj[key].get(k))) is not None), None)
    if state is None:
        keys = ", ".join(map(str, list(obj)[:6])) if isinstance(obj, dict) else type(obj).__name__
        raise UserError(f"{path}: no state dict of tensors found (top level: {keys}); save model.state_dict()")
    return state


# -- matching a state dict to a model -------------------------------------------------------------------------------
def _is_head(key: str) -> bool:
    return any(_HEAD_PART.search(part) for part in key.split(".")[:-1])


def _alignment(source: list[str], target: set[str]) -> tuple[str, str]:
    """The (prefix to strip from the file's keys, prefix to add) that makes the most names meet.

    Counted on tails of at least two parts ("layer1.0.conv1.weight", not "weight"), so unrelated layers that
    merely end alike do not vote."""
    by_tail: dict[str, list[str]] = {}
    for key in target:
        parts = key.split(".")
        for j in range(min(5, len(parts) - 1)):
            by_tail.setdefault(".".join(parts[j:]), []).append(".".join(parts[:j]))
    votes: Counter[tuple[str, str]] = Counter()
    for key in source:
        parts = key.split(".")
        for i in range(min(4, len(parts) - 1)):
            for added in by_tail.get(".".join(parts[i:]), ()):
                votes[(".".join(parts[:i]), added)] += 1
    if not votes:
        return "", ""
    best = max(votes.values())
    return min((pair for pair, n in votes.items() if n == best), key=lambda p: len(p[0]) + len(p[1]))


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _adapt_channels(tensor: torch.Tensor, channels: int) -> torch.Tensor:
    from timm.models._manipulate import adapt_input_conv

    return adapt_input_conv(channels, tensor.float()).to(tensor.dtype)


def _listed(names: list[str]) -> str:
    return ", ".join(names[:3]) + (", …" if len(names) > 3 else "")


def match_state_dict(
    model: nn.Module, state: dict[str, torch.Tensor], *, source: str, model_name: str
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """The tensors of `state` renamed and shaped for `model`, and the report; a misfit is a UserError."""
    own = model.state_dict()
    strip, add = _alignment(list(state), set(own))
    report = LoadReport(source)
    matched: dict[str, torch.Tensor] = {}
    misfits: dict[str, list[str]] = {"shape": [], "unused": []}
    for key, tensor in state.items():
        if strip and not key.startswith(strip + "."):
            report.ignored.append(key)  # another part of the source model (a detector's FPN, say)
            continue
        name = _join(add, key[len(strip) + 1 :] if strip else key)
        want = own.get(name)
        if want is None:
            (report.ignored if _is_head(key) or key.endswith("num_batches_tracked") else misfits["unused"]).append(key)
        elif tensor.shape == want.shape:
            matched[name] = tensor
        elif not matched and tensor.ndim == want.ndim == 4 and tensor.shape[::2] == want.shape[::2]:
            matched[name] = _adapt_channels(tensor, want.shape[1])  # the first convolution
            report.adapted.append(f"{name} {tensor.shape[1]}→{want.shape[1]}")
        elif _is_head(name) and tensor.shape[1:] == want.shape[1:]:
            report.ignored.append(key)  # class-dependent outputs: the head is new for this class list
        elif "pos_emb" in key:  # a vision transformer's position table is sized for one input size
            raise UserError(
                f"{source}: {key} is {list(tensor.shape)} in the file but {list(want.shape)} in the model: the "
                "weights are for another input size; train at their size (--imgsz)"
            )
        else:
            misfits["shape"].append(f"{key} is {list(tensor.shape)} in the file but {list(want.shape)} in the model")
    report.loaded = sorted(matched)
    report.fresh = [k for k in own if k not in matched and not k.endswith("num_batches_tracked")]
    # Inside the part the file fills (a detector's backbone, say), only the head may be new.
    missing = [k for k in report.fresh if (not add or k.startswith(add + ".")) and not _is_head(k)]
    _refuse_misfit(f"{source} does not fit {model_name}:", misfits, missing, matched, state, own)
    return matched, report


def _refuse_misfit(
    owner: str,
    misfits: dict[str, list[str]],
    missing: list[str],
    matched: dict[str, torch.Tensor],
    state: dict[str, torch.Tensor],
    own: dict[str, torch.Tensor],
) -> None:
    shape, unused = misfits["shape"], misfits["unused"]
    if shape:
        problem = "; ".join(shape[:2]) + (f" (and {len(shape) - 2} more)" if len(shape) > 2 else "")
    elif unused:
        problem = f"the file holds layers the model lacks ({_listed(unused)})"
    elif not matched:
        problem = f"no tensor names in common (file: {_listed(list(state))}; model: {_listed(list(own))})"
    elif missing:
        problem = f"the model has layers the file lacks ({_listed(missing)})"
    else:
        return
    raise UserError(f"{owner} {problem}; these are weights of another architecture")


def _run_state(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    from imagerec.runs import open_run
    from imagerec.weights_io import load_weights

    run = open_run(path)
    weights = run.best if run.best.exists() else run.last
    if not weights.exists():
        raise UserError(f"{path}: the run has no saved weights yet (no best.safetensors or last.safetensors)")
    info = run.read_model_info()
    kind = f"{info.pretraining} pretraining" if info.pretraining else info.task
    return load_weights(weights), f"{path} (a {kind} run of {info.model})"


def resolve_state(source: str, *, model_name: str) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict `source` names for model (or backbone) `model_name`, and how to call it in messages."""
    path = Path(source).expanduser()
    if path.is_dir():
        return _run_state(path)
    if path.exists() or not is_published(source):
        return read_state_dict(path), str(path)
    published = _published(source, model_name)
    return read_state_dict(_fetch(published)), published.name


def apply_weights(model: nn.Module, source: str, *, model_name: str) -> LoadReport:
    """Load `source` into `model` (in place) and say what was loaded; `model_name` is the classifier (or the
    detection/segmentation backbone) the published weights are looked up for."""
    state, label = resolve_state(source, model_name=model_name)
    matched, report = match_state_dict(model, state, source=label, model_name=model_name)
    model.load_state_dict(matched, strict=False)
    return report


def weights_preprocessing(source: str, *, model_name: str) -> dict[str, Any] | None:
    """The mean, std and input size `source` was trained with, when known (published weights, imagerec runs)."""
    path = Path(source).expanduser()
    if path.is_dir():
        from imagerec.runs import open_run

        info = open_run(path).read_model_info()
        return {"mean": info.mean, "std": info.std, "imgsz": info.imgsz, "task": info.task}
    if path.exists() or not is_published(source):
        return None
    published = _published(source, model_name)
    task = "classify" if published.imgsz else None
    return {"mean": published.mean, "std": published.std, "imgsz": published.imgsz, "task": task}


def fit_channels(values: list[float] | tuple[float, ...], channels: int) -> list[float]:
    """Per-channel statistics of RGB weights for `channels` inputs, as the first convolution is adapted: the
    mean for one channel, repeated cyclically for more."""
    values = list(values)
    if channels == len(values):
        return values
    if channels == 1:
        return [sum(values) / len(values)]
    return [values[i % len(values)] for i in range(channels)]
