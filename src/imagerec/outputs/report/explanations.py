"""The report's "why" section: heatmaps of what the model looked at on the images the task's galleries single out
(a classifier's most confident errors and surest successes, a detector's and a segmenter's worst images), drawn by
`imagerec explain`'s own code with its default method."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imagerec.errors import UserError
from imagerec.outputs.report.blocks import Gallery, ReportContext, Section, Text, shrink

if TYPE_CHECKING:
    from imagerec.outputs.explain import Explainer

EXPLAINED = 6  # images per gallery: each map costs about one training step
MAPS_PER_IMAGE = 2  # detection: the best boxes; segmentation: the classes present
THUMBNAIL = 192  # longest side of a drawn map; explain enlarges small images to this already
EXPLANATIONS_TITLE = "Why: where the model looked"


def explanation_sections(
    ctx: ReportContext,
    galleries: Sequence[tuple[str, Sequence[int], Sequence[str]]],
    *,
    conf: float = 0.25,
    empty: str = "No image had anything to explain.",
) -> list[Section]:
    """A "why" section with one gallery per (title, sample positions, their captions) in `galleries`, at most
    EXPLAINED images each; `conf` is a detector's box threshold, `empty` the line shown when no map was drawn.
    None when the context holds predictions but no model. A model explain cannot handle gets a line saying why
    instead of the galleries: the report is never lost to it."""
    from imagerec.outputs.explain import DEFAULT_METHOD, Explainer

    if ctx.predictor is None:
        return []
    section = Section("explanations", EXPLANATIONS_TITLE)
    try:
        explainer = Explainer(ctx.predictor, conf=conf, max_boxes=MAPS_PER_IMAGE)
    except UserError as error:
        section.blocks.append(Text(f"No heatmaps for this model: {error}"))
        return [section]
    coarse = _too_coarse(ctx, explainer)
    if coarse:
        section.blocks.append(Text(coarse))
        return [section]
    shown = []
    for title, positions, captions in galleries:
        pairs = zip(positions[:EXPLAINED], captions, strict=False)
        images = [drawn for i, caption in pairs for drawn in _maps(ctx, explainer, i, caption)]
        if images:
            shown.append(Gallery(title, images, side=THUMBNAIL))
    how = (
        f"Heatmaps by {DEFAULT_METHOD}, as `imagerec explain RUN IMAGE` draws them: pale yellow marks the regions "
        "that raised the score of the class named under the image, dark red ones less; where the image shows "
        "through untinted, they had no part in it. Each map is scaled to its own maximum. docs/explain.md "
        "describes the method and the sanity checks it passes."
    )
    section.blocks = [Text(how), *shown] if shown else [Text(empty)]
    return [section]


def _too_coarse(ctx: ReportContext, explainer: Explainer) -> str | None:
    """Why no map is drawn when the finest map a classifier or segmenter has at its input size is too coarse to
    point at anything (a detector's maps are read at stride 8, and checked on boxes: docs/explain.md)."""
    from imagerec.models.cam_layers import MIN_MAP_SIDE, map_side

    if explainer.layer is None or explainer.boxes:
        return None
    info = ctx.info
    side = map_side(explainer.model, explainer.layer, channels=info.channels, imgsz=info.imgsz)
    if side is None or side >= min(MIN_MAP_SIDE, info.imgsz):  # a map as wide as a small image is as fine as it gets
        return None
    return (
        f"No heatmaps: at {info.imgsz} px the finest feature map of {info.model} is {side}×{side}, too coarse to "
        f"point reliably (below {MIN_MAP_SIDE}×{MIN_MAP_SIDE}, maps found the object far less often in the pointing "
        "game of docs/explain.md). Train at a larger --imgsz to see where it looks, or use imagerec explain "
        "--method integrated-gradients, which works pixel by pixel."
    )


def _maps(ctx: ReportContext, explainer: Explainer, i: int, caption: str) -> list[tuple[np.ndarray, str]]:
    from imagerec.outputs.explain import draw_explanation

    path = Path(ctx.samples[i].path)
    try:
        image = explainer.read(path)
        found = explainer.explain_image(image, str(path))
    except UserError:  # unreadable (the galleries above say so) or too large to explain whole: left out
        return []
    maps = []
    for e in found[:MAPS_PER_IMAGE]:
        drawn = draw_explanation(e, image, key=False).permute(1, 2, 0).numpy()  # the caption names class and score
        maps.append((shrink(drawn, THUMBNAIL), f"{caption} · map of {e.target} ({e.score:.2f})"))
    return maps
