"""Explaining predictions: class activation maps and integrated gradients for every task, as heatmaps over the
image's own pixels, overlay PNGs and raw `.npy` arrays.

The maps come from well-kept libraries: pytorch-grad-cam (Grad-CAM, Grad-CAM++, Score-CAM, HiResCAM, and its
targets for classes, segmented pixels and detection boxes) and Captum (integrated gradients). What imagerec adds is
the plumbing: which layer of each model to explain and the token reshaping ViTs need (`models/cam_layers.py`), and
mapping each map back from the model's input to the original image. docs/explain.md says which method to trust for
which model, as measured.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from imagerec.data.images import MAX_PIXELS as MAX_IMAGE_PIXELS
from imagerec.errors import UserError
from imagerec.models.cam_layers import cam_layer
from imagerec.models.detection import thresholds
from imagerec.outputs.predict import Predictor, load
from imagerec.outputs.sources import ImageLike, expand_sources, source_name
from imagerec.runs import RunDir, write_json
from imagerec.safe_read import printable
from imagerec.tasks.results import Classification, Detections

METHODS = ("gradcam", "gradcam++", "scorecam", "hirescam", "integrated-gradients")
CAM_METHODS = METHODS[:4]
# Grad-CAM weighs each channel by its gradient averaged over the whole map, so a head that reads positions (seed_cnn's
# grid, a detector's per-location heads) gets a map of what counts wherever it appears; HiResCAM multiplies gradient
# and activation position by position. It equals Grad-CAM after global pooling and a linear layer, and was the more
# faithful map in every measurement of docs/explain.md (classifier, detector boxes, segmenter), so it is the default.
DEFAULT_METHOD = "hirescam"
_CAM_CLASSES = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "scorecam": "ScoreCAM", "hirescam": "HiResCAM"}
_SLUGS = {"gradcam++": "gradcampp", "integrated-gradients": "ig"}  # file-name spelling where it differs
IG_STEPS = 32  # Captum's default is 50; 32 Gauss-Legendre points keep the completeness gap small for these models
IG_PERCENTILE = 99.0  # integrated gradients are spiky per pixel: scale to this percentile, as its authors display them
COLOUR_MAP = "inferno"  # perceptually uniform, and legible in greyscale print
OVERLAY_ALPHA = 0.6  # the colour's weight where the heat is highest: it fades with the heat, cold areas stay as is
# Segmenters see the whole image (detectors resize it): a backward pass keeps every activation, several times the
# memory of `predict`'s forward-only pass, whose whole-image limit is 2048² (outputs.predict.MAX_PIXELS).
MAX_PIXELS = 1024 * 1024


@dataclass(frozen=True, eq=False)
class Explanation:
    """One heatmap: why the model gave `target` (a class name) its `score` on `source`.

    `heatmap` is H×W float32 in [0, 1] at the source image's own size. `box` is the explained detection (pixel
    corners); `crop` the part of the image a classifier saw (its centre crop: outside it the heat is 0); `files`
    the overlay PNG and `.npy` written for it. `error` is set (and the rest empty) when the image was unreadable.
    """

    source: str
    target: str | None = None
    method: str | None = None
    score: float | None = None
    heatmap: np.ndarray | None = field(default=None, repr=False)
    box: tuple[float, float, float, float] | None = None
    crop: tuple[float, float, float, float] | None = None
    files: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, without the heatmap itself (see `files`)."""
        data: dict[str, Any] = {"source": self.source}
        if self.error is not None:
            return {**data, "error": self.error}
        data.update(target=self.target, method=self.method, score=None if self.score is None else round(self.score, 6))
        for key in ("box", "crop"):
            if getattr(self, key) is not None:
                data[key] = [round(v, 2) for v in getattr(self, key)]
        return {**data, **self.files}


@dataclass(frozen=True)
class _Job:
    """One heatmap to compute on a model input: what it explains, and how to score it for CAM and for Captum."""

    target: str
    score: float
    cam_target: Callable[[Any], torch.Tensor]  # a pytorch-grad-cam target: one image's model output → a scalar
    scores: Callable[[torch.Tensor], torch.Tensor] | None = None  # batched model output → (N,), for Captum
    box: tuple[float, float, float, float] | None = None


def explain(
    run: str | Path | RunDir | Predictor,
    sources: ImageLike | Sequence[ImageLike],
    *,
    method: str | None = None,
    target: str | None = None,
    out: str | Path | None = None,
    device: str = "auto",
    conf: float = 0.25,
    max_boxes: int = 10,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
    progress: Callable[[int], None] | None = None,
) -> list[Explanation]:
    """Heatmaps of why a trained run predicted what it did on `sources` (files, folders, images or tensors).

    Classification: one map for the predicted class, or for class `target`. Detection: one map per detected box
    (score at least `conf`, at most `max_boxes`, only class `target` when given; none when nothing is found).
    Semantic segmentation: one map per class present in the prediction (background left out unless it is the
    `target`). `method` is one of METHODS, HiResCAM by default. With `out`, each map
    is written as an overlay PNG and a float32 `.npy` (see `save_explanation`), indexed in `explanations.json`.
    An image that cannot be read, or is too large to explain whole, gives an Explanation with `error` set; the
    others are still explained; so does an image file whose header claims more than `max_image_pixels` (a
    decompression bomb), unread. `progress(n)` is called as images are done.
    """
    explainer = Explainer(
        run, method=method, target=target, device=device, conf=conf, max_boxes=max_boxes,
        max_image_pixels=max_image_pixels,
    )  # fmt: skip
    if isinstance(sources, str | Path | Image.Image | np.ndarray | torch.Tensor):
        sources = [sources]
    results: list[Explanation] = []
    used: set[str] = set()
    for position, source in enumerate(expand_sources(sources)):
        name = source_name(source, position)
        try:
            image = explainer.read(source)
            found = explainer.explain_image(image, name)
        except UserError as error:
            found = [Explanation(name, error=printable(str(error)))]
        if out is not None and found and found[0].error is None:
            stem = _unique_stem(name, used)
            found = [save_explanation(e, image, Path(out) / _file_name(e, stem, k)) for k, e in enumerate(found, 1)]
        results.extend(found)
        if progress is not None:
            progress(1)
    if out is not None:
        write_json(Path(out) / "explanations.json", [e.to_dict() for e in results])
    return results


class Explainer:
    """A loaded run (or a Predictor) ready to explain images one by one with one method (see `explain`)."""

    def __init__(
        self,
        run: str | Path | RunDir | Predictor,
        *,
        method: str | None = None,
        target: str | None = None,
        device: str = "auto",
        conf: float = 0.25,
        max_boxes: int = 10,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
    ) -> None:
        if method is not None and method not in METHODS:
            raise UserError(f"--method {method!r}: use one of {', '.join(METHODS)}")
        loaded = run if isinstance(run, Predictor) else load(run, device=device, max_image_pixels=max_image_pixels)
        self.predictor = loaded
        self.info, self.classes = self.predictor.info, self.predictor.classes
        if target is not None and target not in self.classes:
            raise UserError(f"--target {target!r} is not a class of this model; its classes: {', '.join(self.classes)}")
        gives = self.predictor.task.result_type  # labels, boxes (with or without masks) or a class per pixel
        self.labels, self.boxes = issubclass(gives, Classification), issubclass(gives, Detections)
        method = method or DEFAULT_METHOD
        self.method, self.target, self.max_boxes, self.conf = method, target, max_boxes, conf
        if self.boxes and method not in CAM_METHODS:
            raise UserError(
                f"--method {method} does not apply to detectors (their boxes come from non-differentiable "
                f"selection); use {', '.join(CAM_METHODS)}"
            )
        self.model = self.predictor.model
        self.layer, self.reshape = None, None
        if method in CAM_METHODS:
            info = self.info
            self.layer, self.reshape = cam_layer(self.model, name=info.model, channels=info.channels, imgsz=info.imgsz)

    def read(self, source: ImageLike) -> torch.Tensor:
        """`source` as a C×H×W float image in [0, 1] with the model's channels; UserError when unreadable."""
        return self.predictor.read(source)

    def explain_image(self, image: torch.Tensor, name: str = "<image>") -> list[Explanation]:
        """The explanations of one C×H×W image in [0, 1] (see `explain`); a UserError for a segmenter's image above
        MAX_PIXELS."""
        if self.labels:
            return self._classify(name, image)
        height, width = image.shape[-2:]
        if not self.boxes and height * width > MAX_PIXELS:
            raise UserError(
                f"{name}: {width}×{height} pixels is above the {MAX_PIXELS:,} pixels a segmenter is explained on "
                "whole (the backward pass keeps every activation); crop the region to explain"
            )
        x = image[None].to(self.predictor.device)
        with thresholds(score=self.conf):  # a detector keeps boxes down to --conf, in every forward pass here
            jobs = self._detect_jobs(x) if self.boxes else self._segment_jobs(x)
            return [
                Explanation(name, j.target, self.method, j.score, self._heatmap(x, j), box=j.box) for j in jobs
            ]  # fmt: skip

    def _classify(self, name: str, image: torch.Tensor) -> list[Explanation]:
        x = self.predictor.preprocess(image)[None].to(self.predictor.device)
        probs = self.predictor.probabilities(x)[0]
        index = int(probs.argmax()) if self.target is None else self.classes.index(self.target)
        single = self.predictor.task.single_logit
        sign = 1.0 if not single or index == 1 else -1.0
        channel = 0 if single else index

        def scores(logits: torch.Tensor) -> torch.Tensor:
            return sign * logits[:, channel]

        job = _Job(self.classes[index], float(probs[index]), lambda out: sign * out[..., channel], scores)
        heat, crop = _uncrop(self._heatmap(x, job, baseline=self._black(x)), image.shape[-2:], self.info.imgsz)
        return [Explanation(name, job.target, self.method, job.score, heat, crop=crop)]

    def _black(self, x: torch.Tensor) -> torch.Tensor:
        """A black image after the classifier's normalisation: the integrated-gradients baseline."""
        mean = torch.tensor(self.info.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.info.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return ((0 - mean) / std).expand_as(x)

    @torch.no_grad()
    def _detect_jobs(self, x: torch.Tensor) -> list[_Job]:
        found = self.model(x)[0]
        order = found["scores"].argsort(descending=True)
        jobs = []
        for i in order.tolist():
            label = int(found["labels"][i])
            if self.target is not None and self.classes[label] != self.target:
                continue
            box = found["boxes"][i].cpu()
            target = _BoxScore(label, box)
            jobs.append(_Job(self.classes[label], float(found["scores"][i]), target, box=tuple(box.tolist())))
            if len(jobs) == self.max_boxes:
                break
        return jobs

    @torch.no_grad()
    def _segment_jobs(self, x: torch.Tensor) -> list[_Job]:
        task = self.predictor.task
        logits = self.model(x)
        class_map = task.class_map(logits.float())[0]
        probs = torch.sigmoid(logits[0, 0]) if task.binary else logits[0].float().softmax(dim=0)
        present = torch.unique(class_map).tolist()
        wanted = [self.classes.index(self.target)] if self.target is not None else [c for c in present if c != 0]
        jobs = []
        for c in wanted:
            mask = (class_map == c).float()
            if not mask.any():  # a --target class the model did not find here: explain its evidence everywhere
                mask = torch.ones_like(mask)
            if task.binary:
                channel, sign = 0, (1.0 if c == 1 else -1.0)
                prob = probs if c == 1 else 1 - probs
            else:
                channel, sign, prob = c, 1.0, probs[c]
            score = float((prob * mask).sum() / mask.sum())
            jobs.append(
                _Job(self.classes[c], score, _PixelsTarget(channel, sign, mask), _pixel_scores(channel, sign, mask))
            )
        return jobs

    def _heatmap(self, x: torch.Tensor, job: _Job, baseline: torch.Tensor | None = None) -> np.ndarray:
        """H×W float32 in [0, 1] at the size of the model input `x` (1×C×H×W)."""
        if self.method == "integrated-gradients":
            return _integrated_gradients(
                self.model, x, job.scores, torch.zeros_like(x) if baseline is None else baseline
            )
        import pytorch_grad_cam as cams

        cam = getattr(cams, _CAM_CLASSES[self.method])(
            model=self.model, target_layers=[self.layer], reshape_transform=self.reshape
        )
        cam.batch_size = 32  # Score-CAM: masked copies of the image per forward pass (the library's default: 16)
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # Score-CAM draws a tqdm bar per image
                heat = cam(input_tensor=x, targets=[job.cam_target])[0]
        finally:
            cam.activations_and_grads.release()
            self.model.zero_grad(set_to_none=True)
        return np.clip(np.nan_to_num(heat), 0, 1).astype(np.float32)


class _BoxScore:
    """pytorch-grad-cam's FasterRCNNBoxScoreTarget for one box (the IoU of the best-matching detection plus its
    score, 0 below IoU 0.5), matched among the detections of the box's own class: one-stage detectors regress boxes
    whatever the class, so one place can give the same box under two labels, which the library's target (best IoU
    first, then its label) reads as no match."""

    def __init__(self, label: int, box: torch.Tensor, iou_threshold: float = 0.5) -> None:
        self.label, self.box, self.iou_threshold = label, box, iou_threshold

    def __call__(self, output: dict[str, torch.Tensor]) -> torch.Tensor:
        from torchvision.ops import box_iou

        boxes = output["boxes"]
        same = output["labels"] == self.label
        zero = boxes.sum() * 0 + output["scores"].sum() * 0  # no match: a zero still on the graph
        if not same.any():
            return zero
        ious = box_iou(self.box[None].to(boxes), boxes[same])[0]
        best = int(ious.argmax())
        if ious[best] <= self.iou_threshold:
            return zero
        return ious[best] + output["scores"][same][best]


class _PixelsTarget:
    """pytorch-grad-cam's SemanticSegmentationTarget (the class's logits summed over `mask`), with a sign so that
    a one-logit binary model can explain its background class too."""

    def __init__(self, channel: int, sign: float, mask: torch.Tensor) -> None:
        from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

        self.inner = SemanticSegmentationTarget(channel, mask.cpu().numpy())
        self.sign = sign

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return self.sign * self.inner(output)


def _pixel_scores(channel: int, sign: float, mask: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    def scores(logits: torch.Tensor) -> torch.Tensor:
        return sign * (logits[:, channel] * mask).sum(dim=(1, 2))

    return scores


def _integrated_gradients(
    model: nn.Module, x: torch.Tensor, scores: Callable[[torch.Tensor], torch.Tensor], baseline: torch.Tensor
) -> np.ndarray:
    """Captum's integrated gradients from `baseline` to `x`, summed over channels in absolute value and scaled to
    [0, 1] at the IG_PERCENTILE-th percentile."""
    from captum.attr import IntegratedGradients

    ig = IntegratedGradients(lambda batch: scores(model(batch)))
    attribution = ig.attribute(x, baselines=baseline, n_steps=IG_STEPS, internal_batch_size=IG_STEPS)
    model.zero_grad(set_to_none=True)
    heat = attribution[0].abs().sum(dim=0).detach().cpu().numpy()
    top = np.percentile(heat, IG_PERCENTILE)
    return np.clip(heat / top, 0, 1).astype(np.float32) if top > 0 else np.zeros_like(heat, dtype=np.float32)


# --- back to the original image ------------------------------------------------------------------------------------


def _uncrop(heat: np.ndarray, size: Sequence[int], imgsz: int) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Map a heatmap over the classifier's input back onto the original H×W image, inverting the evaluation
    transform (shorter side resized to imgsz, centre crop imgsz×imgsz, as torchvision computes both): 0 outside the
    crop. Returns the map and the crop's corners in the image's pixels."""
    height, width = int(size[0]), int(size[1])
    resized = (imgsz, int(imgsz * width / height)) if height <= width else (int(imgsz * height / width), imgsz)
    top, left = int(round((resized[0] - imgsz) / 2.0)), int(round((resized[1] - imgsz) / 2.0))
    canvas = torch.zeros(resized)
    canvas[top : top + imgsz, left : left + imgsz] = torch.from_numpy(_resize(heat, (imgsz, imgsz)))
    full = _resize(canvas.numpy(), (height, width))
    peak = float(full.max())
    if peak > 0:  # resampling to the image's size can lower the peak: each map stays scaled to its own maximum
        full = full / peak
    sy, sx = height / resized[0], width / resized[1]
    return full, (left * sx, top * sy, (left + imgsz) * sx, (top + imgsz) * sy)


def _resize(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if heat.shape == tuple(size):
        return heat.astype(np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(heat, dtype=np.float32))[None, None]
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)[0, 0].clamp(0, 1).numpy()


# --- writing --------------------------------------------------------------------------------------------------------


def overlay(image: torch.Tensor, heatmap: np.ndarray, alpha: float = OVERLAY_ALPHA) -> torch.Tensor:
    """`image` (C×H×W in [0, 1]) blended with `heatmap` (H×W in [0, 1]) in the COLOUR_MAP colours, each pixel's
    colour weighted by its heat (at most `alpha`): where there is no heat the image shows as it is, instead of a
    whole photo darkened by the colour of zero. 3×H×W uint8."""
    from matplotlib import colormaps

    from imagerec.outputs.visualize import to_uint8_rgb

    colours = torch.from_numpy(colormaps[COLOUR_MAP](heatmap)[..., :3]).permute(2, 0, 1).float()
    base = to_uint8_rgb(image).float() / 255
    weight = alpha * torch.from_numpy(np.ascontiguousarray(heatmap, dtype=np.float32))[None]
    return ((1 - weight) * base + weight * colours).mul(255).round().clamp(0, 255).to(torch.uint8)


def _key_band(drawn: torch.Tensor, explanation: Explanation) -> torch.Tensor:
    """`drawn` (3×H×W uint8) above a band saying what the map explains (method, class, score) beside a colour bar
    from no heat to the most."""
    from matplotlib import colormaps
    from PIL import Image, ImageDraw, ImageFont

    from imagerec.outputs.visualize import font_path

    width = drawn.shape[2]
    height = max(18, width // 12)
    band = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(band)
    font = ImageFont.truetype(font_path(), size=max(8, height // 2))
    bar_width = max(24, width // 4)
    ramp = colormaps[COLOUR_MAP](np.linspace(0, 1, bar_width))[:, :3]
    bar = (np.repeat(ramp[None], height // 3, axis=0) * 255).astype(np.uint8)
    band.paste(Image.fromarray(bar), (width - bar_width - 2, 2))
    draw.text((width - bar_width - 2, 2 + height // 3), "low", fill="black", font=font)
    draw.text((width - 2, 2 + height // 3), "high", fill="black", font=font, anchor="ra")
    what = f"{explanation.method}: {explanation.target}" + (
        f" {explanation.score:.2f}" if explanation.score is not None else ""
    )
    draw.text((3, height // 4), what, fill="black", font=font)
    stacked = np.concatenate([drawn.permute(1, 2, 0).numpy(), np.asarray(band)], axis=0)
    return torch.from_numpy(np.ascontiguousarray(stacked)).permute(2, 0, 1)


def draw_explanation(explanation: Explanation, image: torch.Tensor, *, key: bool = True) -> torch.Tensor:
    """`explanation`'s heatmap blended over `image` (C×H×W in [0, 1]) as 3×H×W uint8, with its box, or a
    classifier's centre crop when that is not the whole image, drawn on it, and (`key`) a band below naming the
    method, class and score beside a colour bar; a small image is enlarged with square pixels, as
    `predict --save-images` does."""
    from imagerec.outputs.visualize import PALETTE, draw_boxes, enlarge, legible_scale

    heatmap = explanation.heatmap
    scale = legible_scale(heatmap.shape)
    drawn = overlay(enlarge(image, scale), enlarge(torch.from_numpy(heatmap), scale).numpy())
    if explanation.box is not None:
        label = f"{explanation.target} {explanation.score:.2f}"
        box = [v * scale for v in explanation.box]
        drawn = draw_boxes(drawn.float() / 255, [box], [label], PALETTE[1])  # sky blue: apart from inferno
    elif explanation.crop is not None and _is_partial(explanation.crop, heatmap.shape):
        crop = [v * scale for v in explanation.crop]
        drawn = draw_boxes(drawn.float() / 255, [crop], ["model input"], "#FFFFFF")
    return _key_band(drawn, explanation) if key else drawn


def save_explanation(explanation: Explanation, image: torch.Tensor, base: Path) -> Explanation:
    """Write `explanation` drawn over `image` (see `draw_explanation`) as BASE.png and the raw map, at the image's
    own size, as BASE.npy; returns it with `files` filled in."""
    if explanation.error is not None or explanation.heatmap is None:
        return explanation
    from dataclasses import replace

    from imagerec.outputs.visualize import save_png
    from imagerec.runs import atomic_write

    heatmap = explanation.heatmap
    drawn = draw_explanation(explanation, image)
    png, npy = base.with_name(base.name + ".png"), base.with_name(base.name + ".npy")
    save_png(drawn, png)

    def write_array(tmp: Path) -> None:
        with tmp.open("wb") as file:
            np.save(file, heatmap)

    atomic_write(npy, write_array)
    return replace(explanation, files={"overlay": str(png), "heatmap": str(npy)})


def _is_partial(crop: tuple[float, float, float, float], shape: tuple[int, ...]) -> bool:
    x1, y1, x2, y2 = crop
    return x1 > 0.5 or y1 > 0.5 or x2 < shape[1] - 0.5 or y2 < shape[0] - 0.5


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-") or "x"


def _file_name(explanation: Explanation, stem: str, position: int) -> str:
    """STEM[_boxK]_<target>_<method>: boxes numbered best first."""
    box = f"_box{position}" if explanation.box is not None else ""
    method = explanation.method or ""
    return f"{stem}{box}_{_slug(explanation.target or '')}_{_SLUGS.get(method, method)}"


def _unique_stem(source: str, used: set[str]) -> str:
    """The source file's stem (`image<N>` for in-memory images), numbered when two share one (a/1.png, b/1.png)."""
    stem = f"image{len(used)}" if source.startswith("<") else _slug(Path(source).stem)
    candidate, n = stem, 2
    while candidate in used:
        candidate, n = f"{stem}-{n}", n + 1
    used.add(candidate)
    return candidate
