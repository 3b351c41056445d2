"""Detection report sections (boxes, and instance masks for Mask R-CNN runs): precision–recall curves, AP per
class and object size, false positives and negatives at the run's confidence threshold with precision, recall and
F1 against the threshold, the worst images drawn, and every image's counts.

The curves and APs come from pycocotools' COCOeval, run by `DetectionMetrics` over the report's own predictions
(`ctx.results`), so they reach the evaluated mAP only when those were kept down to the evaluation threshold
(`EVAL_SCORE_THRESHOLD`); a note says so when they differ from `ctx.metrics`. Counts and galleries use `conf`: the
threshold the run chose on validation (model.json's decision), else DEFAULT_CONF.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure as MplFigure
from torchvision.utils import draw_segmentation_masks

from imagerec.data.targets import Objects
from imagerec.metrics.detection import (
    DEFAULT_CONF,
    MATCH_IOU,
    NO_GROUND_TRUTH,
    ConfidenceCurve,
    Counts,
    DetectionMetrics,
    count_outcomes,
    match_boxes,
)
from imagerec.outputs.report.blocks import Figure, Gallery, Headline, Panels, ReportContext, Section, Table, Text
from imagerec.outputs.report.card import bootstrap
from imagerec.outputs.report.classification import never_predicted
from imagerec.outputs.report.common import PANEL_SIZE, drawing_canvas, image_name, predictions_section
from imagerec.outputs.visualize import MIN_DRAWN_SIDE, class_colour, draw_boxes, draw_legend
from imagerec.records import Decision
from imagerec.tasks.results import Detections, InstanceMasks

SHOWN = 256  # longest side of a gallery thumbnail on the page; a click opens the drawing full size
LARGEST = 800  # longest side of a drawing: larger images come down to it, smaller ones go up to MIN_DRAWN_SIDE
GALLERY_SIZE = 8
PURPOSE = "find objects of its classes in images, each with a box (a mask too, for instance runs), class and score"
TRUTH_COLOUR = "#56B4E9"  # Okabe–Ito sky blue
PREDICTION_COLOUR = "#E69F00"  # Okabe–Ito orange: the pair stays distinct under every colour-vision deficiency
AREAS = ("small", "medium", "large")  # COCO's object sizes: under 32², under 96², above (pixels)
LINE_STYLES = ("-", "--", ":", "-.")
DASH = "—"  # a value COCO cannot define (no object of that class or size)


def sections(ctx: ReportContext, *, conf: float | None = None) -> list[Section]:
    """The detection sections of the report; none without evaluation data. `conf` is the score threshold of the
    counts and galleries (None: the run's decision threshold, else DEFAULT_CONF; the curves use every
    prediction)."""
    if ctx.split is None or not ctx.samples:
        return []
    decision = ctx.info.decision
    if conf is None:
        conf = DEFAULT_CONF if decision is None else decision.threshold
    classes = list(ctx.info.classes)
    counts = [match(s.target, r, classes, conf=conf) for s, r in zip(ctx.samples, ctx.results, strict=True)]
    metrics, values = coco_metrics(ctx)
    ctx.headlines = headlines(values, counts, conf)
    objects = np.sum([c.tp + c.fn for c in counts], axis=0)
    kept = np.sum([c.tp + c.fp for c in counts], axis=0)
    ctx.limitations = never_predicted(classes, objects, kept, "objects", f" at score ≥ {conf:g}")
    return [
        _pr_section(metrics, _consistency(ctx.metrics, values)),
        _ap_section(ctx, metrics),
        _errors_section(counts, classes, conf, metrics.curve(), _origin(conf, decision)),
        _gallery_section(ctx, counts, conf),
        _predictions(ctx, counts, conf),
        *_explanations(ctx, counts, conf),
    ]


def headlines(values: dict[str, Any], counts: Sequence[Counts], conf: float) -> list[Headline]:
    """COCO mAP50 and mAP (no interval: resampling would rerun COCOeval a thousand times), and precision, recall
    and F1 at `conf` over all classes with bootstrap intervals over images."""
    none = "none: COCO AP is not resampled"
    found = [Headline(name, values[key], None, none) for key, name in (("map50", "mAP50"), ("map", "mAP50:95"))
             if values.get(key) is not None]  # fmt: skip
    parts = np.array([[c.tp.sum(), c.fp.sum(), c.fn.sum()] for c in counts], dtype=np.float64)
    tp, fp, fn = parts.sum(0)
    rates = (
        ("precision", lambda s: s[:, 0] / (s[:, 0] + s[:, 1]), tp / (tp + fp) if tp + fp else None),
        ("recall", lambda s: s[:, 0] / (s[:, 0] + s[:, 2]), tp / (tp + fn) if tp + fn else None),
        ("F1", lambda s: 2 * s[:, 0] / (2 * s[:, 0] + s[:, 1] + s[:, 2]), 2 * tp / (2 * tp + fp + fn) if tp + fp + fn
         else None),
    )  # fmt: skip
    found += [bootstrap(f"{name} at score ≥ {conf:.3g}", value, parts, statistic, "images")
              for name, statistic, value in rates if value is not None]  # fmt: skip
    return found


def _predictions(ctx: ReportContext, counts: Sequence[Counts], conf: float) -> Section:
    """Every image's objects, predictions at `conf`, matches and F1, in the gallery's order (worst first)."""
    rows = []
    for i in ranking(counts):
        c, kept = counts[i], sum(score >= conf for score in ctx.results[i].scores)
        objects = int(c.tp.sum() + c.fn.sum())
        rows.append([image_name(ctx, ctx.samples[i].path), objects, kept, int(c.tp.sum()), int(c.fp.sum()),
                     int(c.fn.sum()), float(c.f1)])  # fmt: skip
    how = (
        f"Each evaluated image: its objects (ignored ones left out), the predictions scoring at least {conf:.3g}, "
        f"those matched to an object (IoU ≥ {MATCH_IOU:g}, same class), false positives and negatives, and F1; "
        "lowest F1 first, then the most errors."
    )
    return predictions_section(["image", "objects", "predicted", "matched", "FP", "FN", "F1"], rows, how)


def _origin(conf: float, decision: Decision | None) -> str:
    """Where threshold `conf` comes from, in words."""
    if decision is not None and conf == decision.threshold:
        if decision.split is None or decision.note is None:
            return f"the run's {decision.describe()}"
        return f"the run's threshold, {decision.note}"
    if decision is None and conf == DEFAULT_CONF:
        return "the default: this run has no threshold chosen on validation data"
    return "as asked for this report"


def match(
    objects: Objects, detections: Detections, classes: Sequence[str], *, conf: float, iou: float = MATCH_IOU
) -> Counts:
    """Counts of one image at score ≥ `conf`, by the matching rule of `metrics.detection.match_boxes`: a match is
    a true positive, a prediction left without one a false positive (one on an ignored object counts neither
    way), an object left without one a false negative."""
    lookup = {name: i for i, name in enumerate(classes)}
    labels = [lookup[label] for label in detections.labels]
    ignore = [objects.ignored(i) for i in range(len(objects.labels))]
    outcomes = match_boxes(
        _boxes(detections.boxes), detections.scores, labels, _boxes(objects.boxes), objects.labels, ignore, iou=iou
    )
    return count_outcomes(
        outcomes, detections.scores, labels, objects.labels, ignore, conf=conf, num_classes=len(classes)
    )


def _boxes(boxes: Sequence[Sequence[float]]) -> torch.Tensor:
    return torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)


def coco_metrics(ctx: ReportContext) -> tuple[DetectionMetrics, dict[str, Any]]:
    """`DetectionMetrics` (box mAP, or mask mAP for instance runs, as `imagerec evaluate` measures) computed over
    `ctx.samples` and `ctx.results`, and the values it computed; its `coco_eval` holds the precision arrays (None
    without ground truth)."""
    classes = list(ctx.info.classes)
    instance = issubclass(ctx.task.result_type, InstanceMasks)
    metrics = DetectionMetrics(classes, iou_type="segm" if instance else "bbox")
    lookup = {name: i for i, name in enumerate(classes)}
    for sample, result in zip(ctx.samples, ctx.results, strict=True):
        objects: Objects = sample.target
        output = {
            "boxes": _boxes(result.boxes),
            "scores": torch.tensor(result.scores, dtype=torch.float64),
            "labels": torch.tensor([lookup[label] for label in result.labels], dtype=torch.int64),
        }
        target = {
            "boxes": _boxes(objects.boxes),
            "labels": torch.tensor(objects.labels, dtype=torch.int64),
            "ignore": torch.tensor([objects.ignored(i) for i in range(len(objects.labels))], dtype=torch.bool),
        }
        if objects.area:
            target["area"] = torch.tensor(objects.area, dtype=torch.float64)
        if instance:
            output["masks"], target["masks"] = _instance_pixels(sample.path, objects, result)
        metrics.update([output], [target])
    return metrics, metrics.compute()


def _instance_pixels(path: Path, objects: Objects, result: Detections) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted and true object masks (N×H×W uint8) of one image, for mask AP."""
    from pycocotools import mask as coco_mask

    from imagerec.data.formats._boxes import image_size
    from imagerec.data.masks import instance_masks

    width, height = result.size or objects.size or image_size(path) or (0, 0)
    masks = getattr(result, "masks", ())
    predicted = np.stack([coco_mask.decode(m) for m in masks]) if masks else np.zeros((0, height, width), np.uint8)
    return torch.from_numpy(predicted), torch.from_numpy(instance_masks(objects, height, width, path))


def _consistency(measured_values: dict[str, Any], values: dict[str, Any]) -> list[Text]:
    """A note when the report's predictions give another mAP than `imagerec evaluate` measured."""
    measured, here = measured_values.get("map"), values.get("map")
    if measured is None or here is None or abs(measured - here) < 0.005:
        return []
    return [
        Text(
            f"These curves are drawn from the report's predictions, whose mAP is {here:.3f}; `imagerec evaluate` "
            f"measured {measured:.3f} on the same split (its predictions keep lower scores or another threshold)."
        )
    ]


def _pr_section(metrics: DetectionMetrics, notes: list[Text]) -> Section:
    section = Section("detection-pr", "Precision–recall curves")
    if metrics.coco_eval is None:
        section.blocks.append(Text(f"No curves: {NO_GROUND_TRUTH}."))
        return section
    kind = "mask" if metrics.iou_type == "segm" else "box"
    section.blocks.append(
        Panels(
            _pr_figures(metrics),
            f"Precision against recall per class ({kind} IoU, all object sizes, up to 100 predictions per image), "
            "from COCOeval's 101 recall points: at IoU 0.5 (first) and averaged over IoU 0.50:0.05:0.95 (second). "
            "The area under each curve is the class's AP; the dashed black curve is the mean over classes.",
        )
    )
    section.blocks.extend(notes)
    return section


def _pr_figures(metrics: DetectionMetrics) -> list[Figure]:
    """Precision–recall curves per class and their mean: at IoU 0.5, and averaged over IoU 0.50:0.95."""
    precision = metrics.coco_eval.eval["precision"][:, :, :, 0, -1]  # T×R×K
    precision = np.where(precision < 0, np.nan, precision)  # -1: a class without ground truth
    recall = np.asarray(metrics.coco_eval.params.recThrs)
    return [
        Figure("detection_pr_iou50.png", _pr_figure(recall, precision[0], metrics.classes, "IoU 0.5"),
               "precision–recall at IoU 0.5"),
        Figure("detection_pr_iou50-95.png", _pr_figure(recall, _nanmean(precision, 0), metrics.classes,
               "IoU 0.50:0.95"), "precision–recall averaged over IoU 0.50:0.95"),
    ]  # fmt: skip


def _pr_figure(recall: np.ndarray, curves: np.ndarray, classes: Sequence[str], title: str) -> MplFigure:
    figure = MplFigure(figsize=PANEL_SIZE, layout="constrained")
    ax = figure.subplots()
    many = len(classes) > 12  # beyond a dozen lines a legend is unreadable: thin grey lines and the mean
    for k, name in enumerate(classes):
        curve = curves[:, k]
        if np.isnan(curve).all():
            continue
        if many:
            ax.plot(recall, curve, color="#999999", linewidth=0.6, alpha=0.5)
        else:
            style = LINE_STYLES[k // 8 % len(LINE_STYLES)]
            ax.plot(recall, curve, color=class_colour(k), linestyle=style, label=f"{name} (AP {curve.mean():.2f})")
    mean = _nanmean(curves, 1)
    ax.plot(recall, mean, color="black", linestyle="--", linewidth=2, label=f"mean (mAP {np.nanmean(mean):.2f})")
    ax.set(title=title, xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize="x-small", frameon=False, ncols=2)
    return figure


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    """Mean ignoring NaN, NaN where everything is (without numpy's all-NaN warning)."""
    defined = ~np.isnan(values)
    total = np.where(defined, values, 0.0).sum(axis)
    count = defined.sum(axis)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _ap_section(ctx: ReportContext, metrics: DetectionMetrics) -> Section:
    section = Section("detection-ap", "Average precision per class and object size")
    if metrics.coco_eval is None:
        section.blocks.append(Text(f"No AP: {NO_GROUND_TRUTH}."))
        return section
    table = ap_table(ctx, metrics)
    section.blocks.append(
        Table(
            ["class", "objects", "AP", "AP50", *(f"AP {a}" for a in AREAS)],
            table,
            "AP averaged over IoU 0.50:0.95 and at IoU 0.5 (COCO), and per object size (small < 32² pixels ≤ "
            f"medium < 96² ≤ large); {DASH}: no object of that class or size in the split.",
        )
    )
    section.blocks.append(Panels(_ap_figures(table), "AP per class, and per object size over all classes."))
    return section


def ap_table(ctx: ReportContext, metrics: DetectionMetrics) -> list[list[Any]]:
    """One row per class: name, objects (not ignored), AP, AP50 and AP per size (DASH where undefined), then
    a row for all classes with the summary values."""
    precision = metrics.coco_eval.eval["precision"][:, :, :, :, -1]  # T×R×K×A
    objects = np.zeros(len(metrics.classes), dtype=np.int64)
    for sample in ctx.samples:
        for i, label in enumerate(sample.target.labels):
            objects[label] += not sample.target.ignored(i)
    rows = []
    for k, name in enumerate(metrics.classes):
        values = [_mean_defined(precision[:, :, k, 0]), _mean_defined(precision[0, :, k, 0])]
        values += [_mean_defined(precision[:, :, k, a]) for a in (1, 2, 3)]
        rows.append([name, int(objects[k]), *(DASH if v is None else v for v in values)])
    stats = metrics.coco_eval.stats
    summary = [stats[0], stats[1], stats[3], stats[4], stats[5]]
    rows.append(["all", int(objects.sum()), *(DASH if v < 0 else round(float(v), 4) for v in summary)])
    return rows


def _mean_defined(values: np.ndarray) -> float | None:
    defined = values[values > -1]
    return round(float(defined.mean()), 4) if defined.size else None


def _ap_figures(rows: list[list[Any]]) -> list[Figure]:
    per_class = rows[:-1]
    width, height = PANEL_SIZE
    by_class = MplFigure(figsize=(width, max(height, 0.28 * len(per_class) + 1.2)), layout="constrained")
    left = by_class.subplots()
    y = np.arange(len(per_class))
    for offset, column, label, colour in ((-0.2, 2, "AP", class_colour(4)), (0.2, 3, "AP50", class_colour(1))):
        values = [r[column] if r[column] != DASH else 0.0 for r in per_class]
        left.barh(y + offset, values, height=0.4, color=colour, label=label)
    left.set(yticks=y, yticklabels=[r[0] for r in per_class], xlim=(0, 1), xlabel="AP", title="per class")
    left.invert_yaxis()
    left.legend(loc="lower right", fontsize="small")
    left.grid(alpha=0.3, axis="x")
    by_size = MplFigure(figsize=PANEL_SIZE, layout="constrained")
    right = by_size.subplots()
    sizes = [rows[-1][4 + a] for a in range(3)]
    bars = right.bar(AREAS, [s if s != DASH else 0.0 for s in sizes], color=class_colour(4))
    right.bar_label(bars, labels=[DASH if s == DASH else f"{s:.2f}" for s in sizes])
    right.set(ylim=(0, 1.05), ylabel="AP (IoU 0.50:0.95)", title="per object size (all classes)")
    right.grid(alpha=0.3, axis="y")
    return [
        Figure("detection_ap_class.png", by_class, "AP per class"),
        Figure("detection_ap_size.png", by_size, "AP per object size"),
    ]


def _errors_section(
    counts: list[Counts], classes: list[str], conf: float, curve: ConfidenceCurve, origin: str
) -> Section:
    tp, fp, fn = (np.sum([getattr(c, f) for c in counts], axis=0) for f in ("tp", "fp", "fn"))
    rows = [_count_row(name, int(tp[k]), int(fp[k]), int(fn[k])) for k, name in enumerate(classes)]
    rows.append(_count_row("all", int(tp.sum()), int(fp.sum()), int(fn.sum())))
    rule = (
        f"Predictions with a score of at least {conf:.3g} ({origin}), matched best score first to the unmatched "
        f"ground-truth object of their class they overlap most, when box IoU ≥ {MATCH_IOU:g} (the VOC/COCO "
        "rule): a match is a true positive, a prediction left without one a false positive, an object left without "
        "one a false negative. Predictions on ignored objects (difficult, crowd) count neither way."
    )
    table = Table(["class", "objects", "predicted", "TP", "FP", "FN", "precision", "recall"], rows, rule)
    section = Section("detection-errors", "False positives and false negatives", [table])
    if curve.objects and len(curve.thresholds):
        caption = (
            "Precision, recall and F1 over all classes (the same matching) when only predictions scoring at least "
            f"the confidence on the x axis are kept; the dotted line marks {conf:.3g}, the threshold counted above. "
            "Predictions below the evaluation's own floor were never kept, so the curves stop there."
        )
        section.blocks.append(Figure("detection_confidence.png", _confidence_figure(curve, conf), caption))
    return section


def _confidence_figure(curve: ConfidenceCurve, conf: float) -> MplFigure:
    figure = MplFigure(figsize=(7, 4), layout="constrained")
    ax = figure.subplots()
    lines = (("F1", curve.f1, "black", "-"), ("precision", curve.precision, class_colour(4), "--"))
    for name, values, colour, style in (*lines, ("recall", curve.recall, class_colour(1), ":")):
        ax.plot(curve.thresholds, values, color=colour, linestyle=style, linewidth=2 if name == "F1" else 1.5,
                label=name, drawstyle="steps-post")  # fmt: skip
    at = curve.at(conf)
    ax.axvline(conf, color="#777777", linestyle=":", linewidth=1)
    if at["f1"] is not None:
        ax.plot([conf], [at["f1"]], "o", color="black")
        ax.annotate(f"{conf:.3g}: F1 {at['f1']:.2f}", (conf, at["f1"]), textcoords="offset points", xytext=(6, 6))
    ax.set(xlabel="confidence threshold", ylabel="over all classes", xlim=(0, 1), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize="small")
    return figure


def _count_row(name: str, tp: int, fp: int, fn: int) -> list[Any]:
    precision = round(tp / (tp + fp), 4) if tp + fp else DASH
    recall = round(tp / (tp + fn), 4) if tp + fn else DASH
    return [name, tp + fn, tp + fp, tp, fp, fn, precision, recall]


def ranking(counts: Sequence[Counts]) -> list[int]:
    """Image positions, worst first: by F1 at IoU 0.5, then by more errors (FP + FN), then in split order."""
    return sorted(range(len(counts)), key=lambda i: (counts[i].f1, -int(counts[i].fp.sum() + counts[i].fn.sum()), i))


def _gallery_section(ctx: ReportContext, counts: list[Counts], conf: float) -> Section:
    order = ranking(counts)
    worst, rest = order[:GALLERY_SIZE], order[GALLERY_SIZE:]
    picks = min(GALLERY_SIZE, len(rest))
    spread = [rest[round(j * (len(rest) - 1) / max(1, picks - 1))] for j in range(picks)]
    colours = (
        f"Ground truth in sky blue (class under the box), predictions with a score of at least {conf:g} in orange "
        "(class and score inside the box)"
    )
    section = Section("detection-gallery", "Predictions against ground truth")
    section.blocks.append(
        Gallery(
            "Worst images",
            [_thumbnail(ctx, i, counts[i], conf) for i in worst],
            f"{colours}. The images with the lowest F1 at IoU {MATCH_IOU:g} (2·TP / (2·TP + FP + FN)), then the "
            "most errors (FP + FN).",
            side=SHOWN,
        )
    )
    if spread:
        thumbnails = [_thumbnail(ctx, i, counts[i], conf) for i in dict.fromkeys(spread)]
        caption = f"{colours}. The other images, evenly spaced from worse to better F1."
        section.blocks.append(Gallery("Across the ranking", thumbnails, caption, side=SHOWN))
    return section


def _explanations(ctx: ReportContext, counts: list[Counts], conf: float) -> list[Section]:
    """Heatmaps of the best boxes on the worst images that have boxes (the gallery's order)."""
    from imagerec.outputs.report.explanations import explanation_sections

    found = [i for i in ranking(counts) if counts[i].tp.sum() + counts[i].fp.sum() > 0]
    captions = [f"{Path(ctx.samples[i].path).name} · F1 {counts[i].f1:.2f}" for i in found]
    empty = f"No box scored {conf:g} or more on these images: nothing to explain."
    return explanation_sections(ctx, [("Worst images with boxes", found, captions)], conf=conf, empty=empty)


def _thumbnail(ctx: ReportContext, i: int, counts: Counts, conf: float) -> tuple[np.ndarray, str]:
    """Image `i` with truth and predictions drawn (see `draw_comparison`), and its caption."""
    from imagerec.data.images import read_image
    from imagerec.errors import UserError

    sample, result = ctx.samples[i], ctx.results[i]
    caption = (
        f"{Path(sample.path).name} · F1 {counts.f1:.2f} · {int(counts.tp.sum())} TP, {int(counts.fp.sum())} FP, "
        f"{int(counts.fn.sum())} FN"
    )
    try:
        image = read_image(Path(sample.path))
    except UserError as error:  # an unreadable image is shown as its caption alone
        return np.zeros((16, SHOWN, 3), dtype=np.uint8), f"{caption} · unreadable: {error}"
    drawn = draw_comparison(image, sample.target, result, list(ctx.info.classes), conf=conf)
    return np.ascontiguousarray(drawn.permute(1, 2, 0).numpy()), caption


def draw_comparison(
    image: torch.Tensor, objects: Objects, detections: Detections, classes: Sequence[str], *, conf: float
) -> torch.Tensor:
    """3×H×W uint8: `image` enlarged with square pixels to at least MIN_DRAWN_SIDE on its longest side (or brought
    down to LARGEST), so that box labels read, ground truth in TRUTH_COLOUR and predictions scoring at least `conf`
    in PREDICTION_COLOUR (their masks tinted, for instance runs), and a legend band below."""
    small, scale = drawing_canvas(image, MIN_DRAWN_SIDE, LARGEST)
    size = tuple(small.shape[-2:])
    truth = [[v * scale for v in box] for box in objects.boxes]
    names = [classes[t] + (" (ignored)" if objects.ignored(i) else "") for i, t in enumerate(objects.labels)]
    canvas = draw_boxes(small, truth, names, TRUTH_COLOUR, below=True)
    keep = [i for i, score in enumerate(detections.scores) if score >= conf]
    if isinstance(detections, InstanceMasks) and keep:
        canvas = _tint(canvas, [detections.masks[i] for i in keep], size)
    boxes = [[v * scale for v in detections.boxes[i]] for i in keep]
    labels = [f"{detections.labels[i]} {detections.scores[i]:.2f}" for i in keep]
    canvas = draw_boxes(canvas.float() / 255, boxes, labels, PREDICTION_COLOUR)
    entries = [("truth", TRUTH_COLOUR), (f"prediction ≥ {conf:g}", PREDICTION_COLOUR)]
    return draw_legend(canvas, entries, height=max(18, size[1] // 25))


def _tint(canvas: torch.Tensor, masks: Sequence[dict[str, Any]], size: tuple[int, int]) -> torch.Tensor:
    """`canvas` with the predicted objects' pixels (COCO RLE at the image's size) tinted in PREDICTION_COLOUR."""
    from pycocotools import mask as coco_mask

    pixels = torch.from_numpy(np.stack([coco_mask.decode(m) for m in masks])).float()
    pixels = torch.nn.functional.interpolate(pixels[None], size=size, mode="nearest")[0] > 0.5
    return draw_segmentation_masks(canvas, pixels, alpha=0.35, colors=PREDICTION_COLOUR)
