"""Semantic segmentation report sections: IoU and Dice per class, the pixel confusion matrix, the best and worst
images drawn as truth, prediction and error map side by side, and every image's scores.

The per-class values and the confusion matrix are `imagerec evaluate`'s (`ctx.metrics`), measured again from the
report's predictions only when those are missing; the per-image scores come from the same predictions and masks.
Instance segmentation runs (Mask R-CNN) are reported as detection is, with mask AP.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure as MplFigure
from torchvision.utils import draw_segmentation_masks

from imagerec.metrics.segmentation import SegmentationMetrics, confusion_matrix
from imagerec.outputs.report.blocks import Figure, Gallery, Headline, Panels, ReportContext, Section, Table, Text
from imagerec.outputs.report.card import bootstrap
from imagerec.outputs.report.classification import never_predicted
from imagerec.outputs.report.common import PANEL_SIZE, drawing_canvas, image_name, predictions_section
from imagerec.outputs.visualize import class_colour, draw_class_map, draw_legend, to_uint8_rgb
from imagerec.tasks.results import SegmentationMask

GALLERY_SIZE = 6
PANEL = 256  # longest side of each of the three panels of a gallery image as drawn (a click opens it full size)
GAP = 4
SHOWN = 3 * 144 + 2 * GAP  # width of a gallery image on the page: 144 px per panel
PURPOSE = "label every pixel of an image with one of its classes"
ERROR_COLOUR = "#D55E00"  # Okabe–Ito vermillion
IGNORED_COLOUR = "#999999"
ANNOTATE_LIMIT = 12  # confusion matrices up to this many classes get their numbers written in the cells
TABLE_LIMIT = 20  # and up to this many, a table of the counts


@dataclass(frozen=True)
class ImageScore:
    """One image's IoU and Dice averaged over the foreground classes present in its truth or prediction (None:
    neither has any foreground, or the prediction failed), its pixel accuracy, its counted and ignored pixels, and
    its pixel confusion matrix (K×K, rows truth; None when the prediction failed)."""

    iou: float | None
    dice: float | None
    pixels: int
    ignored: int
    accuracy: float | None = None
    counts: np.ndarray | None = None


def sections(ctx: ReportContext) -> list[Section]:
    """The segmentation sections of the report; none without evaluation data."""
    if ctx.split is None or not ctx.samples:
        return []
    classes = list(ctx.info.classes)
    scores, measured = score_images(ctx)
    metrics = ctx.metrics if {"per_class", "confusion_matrix"} <= set(ctx.metrics) else measured
    counts = np.asarray(metrics["confusion_matrix"], dtype=np.int64)
    ctx.headlines = headlines(metrics, scores)
    ctx.limitations = never_predicted(classes, counts.sum(1), counts.sum(0), "pixels")
    return [
        _classes_section(metrics, classes),
        _confusion_section(metrics, classes, scores),
        _gallery_section(ctx, scores),
        _predictions(ctx, scores),
        *_explanations(ctx, scores),
    ]


def headlines(metrics: dict[str, Any], scores: Sequence[ImageScore]) -> list[Headline]:
    """Mean IoU, mean Dice and pixel accuracy over the split's pixels, with bootstrap intervals over images (each
    resample sums the drawn images' confusion matrices)."""
    matrices = [s.counts for s in scores if s.counts is not None]
    if not matrices:
        return []
    k = len(matrices[0])
    parts = np.stack(matrices).reshape(len(matrices), k * k)
    rates = (
        ("mean IoU", "miou", lambda s: mean_foreground(s.reshape(-1, k, k))[0]),
        ("mean Dice", "dice", lambda s: mean_foreground(s.reshape(-1, k, k))[1]),
        ("pixel accuracy", "pixel_accuracy", lambda s: np.trace(s.reshape(-1, k, k), axis1=1, axis2=2) / s.sum(1)),
    )
    return [bootstrap(name, metrics[key], parts, statistic, "images") for name, key, statistic in rates
            if metrics.get(key) is not None]  # fmt: skip


def mean_foreground(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean IoU and Dice over the foreground classes of B confusion matrices (B×K×K), as `imagerec evaluate` takes
    them (`foreground_scores`, for many matrices at once); NaN where no foreground class is present."""
    first = 1 if confusion.shape[1] >= 2 else 0
    tp = np.diagonal(confusion, axis1=1, axis2=2)[:, first:]
    both = (confusion.sum(1) + confusion.sum(2))[:, first:]
    present = both > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(present, tp / (both - tp), 0).sum(1) / present.sum(1)
        dice = np.where(present, 2 * tp / both, 0).sum(1) / present.sum(1)
    return iou, dice


def _predictions(ctx: ReportContext, scores: Sequence[ImageScore]) -> Section:
    """Every image's foreground IoU and Dice and pixel accuracy, worst first (the gallery's order), then the
    images without foreground."""
    ranked = ranking(scores)
    order = ranked + [i for i in range(len(scores)) if i not in set(ranked)]
    rows = [
        [image_name(ctx, ctx.samples[i].path), scores[i].iou, scores[i].dice, scores[i].accuracy, scores[i].pixels,
         scores[i].ignored]
        for i in order
    ]  # fmt: skip
    how = (
        "Each evaluated image: IoU and Dice averaged over the foreground classes in its truth or prediction, the "
        "share of its counted pixels classed right, and its counted and ignored pixels; lowest IoU first, images "
        "without foreground (—) last."
    )
    return predictions_section(["image", "IoU", "Dice", "pixel accuracy", "pixels", "ignored"], rows, how)


def score_images(ctx: ReportContext) -> tuple[list[ImageScore], dict[str, Any]]:
    """Each image's score, and the metrics of all of them (what `imagerec evaluate` computes from the same
    predictions)."""
    classes = list(ctx.info.classes)
    if ctx.index is None or ctx.index.masks is None:
        raise ValueError("segmentation sections read the truth masks through ctx.index.masks: set ctx.index")
    coding = ctx.index.masks
    metrics = SegmentationMetrics(classes, ignore_index=coding.ignore_index, binary=len(classes) == 2)
    scores = []
    for sample, result in zip(ctx.samples, ctx.results, strict=True):
        truth = coding.read(sample.target.path)
        ignored = int((truth == coding.ignore_index).sum())
        if result.mask is None or tuple(result.mask.shape) != tuple(truth.shape):
            scores.append(ImageScore(None, None, 0, ignored))
            continue
        predicted = torch.from_numpy(result.mask.astype(np.int64))
        counts = confusion_matrix(predicted, truth, len(classes), ignore_index=coding.ignore_index)
        metrics.update(predicted[None], truth[None])
        total = int(counts.sum())
        accuracy = float(counts.trace()) / total if total else None
        scores.append(ImageScore(*foreground_scores(counts), total, ignored, accuracy, counts.numpy()))
    return scores, metrics.compute()


def foreground_scores(counts: torch.Tensor) -> tuple[float | None, float | None]:
    """Mean IoU and Dice over the foreground classes (1..K-1; class 0 alone when K = 1) of a confusion matrix
    (rows truth, columns prediction), leaving out those absent from both; None when every one is."""
    counts = counts.double()
    first = 1 if len(counts) >= 2 else 0
    tp = counts.diag()[first:]
    both = (counts.sum(1) + counts.sum(0))[first:]
    present = both > 0
    if not bool(present.any()):
        return None, None
    iou = tp[present] / (both[present] - tp[present])
    dice = 2 * tp[present] / both[present]
    return float(iou.mean()), float(dice.mean())


def _classes_section(metrics: dict[str, Any], classes: list[str]) -> Section:
    per_class = metrics["per_class"]
    rows = [
        [name, per_class[name]["pixels"], _cell(per_class[name]["iou"]), _cell(per_class[name]["dice"])]
        for name in classes
    ]
    mean = f"mean IoU over the foreground classes {_text(metrics.get('miou'))}, mean Dice {_text(metrics.get('dice'))}"
    return Section(
        "segmentation-classes",
        "IoU and Dice per class",
        [
            Table(
                ["class", "true pixels", "IoU", "Dice"],
                rows,
                f"Over every pixel of the split (not averaged per image); {mean}. — : the class is neither in the "
                "truth nor predicted.",
            ),
            Figure("segmentation_iou.png", _bars(per_class, classes), f"IoU and Dice per class; {mean}."),
        ],
    )


def _cell(value: float | None) -> float | str:
    return "—" if value is None else value


def _text(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _bars(per_class: dict[str, dict[str, Any]], classes: list[str]) -> MplFigure:
    """Horizontal IoU and Dice bars, one pair per class in class order (absent classes: no bar)."""
    figure = MplFigure(figsize=(7, max(2.5, 0.32 * len(classes) + 1.2)), layout="constrained")
    ax = figure.subplots()
    y = np.arange(len(classes))
    for offset, key, colour in ((-0.2, "iou", class_colour(4)), (0.2, "dice", class_colour(1))):
        values = [per_class[name][key] for name in classes]
        bars = ax.barh(y + offset, [np.nan if v is None else v for v in values], height=0.4, color=colour)
        bars.set_label("IoU" if key == "iou" else "Dice")
        if len(classes) <= TABLE_LIMIT:
            ax.bar_label(bars, labels=["—" if v is None else f"{v:.2f}" for v in values], fontsize=7, padding=2)
    ax.set(yticks=y, yticklabels=classes, xlim=(0, 1.12), xticks=np.linspace(0, 1, 6), xlabel="score")
    ax.invert_yaxis()
    ax.grid(alpha=0.3, axis="x")
    ax.legend(loc="lower right", fontsize="small")
    return figure


def _confusion_section(metrics: dict[str, Any], classes: list[str], scores: list[ImageScore]) -> Section:
    counts = np.asarray(metrics["confusion_matrix"], dtype=np.int64)
    ignored = sum(s.ignored for s in scores)
    section = Section("segmentation-confusion", "Pixel confusion matrix")
    section.blocks.append(
        Panels(
            _confusion_figures(counts, classes),
            f"Rows: true class; columns: predicted class. First: pixel counts ({int(counts.sum()):,} pixels counted, "
            f"{ignored:,} ignored pixels left out; logarithmic colours); second: each row divided by its sum (the "
            "diagonal is each class's recall).",
        )
    )
    if len(classes) <= TABLE_LIMIT:
        rows = [[name, *counts[i].tolist(), int(counts[i].sum())] for i, name in enumerate(classes)]
        section.blocks.append(Table(["true \\ predicted", *classes, "total"], rows, "Pixel counts."))
    return section


def _confusion_figures(counts: np.ndarray, classes: list[str]) -> list[Figure]:
    """The pixel counts (segmentation_confusion.png) and each row divided by its sum
    (segmentation_confusion_normalised.png)."""
    rows = counts.sum(1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    panels = (
        ("segmentation_confusion.png", counts, LogNorm(vmin=1, vmax=max(2, int(counts.max()))), "pixels", "{:,}"),
        ("segmentation_confusion_normalised.png", normalised, None, "share of the true class", "{:.2f}"),
    )
    return [Figure(name, _matrix_figure(values, classes, norm, label, form), label)
            for name, values, norm, label, form in panels]  # fmt: skip


def _matrix_figure(values: np.ndarray, classes: list[str], norm: LogNorm | None, label: str, form: str) -> MplFigure:
    k = len(classes)
    side = max(PANEL_SIZE[0] * 0.75, 0.42 * k + 1.8)
    figure = MplFigure(figsize=(side + 1.2, side), layout="constrained")
    ax = figure.subplots()
    shown = np.where(values > 0, values, np.nan) if norm is not None else values
    image = ax.imshow(shown, cmap="viridis", norm=norm, vmin=None if norm else 0, vmax=None if norm else 1)
    figure.colorbar(image, ax=ax, shrink=0.8, label=label)
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted", ylabel="true")
    ax.set_xticklabels(classes, rotation=90, fontsize="small")
    ax.set_yticklabels(classes, fontsize="small")
    if k <= ANNOTATE_LIMIT:
        _annotate(ax, values, form, norm)
    return figure


def _annotate(ax: Any, values: np.ndarray, form: str, norm: LogNorm | None) -> None:
    """Each cell's number, dark on the bright end of viridis and light on the dark end."""
    scaled = norm(np.maximum(values, 1)) if norm is not None else values
    for (i, j), value in np.ndenumerate(values):
        if value == 0 and norm is not None:  # an empty cell of the counts is left blank, as its colour is
            continue
        colour = "black" if scaled[i, j] > 0.6 else "white"
        ax.text(j, i, form.format(value), ha="center", va="center", fontsize=7, color=colour)


def ranking(scores: Sequence[ImageScore]) -> list[int]:
    """Positions of the images with a score, worst first: by foreground IoU, then in split order."""
    return sorted((i for i, s in enumerate(scores) if s.iou is not None), key=lambda i: (scores[i].iou, i))


def _gallery_section(ctx: ReportContext, scores: list[ImageScore]) -> Section:
    order = ranking(scores)
    worst = order[:GALLERY_SIZE]
    best = [i for i in reversed(order) if i not in worst][:GALLERY_SIZE]
    unscored = len(scores) - len(order)
    caption = (
        "Left to right: ground truth, prediction (class colours named below each image), errors (wrong pixels in "
        "vermillion, ignored pixels grey). Scores: IoU and Dice averaged over the foreground classes in the truth "
        "or the prediction."
    )
    if unscored:
        caption += f" {unscored} image(s) without foreground in truth or prediction are not ranked."
    section = Section("segmentation-gallery", "Best and worst images")
    section.blocks.append(Gallery("Worst images", [_thumbnail(ctx, i, scores[i]) for i in worst], caption, SHOWN))
    if best:
        section.blocks.append(Gallery("Best images", [_thumbnail(ctx, i, scores[i]) for i in best], caption, SHOWN))
    if not order:
        section.blocks.append(Text("No image has foreground in its truth or its prediction: nothing to rank."))
    return section


def _explanations(ctx: ReportContext, scores: list[ImageScore]) -> list[Section]:
    """Heatmaps of the classes present on the worst images (the gallery's order)."""
    from imagerec.outputs.report.explanations import explanation_sections

    order = ranking(scores)
    captions = [f"{Path(ctx.samples[i].path).name} · IoU {scores[i].iou:.2f}" for i in order]
    return explanation_sections(ctx, [("Worst images", order, captions)])


def _thumbnail(ctx: ReportContext, i: int, score: ImageScore) -> tuple[np.ndarray, str]:
    from imagerec.data.images import read_image

    sample, result = ctx.samples[i], ctx.results[i]
    truth = ctx.index.masks.read(sample.target.path)
    drawn = draw_comparison(
        read_image(Path(sample.path)),
        truth,
        torch.from_numpy(result.mask.astype(np.int64)),
        list(ctx.info.classes),
        colours=ctx.info.colours,
        ignore_index=ctx.index.masks.ignore_index,
    )
    caption = f"{Path(sample.path).name} · IoU {score.iou:.2f} · Dice {score.dice:.2f}"
    return np.ascontiguousarray(drawn.permute(1, 2, 0).numpy()), caption


def draw_comparison(
    image: torch.Tensor,
    truth: torch.Tensor,
    predicted: torch.Tensor,
    classes: Sequence[str],
    *,
    colours: Sequence[Sequence[int]] | None = None,
    ignore_index: int = 255,
) -> torch.Tensor:
    """3×H×W uint8: three panels of at most PANEL pixels (small images enlarged by a whole factor, square pixels),
    truth and prediction tinted as `draw_class_map` does and the wrong pixels in ERROR_COLOUR, with a legend band
    naming the classes shown."""
    small, _ = drawing_canvas(image, PANEL, PANEL)
    size = tuple(small.shape[-2:])
    truth, predicted = (_nearest(m, size) for m in (truth, predicted))
    ignored = truth == ignore_index
    shown = truth.masked_fill(ignored, 0)
    panels = [
        draw_class_map(small, SegmentationMask("truth", mask=shown.numpy()), colours),
        draw_class_map(small, SegmentationMask("prediction", mask=predicted.numpy()), colours),
        draw_segmentation_masks(
            to_uint8_rgb(small),
            torch.stack([(predicted != truth) & ~ignored, ignored]),
            alpha=0.6,
            colors=[ERROR_COLOUR, IGNORED_COLOUR],
        ),
    ]
    gap = torch.full((3, size[0], GAP), 64, dtype=torch.uint8)
    canvas = torch.cat([panels[0], gap, panels[1], gap, panels[2]], dim=2)
    present = sorted(c for c in set(torch.unique(shown).tolist()) | set(torch.unique(predicted).tolist()) if c)
    entries = [(classes[c], _hex(c, colours)) for c in present] + [("error", ERROR_COLOUR)]
    # VOC's class colours are dark: they read on white
    return draw_legend(canvas, entries, height=max(18, canvas.shape[2] // 40), background="white")


def _nearest(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return torch.nn.functional.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0].long()


def _hex(c: int, colours: Sequence[Sequence[int]] | None) -> str:
    """Class `c`'s overlay colour as `draw_class_map` picks it."""
    if colours:
        return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in colours[c][:3]))
    return class_colour(c - 1)
