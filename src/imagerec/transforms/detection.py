"""Box-aware detection presets `none | light | medium | heavy`, plus Mosaic and MixUp over several samples.

Inputs are `(image, target)` pairs as `DetectionDataset` makes them: a float `tv_tensors.Image` in [0, 1] and a dict
with `boxes` (`tv_tensors.BoundingBoxes`, XYXY), `labels` and `ignore`. Every pipeline ends by clamping boxes to
the image and dropping degenerate ones with their labels and ignore flags. No preset resizes to a fixed size: the
detectors resize inside the model (longest side to `imgsz`); only Mosaic makes an imgsz×imgsz canvas.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from imagerec.data.datasets import DetectionSample, DetectionTarget
from imagerec.registry import Registry

PresetBuilder = Callable[[int, bool], list[v2.Transform]]
PRESETS: Registry[PresetBuilder] = Registry("augmentation preset")

# Per-box tensors of a target that must be dropped together with their boxes.
PER_BOX_KEYS = ("labels", "ignore")


def per_box_tensors(inputs: Any) -> tuple[torch.Tensor, ...]:
    """`labels_getter` for `v2.SanitizeBoundingBoxes`: the default finds `labels` only, and `ignore` would fall
    out of step with the boxes it flags."""
    target = inputs[1] if isinstance(inputs, (tuple, list)) else inputs
    return tuple(target[key] for key in PER_BOX_KEYS if key in target)


class ShrinkToFit(v2.Transform):
    """Downscale (never upscale) so the longest side is at most `imgsz`, aspect kept.

    The model resizes to `imgsz` anyway; doing it first keeps zoom-out and cropping cheap on large photos.
    """

    def __init__(self, imgsz: int) -> None:
        super().__init__()
        self.imgsz = imgsz

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        scale = self.imgsz / max(height, width)
        size = None if scale >= 1 else (max(1, round(height * scale)), max(1, round(width * scale)))
        return {"size": size}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["size"] is None:
            return inpt
        return self._call_kernel(F.resize, inpt, size=params["size"], antialias=True)


class BoxIoUCrop(v2.RandomIoUCrop):
    """SSD's IoU-constrained random crop, leaving images without boxes as they are.

    torchvision's version only returns for a box-less image after drawing its "no crop" option by chance, after
    up to 40 trials per other option; a negative example has nothing to constrain the crop by.
    """

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        boxes = next(x for x in flat_inputs if isinstance(x, tv_tensors.BoundingBoxes))
        if boxes.shape[0] == 0:
            return {}
        return super().make_params(flat_inputs)


def _flip(flip: bool) -> list[v2.Transform]:
    return [v2.RandomHorizontalFlip()] if flip else []


@PRESETS.register("none")
def _none(imgsz: int, flip: bool) -> list[v2.Transform]:
    return [ShrinkToFit(imgsz)]


@PRESETS.register("light")
def _light(imgsz: int, flip: bool) -> list[v2.Transform]:
    return [ShrinkToFit(imgsz), *_flip(flip), v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2)]


def _geometric(imgsz: int, flip: bool, *, zoom: float, p: float) -> list[v2.Transform]:
    """SSD's recipe: photometric distortion, zoom-out (objects smaller), IoU crop (objects larger). After the
    model's own resize these two are the scale jitter: whole-image rescaling alone would be undone by it."""
    return [
        ShrinkToFit(imgsz),
        *_flip(flip),
        v2.RandomPhotometricDistort(p=0.5),
        v2.RandomZoomOut(fill=0.0, side_range=(1.0, zoom), p=p),
        v2.RandomApply([BoxIoUCrop(min_scale=0.3)], p=p),
    ]


@PRESETS.register("medium")
def _medium(imgsz: int, flip: bool) -> list[v2.Transform]:
    return _geometric(imgsz, flip, zoom=2.0, p=0.3)


@PRESETS.register("heavy")
def _heavy(imgsz: int, flip: bool) -> list[v2.Transform]:
    # heavy also mixes samples: see mosaic_transform
    return _geometric(imgsz, flip, zoom=3.0, p=0.5)


def train_transform(preset: str, *, imgsz: int, flip: bool = True) -> v2.Compose:
    """The training pipeline of `preset`, called as `transform(image, target)`.

    `flip=False` leaves out horizontal flips, for data whose mirror image is another class (digits, text).
    """
    steps = PRESETS.get(preset)(imgsz, flip)
    tail = [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(labels_getter=per_box_tensors)]
    return v2.Compose([*steps, *tail])


# --- augmentations over several samples -----------------------------------------------------------------------
# Mosaic and MixUp are not v2.Transforms: their input is several samples drawn from the dataset, not one sample, so
# they cannot sit in a v2.Compose. The dataset calls them with the sample at hand and a way to draw more, and only
# draws (decodes) the extra samples when the random draw says the augmentation applies.


class MultiSampleStage:
    """Applied with probability `p`: `combine` the sample at hand with `num_samples - 1` drawn ones."""

    num_samples = 2

    def __init__(self, p: float) -> None:
        self.p = p

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({options})"

    def __call__(self, first: DetectionSample, draw: Callable[[], DetectionSample]) -> DetectionSample:
        if float(torch.rand(())) >= self.p:
            return first
        return self.combine([first, *(draw() for _ in range(self.num_samples - 1))])

    def combine(self, samples: Sequence[DetectionSample]) -> DetectionSample:
        raise NotImplementedError


def _merge(
    canvas: torch.Tensor, parts: Sequence[tuple[torch.Tensor, DetectionTarget, torch.Tensor]]
) -> DetectionSample:
    """One sample from a filled canvas and, per source, its boxes on the canvas, its target and which boxes stay."""
    canvas_size = (canvas.shape[-2], canvas.shape[-1])
    boxes = torch.cat([b[keep] for b, _, keep in parts]).reshape(-1, 4)
    target: DetectionTarget = {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=canvas_size)}
    for key in parts[0][1]:
        if key != "boxes":
            target[key] = torch.cat([t[key][keep] for _, t, keep in parts])
    return tv_tensors.Image(canvas), target


def _box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]).clamp_min(0) * (boxes[:, 3] - boxes[:, 1]).clamp_min(0)


class Mosaic(MultiSampleStage):
    """Four samples on one imgsz×imgsz canvas, 2×2 around a random centre (YOLOv4's mosaic).

    Each sample is first resized so its longest side is `imgsz` times a factor drawn from `scale`, then placed with
    a corner on the centre and cut to its quadrant. Boxes are shifted and clipped to what stays visible, and dropped
    when less than `min_visible` of their area does (a sliver of a digit is no longer that digit).
    """

    num_samples = 4

    def __init__(
        self,
        imgsz: int,
        *,
        p: float = 0.5,
        scale: tuple[float, float] = (0.5, 1.0),
        min_visible: float = 0.2,
        fill: float = 0.0,
    ) -> None:
        super().__init__(p)
        self.imgsz = imgsz
        self.scale = scale
        self.min_visible = min_visible
        self.fill = fill

    def _resize(self, image: tv_tensors.Image, boxes: tv_tensors.BoundingBoxes) -> tuple[torch.Tensor, torch.Tensor]:
        low, high = self.scale
        factor = (low + (high - low) * float(torch.rand(()))) * self.imgsz / max(image.shape[-2:])
        size = [max(1, round(image.shape[-2] * factor)), max(1, round(image.shape[-1] * factor))]
        return F.resize(image, size, antialias=True), F.resize(boxes, size)

    def combine(self, samples: Sequence[DetectionSample]) -> DetectionSample:
        size = self.imgsz
        cx, cy = (int(size * (0.25 + 0.5 * float(v))) for v in torch.rand(2))
        canvas = torch.full((samples[0][0].shape[0], size, size), self.fill, dtype=samples[0][0].dtype)
        parts = []
        for k, (image, target) in enumerate(samples):
            pixels, boxes = self._resize(image, target["boxes"])
            h, w = pixels.shape[-2:]
            right, bottom = k % 2 == 1, k >= 2
            # The sample's corner that touches the centre: its bottom-right one in the top-left quadrant, and so on.
            left, top = (cx if right else cx - w), (cy if bottom else cy - h)
            # What stays visible: the sample cut to its quadrant.
            x1, x2 = (cx, min(left + w, size)) if right else (max(left, 0), cx)
            y1, y2 = (cy, min(top + h, size)) if bottom else (max(top, 0), cy)
            canvas[:, y1:y2, x1:x2] = pixels[:, y1 - top : y2 - top, x1 - left : x2 - left]
            placed = boxes.as_subclass(torch.Tensor) + torch.tensor([left, top, left, top], dtype=boxes.dtype)
            clipped = placed.clamp(min=placed.new_tensor([x1, y1, x1, y1]), max=placed.new_tensor([x2, y2, x2, y2]))
            visible = _box_area(clipped)
            parts.append((clipped, target, (visible > 0) & (visible >= self.min_visible * _box_area(placed))))
        return _merge(canvas, parts)


class MixUp(MultiSampleStage):
    """Two samples blended, image = λ·a + (1-λ)·b with λ ~ Beta(alpha, alpha), and all their boxes kept.

    The images share the top-left corner on a canvas as large as both (zero elsewhere), so no box moves.
    alpha = 32 keeps λ near 0.5, as YOLOv5 does for detection.
    """

    num_samples = 2

    def __init__(self, *, p: float = 0.15, alpha: float = 32.0) -> None:
        super().__init__(p)
        self.alpha = alpha

    def combine(self, samples: Sequence[DetectionSample]) -> DetectionSample:
        (a, target_a), (b, target_b) = samples
        lam = float(torch.distributions.Beta(self.alpha, self.alpha).sample())
        height, width = max(a.shape[-2], b.shape[-2]), max(a.shape[-1], b.shape[-1])
        canvas = torch.zeros((a.shape[0], height, width), dtype=a.dtype)
        canvas[:, : a.shape[-2], : a.shape[-1]] += lam * a.as_subclass(torch.Tensor)
        canvas[:, : b.shape[-2], : b.shape[-1]] += (1.0 - lam) * b.as_subclass(torch.Tensor)
        parts = [
            (t["boxes"].as_subclass(torch.Tensor), t, torch.ones(len(t["boxes"]), dtype=torch.bool))
            for t in (target_a, target_b)
        ]
        return _merge(canvas, parts)


class MultiSample:
    """Multi-sample stages applied in order, each with its own probability (e.g. Mosaic, then MixUp on the result
    with a freshly drawn sample)."""

    def __init__(self, *stages: MultiSampleStage) -> None:
        self.stages = stages

    def __call__(self, first: DetectionSample, draw: Callable[[], DetectionSample]) -> DetectionSample:
        for stage in self.stages:
            first = stage(first, draw)
        return first

    def __repr__(self) -> str:
        return f"MultiSample({', '.join(map(repr, self.stages))})"


def mosaic_transform(preset: str, *, imgsz: int) -> MultiSample | None:
    """The multi-sample stage of `preset` for `DetectionDataset(mosaic=...)`: Mosaic (p=0.5) then MixUp (p=0.15)
    for `heavy`, None otherwise."""
    PRESETS.get(preset)  # an unknown name fails here as in train_transform
    if preset != "heavy":
        return None
    return MultiSample(Mosaic(imgsz, p=0.5), MixUp(p=0.15))
