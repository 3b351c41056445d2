"""Backbone stages: which parameters form each stage of a model's backbone, and which form its head.

Fine-tuning (engine/finetune.py) freezes, unfreezes and scales the learning rate of whole stages, for every model
imagerec builds, so "stage" needs one definition that holds for all of them:

- The *backbone* is a classifier without its head, a detector's `backbone.body` (SSD: `backbone.features`), or a
  semantic segmenter's `encoder` (our U-Net, smp) or `backbone` (torchvision's FCN, DeepLabV3, LR-ASPP). The
  *head* is everything else, and always trains: a classifier's last top-level module with parameters (`fc`,
  `classifier`, `heads`, `head`), a detector's FPN and heads, a segmenter's decoder.
- A *stage* is the set of backbone layers working at one spatial resolution. One blank image runs through the
  backbone with forward hooks; a module whose calls span at most one change of output stride (a ResNet layer, a
  MobileNet block) is one unit, belonging to the stage of its output's stride, so a downsampling block opens the
  next stage; a module spanning more is split into its children. The backbone is cut where the stride
  increases: ResNet-18 gives stem (conv1, bn1), layer1, layer2, layer3, layer4, the units of torchvision's own
  `trainable_backbone_layers`. A dilated convolution counts as stride (its dilation multiplies it), so the dilated
  layer3 and layer4 of DeepLab keep stages of their own; 1×1 maps (global pooling, squeeze-and-excitation) and
  token sequences have no resolution of their own.
- Transformers whose blocks all run at one resolution (ViT) give a stem (everything before the first block) and
  one stage per block of their longest run of repeated blocks.
- timm classifiers bring their own grouping, as timm's layer-wise learning-rate decay uses it:
  `group_matcher(coarse=True)` (stem, then stages or blocks), whose last group is the head when it holds
  `get_classifier()`.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from imagerec.errors import UserError
from imagerec.models.detection import Detector
from imagerec.models.feature_maps import map_side
from imagerec.models.probe import ModuleCall, probe_modules
from imagerec.models.segmentation import Segmenter

PROBE_SIZE = 256  # stride 32 still leaves an 8×8 map; models with a fixed input size are probed at theirs


@dataclass(frozen=True)
class Stages:
    """Parameter names (as `model.named_parameters()` gives them) per backbone stage, stem first, and of the head.

    Together they hold every parameter of the model exactly once.
    """

    stages: list[list[str]]
    head: list[str]
    names: list[str]  # one label per stage: "stem", "layer1", "features.2–3", "encoder.layers.encoder_layer_0"

    def __len__(self) -> int:
        return len(self.stages)

    def describe(self) -> str:
        """The stage labels, shortened when there are many: "stem, layer1 … layer4"."""
        if len(self.names) <= 3:
            return ", ".join(self.names)
        return f"{self.names[0]}, {self.names[1]} … {self.names[-1]}"


def model_stages(model: nn.Module, *, in_channels: int, imgsz: int) -> Stages:
    """The backbone stages and head of any model imagerec builds (see the module docstring for the definition)."""
    names = [n for n, _ in model.named_parameters()]
    found = find_backbone(model)
    if found is None:
        stages = _timm_stages(model) or _classifier_stages(model, in_channels=in_channels, imgsz=imgsz)
    else:
        prefix, backbone = found
        units, labels = _resolution_stages(backbone, in_channels=in_channels, imgsz=imgsz)
        part = prefix.rsplit(".", 1)[-1]
        labels = [f"{part}.{label}" if label[0].isdigit() else label for label in labels]  # "features.2–3", not "2–3"
        inside = [[_join(prefix, n) for n in unit] for unit in units]
        taken = {n for unit in inside for n in unit}
        stages = Stages(inside, [n for n in names if n not in taken], labels)
    if not stages.stages:
        raise _no_backbone(model)
    return stages


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def find_backbone(model: nn.Module) -> tuple[str, nn.Module] | None:
    """(name, module) of a detector's or segmenter's backbone; None for a classifier."""
    for name, module in model.named_modules():
        if isinstance(module, Detector):  # FPN detectors and Mask R-CNN: body; SSD: features
            base, inner = _join(name, "model.backbone"), module.model.backbone
            part = _first_child(inner, "body", "features")
            return _join(base, part), getattr(inner, part) if part else inner
        if isinstance(module, Segmenter):  # our U-Net and smp: encoder; torchvision: backbone
            part = _first_child(module.model, "encoder", "backbone")
            if not part:
                raise _no_backbone(module.model)
            return _join(name, "model", part), getattr(module.model, part)
    return None


def _first_child(module: nn.Module, *names: str) -> str:
    return next((n for n in names if isinstance(getattr(module, n, None), nn.Module)), "")


# --- timm ---------------------------------------------------------------------------------------------------


def _timm_stages(model: nn.Module) -> Stages | None:
    """Stages from timm's own `group_matcher(coarse=True)`; None for a model without it."""
    if not (hasattr(model, "group_matcher") and hasattr(model, "get_classifier")):
        return None
    from timm.models import group_parameters

    try:
        groups = [list(g) for g in group_parameters(model, model.group_matcher(coarse=True)).values()]
    except NotImplementedError:
        return None
    classifier = model.get_classifier()
    classifiers = classifier if isinstance(classifier, tuple | list) else (classifier,)  # LeViT: (head, head_dist)
    ids = {id(p) for c in classifiers for p in c.parameters()}
    head = {n for n, p in model.named_parameters() if id(p) in ids}
    if groups and head & set(groups[-1]):
        head |= set(groups.pop())
    stages = [[n for n in g if n not in head] for g in groups]
    stages = [s for s in stages if s]
    labels = [_label(_units_of(s, stages)) for s in stages]
    return Stages(stages, [n for n, _ in model.named_parameters() if n in head], _with_stem(labels))


def _units_of(names: list[str], groups: list[list[str]]) -> list[str]:
    """The shortest module prefixes that cover `names` and no parameter of another group, in order."""
    others = {n for g in groups if g is not names for n in g}
    units: list[str] = []
    for name in names:
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            prefix = ".".join(parts[:depth])
            if depth == len(parts) or not any(o == prefix or o.startswith(prefix + ".") for o in others):
                break
        unit = ".".join(parts[:depth]) if depth < len(parts) else ".".join(parts[:-1]) or name
        if unit not in units:
            units.append(unit)
    return units


# --- classifiers without timm's grouping ---------------------------------------------------------------------


def _classifier_stages(model: nn.Module, *, in_channels: int, imgsz: int) -> Stages:
    """The head is timm's `get_classifier()` or the last top-level module with parameters to run; the rest is cut
    into stages by resolution."""
    root, prefix = model, ""
    while not list(root.parameters(recurse=False)):  # look through wrappers holding one module with parameters
        holders = [(n, c) for n, c in root.named_children() if _has_params(c)]
        if len(holders) != 1:
            break
        prefix, root = _join(prefix, holders[0][0]), holders[0][1]
    if sum(map(_has_params, root.children())) < 2:
        raise _no_backbone(model)
    probe = _probe(root, in_channels=in_channels, imgsz=imgsz)
    head_name = _head_name(root, probe.calls)
    if head_name is None:
        raise _no_backbone(model)
    units, labels = _resolution_stages(root, probe, exclude=head_name)
    stages = [[_join(prefix, n) for n in unit] for unit in units]
    taken = {n for s in stages for n in s}
    return Stages(stages, [n for n, _ in model.named_parameters() if n not in taken], labels)


def _no_backbone(model: nn.Module) -> UserError:
    return UserError(
        f"cannot tell a backbone from a head in {type(model).__name__}; "
        "train it whole (--finetune full, without --layer-decay or --backbone-lr-mult)"
    )


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _head_name(root: nn.Module, calls: dict[str, ModuleCall]) -> str | None:
    get_classifier = getattr(root, "get_classifier", None)
    if callable(get_classifier):
        classifier = get_classifier()
        name = next((n for n, m in root.named_modules() if m is classifier and n), None)
        if name is not None and _has_params(classifier):
            return name
    ran = [(calls[n].enter, n) for n, c in root.named_children() if _has_params(c) and n in calls]
    return max(ran)[1] if len(ran) > 1 else None


# --- stages by resolution ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Probe:
    calls: dict[str, ModuleCall]  # the modules that ran, by name
    size: int  # side of the probe image


@dataclass
class _Unit:
    name: str
    params: list[str]
    order: float  # when it starts running; inf: never ran during the probe
    stride: int | None  # None: takes the stage of the next unit with a stride (or the last stage)


def _probe(module: nn.Module, *, in_channels: int, imgsz: int) -> _Probe:
    """Probe at PROBE_SIZE (big enough to tell strides up to 128 apart, small enough to be quick), or at `imgsz` for
    models that only take their own input size (torchvision's ViT)."""
    reference = next(module.parameters())
    dtype = reference.dtype if reference.is_floating_point() else torch.float32
    sizes = [PROBE_SIZE, imgsz] if imgsz != PROBE_SIZE else [imgsz]
    for i, size in enumerate(sizes):
        x = torch.zeros(1, in_channels, size, size, device=reference.device, dtype=dtype)
        try:
            calls = probe_modules(module, x)
        except (RuntimeError, ValueError, AssertionError, TypeError, IndexError) as error:
            if i < len(sizes) - 1:
                continue
            detail = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
            raise UserError(
                f"cannot find the stages of {type(module).__name__}: a {size}×{size} image fails ({detail})"
            ) from None
        return _Probe(_with_containers(module, {n: c for n, c in calls.items() if c.exit >= 0}), size)
    raise AssertionError("unreachable")


def _with_containers(module: nn.Module, calls: dict[str, ModuleCall]) -> dict[str, ModuleCall]:
    """Give a container that was never called itself (a ModuleList, a Sequential run as slices by smp, a module an
    FX feature extractor traced through) the span of its descendants' calls and the output of the last."""
    names = sorted((n for n, _ in module.named_modules() if n), key=lambda n: -n.count("."))
    for name in names:
        if name in calls:
            continue
        inner = [c for n, c in calls.items() if n.startswith(name + ".")]
        if inner:
            last = max(inner, key=lambda c: c.exit)
            calls[name] = ModuleCall(name, min(c.enter for c in inner), last.exit, last.shape)
    return calls


def _strides(module: nn.Module, probe: _Probe) -> dict[str, int]:
    """Each call's output stride (probe side / output side, to a power of two) times the dilation of the last
    spatial convolution run by then; left out where the output is not a feature map larger than 1×1."""
    modules = dict(module.named_modules())
    dilation, strides = 1, {}
    for call in sorted(probe.calls.values(), key=lambda c: c.exit):
        layer = modules[call.name]
        if isinstance(layer, nn.modules.conv._ConvNd) and max(layer.kernel_size) > 1:
            dilation = max(layer.dilation)
        side = map_side(call.shape)
        if side and side > 1:
            strides[call.name] = 2 ** round(math.log2(probe.size / side)) * dilation
    return strides


def _resolution_stages(
    backbone: nn.Module,
    probe: _Probe | None = None,
    *,
    exclude: str | None = None,
    in_channels: int = 3,
    imgsz: int = 0,
) -> tuple[list[list[str]], list[str]]:
    """Parameter names (relative to `backbone`) per stage, and the stage labels; `exclude`: the head's module."""
    probe = probe or _probe(backbone, in_channels=in_channels, imgsz=imgsz)
    units = _units(backbone, probe, exclude=exclude, split=set())
    stages = _group_by_stride(units)
    blocks = _repeated_blocks(backbone, exclude) if len(stages) < 2 else None
    if blocks is None:
        labels = [_label([u.name for u in s if u.name] or ["(root)"]) for s in stages]
        return [[p for u in s for p in u.params] for s in stages], _with_stem(labels)
    parts = blocks.split(".")
    units = _units(backbone, probe, exclude=exclude, split={".".join(parts[:i]) for i in range(len(parts) + 1)})
    return _group_by_block(units, blocks)


def _units(backbone: nn.Module, probe: _Probe, *, exclude: str | None, split: set[str]) -> list[_Unit]:
    """The backbone's units in running order: modules spanning at most one change of stride (the backbone itself and
    the modules in `split` are always split into their children), and the parameters split modules hold
    themselves."""
    calls, strides = probe.calls, _strides(backbone, probe)
    seen = sorted((calls[n].exit, s) for n, s in strides.items())
    exits, values = [t for t, _ in seen], [s for _, s in seen]

    def stride_before(time: float) -> int:
        i = bisect.bisect_left(exits, time)
        return values[i - 1] if i else 1

    def spans(call: ModuleCall) -> int:
        low, high = bisect.bisect_left(exits, call.enter), bisect.bisect_right(exits, call.exit)
        return len({stride_before(call.enter), *values[low:high]})

    def visit(name: str, module: nn.Module) -> Iterator[_Unit]:
        if name == exclude or not _has_params(module):
            return
        call = calls.get(name)
        children = [(_join(name, n), c) for n, c in module.named_children()]
        if children and (not name or name in split or (call is not None and spans(call) > 2)):
            own = [_join(name, n) for n, _ in module.named_parameters(recurse=False)]
            if own:
                yield _Unit(name, own, call.enter if call else -1, None)
            for child_name, child in sorted(children, key=lambda c: _order(calls, c[0])):
                yield from visit(child_name, child)
            return
        params = [_join(name, n) for n, _ in module.named_parameters()]
        if call is None:
            yield _Unit(name, params, math.inf, None)
        else:
            yield _Unit(name, params, call.enter, strides.get(name) or stride_before(call.enter))

    units = list(visit("", backbone))
    owned: set[str] = set()
    for unit in units:  # a parameter shared by two modules belongs to the first
        unit.params = [p for p in unit.params if not (p in owned or owned.add(p))]
    return sorted((u for u in units if u.params), key=lambda u: u.order)


def _order(calls: dict[str, ModuleCall], name: str) -> float:
    call = calls.get(name)
    return call.enter if call is not None else math.inf


def _group_by_stride(units: list[_Unit]) -> list[list[_Unit]]:
    """Consecutive units, a new stage wherever the stride increases; a unit without a stride joins the next one
    with a stride (or the last stage)."""
    stages: list[list[_Unit]] = []
    pending: list[_Unit] = []
    current = 0
    for unit in units:
        if unit.stride is None:
            pending.append(unit)
            continue
        if not stages or unit.stride > current:
            stages.append([])
            current = unit.stride
        stages[-1] += [*pending, unit]
        pending = []
    if pending:
        if not stages:
            stages.append([])
        stages[-1] += pending
    return stages


def _repeated_blocks(backbone: nn.Module, exclude: str | None) -> str | None:
    """The name of the list of same-type blocks holding the most parameters, if any."""
    best, most = None, 0
    for name, module in backbone.named_modules():
        if not isinstance(module, nn.Sequential | nn.ModuleList) or _within(name, exclude):
            continue
        children = list(module.children())
        if len(children) >= 2 and len({type(c) for c in children}) == 1 and all(map(_has_params, children)):
            count = sum(p.numel() for p in module.parameters())
            if count > most:
                best, most = name, count
    return best


def _within(name: str, parent: str | None) -> bool:
    return parent is not None and (name == parent or name.startswith(parent + "."))


def _group_by_block(units: list[_Unit], blocks: str) -> tuple[list[list[str]], list[str]]:
    """A stem of everything that starts before the first block, then one stage per block; what runs after the last
    block, or never ran, joins the last."""

    def block_of(unit: _Unit) -> str | None:
        if not _within(unit.name, blocks) or unit.name == blocks:
            return None
        return ".".join(unit.name.split(".")[: len(blocks.split(".")) + 1])

    first = min(u.order for u in units if block_of(u) is not None)
    stem = [p for u in units if u.order < first for p in u.params]
    stages, labels = ([stem], ["stem"]) if stem else ([], [])
    for unit in (u for u in units if u.order >= first):
        block = block_of(unit)
        if block is not None and (not labels or labels[-1] != block):
            stages.append([])
            labels.append(block)
        stages[-1] += unit.params
    return stages, labels


def _label(units: list[str]) -> str:
    """A stage's label: its unit ("layer1"), a range under one parent ("features.2–3"), else "first … last"."""
    if len(units) == 1:
        return units[0]
    first, last = units[0].split("."), units[-1].split(".")
    depth = len(list(itertools.takewhile(lambda pair: pair[0] == pair[1], zip(first, last, strict=False))))
    if depth < min(len(first), len(last)) and (depth or first[0].isdigit() and last[0].isdigit()):
        return ".".join([*first[:depth], f"{first[depth]}–{last[depth]}"])
    return f"{units[0]} … {units[-1]}" if len(units) > 2 else f"{units[0]}+{units[1]}"


def _with_stem(labels: list[str]) -> list[str]:
    return ["stem", *labels[1:]] if len(labels) > 1 else labels
