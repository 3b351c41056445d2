"""The Task contract: everything training, evaluation, prediction and reports ask of a task, and nothing else.

Code outside `tasks/` holds a Task (from `tasks.build.build_task` or `task_from_info`) and calls these members; it
never asks which kind of task it holds.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol, TypedDict

import torch
from torch import nn
from torch.utils.data import Dataset

from imagerec.config import ModelConfig
from imagerec.data.images import MAX_PIXELS as MAX_IMAGE_PIXELS
from imagerec.data.masks import MaskCoding
from imagerec.data.targets import Sample
from imagerec.errors import UserError
from imagerec.records import Decision, ModelInfo, Preprocessing, TaskKind, TaskName
from imagerec.tasks.results import Result

# Whole-image segmentation above this many pixels needs --tile: a 2048×2048 image. At 4096×4096 the compact
# U-Net alone peaked at 8.6 GiB, against 1.7 GiB in 512 px tiles (docs/benchmarks.md, tiling).
MAX_PIXELS = 2048 * 2048


@dataclass(frozen=True)
class PredictOptions:
    """Per-call prediction options; each task reads those that apply to it and never stores them in the model.

    `topk`: labels per image (classification). Detection: `conf`, the minimum score of a box (None: the run's
    decision threshold, chosen on validation, else 0.25); `iou`, the overlap above which non-maximum
    suppression merges boxes (None: the model's own); `agnostic`, suppression across classes instead of within
    each; `max_det`, the most boxes per image (None: the model's own). `tile`, `overlap`: sliding-window
    inference for semantic segmentation, required above `max_pixels`.
    """

    topk: int = 5
    conf: float | None = None
    iou: float | None = None
    agnostic: bool = False
    max_det: int | None = None
    tile: int | None = None
    overlap: int = 64
    max_pixels: int = MAX_PIXELS

    def __post_init__(self) -> None:
        if self.topk < 1:
            raise UserError(f"--topk {self.topk}: must be at least 1")
        if (self.conf is not None and not 0 <= self.conf <= 1) or (self.iou is not None and not 0 < self.iou <= 1):
            raise UserError("--conf must be in [0, 1] and --iou in (0, 1]")
        if self.max_det is not None and (type(self.max_det) is not int or self.max_det < 1):
            raise UserError(f"--max-det {self.max_det}: must be a whole number of at least 1")
        if self.tile is not None and not 0 <= self.overlap < self.tile:
            raise UserError(
                f"--tile {self.tile} --overlap {self.overlap}: the overlap must be at least 0 and below the tile size"
            )


class PredictSettings(TypedDict, total=False):
    """PredictOptions as keyword options of the Python API (`predictor.predict(images, conf=0.4)`), typed for
    editors and type checkers; tests/test_task_contract.py holds the two to the same fields."""

    topk: int
    conf: float | None
    iou: float | None
    agnostic: bool
    max_det: int | None
    tile: int | None
    overlap: int
    max_pixels: int


def predict_options(task: Task, options: Mapping[str, Any]) -> PredictOptions:
    """`options` as PredictOptions for `task`, refusing in one line a name that is no option, and an option set
    (to other than its default) that this task does not read, which would otherwise be silently ignored."""
    defaults = {f.name: f.default for f in fields(PredictOptions)}
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise UserError(f"{unknown[0]!r} is not a prediction option; the options are {', '.join(defaults)}")
    unread = sorted(k for k, v in options.items() if k not in task.predict_options and v != defaults[k])
    if unread:
        raise UserError(
            f"{unread[0]} does not apply to a {task.kind} model; its prediction options are "
            f"{', '.join(task.predict_options)}"
        )
    return PredictOptions(**options)


def median_side(shapes: Sequence[tuple[int, int]], *, longest: bool, low: int, high: int, multiple: int = 1) -> int:
    """The median longest (or shortest) side of images of (height, width) `shapes`, clamped to [low, high] and
    rounded up to `multiple`: a task's default input size."""
    median = statistics.median((max if longest else min)(shape) for shape in shapes)
    size = int(min(high, max(low, median)))
    return -(-size // multiple) * multiple


def keep_imgsz(info: ModelInfo, imgsz: int) -> ModelInfo:
    """`Task.with_imgsz` of tasks whose input size is fixed by training."""
    raise UserError("--imgsz at prediction applies to detection runs; a classifier keeps its input size")


@dataclass(frozen=True)
class ExportSignature:
    """What a task's exported graph takes and returns (`Task.export_signature`).

    `graph` is the eager model seen as a module of tensors in and a tuple of tensors out, traced on `example`. A
    `per_image` graph takes one C×H×W image at its own size (detectors: each image is resized, suppressed and mapped
    back inside the graph) and names one output per field of the eager model's per-image dict; otherwise the graph
    takes an N×C×H×W batch and its single output is what the eager model returns. `axes` names the dynamic axes of
    each input and output. `note` says in words how to read the outputs; `agreement` names how exported and eager
    outputs are compared (`top1`, `boxes` or `pixels`); `fixed` lists the prediction options frozen in the graph.
    """

    graph: nn.Module
    example: torch.Tensor
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    axes: dict[str, dict[int, str]]
    per_image: bool
    note: str
    agreement: str
    fixed: dict[str, Any] = field(default_factory=dict)


def batch_axes(names: Sequence[str], *, dynamic_batch: bool, spatial: bool = False) -> dict[str, dict[int, str]]:
    """Dynamic axes of N×C×H×W inputs and outputs: the batch (when `dynamic_batch`) and with `spatial` H and W."""
    axes = ({0: "batch"} if dynamic_batch else {}) | ({2: "height", 3: "width"} if spatial else {})
    return {name: dict(axes) for name in names} if axes else {}


class Metrics(Protocol):
    def update(self, outputs: Any, targets: Any) -> None: ...

    def compute(self) -> dict[str, Any]: ...

    def reset(self) -> None: ...

    def decide(self, rule: str) -> Decision | None:
        """The decision threshold `rule` picks on what was accumulated (None: the task has no threshold)."""
        ...


class Task(Protocol):
    """What a task provides.

    `step` runs the model on one collated batch and returns at least `{"loss": scalar}` in training; in evaluation
    it returns `outputs` and `targets` to feed `metrics().update` (and `loss` where the task has one). `monitor`
    names the validation metric that picks the best checkpoint and whether higher ("max") or lower ("min") is
    better. `result_type` is the class of what `predict` returns. After training, the metrics of the validation
    split `decide` the run's threshold (`Decision`); `with_decision` gives the task that scores and predicts at it.
    """

    name: TaskName
    kind: TaskKind
    default_model: str  # what `--model` means when it is not given
    classes: list[str]
    default_batch: int
    autotune: bool  # whether CPU precision and memory format may be chosen by measuring (engine.autotune)
    predict_options: tuple[str, ...]  # the PredictOptions fields `predict` reads; the others stay at their defaults
    settings: tuple[str, ...]  # the task-specific settings it reads (config field names); other tasks' are refused
    result_type: type[Result]
    decision: Decision | None  # the run's decision threshold, used by metrics and predict (None: not chosen)

    @property
    def monitor(self) -> tuple[str, str]: ...

    def record_fields(self, cfg: ModelConfig) -> dict[str, Any]: ...

    def default_imgsz(self, shapes: Sequence[tuple[int, int]]) -> int: ...

    def weights_model(self, cfg: ModelConfig) -> str: ...

    def preprocessing(
        self, *, channels: int, imgsz: int, mean: Sequence[float], std: Sequence[float]
    ) -> Preprocessing: ...

    def build_model(self, info: ModelInfo, *, dropout: float = 0.0) -> nn.Module: ...

    def dataset(
        self,
        samples: Sequence[Sample],
        *,
        info: ModelInfo,
        augment: str | None,
        cache: bool | None,
        coding: MaskCoding | None = None,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
    ) -> Dataset: ...

    def collate(self, preset: str | None = None) -> Callable[[list], Any]: ...

    def with_imgsz(self, info: ModelInfo, imgsz: int) -> ModelInfo: ...

    def predict_transform(self, info: ModelInfo) -> Callable[[torch.Tensor], torch.Tensor] | None: ...

    def step(self, model: nn.Module, batch: Any) -> dict[str, Any]: ...

    def metrics(self) -> Metrics: ...

    def with_decision(self, decision: Decision | None) -> Task: ...

    def batch_size(self, batch: Any) -> int: ...

    def per_image(self, out: dict[str, Any], batch: Any) -> list[Any]: ...

    def results(self, outputs: Sequence[Any], sources: Sequence[str]) -> list[Result]: ...

    def predict(
        self, model: nn.Module, images: Sequence[torch.Tensor], sources: Sequence[str], options: PredictOptions
    ) -> list[Result]: ...

    def failed(self, source: str, error: str) -> Result: ...

    def export_signature(self, model: nn.Module, info: ModelInfo, *, dynamic_batch: bool) -> ExportSignature: ...
