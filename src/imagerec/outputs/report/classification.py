"""Classification report sections: the confusion matrix, precision, recall and F1 per class, ROC and
precision–recall curves, for binary data the scores at the decision threshold, a reliability diagram with the
expected calibration error, galleries of the most confident errors and the least confident correct predictions, and
every image's prediction.

Counts and per-class values are `imagerec evaluate`'s (`ctx.metrics`); curves, calibration and galleries come
from the full probability vectors of the same images (`ctx.outputs`). Multi-label runs get the per-label
table and curves; the sections built on one predicted class per image are left out, and the report says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure as MplFigure

from imagerec.outputs.report.blocks import (
    Figure,
    Gallery,
    Headline,
    Panels,
    ReportContext,
    Section,
    Table,
    Text,
    shrink,
)
from imagerec.outputs.report.card import bootstrap, wilson
from imagerec.outputs.report.common import image_name, panel, plain_figure, predictions_section
from imagerec.outputs.visualize import class_colour, to_uint8_rgb
from imagerec.records import Decision

ECE_BINS = 15
GALLERY_SIZE = 12
THUMBNAIL = 384  # longest side of a gallery image as embedded (it opens full size); smaller images are kept as they are
SHOWN = 128  # longest side of a gallery thumbnail on the page
PURPOSE = "assign classes to whole images"
ANNOTATE_LIMIT = 12  # confusion matrices up to this many classes get their numbers written in the cells
TABLE_LIMIT = 20  # and up to this many, a table of the counts
LEGEND_LIMIT = 12  # beyond this many curves a legend is unreadable: the per-class table gives the areas
LINE_STYLES = ("-", "--", ":", "-.")


def sections(ctx: ReportContext) -> list[Section]:
    """The classification sections of the report; none without evaluation data."""
    if ctx.split is None or not ctx.samples:
        return []
    classes = list(ctx.info.classes)
    probs = torch.stack(ctx.outputs).double().numpy()  # N×K: each image's class probabilities
    if ctx.info.multilabel:
        truth = multi_hot([s.target for s in ctx.samples], len(classes))
        return [
            per_class_section(ctx.metrics, classes, multilabel=True),
            curves_section(probs, truth, classes),
            Section("omitted", "Not shown for multi-label runs", [Text(MULTILABEL_OMITTED)]),
            _multilabel_predictions(ctx, probs, truth, classes),
        ]
    targets = np.array([s.target for s in ctx.samples], dtype=np.int64)
    ctx.headlines = headlines(ctx.metrics, probs, targets)
    ctx.limitations = never_predicted(classes, np.bincount(targets, minlength=len(classes)),
                                      np.bincount(probs.argmax(1), minlength=len(classes)), "images")  # fmt: skip
    return [
        confusion_section(ctx.metrics, classes),
        per_class_section(ctx.metrics, classes, multilabel=False),
        *_curves(ctx, probs, np.eye(len(classes), dtype=np.int64)[targets], classes),
        calibration_section(probs, targets),
        gallery_section(ctx, probs, targets, classes),
        _predictions(ctx, probs, targets, classes),
        *_explanations(ctx, probs, targets, classes),
    ]


def never_predicted(
    classes: list[str], present: np.ndarray, predicted: np.ndarray, unit: str, how: str = ""
) -> list[str]:
    """A model-card line naming the classes present in the split (`present` {unit} per class) that were never
    predicted (`predicted` per class; `how`: under which rule); none when every present class was."""
    missed = [name for name, p, q in zip(classes, present, predicted, strict=True) if p > 0 and q == 0]
    if not missed:
        return []
    return [f"Classes never predicted{how}, though the evaluated split holds {unit} of them: {', '.join(missed)}."]


def headlines(metrics: dict[str, Any], probs: np.ndarray, targets: np.ndarray) -> list[Headline]:
    """Accuracy (Wilson) and macro F1 (bootstrap over images) of the most probable class; for binary data the
    sensitivity and specificity at the decision threshold with evaluate's Wilson intervals."""
    k = probs.shape[1]
    predicted = probs.argmax(1)
    found = [wilson("accuracy", int((predicted == targets).sum()), len(targets))]
    parts = np.zeros((len(targets), k * k))  # each image's one cell of the confusion matrix
    parts[np.arange(len(targets)), targets * k + predicted] = 1
    found.append(bootstrap("F1, macro average", metrics["f1_macro"], parts, lambda s: _macro_f1(s.reshape(-1, k, k)),
                           "images"))  # fmt: skip
    counts = metrics.get("counts_at_threshold", {})
    for key, name, hits, parts_of in RATES[:2]:
        if metrics.get(key) is not None and metrics.get(f"{key}_ci") is not None:
            hit, total = (sum(counts.get(p, 0) for p in group) for group in (hits, parts_of))
            name = f"{name.format(positive=metrics['positive'])} at threshold {metrics['threshold']:.3g}"
            found.append(Headline(name, metrics[key], tuple(metrics[f"{key}_ci"]), f"Wilson, {hit} of {total}"))
    return found


def _macro_f1(confusion: np.ndarray) -> np.ndarray:
    """Macro F1 of each of B confusion matrices (B×K×K, rows truth), as evaluate averages it: over every class,
    0 for a class with no true and no predicted image."""
    tp = np.diagonal(confusion, axis1=1, axis2=2)
    both = confusion.sum(1) + confusion.sum(2)
    return np.where(both > 0, 2 * tp / np.maximum(both, 1), 0.0).mean(1)


def _predictions(ctx: ReportContext, probs: np.ndarray, targets: np.ndarray, classes: list[str]) -> Section:
    """Every image: true and predicted class, the probability of each, worst first (lowest probability of the
    true class)."""
    predicted = probs.argmax(1)
    truth = probs[np.arange(len(targets)), targets]
    rows = [
        [image_name(ctx, ctx.samples[i].path), classes[targets[i]], classes[predicted[i]],
         float(probs[i, predicted[i]]), float(truth[i]), "yes" if predicted[i] == targets[i] else "no"]
        for i in np.argsort(truth, kind="stable").tolist()
    ]  # fmt: skip
    columns = ["image", "true", "predicted", "p(predicted)", "p(true)", "correct"]
    return predictions_section(columns, rows, "Each evaluated image, lowest probability of its true class first.")


def _multilabel_predictions(ctx: ReportContext, probs: np.ndarray, truth: np.ndarray, classes: list[str]) -> Section:
    """Every image: its labels and those predicted at evaluate's threshold, most wrong labels first."""
    threshold = ctx.metrics.get("threshold", 0.5)
    predicted = probs >= threshold
    wrong = (predicted != truth.astype(bool)).sum(1)
    ctx.headlines = [wilson("exact match (all labels right)", int((wrong == 0).sum()), len(wrong))]

    def names(row: np.ndarray) -> str:
        return ", ".join(name for name, on in zip(classes, row, strict=True) if on) or "—"

    rows = [
        [image_name(ctx, ctx.samples[i].path), names(truth[i]), names(predicted[i]), int(wrong[i]),
         "yes" if wrong[i] == 0 else "no"]
        for i in np.argsort(-wrong, kind="stable").tolist()
    ]  # fmt: skip
    columns = ["image", "true labels", "predicted labels", "wrong labels", "all right"]
    how = f"Each evaluated image, labels predicted at probability ≥ {threshold:g}; most wrong labels first."
    return predictions_section(columns, rows, how)


def _curves(ctx: ReportContext, probs: np.ndarray, truth: np.ndarray, classes: list[str]) -> list[Section]:
    """One-vs-rest curves; binary data (its metrics name the positive class): that class's curves with the
    decision threshold marked, and the scores at that threshold."""
    if "positive" not in ctx.metrics:
        return [curves_section(probs, truth, classes)]
    positive = classes.index(ctx.metrics["positive"])
    return [
        curves_section(probs, truth, classes, positive=positive, point=operating_point(ctx.metrics)),
        decision_section(ctx.metrics, ctx.info.decision, ctx.split),
    ]


MULTILABEL_OMITTED = (
    "A multi-label image has no single predicted class, so the confusion matrix, the reliability diagram (which "
    "bins the top class's probability) and the galleries of errors are left out; every label is judged on its own "
    "in the table and curves above, at the 0.5 threshold `imagerec evaluate` uses."
)


def multi_hot(targets: list[Any], k: int) -> np.ndarray:
    hot = np.zeros((len(targets), k), dtype=np.int64)
    for i, labels in enumerate(targets):
        hot[i, list(labels)] = 1
    return hot


# -- confusion matrix ---------------------------------------------------------------------------------------------
def confusion_section(metrics: dict[str, Any], classes: list[str]) -> Section:
    counts = np.asarray(metrics["confusion_matrix"], dtype=np.int64)
    section = Section("confusion-matrix", "Confusion matrix")
    section.blocks.append(
        Panels(
            confusion_figures(counts, classes),
            f"Rows are the true classes, columns the predicted ones: image counts (first, {int(counts.sum())} images) "
            "and each row divided by its total (second: the diagonal is each class's recall); blank cells are 0.",
        )
    )
    if len(classes) <= TABLE_LIMIT:
        rows = [[name, *counts[i].tolist(), int(counts[i].sum())] for i, name in enumerate(classes)]
        rows.append(["all", *counts.sum(0).tolist(), int(counts.sum())])
        section.blocks.append(Table(["true \\ predicted", *classes, "total"], rows, "Image counts."))
    return section


def confusion_figures(counts: np.ndarray, classes: list[str]) -> list[Figure]:
    """The counts (confusion_matrix.png) and the row-normalised matrix (confusion_matrix_normalised.png)."""
    totals = counts.sum(1, keepdims=True)
    normalised = np.divide(counts, totals, out=np.full(counts.shape, np.nan), where=totals > 0)
    return [
        Figure("confusion_matrix.png", _matrix_figure(counts, classes, "counts", "d"), "image counts"),
        Figure("confusion_matrix_normalised.png", _matrix_figure(normalised, classes, "row-normalised", ".2f"),
               "each row divided by its total"),
    ]  # fmt: skip


def _matrix_figure(values: np.ndarray, classes: list[str], title: str, form: str) -> MplFigure:
    k = len(classes)
    # Up to a dozen classes a pair fits the page's width; beyond, the PNG beside the report has the detail.
    side = min(3.2, 1.4 + 0.22 * k) if k <= ANNOTATE_LIMIT else min(9.0, 0.22 * k)
    labels = classes if k <= 40 else [""] * k
    longest = max((len(name) for name in labels), default=1)
    label_room = 0.45 + 0.075 * longest  # inches, at the small font size
    rotate = k > 6 and longest > 2  # many long names: x labels turned vertical
    below = label_room if rotate else 0.3
    left = label_room + 0.35
    figure = plain_figure(left + 1.25 * side + 0.5, side + below + 0.35 + 0.4, left=left, bottom=below + 0.35,
                          right=0.5)  # fmt: skip
    ax = figure.subplots()
    ticks = np.arange(k)
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=None if form == "d" else 1)
    figure.colorbar(image, ax=ax, shrink=0.8)
    ax.set(title=title, xlabel="predicted", ylabel="true", xticks=ticks, yticks=ticks)
    ax.set_xticklabels(labels, rotation=90 if rotate else 0, fontsize="small")
    ax.set_yticklabels(labels, fontsize="small")
    if k <= ANNOTATE_LIMIT:
        high = np.nanmax(values) if np.isfinite(values).any() else 1
        for (i, j), value in np.ndenumerate(values):
            if np.isnan(value) or value == 0:  # blank cells read faster, and text is the slow part to draw
                continue
            colour = "white" if value > 0.6 * high else "black"
            ax.text(j, i, format(value, form), ha="center", va="center", color=colour, fontsize="small")
    return figure


# -- per class ----------------------------------------------------------------------------------------------------
def per_class_section(metrics: dict[str, Any], classes: list[str], *, multilabel: bool) -> Section:
    per_class = metrics["per_class"]
    rows = [[name, *(per_class[name][k] for k in ("precision", "recall", "f1", "support"))] for name in classes]
    support = sum(int(per_class[name]["support"]) for name in classes)
    if multilabel:
        threshold = metrics.get("threshold", 0.5)
        caption = (
            f"Each label judged on its own at probability ≥ {threshold:g}; support counts the images carrying it. "
            f"Over all labels: F1 macro {metrics['f1_macro']:.4f}, micro {metrics['f1_micro']:.4f}; "
            f"all labels right on {metrics['exact_match']:.1%} of the images."
        )
        title, noun = "Precision, recall and F1 per label", "label"
    else:
        macro = [metrics[k] for k in ("precision_macro", "recall_macro", "f1_macro")]
        rows.append(["macro average", *macro, support])
        rows.append(["weighted F1", "", "", metrics["f1_weighted"], support])
        caption = (
            "One-vs-rest for each class, predicting the most probable class; support is the number of images of "
            "the class. The macro average weighs every class equally, the weighted F1 by support."
        )
        title, noun = "Precision, recall and F1 per class", "class"
    return Section("per-class", title, [Table([noun, "precision", "recall", "F1", "support"], rows, caption)])


# -- ROC and precision–recall ---------------------------------------------------------------------------------------
def curves_section(
    probs: np.ndarray,
    truth: np.ndarray,
    classes: list[str],
    *,
    positive: int | None = None,
    point: dict[str, float] | None = None,
) -> Section:
    """ROC and precision–recall curves from `probs` (N×K) against `truth` (N×K, 0/1): for the `positive` class
    alone when given (binary data), with the operating `point` marked; otherwise one-vs-rest for each class (each
    label, multi-label)."""
    from torchmetrics.functional.classification import (
        binary_auroc,
        binary_average_precision,
        binary_precision_recall_curve,
        binary_roc,
    )

    shown = [positive] if positive is not None else list(range(len(classes)))
    (roc_figure, roc_ax), (pr_figure, pr_ax) = panel(), panel()
    rows, missing = [], []
    for k in shown:
        y, score = truth[:, k], probs[:, k]
        if y.min() == y.max():  # no positive (or no negative) image: neither curve is defined
            missing.append(classes[k])
            rows.append([classes[k], int(y.sum()), "—", "—"])
            continue
        y_t, score_t = torch.from_numpy(y), torch.from_numpy(score)
        fpr, tpr, _ = (v.numpy() for v in binary_roc(score_t, y_t))
        precision, recall, _ = (v.numpy() for v in binary_precision_recall_curve(score_t, y_t))
        roc_auc, ap = float(binary_auroc(score_t, y_t)), float(binary_average_precision(score_t, y_t))
        style = {"color": class_colour(k), "linestyle": LINE_STYLES[k // 8 % len(LINE_STYLES)]}
        roc_ax.plot(fpr, tpr, label=f"{classes[k]} (AUC {roc_auc:.3f})", **style)
        pr_ax.step(recall, precision, where="post", label=f"{classes[k]} (AP {ap:.3f})", **style)
        rows.append([classes[k], int(y.sum()), float(roc_auc), float(ap)])
    if point is not None and not missing:
        marker = {"color": "black", "marker": "o", "linestyle": "none", "zorder": 3, "clip_on": False}
        label = f"threshold {point['threshold']:.3g}"
        roc_ax.plot(point["fpr"], point["tpr"], label=label, **marker)
        if point.get("precision") is not None:
            pr_ax.plot(point["tpr"], point["precision"], label=label, **marker)
    roc_ax.plot([0, 1], [0, 1], color="#999999", linestyle="--", linewidth=1)
    roc_ax.set(title="ROC", xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.02))
    pr_ax.set(title="precision–recall", xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    for ax in (roc_ax, pr_ax):
        ax.grid(alpha=0.3)
        if len(shown) <= LEGEND_LIMIT:
            ax.legend(fontsize="small", frameon=False, loc="lower right" if ax is roc_ax else "lower left")
    what = f"for {classes[positive]} as the positive class" if positive is not None else "one-vs-rest for each class"
    caption = (
        f"ROC (first) and precision–recall (second) curves {what}, from the predicted probabilities; AUC is the area "
        "under the ROC curve, AP the average precision (the step-wise area under the precision–recall curve)."
    )
    if point is not None and not missing:
        caption += f" The dot marks the decision threshold ({point['threshold']:.3g}), scored in the next section."
    figures = [Figure("roc.png", roc_figure, "ROC curves"), Figure("precision_recall.png", pr_figure, "PR curves")]
    section = Section("roc-pr", "ROC and precision–recall curves", [Panels(figures, caption)])
    section.blocks.append(Table(["class", "positives", "ROC AUC", "AP"], rows))
    if missing:
        section.blocks.append(Text(f"No curves for {', '.join(missing)}: the split has no image on one side."))
    return section


# -- the decision threshold ----------------------------------------------------------------------------------------
# key in the metrics, row name, and the confusion counts over and under its fraction
RATES = (
    ("sensitivity", "sensitivity (recall of {positive})", ("tp",), ("tp", "fn")),
    ("specificity", "specificity (recall of the rest)", ("tn",), ("tn", "fp")),
    ("ppv", "PPV (precision of {positive})", ("tp",), ("tp", "fp")),
    ("npv", "NPV (precision of the rest)", ("tn",), ("tn", "fn")),
    ("accuracy_at_threshold", "accuracy", ("tp", "tn"), ("tp", "fp", "fn", "tn")),
)


def operating_point(metrics: dict[str, Any]) -> dict[str, float] | None:
    """Where the decision threshold puts the positive class on the ROC and precision–recall curves."""
    if metrics.get("sensitivity") is None or metrics.get("specificity") is None:
        return None
    return {
        "threshold": metrics["threshold"], "fpr": 1 - metrics["specificity"], "tpr": metrics["sensitivity"],
        "precision": metrics.get("ppv"),
    }  # fmt: skip


def decision_section(metrics: dict[str, Any], decision: Decision | None, split: str | None) -> Section:
    """Sensitivity, specificity, PPV, NPV and accuracy at the decision threshold, with 95% Wilson intervals."""
    positive, counts = metrics["positive"], metrics.get("counts_at_threshold", {})
    rows = []
    for key, name, hits, parts in RATES:
        value, interval = metrics.get(key), metrics.get(f"{key}_ci")
        found, total = (sum(counts.get(part, 0) for part in group) for group in (hits, parts))
        shown = "—" if interval is None else f"{interval[0]:.3f}–{interval[1]:.3f}"
        rows.append([name.format(positive=positive), "—" if value is None else value, shown, f"{found} / {total}"])
    if decision is None:
        how = f"threshold {metrics['threshold']:g} for {positive} (no threshold chosen for this run: the default)"
    else:
        how = decision.describe()
    caption = (
        f"{how[0].upper()}{how[1:]}. An image is called {positive} when its probability of {positive} is at least "
        f"the threshold; the scores are measured on {split}. The intervals are 95% Wilson score intervals; the last "
        f"column counts the images behind each proportion (sensitivity: {positive} images found / all {positive} "
        "images). Accuracy elsewhere in the report takes the most probable class."
    )
    table = Table(["measure", "value", "95% interval", "images"], rows, caption)
    return Section("decision", f"At the decision threshold for {positive}", [table])


# -- calibration ------------------------------------------------------------------------------------------------------
def calibration_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Per bin b of (b/bins, (b+1)/bins]: the number of images whose top-class probability falls in it, their mean
    confidence and their accuracy (NaN for an empty bin)."""
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=confidence, minlength=bins) / count
        accuracy = np.bincount(index, weights=correct.astype(np.float64), minlength=bins) / count
    return {"count": count, "confidence": mean_conf, "accuracy": accuracy}


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE = Σ_b (n_b / N) · |accuracy_b − confidence_b| over `bins` equal-width bins of the top-class probability."""
    binned = calibration_bins(confidence, correct, bins)
    used = binned["count"] > 0
    weights = binned["count"][used] / len(confidence)
    return float(np.sum(weights * np.abs(binned["accuracy"][used] - binned["confidence"][used])))


def calibration_section(probs: np.ndarray, targets: np.ndarray) -> Section:
    confidence, correct = probs.max(1), probs.argmax(1) == targets
    ece = expected_calibration_error(confidence, correct)
    binned = calibration_bins(confidence, correct)
    edges = np.linspace(0, 1, ECE_BINS + 1)
    figure = plain_figure(6, 6, rows=2)
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    used = binned["count"] > 0
    top.bar(edges[:-1][used], binned["accuracy"][used], width=1 / ECE_BINS, align="edge", color=class_colour(4),
            edgecolor="white", label="accuracy")  # fmt: skip
    top.plot(binned["confidence"][used], binned["accuracy"][used], "o", color=class_colour(0), label="mean confidence")
    top.plot([0, 1], [0, 1], color="#555555", linestyle="--", linewidth=1, label="perfect calibration")
    top.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02), title=f"reliability (ECE {ece:.4f})")
    top.legend(fontsize="small", frameon=False, loc="upper left")
    top.grid(alpha=0.3)
    bottom.bar(edges[:-1], binned["count"], width=1 / ECE_BINS, align="edge", color="#999999", edgecolor="white")
    bottom.set(xlabel="top-class probability (confidence)", ylabel="images")
    caption = (
        f"The images binned by their top-class probability into {ECE_BINS} equal-width bins: the bars show each "
        "bin's accuracy, the dots where its mean confidence lies; a calibrated model's bars meet the diagonal. "
        "Below: images per bin."
    )
    text = Text(
        f"Expected calibration error (ECE): {ece:.4f}, the mean gap between confidence and accuracy weighted by "
        f"the images in each bin; accuracy {correct.mean():.4f}, mean confidence {confidence.mean():.4f}."
    )
    return Section("calibration", "Calibration", [Figure("calibration.png", figure, caption), text])


# -- galleries ----------------------------------------------------------------------------------------------------
def gallery_section(ctx: ReportContext, probs: np.ndarray, targets: np.ndarray, classes: list[str]) -> Section:
    predicted, confidence = probs.argmax(1), probs.max(1)
    wrong, right = _by_confidence(probs, targets)
    worst, unsure = wrong[:GALLERY_SIZE], right[np.argsort(confidence[right], kind="stable")][:GALLERY_SIZE]

    def thumbnails(indices: np.ndarray) -> list[tuple[np.ndarray, str]]:
        return [
            (thumbnail(ctx.samples[i].path), f"{classes[targets[i]]} → {classes[predicted[i]]} ({confidence[i]:.2f})")
            for i in indices.tolist()
        ]

    caption = "Captions read true class → predicted class (its probability)."
    errors = f"{len(wrong)} of {len(targets)} images wrong. {caption}"
    blocks = [
        Gallery("Most confident errors", thumbnails(worst), errors, side=SHOWN),
        Gallery("Least confident correct predictions", thumbnails(unsure), caption, side=SHOWN),
    ]
    return Section("examples", "Examples: confident errors and uncertain successes", blocks)


def _by_confidence(probs: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the wrong and of the right predictions, each from the most confident down."""
    predicted, confidence = probs.argmax(1), probs.max(1)
    wrong = np.flatnonzero(predicted != targets)
    right = np.flatnonzero(predicted == targets)
    return wrong[np.argsort(-confidence[wrong], kind="stable")], right[np.argsort(-confidence[right], kind="stable")]


def _explanations(ctx: ReportContext, probs: np.ndarray, targets: np.ndarray, classes: list[str]) -> list[Section]:
    """Heatmaps of the predicted class on the most confident errors and the most confident correct predictions."""
    from imagerec.outputs.report.explanations import explanation_sections

    def captions(positions: np.ndarray) -> list[str]:
        return [f"{Path(ctx.samples[i].path).name} · true {classes[targets[i]]}" for i in positions.tolist()]

    wrong, right = _by_confidence(probs, targets)
    return explanation_sections(
        ctx, [("Most confident errors", wrong, captions(wrong)), ("Most confident successes", right, captions(right))]
    )


def thumbnail(path: Any) -> np.ndarray:
    """The image as H×W×3 uint8, its longest side brought down to THUMBNAIL pixels when longer."""
    from imagerec.data.images import read_image

    return shrink(to_uint8_rgb(read_image(path)).permute(1, 2, 0).numpy(), THUMBNAIL)
