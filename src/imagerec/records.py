"""The typed records of a run directory: model.json (`ModelInfo`) and the resolved part of run.yaml (`Resolved`).

They are frozen, versioned pydantic models. `ModelInfo.preprocessing` says in machine-readable form what an image
goes through before the network sees it, so that predict, export and serving rebuild it from the record alone.
Files written before the record was versioned (run format 1 without `record_version`) still load: the fields they
lack are derived from what they hold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from imagerec.errors import UserError

RUN_FORMAT = 1  # bumped when the run directory's files change incompatibly
RECORD_VERSION = 2  # model.json: 1 had no kind or preprocessing; 2 adds them (older files are upgraded on reading)

TaskName = Literal["classify", "detect", "segment"]  # what --task takes
TaskKind = Literal["classify", "detect", "segment", "instance"]  # instance: per-object masks (Mask R-CNN)
Resize = Literal["shorter_side_centre_crop", "longest_side_pad", "none"]


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Preprocessing(_Record):
    """What happens to an image file between decoding and the network, in order.

    Pixels are decoded to float in [0, 1] (8-bit /255, 16-bit /65535) and converted to `channels` channels, then
    resized (`resize`: `shorter_side_centre_crop` scales the shorter side to `size` and crops the centre
    `size`×`size`; `longest_side_pad` scales the longer side to `size`, keeps the aspect and pads to a multiple of
    `pad_multiple`; `none` keeps the image's own size), then normalised with `mean` and `std`. `inside_model` tells
    whether resizing and normalisation happen inside the saved network (feed it [0, 1] pixels) or must be done
    before it.
    """

    channels: int
    size: int
    resize: Resize
    interpolation: Literal["bilinear"] = "bilinear"
    antialias: bool = True
    pad_multiple: int | None = None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    inside_model: bool


class Decision(_Record):
    """How a run turns scores into answers, chosen on validation data after training and used by predict,
    evaluate and the report.

    Binary classification: `positive` is the class the threshold is about (sensitivity is its recall) and an
    image is called `positive` when that class's probability is at least `threshold`. Detection: `threshold` is
    the lowest box score kept. `rule` names how it was chosen (`youden`, `f1`, `sensitivity=0.95`) and `score` the
    rule's value on `split`; `split` is None when there was no validation data and the threshold is the default.
    """

    positive: str | None = None
    threshold: float
    rule: str
    split: str | None = None
    score: float | None = None
    note: str | None = None  # what the user should know about the choice, e.g. a rule that could not be met

    def describe(self) -> str:
        """One line, e.g. "threshold 0.31 for malignant, chosen on val by Youden's J (0.62)"."""
        kind, _, target = self.rule.partition("=")
        words = {"youden": "Youden's J", "f1": "F1"}.get(kind, f"{kind} ≥ {target}" if target else kind)
        line = f"threshold {self.threshold:.3g}" + (f" for {self.positive}" if self.positive else "")
        if self.note is not None:
            return f"{line}: {self.note}"
        if self.split is None:
            return f"{line}, the default (no validation data to choose it on)"
        return f"{line}, chosen on {self.split} by {words}" + (f" ({self.score:.3f})" if self.score is not None else "")


class ModelInfo(_Record):
    """model.json: which task and architecture, the classes, the input and how to preprocess it.

    Fields after `std` are the task's own: each task sets those it uses (and model.json lists only those).
    """

    format: int = RUN_FORMAT
    record_version: int = RECORD_VERSION
    task: TaskName
    kind: TaskKind
    model: str
    classes: list[str]
    category_ids: list[int] | None = None  # COCO ids, so predictions can be written back as COCO results
    channels: int
    imgsz: int
    mean: list[float]
    std: list[float]
    multilabel: bool | None = None
    binary_head: str | None = None
    num_outputs: int | None = None
    instance: bool | None = None
    backbone: str | None = None
    anchor_sizes: list[float] | None = None
    ignore_index: int | None = None
    colours: list[list[int]] | None = None
    head: dict[str, Any] | None = None  # a k-NN or logistic-regression head fitted on embeddings
    decision: Decision | None = None  # the decision threshold chosen on validation after training
    resize: str  # the preprocessing in words, as record version 1 gave it
    preprocessing: Preprocessing

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data: Any) -> Any:
        """Derive the fields record version 1 lacked from the task it recorded."""
        if not isinstance(data, dict) or "record_version" in data:
            return data
        kind = "instance" if data.get("instance") else data.get("task")
        legacy = _LEGACY_PREPROCESSING.get(kind)
        if legacy is None:
            return data  # validation names what is wrong
        keys = ("channels", "imgsz", "mean", "std")
        channels, size, mean, std = (data.get(k) for k in keys)
        preprocessing = {**legacy, "channels": channels, "size": size, "mean": mean, "std": std}
        return {**data, "record_version": 1, "kind": kind, "preprocessing": preprocessing}

    @property
    def pretraining(self) -> str | None:
        """The self-supervised method of a pretraining run (`imagerec pretrain`), whose network embeds images and
        has no classes to predict; None for every other run."""
        return self.head["method"] if self.head and self.head.get("kind") == "pretrained" else None

    def to_json(self) -> dict[str, Any]:
        """model.json's content: the common fields and the task's own (the unset ones are left out)."""
        keep = self.model_fields_set | {"format", "record_version", "kind", "preprocessing"}
        return self.model_dump(mode="json", include=keep)


# How each task preprocessed images in record version 1, which did not say so in machine-readable form.
_LEGACY_PREPROCESSING: dict[str, dict[str, Any]] = {
    "classify": {"resize": "shorter_side_centre_crop", "inside_model": False},
    "detect": {"resize": "longest_side_pad", "pad_multiple": 32, "inside_model": True},
    "instance": {"resize": "longest_side_pad", "pad_multiple": 32, "inside_model": True},
    "segment": {"resize": "none", "pad_multiple": 32, "inside_model": True},
}


TASKS = ("classify", "detect", "segment")  # the tasks whose runs this version can load


def parse_model_info(data: Any, *, run: Path) -> ModelInfo:
    """`data` (the content of `run`'s model.json) as a ModelInfo; a UserError when it is of another run format or
    task, or damaged."""
    written = data.get("format") if isinstance(data, dict) else None
    if written != RUN_FORMAT:
        raise UserError(
            f"{run}: written by an incompatible imagerec (run format {written}, this version reads {RUN_FORMAT}); "
            "retrain with this version"
        )
    if data.get("task") not in TASKS:
        raise UserError(f"{run}: a {data.get('task')} run, but this imagerec handles {', '.join(TASKS)} runs")
    try:
        return ModelInfo.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "the record"
        raise UserError(f"{run / 'model.json'}: {field}: {first['msg']}; re-run training or restore the file") from None


class Compute(_Record):
    """The numerics a run trained with (kept on --resume)."""

    precision: str
    channels_last: bool = False
    measured_images_per_s: dict[str, float] | None = None
    device: str | None = None  # the accelerator it trained on (cpu, cuda, mps); None in runs recorded before it


class Resolved(_Record):
    """run.yaml's `resolved` part: what the run found and chose, beside the config it was given."""

    model_config = ConfigDict(frozen=True, extra="allow")  # later versions may record more

    format: int = RUN_FORMAT
    versions: dict[str, str] = {}
    data_fingerprint: str | None = None
    data_notes: list[str] = []
    compute: Compute | None = None
    threads: int | None = None  # torch's CPU threads in training
    recipe: list[dict[str, Any]] = []  # the settings the recipe chose: setting, value, reason
    weights: dict[str, Any] | None = None


class ExportRecord(_Record):
    """How an exported file was made and how to run it; stored inside the file, beside the run's ModelInfo, so a
    consumer needs nothing else.

    `inputs`, `outputs`, `axes` (dynamic axes by name), `per_image` and `note` describe the graph as
    `Task.export_signature` gave it; `batch` is the fixed batch size of a graph without a dynamic batch axis (None:
    any). `precision` is what the weights are stored in and `runs_in` what the runtime computes in (an fp32 export
    must not silently run in bf16). `fixed`: the prediction options frozen in the graph (detectors' suppression).
    """

    format: str
    precision: Literal["fp32", "int8"]
    runs_in: str
    inputs: list[str]
    outputs: list[str]
    axes: dict[str, dict[int, str]]
    per_image: bool
    batch: int | None
    note: str
    agreement: str
    fixed: dict[str, Any] = {}
    opset: int | None = None
    imagerec: str
