"""Drawing predictions on images: one palette and one set of functions for predict, reports and explanations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from imagerec.runs import atomic_write
from imagerec.tasks.results import Classification, Detections, InstanceMasks, SegmentationMask

MIN_LABELLED_SIDE = 192  # small images (8×8 digit scans, 28 px medical crops) are enlarged so their labels fit
MIN_DRAWN_SIDE = 512  # boxes and masks are drawn on an image at least this large, so labels on a 128-px scene read
# Okabe & Ito's colour-blind-safe palette (black dropped: it vanishes on dark images).
PALETTE = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#999999"]


def class_colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def to_uint8_rgb(image: torch.Tensor) -> torch.Tensor:
    """A C×H×W float image in [0, 1] (1, 3 or more channels) as 3×H×W uint8 for drawing."""
    image = image.detach().float().cpu()
    image = image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def draw_detections(
    image: torch.Tensor, detections: Detections, classes: Sequence[str], *, readable: bool = False
) -> torch.Tensor:
    """`image` (C×H×W in [0, 1]) with each box drawn in its class colour and labelled "class score" on a band of
    that colour; `readable`: enlarged first with square pixels to MIN_DRAWN_SIDE when smaller."""
    scale = drawn_scale(image.shape[1:]) if readable else 1
    lookup = {name: i for i, name in enumerate(classes)}
    colours = [class_colour(lookup.get(label, 0)) for label in detections.labels]
    labels = [f"{label} {score:.2f}" for label, score in zip(detections.labels, detections.scores, strict=True)]
    boxes = [[v * scale for v in box] for box in detections.boxes]
    return draw_boxes(enlarge(image, scale), boxes, labels, colours)


def drawn_scale(size: Sequence[int]) -> int:
    """The whole factor that brings an image of `size` (H, W) to MIN_DRAWN_SIDE on its longer side (1 when it is
    that big already): boxes, masks and their labels need room to be read."""
    return max(1, -(-MIN_DRAWN_SIDE // max(size)))


def text_colour(background: str) -> str:
    """Black or white, whichever reads better on `background` (#rrggbb), by its relative luminance."""
    red, green, blue = (int(background[i : i + 2], 16) / 255 for i in (1, 3, 5))
    return "black" if 0.2126 * red + 0.7152 * green + 0.0722 * blue > 0.5 else "white"


def draw_classification(image: torch.Tensor, result: Classification, classes: Sequence[str]) -> torch.Tensor:
    """`image` (enlarged with square pixels when small) above a band listing the top labels with their
    probabilities, each in its class colour, most probable first."""
    canvas = enlarge(to_uint8_rgb(image), legible_scale(image.shape[1:]))
    lookup = {name: i for i, name in enumerate(classes)}
    entries = [(f"{label} {prob:.2f}", class_colour(lookup.get(label, 0))) for label, prob in zip(
        result.labels, result.probs, strict=True)]  # fmt: skip
    return draw_legend(canvas, entries, height=max(18, canvas.shape[2] // 10))


def legible_scale(size: Sequence[int]) -> int:
    """The whole factor that brings an image of `size` (H, W) to MIN_LABELLED_SIDE on its longer side; 1 when it
    is that big already."""
    return max(1, -(-MIN_LABELLED_SIDE // max(size)))


def enlarge(image: torch.Tensor, scale: int) -> torch.Tensor:
    """`image` (…×H×W) with each pixel repeated `scale` times along both sides: square pixels, no invented detail."""
    return image if scale == 1 else image.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)


def draw_boxes(
    image: torch.Tensor,
    boxes: Sequence[Sequence[float]],
    labels: Sequence[str],
    colours: str | Sequence[str],
    *,
    below: bool = False,
) -> torch.Tensor:
    """`image` (C×H×W in [0, 1]) with `boxes` (pixel corners x1, y1, x2, y2) drawn in `colours` (one for all, or
    one per box), each labelled inside its top-left corner, or with `below` under its bottom-left corner (so that
    two sets of boxes drawn on one image keep their labels apart); as 3×H×W uint8."""
    canvas = to_uint8_rgb(image)
    if not len(boxes):
        return canvas
    colours = [colours] * len(boxes) if isinstance(colours, str) else list(colours)
    width = max(1, round(max(canvas.shape[1:]) / 200))  # legible on a 128 px scene and on a 4,000 px photo
    font_size = max(10, round(max(canvas.shape[1:]) / 40))
    tensor = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    canvas = draw_bounding_boxes(
        canvas,
        tensor,
        labels=None if below else list(labels),
        colors=colours,
        width=width,
        font=font_path(),
        font_size=font_size,
        fill_labels=True,  # each label on a band of its box's colour: legible over any image and over other labels
        label_background_colors=colours,
        label_colors=[text_colour(c) for c in colours],
    )
    if not below:
        return canvas
    from PIL import ImageDraw, ImageFont

    drawn = Image.fromarray(np.ascontiguousarray(canvas.permute(1, 2, 0).numpy()))
    draw, font = ImageDraw.Draw(drawn), ImageFont.truetype(font_path(), size=font_size)
    for (x1, _, _, y2), label, colour in zip(tensor.tolist(), labels, colours, strict=True):
        y = min(y2 + width, drawn.height - font_size - 1)  # under the box, or just inside it at the image's edge
        draw.rectangle(draw.textbbox((max(0, x1), y), label, font=font), fill=colour)
        draw.text((max(0, x1), y), label, fill=text_colour(colour), font=font)
    return torch.from_numpy(np.asarray(drawn).copy()).permute(2, 0, 1)


def draw_legend(
    image: torch.Tensor, entries: Sequence[tuple[str, str]], *, height: int = 18, background: str = "black"
) -> torch.Tensor:
    """A 3×H×W uint8 `image` with a band below it naming each (text, colour) entry in its colour, left to right in
    lines of `height` pixels, as many lines as the entries need; an entry wider than the image goes on lines of its
    own, broken between words (a single word wider than the image is shortened with …): the key to what the colours
    on the image mean."""
    from PIL import ImageDraw, ImageFont

    array = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
    width = array.shape[1]
    font = ImageFont.truetype(font_path(), size=max(8, height - 5))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    placed, x, line = [], 3, 0
    for text, colour in entries:
        for piece in _pieces(measure, text, font, width - 6):
            length = round(measure.textlength(piece, font=font))
            if x > 3 and x + length > width - 3:
                x, line = 3, line + 1
            placed.append((x, line, piece, colour))
            x += length + 10
    band = Image.new("RGB", (width, array.shape[0] + height * (line + 1)), background)
    band.paste(Image.fromarray(array), (0, 0))
    draw = ImageDraw.Draw(band)
    for x, line, text, colour in placed:
        draw.text((x, array.shape[0] + 2 + line * height), text, fill=colour, font=font)
    return torch.from_numpy(np.asarray(band).copy()).permute(2, 0, 1)


def _pieces(draw: Any, text: str, font: Any, width: int) -> list[str]:
    """`text` in pieces no wider than `width` pixels, broken between words."""
    pieces: list[str] = []
    for word in text.split():
        joined = f"{pieces[-1]} {word}" if pieces else word
        if pieces and draw.textlength(joined, font=font) <= width:
            pieces[-1] = joined
        else:
            pieces.append(shortened(draw, word, font, width))
    return pieces or [""]


def shortened(draw: Any, text: str, font: Any, width: int) -> str:
    """`text`, cut and ended with … where it is wider than `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while len(text) > 1 and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def font_path() -> str:
    """DejaVu Sans, shipped with matplotlib: PIL's built-in bitmap font cannot be scaled up for large images."""
    from matplotlib import font_manager

    return font_manager.findfont("DejaVu Sans")


def draw_class_map(
    image: torch.Tensor,
    result: SegmentationMask,
    colours: Sequence[Sequence[int]] | None = None,
    alpha: float = 0.5,
    classes: Sequence[str] | None = None,
    *,
    readable: bool = False,
) -> torch.Tensor:
    """`image` with each non-background class's pixels tinted in its colour (class 0, the background, left clear);
    with `classes`, a legend band below naming the classes present; `readable`: enlarged first with square pixels
    to MIN_DRAWN_SIDE when smaller."""
    scale = drawn_scale(image.shape[1:]) if readable else 1
    canvas = enlarge(to_uint8_rgb(image), scale)
    class_map = enlarge(torch.from_numpy(result.mask.astype(np.int64)), scale)
    present = [c for c in torch.unique(class_map).tolist() if c != 0]
    tints = [tuple(colours[c]) if colours else class_colour(c - 1) for c in present]
    if present:
        canvas = draw_segmentation_masks(canvas, torch.stack([class_map == c for c in present]), alpha=alpha,
                                         colors=tints)  # fmt: skip
    if classes is None:
        return canvas
    hexes = [t if isinstance(t, str) else "#{:02x}{:02x}{:02x}".format(*t) for t in tints]
    entries = [(classes[c], h) for c, h in zip(present, hexes, strict=True)] or [("no class found", "white")]
    return draw_legend(canvas, entries, height=max(18, canvas.shape[2] // 25))


def draw_instances(
    image: torch.Tensor, result: InstanceMasks, classes: Sequence[str], *, readable: bool = False
) -> torch.Tensor:
    """`image` with each object's pixels tinted in its class colour, then its box and label drawn; `readable`:
    enlarged first with square pixels to MIN_DRAWN_SIDE when smaller."""
    from pycocotools import mask as coco_mask

    scale = drawn_scale(image.shape[1:]) if readable else 1
    canvas = enlarge(to_uint8_rgb(image), scale)
    if result.masks:
        masks = torch.stack([torch.from_numpy(coco_mask.decode(m).astype(bool)) for m in result.masks])
        lookup = {name: i for i, name in enumerate(classes)}
        colours = [class_colour(lookup.get(label, 0)) for label in result.labels]
        canvas = draw_segmentation_masks(canvas, enlarge(masks, scale), alpha=0.45, colors=colours)
    scaled = replace(result, boxes=tuple(tuple(v * scale for v in box) for box in result.boxes))
    return draw_detections(canvas.float() / 255, scaled, classes)


def save_png(image: torch.Tensor, path: Path) -> None:
    """Write a 3×H×W uint8 tensor as PNG, atomically."""
    save_image(image, path, format="PNG")


# The formats a drawn prediction keeps from its input (by suffix); any other input is drawn as PNG.
DRAWN_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF",
                 ".tiff": "TIFF"}  # fmt: skip


def drawn_name(source: Path) -> str:
    """The file name of `source`'s drawn prediction: its name, in its own format where it is one of DRAWN_FORMATS."""
    suffix = source.suffix.lower()
    return source.stem + (suffix if suffix in DRAWN_FORMATS else ".png")


def save_image(image: torch.Tensor, path: Path, *, format: str | None = None) -> None:
    """Write a 3×H×W uint8 tensor in `format` (default: the one `path`'s suffix names), atomically; JPEG at
    quality 95, so that thin lines and label text stay legible."""
    array = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
    chosen = format or DRAWN_FORMATS.get(path.suffix.lower(), "PNG")
    options = {"quality": 95} if chosen in ("JPEG", "WEBP") else {}
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format=chosen, **options))


def save_class_map(result: SegmentationMask, path: Path) -> None:
    """Write the class map as an 8-bit (16-bit above 256 classes) index PNG the size of the input, atomically."""
    mask = result.mask.astype(np.uint8 if int(result.mask.max(initial=0)) < 256 else np.uint16)
    atomic_write(path, lambda tmp: Image.fromarray(mask).save(tmp, format="PNG"))
