"""Detection models: torchvision's detectors, our small CPU detector, and detection heads on any classifier.

Every model is wrapped in `Detector`, so the rest of imagerec sees one interface with 0-based class labels:
in training mode `detector(images, targets)` returns a dict of losses, in evaluation mode `detector(images)`
returns one `{"boxes", "scores", "labels"}` dict per image, boxes in the input image's own pixels. Resizing to
`imgsz` (longest side, aspect kept, padded to a multiple of 32) and normalisation happen inside the model, in
torchvision's GeneralizedRCNNTransform, which also maps boxes back to the original image exactly.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign, nms
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from imagerec.errors import UserError
from imagerec.models.classification import TIMM_PREFIX, create_classifier
from imagerec.models.first_conv import replace_first_conv
from imagerec.models.probe import probe_modules
from imagerec.registry import Registry

Builder = Callable[["DetectorSpec"], "Detector"]
DETECTORS: Registry[Builder] = Registry("detection model")
# torchvision's anchors are tuned for images of about 800 px; smaller inputs get proportionally smaller anchors.
REFERENCE_SIZE = 800
MIN_PROPOSALS, MIN_SAMPLED_REGIONS = 100, 64  # floors when proposals are scaled down for small images
EVAL_SCORE_THRESHOLD = 0.05  # COCO practice: keep low-confidence boxes, mAP integrates over all of them
DEFAULT_BACKBONE = "resnet18"  # under the fcos / retinanet / fasterrcnn heads when --backbone is not given
BACKBONE_HEADS = ("fcos", "retinanet", "fasterrcnn")


@dataclass(frozen=True)
class DetectorSpec:
    """What a detector builder needs: the data's classes, channels, input size and statistics, plus options."""

    num_classes: int
    in_channels: int
    imgsz: int
    mean: Sequence[float]
    std: Sequence[float]
    anchor_sizes: Sequence[float] | None = None  # smallest anchor per pyramid level; default scaled by imgsz / 800
    backbone: str | None = None  # a classifier name for the heads that take any backbone


class Detector(nn.Module):
    """A torchvision-style detector seen through 0-based labels (torchvision's region-based models and SSD
    reserve label 0 for the background: that shift stays in here)."""

    def __init__(self, model: nn.Module, *, background: bool) -> None:
        super().__init__()
        self.model = model
        self.offset = int(background)

    def forward(
        self, images: Sequence[torch.Tensor] | torch.Tensor, targets: Sequence[dict[str, torch.Tensor]] | None = None
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        if targets is not None:
            # Instance masks (N×H×W, Mask R-CNN) pass through; torchvision resizes them with the image.
            targets = [
                {"labels": t["labels"] + self.offset, **{k: t[k] for k in ("boxes", "masks") if k in t}}
                for t in targets
            ]
        out = self.model(list(images), targets)
        if self.training:
            return out
        return [{**o, "labels": o["labels"] - self.offset} for o in out]

    def thresholds_owner(self) -> nn.Module:
        """The torchvision module whose post-processing reads `score_thresh` and `nms_thresh`."""
        return self.model.roi_heads if isinstance(self.model, FasterRCNN) else self.model


class DetectorGraph(nn.Module):
    """A detector as an exportable graph: one C×H×W image in, its boxes, scores and 0-based labels out (and with
    masks, N×1×H×W mask probabilities), resized, suppressed and mapped back to the image's pixels inside."""

    def __init__(self, detector: Detector) -> None:
        super().__init__()
        self.detector = detector
        # In the detector's mode: tracing restores the wrapper's mode on the whole tree afterwards, and a wrapper left
        # in training mode would hand the eager detector back in training mode.
        self.train(detector.training)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        found = self.detector([image])[0]
        return tuple(found[name] for name in ("boxes", "scores", "labels", "masks") if name in found)

    def fixed(self) -> dict[str, Any]:
        """The post-processing an export freezes: the lowest score kept, the suppression IoU, the box cap."""
        owner = self.detector.thresholds_owner()
        return {"min_conf": owner.score_thresh, "iou": owner.nms_thresh, "max_det": owner.detections_per_img}


@contextmanager
def thresholds(
    *, score: float | None = None, iou: float | None = None, agnostic: bool | None = None, max_det: int | None = None
) -> Iterator[None]:
    """Within this block, detectors keep boxes scoring at least `score`, merge boxes overlapping above `iou`
    (non-maximum suppression: within each class, or across classes when `agnostic`), and keep at most `max_det`
    boxes per image, best first (None: the enclosing block's value, else the model's own). The values live in a
    context variable, never in the model, so two threads predicting with one model and different options (a
    server's requests) cannot see each other's."""
    given = {"score_thresh": score, "nms_thresh": iou, "agnostic": agnostic, "detections_per_img": max_det}
    token = _THRESHOLDS.set({**(_THRESHOLDS.get() or {}), **{k: v for k, v in given.items() if v is not None}})
    try:
        yield
    finally:
        _THRESHOLDS.reset(token)


_THRESHOLDS: ContextVar[dict[str, Any] | None] = ContextVar("detection_thresholds", default=None)
KEEP_ALL_IOU = 1.0  # torchvision suppresses a box overlapping a better one by IoU > this: none at 1.0


class _ThresholdView:
    """A torchvision head seen with the current block's thresholds: its post-processing reads them from `self`
    and sets nothing, so it can run on this view while every other attribute comes from the head itself."""

    def __init__(self, owner: nn.Module, overrides: dict[str, Any]) -> None:
        self._owner, self._overrides = owner, overrides

    def __getattr__(self, name: str) -> Any:
        return self._overrides[name] if name in self._overrides else getattr(self._owner, name)


class _PostProcess:
    """Installed as the head's `postprocess_detections`: torchvision's own, called on a `_ThresholdView`.

    Class-agnostic suppression runs torchvision's post-processing with per-class suppression and the box cap
    switched off, then `torchvision.ops.nms` over all classes at once and the cap: the same candidates (score
    threshold, top-k per level) suppressed regardless of class. Mask R-CNN's masks are computed afterwards, on the
    boxes kept."""

    def __init__(self, owner: nn.Module) -> None:
        self.owner = owner

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        overrides = dict(_THRESHOLDS.get() or {})
        if not overrides.pop("agnostic", False):
            target = _ThresholdView(self.owner, overrides) if overrides else self.owner
            return type(self.owner).postprocess_detections(target, *args, **kwargs)
        view = _ThresholdView(self.owner, overrides)
        iou, cap = view.nms_thresh, view.detections_per_img
        # keep[:None] in torchvision's code keeps every box for the suppression across classes that follows.
        overrides |= {"nms_thresh": KEEP_ALL_IOU, "detections_per_img": None}
        out = type(self.owner).postprocess_detections(_ThresholdView(self.owner, overrides), *args, **kwargs)
        return _suppress_across_classes(out, iou=iou, cap=cap)


def _suppress_across_classes(out: Any, *, iou: float, cap: int) -> Any:
    """Post-processed detections after class-agnostic NMS: one dict per image (FCOS, RetinaNet, SSD), or
    (boxes, scores, labels) lists (the region-based heads)."""

    if isinstance(out, tuple):
        boxes, scores, labels = out
        keeps = [nms(b, s, iou)[:cap] for b, s in zip(boxes, scores, strict=True)]
        return tuple([v[k] for v, k in zip(values, keeps, strict=True)] for values in (boxes, scores, labels))
    keeps = [nms(o["boxes"], o["scores"], iou)[:cap] for o in out]
    return [{name: value[k] for name, value in o.items()} for o, k in zip(out, keeps, strict=True)]


class _Transform(GeneralizedRCNNTransform):
    """torchvision's detection transform, resizing to a size computed in integers when traced for export.

    Its own traced path computes the scale in float32, and the exported graph then resized a 300×400 image to
    239×319 where eager PyTorch gives 240×320 (any image whose longest side scales exactly onto imgsz: 400, 800,
    1600 px at 320), shifting every pixel: fcos_lite lost 10.5 points of mAP on raccoon photos once exported.
    """

    def resize(self, image: torch.Tensor, target: dict[str, Any] | None = None) -> tuple[torch.Tensor, Any]:
        square = self.min_size[-1] == self.max_size  # as `_transform` sets it: the longest side becomes imgsz
        if not torchvision._is_tracing() or self.training or self.fixed_size is not None or not square:
            return super().resize(image, target)
        # In integers, so no runtime can round it (OpenVINO computes float64 in float32): floor(side × imgsz /
        # longest) is what eager's float64 arithmetic gives, its products being at least 1/longest from an integer.
        shape = torch._shape_as_tensor(image)[-2:]
        size = torch.div(shape * self.max_size, shape.max(), rounding_mode="floor")
        resized = nn.functional.interpolate(image[None], size=(size[0], size[1]), mode="bilinear", align_corners=False)
        return resized[0], target


def _transform(model: nn.Module, *, imgsz: int, mean: Sequence[float], std: Sequence[float]) -> None:
    """Resize to `imgsz` on the longest side and normalise with the data's statistics (torchvision's defaults are
    ImageNet's, at 800–1333 px)."""
    old = model.transform
    fixed = (imgsz, imgsz) if old.fixed_size is not None else None  # SSD stretches to a square
    model.transform = _Transform(
        imgsz, imgsz, list(mean), list(std), size_divisible=old.size_divisible, fixed_size=fixed
    )


def _scale_anchors(generator: AnchorGenerator, *, imgsz: int, anchor_sizes: Sequence[float] | None) -> None:
    """Scale each level's anchors: to `anchor_sizes` (the smallest anchor per level) or by imgsz / 800."""
    levels = list(generator.sizes)
    if anchor_sizes is not None and len(anchor_sizes) != len(levels):
        raise UserError(
            f"anchor_sizes needs {len(levels)} values for this model (one per level), got {len(anchor_sizes)}"
        )
    if anchor_sizes:
        factors = [a / lvl[0] for a, lvl in zip(anchor_sizes, levels, strict=True)]
    else:
        factors = [imgsz / REFERENCE_SIZE] * len(levels)
    generator.sizes = tuple(tuple(max(1.0, s * f) for s in lvl) for lvl, f in zip(levels, factors, strict=True))
    generator.cell_anchors = [
        generator.generate_anchors(sizes, ratios)
        for sizes, ratios in zip(generator.sizes, generator.aspect_ratios, strict=True)
    ]


def _scale_proposals(model: FasterRCNN, *, imgsz: int) -> None:
    """Scale the region proposals kept and sampled with the image area: torchvision's 2,000/1,000 proposals and
    512 sampled regions per image suit 800-pixel images; at 128 px they made the box head 4× slower for nothing
    (1,000 proposals: 774 ms per image, 100: 213 ms, fasterrcnn_resnet50_fpn on one CPU thread)."""
    factor = min(1.0, (imgsz / REFERENCE_SIZE) ** 2)
    rpn = model.rpn
    for counts in (rpn._pre_nms_top_n, rpn._post_nms_top_n):
        for mode in counts:
            counts[mode] = max(MIN_PROPOSALS, round(counts[mode] * factor))
    sampler = model.roi_heads.fg_bg_sampler
    sampler.batch_size_per_image = max(MIN_SAMPLED_REGIONS, round(sampler.batch_size_per_image * factor))


def _anchor_generator(model: nn.Module) -> AnchorGenerator | None:
    if isinstance(model, FasterRCNN):
        return model.rpn.anchor_generator
    if isinstance(model, RetinaNet):
        return model.anchor_generator
    return None  # FCOS's "anchors" are its strides; SSD's default boxes are relative to the image


def finish_detector(model: nn.Module, spec: DetectorSpec, *, replace_conv: bool = True) -> Detector:
    """Adapt a built torchvision detector to the data: input channels, resizing, statistics, anchors."""
    if spec.in_channels != 3 and replace_conv:
        replace_first_conv(model.backbone, spec.in_channels)
    _transform(model, imgsz=spec.imgsz, mean=spec.mean, std=spec.std)
    generator = _anchor_generator(model)
    if generator is not None:
        _scale_anchors(generator, imgsz=spec.imgsz, anchor_sizes=spec.anchor_sizes)
    elif spec.anchor_sizes:
        raise UserError(f"{type(model).__name__} has no anchors to size; drop anchor_sizes")
    if isinstance(model, FasterRCNN):
        _scale_proposals(model, imgsz=spec.imgsz)
    detector = Detector(model, background=isinstance(model, FasterRCNN | SSD))
    owner = detector.thresholds_owner()
    owner.score_thresh = EVAL_SCORE_THRESHOLD
    owner.postprocess_detections = _PostProcess(owner)
    return detector


def _torchvision_builder(name: str) -> Builder:
    def build(spec: DetectorSpec) -> Detector:
        import torchvision

        if spec.backbone is not None:
            raise UserError(f"{name} has a fixed backbone; for another one use --model fcos, retinanet or fasterrcnn")
        background = name.startswith(("fasterrcnn", "ssd"))
        model = torchvision.models.get_model(
            name, weights=None, weights_backbone=None, num_classes=spec.num_classes + int(background)
        )
        return finish_detector(model, spec)

    build.__doc__ = f"torchvision's {name}"
    return build


for _name in (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "retinanet_resnet50_fpn",
    "retinanet_resnet50_fpn_v2",
    "fcos_resnet50_fpn",
    "ssdlite320_mobilenet_v3_large",
):
    DETECTORS.add(_name, _torchvision_builder(_name))


class FeaturePyramid(nn.Module):
    """Multi-scale features of a backbone (an ordered dict of stride-8, 16, 32 maps) merged top-down by an FPN.

    torchvision's detectors take any module with an `out_channels` attribute returning such a dict.
    """

    def __init__(
        self, body: nn.Module, in_channels: Sequence[int], *, out_channels: int, extra: nn.Module | None
    ) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(list(in_channels), out_channels, extra_blocks=extra)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features.values())))


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class LiteBackbone(nn.Module):
    """A small plain ConvNet (five stride-2 stages of two 3×3 convolutions) returning the stride 8/16/32 maps.

    Sized for training from scratch on a CPU: about 1 M parameters, a few ms per 128×128 image.
    """

    def __init__(self, in_channels: int, widths: Sequence[int] = (16, 32, 64, 96, 128)) -> None:
        super().__init__()
        stages, cin = [], in_channels
        for width in widths:
            stages.append(nn.Sequential(_conv(cin, width, 2), _conv(width, width, 1)))
            cin = width
        self.stages = nn.ModuleList(stages)
        self.channels = list(widths[-3:])

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        out = OrderedDict()
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i >= len(self.stages) - 3:
                out[str(i)] = x
        return out


def _fcos(pyramid: FeaturePyramid, strides: Sequence[int], **kwargs: object) -> FCOS:
    # FCOS places one point per feature-map cell: its "anchor" sizes are the strides.
    generator = AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
    return FCOS(pyramid, anchor_generator=generator, **kwargs)


@DETECTORS.register("fcos_lite")
def fcos_lite(spec: DetectorSpec) -> Detector:
    """imagerec's small CPU detector: an FCOS head (torchvision's) on a 1 M-parameter ConvNet with a 64-channel FPN."""
    if spec.backbone is not None:
        return _on_backbone("fcos", spec, fpn_channels=64)
    body = LiteBackbone(spec.in_channels)
    pyramid = FeaturePyramid(body, body.channels, out_channels=64, extra=None)
    return finish_detector(_fcos(pyramid, (8, 16, 32), num_classes=spec.num_classes), spec, replace_conv=False)


def _feature_body(name: str, *, in_channels: int, imgsz: int) -> tuple[nn.Module, list[int], list[int]]:
    """The stride-8/16/32 feature maps of classifier `name`: (module returning an ordered dict, channels, strides)."""
    if name.startswith(TIMM_PREFIX):
        import timm

        body = timm.create_model(
            name[len(TIMM_PREFIX) :],
            pretrained=False,
            features_only=True,
            in_chans=in_channels,
            out_indices=(-3, -2, -1),
        )
        info = body.feature_info.get_dicts(keys=["num_chs", "reduction"])
        return _DictOutput(body), [i["num_chs"] for i in info], [i["reduction"] for i in info]
    classifier = create_classifier(name, num_outputs=1, in_channels=in_channels, imgsz=imgsz)
    return _stage_outputs(classifier, name=name, in_channels=in_channels, imgsz=imgsz)


class _DictOutput(nn.Module):
    """timm's feature extractors return a list; the FPN wants an ordered dict."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return OrderedDict((str(i), f) for i, f in enumerate(self.body(x)))


@torch.no_grad()
def _stage_outputs(
    model: nn.Module, *, name: str, in_channels: int, imgsz: int
) -> tuple[nn.Module, list[int], list[int]]:
    """Find, for each stride 8, 16 and 32, the module whose output ends that stride (the last one to finish at that
    resolution: a whole stage, not a layer inside it), and cut the classifier there with torchvision's FX
    feature extractor, which also drops the unused head."""
    from torchvision.models.feature_extraction import create_feature_extractor

    size = max(imgsz, 128)
    finished: dict[int, tuple[str, int]] = {}
    for call in sorted(probe_modules(model, torch.zeros(1, in_channels, size, size)).values(), key=lambda c: c.exit):
        if call.shape is not None and len(call.shape) == 4 and call.shape[-1] > 0:
            stride = round(size / call.shape[-1])
            if stride in (8, 16, 32):
                finished[stride] = (call.name, call.shape[1])
    strides = sorted(finished)
    if len(strides) < 2:
        raise UserError(f"{name} does not produce feature maps at strides 8/16/32; pick a deeper backbone")
    body = create_feature_extractor(model.train(), {finished[s][0]: str(s) for s in strides})
    return body, [finished[s][1] for s in strides], strides


def _on_backbone(head: str, spec: DetectorSpec, *, fpn_channels: int = 256) -> Detector:
    """An FCOS, RetinaNet or Faster R-CNN head with an FPN over the stride-8/16/32 features of `spec.backbone`."""
    body, channels, strides = _feature_body(
        spec.backbone or DEFAULT_BACKBONE, in_channels=spec.in_channels, imgsz=spec.imgsz
    )
    extra = LastLevelMaxPool() if head == "fasterrcnn" else LastLevelP6P7(fpn_channels, fpn_channels)
    pyramid = FeaturePyramid(body, channels, out_channels=fpn_channels, extra=extra)
    levels = [*strides, strides[-1] * 2] if head == "fasterrcnn" else [*strides, strides[-1] * 2, strides[-1] * 4]
    if head == "fcos":
        return finish_detector(_fcos(pyramid, levels, num_classes=spec.num_classes), spec, replace_conv=False)
    # Anchors four times the stride, as torchvision's FPN detectors use (32 px at stride 8); they are then scaled
    # with the input size like every other anchor-based model.
    if head == "retinanet":
        sizes = tuple(tuple(s * 4 * 2 ** (k / 3) for k in range(3)) for s in levels)
        generator = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(levels))
        model = RetinaNet(pyramid, spec.num_classes, anchor_generator=generator)
    else:
        generator = AnchorGenerator(tuple((s * 4,) for s in levels), ((0.5, 1.0, 2.0),) * len(levels))
        pool = MultiScaleRoIAlign([str(i) for i in range(len(strides))], output_size=7, sampling_ratio=2)
        model = FasterRCNN(pyramid, spec.num_classes + 1, rpn_anchor_generator=generator, box_roi_pool=pool)
    return finish_detector(model, spec, replace_conv=False)


def _backbone_builder(head: str) -> Builder:
    def build(spec: DetectorSpec) -> Detector:
        return _on_backbone(head, spec)

    build.__doc__ = f"{head} head with an FPN on any classifier (--backbone NAME, default {DEFAULT_BACKBONE})"
    return build


for _head in BACKBONE_HEADS:
    DETECTORS.add(_head, _backbone_builder(_head))


def create_detector(name: str, spec: DetectorSpec) -> Detector:
    """Build detector `name` with fresh weights for `spec` (background class handled inside)."""
    return DETECTORS.get(name)(spec)


def list_detectors() -> list[dict[str, str]]:
    """Every name `--model` accepts for detection, with its source."""

    def source(name: str) -> str:
        if name == "fcos_lite":
            return "imagerec (small, for CPU)"
        return "torchvision" if "_" in name else "torchvision head + FPN on any classifier (--backbone)"

    return [{"name": n, "source": source(n)} for n in DETECTORS.names()]
