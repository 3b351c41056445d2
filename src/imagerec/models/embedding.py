"""Where a model's features are, and classifier heads fitted on them.

A classifier's embedding is the input of its last layer: the pooled pre-logits features (timm's
`forward_head(pre_logits=True)`, torchvision's input of `fc` or `classifier[-1]`, the seed CNN's `head.4`).
A detector or segmenter is embedded from its backbone, by global-average-pooling the deepest feature map.
Any named module can be asked for instead. The features are captured by a hook that stops the forward pass
there, so nothing after the layer runs.

`NeighborVote` (k-NN) and a fitted `nn.Linear` (logistic regression) are heads that replace the classifier of
a frozen network (`imagerec train --head knn|logistic`), which keeps such a run an ordinary imagerec model.
"""

from __future__ import annotations

import difflib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from imagerec.errors import UserError
from imagerec.models.feature_maps import channels_first

LISTED_LAYERS = 40  # at most this many names in the message for an unknown --layer


class NeighborVote(nn.Module):
    """k-nearest-neighbour classification as a layer.

    The `k` stored embeddings most similar to the input (cosine) vote for their classes, each with weight
    (1 + cosine) / 2: scikit-learn's `KNeighborsClassifier(metric="cosine", weights=similarity_weights)`.
    The output is log vote shares, so the task's softmax gives the shares back; for a two-class task with one
    logit (`single_logit`), the log-odds of the second class, so its sigmoid does.
    """

    def __init__(self, *, bank_size: int, dim: int, num_classes: int, k: int, single_logit: bool = False) -> None:
        super().__init__()
        self.k, self.num_classes, self.single_logit = k, num_classes, single_logit
        self.register_buffer("bank", torch.zeros(bank_size, dim))  # L2-normalised training embeddings
        self.register_buffer("labels", torch.zeros(bank_size, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x.flatten(1).float(), dim=1)
        sims, idx = (x @ self.bank.T).topk(min(self.k, len(self.bank)), dim=1)
        votes = x.new_zeros(len(x), self.num_classes).scatter_add_(1, self.labels[idx], (1 + sims) / 2)
        shares = votes / votes.sum(dim=1, keepdim=True).clamp_min(1e-12)
        log_shares = shares.clamp_min(1e-6).log()  # a class without votes gets ~1e-6, not -inf
        if self.single_logit:
            return (log_shares[:, 1] - log_shares[:, 0])[:, None]
        return log_shares


class Embedding(nn.Identity):
    """Where a self-supervised backbone's classifier was (`imagerec pretrain`): its input, the pooled pre-logits
    features, is the model's output. A run ending in it has no classes; it embeds and starts other runs."""


def similarity_weights(distances: Any) -> Any:
    """scikit-learn neighbour weights for cosine distances d = 1 - cos: (1 + cos) / 2, as `NeighborVote`."""
    return 1 - distances / 2


def build_head(spec: dict[str, Any], *, num_classes: int, num_outputs: int) -> nn.Module:
    """The empty head model.json's `head` entry describes; its fitted values come with the run's weights."""
    if spec["kind"] == "logistic":
        return nn.Linear(spec["dim"], num_outputs)
    if spec["kind"] == "pretrained":
        return Embedding()
    if spec["kind"] == "knn":
        return NeighborVote(
            bank_size=spec["bank_size"],
            dim=spec["dim"],
            num_classes=num_classes,
            k=spec["k"],
            single_logit=num_outputs == 1,
        )
    raise ValueError(f"unknown head kind {spec['kind']!r}")


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def classifier_name(model: nn.Module) -> str:
    """The name of the classifier's last layer, whose input is the pre-logits embedding."""
    modules = list(model.named_modules())
    for name, module in modules:
        if isinstance(module, NeighborVote | Embedding):
            return name
    get_classifier = getattr(model, "get_classifier", None)  # timm
    if callable(get_classifier):
        head = get_classifier()
        for name, module in modules:
            if module is head and name:
                return name
    for kind in (nn.Linear, nn.Conv2d):  # a few torchvision models (SqueezeNet) classify with a 1×1 convolution
        names = [name for name, module in modules if isinstance(module, kind)]
        if names:
            return names[-1]
    raise UserError(f"{type(model).__name__}: no final Linear or Conv2d layer to take features from; pass --layer")


def backbone_name(model: nn.Module) -> str:
    """The feature extractor of a detection or segmentation model, as fine-tuning finds it (`stages.find_backbone`):
    a detector's backbone body (the classifier's stages, before the feature pyramid), a segmenter's encoder."""
    from imagerec.models.stages import find_backbone

    try:
        found = find_backbone(model)
    except UserError:  # its message is about fine-tuning
        found = None
    if found is None:
        raise UserError(f"{type(model).__name__}: no backbone or encoder found to embed from; pass --layer")
    return found[0]


def layer_names(model: nn.Module, limit: int = LISTED_LAYERS) -> list[str]:
    """The model's named modules down to the deepest level that keeps the list within `limit` names."""
    names = [name for name, _ in model.named_modules() if name]
    depth, shown = 0, [n for n in names if "." not in n]
    while True:
        deeper = [n for n in names if n.count(".") <= depth + 1]
        if len(deeper) > limit or len(deeper) == len(shown):
            return shown
        depth, shown = depth + 1, deeper


def check_layer(model: nn.Module, layer: str, *, what: str) -> None:
    """A UserError listing the available layers when `model` has no module called `layer`."""
    names = [name for name, _ in model.named_modules() if name]
    if layer in names:
        return
    close = difflib.get_close_matches(layer, names, n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    shown = layer_names(model)
    deeper = next((n for n in names if n not in shown), None)
    more = f"; deeper layers by their dotted names, e.g. {deeper}" if deeper else ""
    raise UserError(f"--layer {layer}: {what} has no such layer{hint}; available: {', '.join(shown)}{more}")


class _Captured(Exception):
    """Raised by the hook once the features are in hand: the rest of the forward pass is not needed."""


def pool(features: Any) -> torch.Tensor:
    """One vector per image: the last map of a list or dict (a pyramid or encoder's deepest), averaged over
    space (N×C×H×W) or tokens (N×L×D)."""
    if isinstance(features, dict):
        features = list(features.values())
    if isinstance(features, list | tuple):
        features = features[-1]
    if not isinstance(features, torch.Tensor):
        raise UserError(f"the layer gives a {type(features).__name__}, not a tensor; choose another --layer")
    features = features.float()
    if features.ndim == 4:
        return channels_first(features).mean(dim=(2, 3))
    if features.ndim == 3:
        return features.mean(dim=1)
    return features.reshape(len(features), -1)


@torch.no_grad()
def extract(model: nn.Module, inputs: Any, *, layer: str, use_input: bool = False) -> torch.Tensor:
    """Pooled features of `inputs` at module `layer`: its input (`use_input`, e.g. a classifier's pre-logits)
    or its output. `model` runs as it is (call `.eval()` first); only the layers up to `layer` run."""
    module = model.get_submodule(layer)
    captured: list[Any] = []

    def keep(value: Any) -> None:
        captured.append(value)
        raise _Captured

    if use_input:
        handle = module.register_forward_pre_hook(lambda _module, args: keep(args[0]))
    else:
        handle = module.register_forward_hook(lambda _module, _args, output: keep(output))
    try:
        model(inputs)
    except _Captured:
        pass
    finally:
        handle.remove()
    if not captured:
        raise UserError(f"--layer {layer}: the layer does not run when the model predicts; choose another")
    return pool(captured[0])
