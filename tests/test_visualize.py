"""Drawn predictions a person can read: small images enlarged with square pixels, labels on a band of their box's
colour in black or white text, and a legend naming the classes a class map shows."""

from __future__ import annotations

import numpy as np
import torch

from imagerec.outputs.visualize import (
    MIN_DRAWN_SIDE,
    class_colour,
    draw_class_map,
    draw_classification,
    draw_detections,
    text_colour,
)
from imagerec.tasks.results import Classification, Detections, SegmentationMask


def _rgb(colour: str) -> np.ndarray:
    return np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])


def _pixels_of(drawn: torch.Tensor, colour: str) -> int:
    array = drawn.permute(1, 2, 0).numpy().astype(int)
    return int((np.abs(array - _rgb(colour)).sum(axis=2) < 10).sum())


def test_boxes_are_drawn_large_enough_with_their_labels_on_a_band() -> None:
    image = torch.zeros(1, 128, 96)  # a small dark scene
    found = Detections(source="x", boxes=((10.0, 40.0, 50.0, 90.0),), labels=("7",), scores=(0.9,))
    plain = draw_detections(image, found, ["0", "7"])
    readable = draw_detections(image, found, ["0", "7"], readable=True)
    assert tuple(plain.shape) == (3, 128, 96)
    assert tuple(readable.shape) == (3, MIN_DRAWN_SIDE, 384)  # 4× with square pixels: the longer side reaches 512
    colour = class_colour(1)
    outline = 2 * (40 + 50) * 4 * 3  # the box's outline at 4× and the line width drawn at that size
    assert _pixels_of(readable, colour) > outline  # the label's band is filled in the box's colour


def test_label_text_contrasts_with_its_band() -> None:
    assert text_colour("#ffffff") == "black"
    assert text_colour("#F0E442") == "black"  # Okabe–Ito yellow
    assert text_colour("#0072B2") == "white"  # Okabe–Ito blue
    assert text_colour("#000000") == "white"


def test_a_class_map_gets_a_legend_of_the_classes_it_shows() -> None:
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[10:30, 10:30] = 2
    result = SegmentationMask(source="x", mask=mask)
    drawn = draw_class_map(torch.zeros(3, 64, 64), result, classes=["background", "cat", "dog"], readable=True)
    assert drawn.shape[2] == MIN_DRAWN_SIDE
    assert drawn.shape[1] > MIN_DRAWN_SIDE  # the legend band below the image
    band = drawn[:, MIN_DRAWN_SIDE:, :]
    assert _pixels_of(band, class_colour(1)) > 20  # "dog" written in dog's colour (class 2 → palette colour 1)
    assert _pixels_of(band, class_colour(0)) == 0  # no legend entry for a class the map does not show


def test_long_top_k_labels_wrap_onto_more_lines_instead_of_being_cut() -> None:
    """ImageNet-style names: five would run far past the right edge of a 192-px image on one line; each breaks
    between words onto lines of its own, its probability kept."""
    classes = [
        f"{name} (a rather long class name)" for name in ("tabby cat", "tiger cat", "lynx", "Persian", "Egyptian")
    ]
    result = Classification(source="x", labels=tuple(classes), probs=(0.5, 0.2, 0.1, 0.1, 0.1))
    short = Classification(source="x", labels=("a",), probs=(1.0,))
    one_line = draw_classification(torch.zeros(1, 8, 8), short, ["a"])
    wrapped = draw_classification(torch.zeros(1, 8, 8), result, classes)
    assert one_line.shape[2] == wrapped.shape[2]  # as wide as the image: nothing drawn beyond it
    line = one_line.shape[1] - one_line.shape[2]
    assert wrapped.shape[1] >= one_line.shape[2] + 5 * line  # a line each: no two of them fit side by side
    for i in range(5):  # every label is drawn, each in its class colour
        assert _pixels_of(wrapped[:, one_line.shape[2] :, :], class_colour(i)) > 10, classes[i]
