"""Typed configuration. YAML is only the saved form; every field has a default a new user can live with."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from imagerec.errors import UserError
from imagerec.safe_read import is_file, load_yaml

Task = Literal["classify", "detect", "segment"]
Augment = Literal["none", "light", "medium", "heavy"]
Precision = Literal["auto", "32", "32-true", "16-mixed", "bf16-mixed", "bf16-true"]
Recipe = Literal["fast", "balanced", "best"]
Format = Literal["auto", "imagefolder", "csv", "coco", "yolo", "voc", "masks"]
BinaryHead = Literal["sigmoid", "softmax"]
Head = Literal["network", "knn", "logistic"]
Optimizer = Literal["adamw", "adam", "sgd"]
Scheduler = Literal["cosine", "step", "onecycle", "constant"]
Loss = Literal["auto", "ce", "dice", "focal", "ce_dice"]
Finetune = Literal["full", "linear", "last-n", "gradual"]
Device = Literal["auto", "cpu", "cuda", "mps"]
Method = Literal["simclr", "byol", "dino", "mae"]
DURATION = r"^\d+(\.\d+)?(s|m|h)$"  # 90s, 10m, 1.5h


def _not_a_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a number is needed, not true or false")
    return value


# Integers and booleans are strict (`epochs: true` in a config file would otherwise be read as 1, `flip: 0` as
# false); other numbers only refuse true and false, as YAML reads `1e-3` (no decimal point) as a string.
Number = Annotated[float, BeforeValidator(_not_a_bool)]


def duration_seconds(text: str) -> float:
    """Seconds in a duration such as `90s`, `10m` or `1.5h` (validated by DURATION)."""
    return float(text[:-1]) * {"s": 1, "m": 60, "h": 3600}[text[-1]]


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Pillow refuses an image above twice its MAX_IMAGE_PIXELS as a likely decompression bomb: the same number is our
# default, so one limit holds whichever library reads the file (tifffile has none of its own).
MAX_IMAGE_PIXELS = 178_956_970


class DataConfig(_Config):
    path: Path
    format: Format = Field("auto", description="how the data is laid out; default auto: detected from its files")
    val: Number = Field(0.1, ge=0, lt=1, description="fraction held out for validation when the data has no val split")
    test: Number = Field(0.1, ge=0, lt=1, description="fraction held out for testing when the data is one flat folder")
    imgsz: StrictInt | None = Field(
        None, gt=0, description="input size (segmentation: training crop); default: from the data's median size"
    )
    batch: StrictInt | None = Field(None, gt=0, description="images per batch; default 64, or 8 to detect and segment")
    workers: StrictInt = Field(0, ge=0, description="DataLoader worker processes")
    cache: StrictBool | None = Field(None, description="decode all images into memory once; default: when they fit")
    augment: Augment = Field("light", description="how strongly training images are augmented")
    balanced_sampler: StrictBool = Field(
        False, description="classify: draw training images so that every class is seen equally"
    )
    flip: StrictBool = Field(
        True, description="detect, segment: horizontal flips in augmentation (off for text, digits)"
    )
    mean: tuple[Number, ...] | None = Field(
        None, description="per-channel normalisation mean (default: the pretrained weights', else the data's)"
    )
    std: tuple[Number, ...] | None = Field(None, description="per-channel normalisation std (default: as for mean)")
    max_image_pixels: StrictInt = Field(
        MAX_IMAGE_PIXELS, ge=1, description="refuse images whose header claims more pixels (decompression bombs)"
    )


class ModelConfig(_Config):
    name: str = Field(
        "seed_cnn",
        description="the model (default by task: seed_cnn, fcos_lite, unet); imagerec models --task TASK lists them",
    )
    binary_head: BinaryHead = Field(
        "sigmoid", description="classify, segment: with two classes, one logit with BCE, or a two-class softmax"
    )
    dropout: Number = Field(0.0, ge=0, lt=1, description="dropout before the classifier layer")
    backbone: str | None = Field(None, description="classifier under a fcos/retinanet/fasterrcnn head; smp encoder")
    anchor_sizes: tuple[Number, ...] | None = Field(
        None, description="detect: smallest anchor per pyramid level (default: torchvision's, scaled by imgsz/800)"
    )
    head: Head = Field(
        "network",
        description="classify: the network's own head, or scikit-learn k-NN / logistic regression on frozen embeddings",
    )
    positive: str | None = Field(
        None, description="classify: with two classes, the class sensitivity is about (default: the minority class)"
    )
    weights: str | None = Field(
        None,
        description="start from: DEFAULT, a named weight (IMAGENET1K_V1, timm:resnet50.a1_in1k), a file or a run",
    )


class TrainConfig(_Config):
    epochs: StrictInt = Field(20, gt=0, description="default: planned by the recipe from the data (or --time)")
    time: str | None = Field(
        None, pattern=DURATION, description="time budget, e.g. 2m, 10m, 1h: epochs planned from the measured epoch time"
    )
    recipe: Recipe = Field("balanced", description="fast | balanced | best: how long the planned schedule is")
    lr: Number = Field(1e-3, gt=0, description="peak learning rate")
    optimizer: Optimizer = "adamw"
    weight_decay: Number = Field(0.05, ge=0)
    momentum: Number = Field(0.9, ge=0, lt=1, description="SGD momentum")
    scheduler: Scheduler = Field("cosine", description="learning-rate schedule")
    warmup_epochs: Number = Field(1.0, ge=0, description="epochs of linear learning-rate warm-up")
    step_size: StrictInt = Field(10, gt=0, description="epochs between LR drops for the step schedule")
    label_smoothing: Number = Field(0.0, ge=0, lt=1, description="classify: cross-entropy label smoothing")
    class_weights: StrictBool = Field(False, description="classify: weigh the loss by inverse class frequency")
    accumulate: StrictInt = Field(1, gt=0, description="batches per optimizer step")
    clip_grad: Number | None = Field(None, gt=0, description="clip the gradient norm to this")
    ema: Number | None = Field(None, gt=0, lt=1, description="EMA decay of the weights, e.g. 0.999")
    patience: StrictInt = Field(0, ge=0, description="stop after this many epochs without improvement (0: never)")
    monitor: str | None = Field(None, description="validation metric for best checkpoint and early stopping")
    eval_every: StrictInt = Field(1, gt=0, description="validate every N epochs (and after the last)")
    loss: Loss = Field("auto", description="segment: the loss; auto: cross-entropy + Dice (BCE + Dice with one logit)")
    finetune: Finetune = Field(
        "full",
        description="which backbone stages train: all, none (head only), the last --stages, or one more per epoch",
    )
    stages: StrictInt = Field(1, gt=0, description="last-n: how many of the backbone's last stages train")
    layer_decay: Number | None = Field(
        None, gt=0, le=1, description="learning rate × this per stage below the head (e.g. 0.7)"
    )
    backbone_lr_mult: Number | None = Field(None, gt=0, description="learning rate × this for the whole backbone")
    threshold_by: str = Field(
        "auto",
        pattern=r"^(auto|youden|f1|(sensitivity|specificity)=(0?\.\d+|1(\.0*)?))$",
        description="classify, detect: how the decision threshold is chosen on validation: youden | f1 | "
        "sensitivity=0.95 | specificity=0.9 (auto: youden for binary classification, f1 for detection)",
    )
    seed: StrictInt = Field(0, description="random seed (also draws the split)")
    device: Device = "auto"
    devices: StrictInt = Field(1, gt=0, description="processes/GPUs per node (DDP when > 1)")
    num_nodes: StrictInt = Field(1, gt=0, description="nodes (torchrun or SLURM)")
    precision: Precision = Field(
        "auto", description="auto: bf16-mixed (else 16-mixed) on a GPU; on a CPU measured once per machine and model"
    )
    threads: StrictInt | None = Field(
        None, gt=0, description="CPU threads for torch (default: IMAGEREC_THREADS, else 1 on ≤ 2 cores, else all)"
    )


class RunConfig(_Config):
    task: Task = Field("classify", description="default: inferred from the data (labels, boxes or masks)")
    data: DataConfig
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    out: Path | None = None


class PretrainConfig(RunConfig):
    """A self-supervised pretraining run (`imagerec pretrain`): a run's settings and the method."""

    method: Method = Field(
        "simclr", description="self-supervised method (Lightly): simclr | byol | dino, or mae for vision transformers"
    )


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


class Settings(TypedDict, total=False):
    """The settings as keyword options of the Python API (`imagerec.train(data, epochs=10, optimizer="sgd")`),
    typed for editors and type checkers; the fields of DataConfig, ModelConfig and TrainConfig by their option
    names (`model` is the model's name). tests/test_cli.py holds it to the schema."""

    format: Format
    val: float
    test: float
    imgsz: int | None
    batch: int | None
    workers: int
    cache: bool | None
    augment: Augment
    balanced_sampler: bool
    flip: bool
    mean: Sequence[float] | None
    std: Sequence[float] | None
    max_image_pixels: int
    model: str
    binary_head: BinaryHead
    dropout: float
    backbone: str | None
    anchor_sizes: Sequence[float] | None
    head: Head
    positive: str | None
    weights: str | None
    epochs: int
    time: str | None
    recipe: Recipe
    lr: float
    optimizer: Optimizer
    weight_decay: float
    momentum: float
    scheduler: Scheduler
    warmup_epochs: float
    step_size: int
    label_smoothing: float
    class_weights: bool
    accumulate: int
    clip_grad: float | None
    ema: float | None
    patience: int
    monitor: str | None
    eval_every: int
    loss: Loss
    finetune: Finetune
    stages: int
    layer_decay: float | None
    backbone_lr_mult: float | None
    threshold_by: str
    seed: int
    device: Device
    devices: int
    num_nodes: int
    precision: Precision
    threads: int | None


def build_config(values: dict[str, Any], schema: type[RunConfig] = RunConfig) -> RunConfig:
    """Validate nested values into a RunConfig (or `schema`, e.g. PretrainConfig), turning the first problem into
    one clear line."""
    try:
        return schema.model_validate(values)
    except ValidationError as error:
        raise UserError(_problem(error.errors()[0])) from None


def _problem(error: Any) -> str:
    where = ".".join(str(p) for p in error["loc"])
    return f"invalid setting {where}: {error['msg']} (got {error.get('input')!r})"


def _check_settings(path: Path, values: dict[str, Any]) -> None:
    """Refuse a config file's first setting of the wrong type or range, naming the file and the key. Settings it
    leaves out are not its problem: options may give them."""
    try:
        RunConfig.model_validate({k: v for k, v in values.items() if k in ("task", *SECTIONS)})
    except ValidationError as error:
        problems = [e for e in error.errors() if e["type"] != "missing"]
        if problems:
            raise UserError(f"{path}: {_problem(problems[0])}") from None


def read_yaml(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not is_file(path):
        raise UserError(f"{path}: config file not found")
    values = load_yaml(path) or {}  # bounded: a config of nested aliases is refused, not expanded to billions
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a mapping of settings at the top level")
    _check_settings(path, values)
    return values


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Nested dict merge; `overrides` wins, None values do not override."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        elif value is not None:
            merged[key] = value
    return merged


def setting_names() -> list[str]:
    """Every setting of data, model and train by its option name (`model` for the model's name; the data's path
    is the DATA argument)."""
    return [("model" if k == "name" else k) for fields in SECTIONS.values() for k in fields.model_fields if k != "path"]


def parse_setting(text: str) -> tuple[str, Any]:
    """`KEY=VALUE` (`--set optimizer=sgd`) → the option name and its value read as YAML (numbers, true/false,
    [lists]); validated later with the rest. A key that is no setting is refused, naming the closest ones."""
    key, equals, raw = text.partition("=")
    key = key.strip().replace("-", "_")
    if not equals or not key:
        raise UserError(f"--set {text}: give KEY=VALUE, e.g. --set optimizer=sgd")
    names = setting_names()
    if key not in names:
        close = difflib.get_close_matches(key, names, n=3)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise UserError(f"--set {text}: {key!r} is no setting; {hint}imagerec config --print lists them all")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None  # a value typed on one's own command line
    except yaml.YAMLError:
        value = raw
    return key, tuple(value) if isinstance(value, list) else value


def describe_defaults(task: str = "classify", overrides: dict[str, dict[str, Any]] | None = None) -> str:
    """The default settings of `task` as a commented YAML config file (each setting with its description), with
    `overrides` per section (e.g. the task's model): what `imagerec config --print` writes and `--config` reads."""
    lines = [
        "# imagerec settings and their defaults. A file of some of them is what --config reads; on the command line",
        "# each is --set KEY=VALUE (the common ones also have options of their own, see imagerec train -h).",
        f"task: {task}",
    ]
    for section, fields in SECTIONS.items():
        lines.append(f"{section}:")
        for key, field in fields.model_fields.items():
            value = (overrides or {}).get(section, {}).get(key, field.default)
            shown = "DATA" if key == "path" else yaml.safe_dump(value, default_flow_style=True).strip()
            shown = shown.removesuffix("\n...").removesuffix("...").strip()
            about = f"  # {field.description}" if field.description else ""
            lines.append(f"  {key}: {shown}{about}")
    return "\n".join(lines) + "\n"
