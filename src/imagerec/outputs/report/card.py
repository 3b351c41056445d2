"""The model card (after Mitchell et al. 2019, "Model Cards for Model Reporting"): what the model is, what it was
trained for and on, how well it did on the evaluated split with 95% intervals, and the limitations the data shows.
A section of report.html, also written beside it as model_card.md."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from imagerec.metrics.classification import wilson_interval
from imagerec.outputs.report.blocks import Headline, Notes, ReportContext, Section, Table, Text

FEW_EXAMPLES = 10  # a class with fewer test examples than this has a per-class score that means little
FEW_IMAGES = 100  # below this many evaluated images every interval is wide
FAR_RESIZE = 4  # images whose median longest side is this many times larger or smaller than imgsz
RESAMPLES = 1000
SHOWN_CLASSES = 20


def wilson(name: str, hits: int, total: int) -> Headline:
    """A Headline for the proportion hits/total with its 95% Wilson score interval."""
    interval = wilson_interval(hits, total)
    return Headline(name, hits / total if total else float("nan"), None if interval is None else tuple(interval),
                    f"Wilson, {hits} of {total}")  # fmt: skip


def bootstrap(
    name: str, value: float, parts: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray], what: str
) -> Headline:
    """A Headline for `value` with a 95% percentile-bootstrap interval over images: `parts` (N×M) holds each
    image's additive counts, `statistic` turns summed counts (B×M) into B values of the metric; `what` names the
    resampled unit for the table."""
    count = len(parts)
    if count < 2:
        return Headline(name, value, None, "none: fewer than 2 images")
    rng = np.random.default_rng(0)  # the same report twice shows the same interval
    weights = rng.multinomial(count, np.full(count, 1 / count), size=RESAMPLES).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = statistic(weights @ parts.astype(np.float64))
    values = values[np.isfinite(values)]
    interval = tuple(float(v) for v in np.percentile(values, [2.5, 97.5])) if len(values) else None
    return Headline(name, value, interval, f"bootstrap over {what}, {RESAMPLES} resamples")


def card_section(ctx: ReportContext, purpose: str) -> Section:
    """The model card; `purpose` says in a phrase what the task's model does ("sorts whole images into …")."""
    section = Section("model-card", f"Model card: {ctx.run.path.resolve().name}", file="model_card.md")
    section.blocks.append(Table(["model details", ""], _details(ctx)))
    section.blocks.append(Notes("Intended use", _intended_use(ctx, purpose)))
    section.blocks.append(Table(["training data", ""], _data_rows(ctx)))
    counts = _class_counts(ctx)
    if counts is not None:
        section.blocks.append(counts)
    if ctx.info.pretraining:
        section.blocks.append(Text("Evaluation: none. A pretraining run has no classes, so nothing was evaluated."))
        return section
    if ctx.split is None:
        section.blocks.append(Text("Evaluation: none in this report (no evaluation data, or `--no-eval`)."))
    else:
        section.blocks.append(_evaluation(ctx))
    section.blocks.append(Notes("Limitations", _limitations(ctx)))
    return section


def _details(ctx: ReportContext) -> list[list[Any]]:
    info, run = ctx.info, ctx.run
    classes = list(info.classes)
    names = ", ".join(classes[:SHOWN_CLASSES]) + (", …" if len(classes) > SHOWN_CLASSES else "")
    weights = next((p for p in (run.best, run.last) if p.exists()), None)
    trained = datetime.fromtimestamp(weights.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d") if weights else "?"
    started = (ctx.resolved.weights or {}).get("source") or "random initialisation (no pretrained weights)"
    return [
        ["architecture", info.model + (f" on {info.backbone}" if info.backbone else "")],
        ["task", info.task + (" (multi-label)" if info.multilabel else "")],
        ["input", f"{info.imgsz} px, {info.channels} channel(s); {info.resize}"],
        ["classes", f"{len(classes)}: {names}" if classes else "none (a pretrained backbone)"],
        ["started from", started],
        ["trained", trained],
        ["imagerec version", ctx.resolved.versions.get("imagerec", "?")],
    ]


def _intended_use(ctx: ReportContext, purpose: str) -> list[str]:
    data = ctx.config.get("data", {}).get("path") or "?"
    uses = [f"Trained to {purpose}, on {data}."]
    if ctx.info.pretraining:
        return uses + [
            "Meant as starting weights: `imagerec train DATA --weights RUN` trains a classifier, detector or "
            "segmenter from it. It predicts no classes of its own."
        ]
    evaluated = (
        f"the {ctx.split} split of {ctx.metrics.get('data', data)} ({len(ctx.samples)} images)"
        if ctx.split is not None
        else "no images in this report"
    )
    return uses + [
        f"Validated only on images like {evaluated}. Out of scope: images from other sources, devices, settings or "
        "populations, and classes it was not trained on; its scores there are unknown until it is evaluated on "
        "such data (`imagerec evaluate RUN DATA`). Not for decisions about people without a human in the loop."
    ]


def _data_rows(ctx: ReportContext) -> list[list[Any]]:
    split = ctx.run.read_split()
    sizes = ", ".join(f"{len(paths)} {name}" for name, paths in split.items()) if split else "not recorded"
    return [
        ["path", ctx.config.get("data", {}).get("path") or "?"],
        ["fingerprint", ctx.resolved.data_fingerprint or "—"],
        ["split sizes", sizes],
        *(["note", note] for note in ctx.resolved.data_notes),
    ]


def _class_counts(ctx: ReportContext) -> Table | None:
    """Examples per class in each split the evaluation data holds (objects for detection data); None where
    unknown (no data read, or segmentation masks, which are not counted without reading them)."""
    index = ctx.index
    if index is None or not ctx.info.classes:
        return None
    splits = [name for name in index.splits if index.samples(name)]
    counts = {name: index.counts(name) for name in splits}
    if not any(sum(c) for c in counts.values()):
        return None
    rows = [[name, *(counts[s][k] for s in splits)] for k, name in enumerate(ctx.info.classes)]
    unit = "objects" if index.objects else "images"
    return Table(["class", *splits], rows, f"{unit.capitalize()} per class in each split of {index.root}.")


def _evaluation(ctx: ReportContext) -> Table:
    rows = [
        [h.name, h.value, "—" if h.interval is None else f"{h.interval[0]:.3f}–{h.interval[1]:.3f}", h.method]
        for h in ctx.headlines
    ]
    caption = (
        f"On the {ctx.split} split ({len(ctx.samples)} images). 95% intervals: Wilson score intervals for "
        "proportions of images, percentile bootstrap intervals (images resampled with replacement, seed 0) for "
        "ratios of summed counts; a dash where none is drawn."
    )
    return Table(["metric", "value", "95% interval", "interval"], rows, caption)


def _limitations(ctx: ReportContext) -> list[str]:
    """What the evaluated data shows about how far the numbers can be trusted, then what the task's sections
    found."""
    found = []
    count = len(ctx.samples)
    if count < FEW_IMAGES:
        found.append(
            f"Only {count} evaluated images (fewer than {FEW_IMAGES}): the intervals above are wide, and a "
            "difference of a few images between two models means little."
        )
    if ctx.index is not None and ctx.split is not None:
        counts = ctx.index.counts(ctx.split)
        unit = "objects" if ctx.index.objects else "images"
        few = [f"{name} ({n})" for name, n in zip(ctx.info.classes, counts, strict=True) if n < FEW_EXAMPLES]
        if any(counts) and few:
            found.append(f"Classes with fewer than {FEW_EXAMPLES} {unit} in the {ctx.split} split, whose "
                         f"per-class scores mean little: {', '.join(few)}.")  # fmt: skip
    found += _resizing(ctx)
    found += ctx.limitations
    return found or ["None found in the evaluated data; that is no guarantee on other data."]


def _resizing(ctx: ReportContext) -> list[str]:
    """A line when the evaluated images are far larger or smaller than the model's input (detail lost, or blur
    invented), from their headers."""
    from imagerec.data.formats._boxes import image_size

    sides = [max(size) for s in ctx.samples if (size := image_size(Path(s.path)))]
    if not sides:
        return []
    median, imgsz = float(np.median(sides)), ctx.info.imgsz
    if imgsz / FAR_RESIZE < median < imgsz * FAR_RESIZE:
        return []
    way = "down" if median > imgsz else "up"
    return [
        f"The evaluated images (median longest side {median:.0f} px) are scaled {way} to {imgsz} px: "
        f"{'fine detail is lost' if way == 'down' else 'the model sees enlarged, blurred pixels'}."
    ]
