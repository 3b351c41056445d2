"""What a report is made of: sections of figures, tables, image galleries and text, and the evaluated data
each task's sections are drawn from. The task modules build sections; `html.py` renders them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imagerec.records import Resolved

if TYPE_CHECKING:
    from matplotlib.figure import Figure as MplFigure

    from imagerec.data.index import DataIndex
    from imagerec.data.targets import Sample
    from imagerec.outputs.predict import Predictor
    from imagerec.records import ModelInfo
    from imagerec.runs import RunDir
    from imagerec.tasks.base import Task


@dataclass
class Figure:
    """A matplotlib figure, saved as `name` (a PNG file name) beside report.html and embedded in it."""

    name: str
    figure: MplFigure
    caption: str = ""


@dataclass
class Panels:
    """Figures side by side under one caption, one under another on a narrow screen (each its own PNG)."""

    figures: list[Figure]
    caption: str = ""


@dataclass
class Table:
    """Rows of cells under `columns`; numbers are formatted by the renderer. `sortable`: a click on a column's
    header sorts the rows by it. `file`: every row is also written beside report.html as this CSV file, and the page
    shows the first `shown` rows."""

    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""
    sortable: bool = False
    file: str | None = None
    shown: int | None = None


def cell(value: Any) -> str:
    """A table cell as text: floats to 4 decimals (very small or large ones in 3 significant digits), None as —."""
    if value is None:
        return "—"
    if isinstance(value, float | np.floating):
        value = float(value)
        if value != value:  # NaN
            return "—"
        if value == 0 or 0.001 <= abs(value) < 1e6:
            return f"{value:.4f}"
        return f"{value:.3g}"
    return str(value)


@dataclass
class Gallery:
    """Images (H×W×3 uint8 RGB, embedded at the size given) with one caption each, shown as a grid of thumbnails
    whose longest side is `side` CSS pixels; each opens full size on a click."""

    title: str
    images: list[tuple[np.ndarray, str]]
    caption: str = ""
    side: int = 128


@dataclass
class Notes:
    """A titled list of short points."""

    title: str
    items: list[str]


def shrink(image: np.ndarray, side: int) -> np.ndarray:
    """An H×W×3 uint8 gallery image with its longest side brought down to `side` pixels when longer."""
    from PIL import Image

    height, width = image.shape[:2]
    if max(height, width) <= side:
        return np.ascontiguousarray(image)
    scale = side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(size, Image.Resampling.LANCZOS))


@dataclass
class Text:
    """A paragraph of plain text (escaped by the renderer)."""

    text: str


Block = Figure | Panels | Table | Gallery | Text | Notes


@dataclass
class Section:
    """One titled part of the report; `id` is its HTML anchor (lowercase, dashes). `file`: the section is also
    written beside report.html as this Markdown file (its tables and notes; figures and galleries left out)."""

    id: str
    title: str
    blocks: list[Block] = field(default_factory=list)
    file: str | None = None


@dataclass(frozen=True)
class Headline:
    """A headline metric of the evaluated split with its 95% interval (None where none is drawn) and the kind of
    interval, for the model card."""

    name: str
    value: float
    interval: tuple[float, float] | None
    method: str


@dataclass
class ReportContext:
    """A run and, when evaluation data is given or recorded, its predictions on one split.

    `samples[i]` (index targets in the model's class order), `results[i]` (the Predictor's result for the same
    image: Classification, Detections, InstanceMasks or SegmentationMask) and `metrics` (what `imagerec evaluate`
    measures) describe the same images. Without evaluation data, `split` is None and the three are empty.
    """

    run: RunDir
    info: ModelInfo  # model.json
    task: Task
    config: dict[str, Any]  # run.yaml
    history: list[dict[str, Any]]  # metrics.csv rows, numbers parsed
    out: Path  # the folder report.html and its PNGs are written to
    predictor: Predictor | None = None
    index: DataIndex | None = None
    split: str | None = None
    samples: list[Sample] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    outputs: list[Any] = field(default_factory=list)  # each image's raw output (Task.per_image), `samples` order
    resolved: Resolved = field(default_factory=Resolved)  # run.yaml's resolved part, typed
    # What the task's sections measured and found wanting, for the model card drawn after them.
    headlines: list[Headline] = field(default_factory=list)
    limitations: list[str] = field(default_factory=list)
