"""The recipe: what a run uses where the user set nothing, each setting chosen from what the data measures, with
one line of reason per choice.

`plan_recipe` fills only the settings the user did not give (on the command line, in the API call or in a config
file), so a given value always wins. The choices are written to run.yaml
(`resolved.recipe`) and printed by `imagerec train --dry-run`. Every rule here is a fixed function of counts and
sizes, never of timings, so the same data gives the same recipe on any machine; only `--time` (engine.budget)
plans from measured time.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from imagerec.config import RunConfig
from imagerec.data.index import DataIndex
from imagerec.data.targets import Objects, Sample

if TYPE_CHECKING:  # the task's modules import torch; planning from the command line should not wait for it
    from imagerec.tasks.base import Task

RECIPE_SCALE = {"fast": 0.5, "balanced": 1.0, "best": 2.0}  # × the balanced schedule's length
MIN_STEPS_PER_EPOCH = 4  # smaller batches on small data: too few optimizer steps per epoch learn slowly
DETECT_CPU_SIZE = 320  # detectors train at 320 px on a CPU unless the objects would be too small there
SMALL_OBJECT_PX = 16  # the median object's longer side, in input pixels, below which 320 px is too small
EMA_MIN_STEPS = 10_000  # EMA (decay 0.999 averages ~1,000 steps) only where that is a small part of the run
IMBALANCE = 3.0  # largest / smallest class count above which the data counts as imbalanced
# The settings the recipe may choose (`section.field`): `imagerec train -h` says their default is the recipe's.
CHOSEN = (
    "model.name", "data.imgsz", "data.batch", "data.augment", "train.epochs", "train.monitor", "train.ema",
    "train.label_smoothing", "train.class_weights",
)  # fmt: skip


@dataclass(frozen=True)
class Choice:
    """One setting the recipe chose: where it goes (`section.field`), its value, and why."""

    setting: str
    value: Any
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"setting": self.setting, "value": self.value, "reason": self.reason}


@dataclass(frozen=True)
class DataProfile:
    """What the recipe measures of the training data."""

    images: int
    classes: int
    counts: list[int]  # training images (detection: objects) per class
    shapes: list[tuple[int, int]]  # (height, width) of sampled training images
    object_sides: list[float]  # detection: each sampled object's longer side / its image's longer side

    def describe(self) -> str:
        heights, widths = zip(*self.shapes, strict=True)
        size = f"median {statistics.median(widths):.0f}×{statistics.median(heights):.0f} px"
        counts = ""
        if any(self.counts):  # mask folders count no images per class
            few = len(self.counts) <= 10
            listed = "/".join(str(c) for c in self.counts) if few else f"{min(self.counts)}–{max(self.counts)}"
            counts = f" ({listed} per class)"
        noun = "class" if self.classes == 1 else "classes"
        return f"data: {self.images} training images, {self.classes} {noun}{counts}, {size}"

    @property
    def imbalance(self) -> float:
        present = [c for c in self.counts if c]
        return max(present) / min(present) if present else 1.0


@dataclass(frozen=True)
class Plan:
    """A run's config with the recipe applied, the choices made (with reasons) and the settings the user gave."""

    cfg: RunConfig
    choices: list[Choice]
    given: set[str] = field(default_factory=set)
    data: DataProfile | None = None

    def lines(self) -> list[str]:
        """The plan as `imagerec train --dry-run` prints it."""
        lines = [self.data.describe()] if self.data else []
        lines += [f"{c.setting} = {c.value}: {c.reason}" for c in self.choices]
        given = sorted(self.given)
        if given:
            lines.append("given: " + ", ".join(f"{k} = {_value(self.cfg, k)}" for k in given))
        if self.cfg.train.time:
            lines.append(f"train.epochs: planned to fill {self.cfg.train.time} after measuring the first epoch")
        return lines


def _value(cfg: RunConfig, setting: str) -> Any:
    section, key = setting.split(".")
    return getattr(getattr(cfg, section), key)


def profile(index: DataIndex, shapes: list[tuple[int, int]]) -> DataProfile:
    """Counts from the index, sizes from `shapes` (sampled training images, as `training.model_info` reads them)."""
    samples = index.samples("train")
    return DataProfile(
        images=len(samples), classes=len(index.classes), counts=index.counts("train"), shapes=shapes,
        object_sides=_object_sides(samples),
    )  # fmt: skip


def _object_sides(samples: list[Sample]) -> list[float]:
    sides = []
    for sample in samples[:: max(1, len(samples) // 200)]:
        target = sample.target
        if isinstance(target, Objects) and target.size is not None and target.boxes:
            longest = max(target.size)
            sides += [max(x2 - x1, y2 - y1) / longest for x1, y1, x2, y2 in target.boxes]
    return sides


def plan_recipe(
    cfg: RunConfig, task: Task, data: DataProfile, *, given: set[str], cpu: bool = True
) -> tuple[RunConfig, list[Choice]]:
    """`cfg` with every setting not in `given` (`section.field`) chosen from `data` (and whether training runs on
    a CPU), and the choices made."""
    # Pretrained weights bring their input size (training.model_info), and a time budget plans the epochs.
    given = given | ({"data.imgsz"} if cfg.model.weights else set()) | ({"train.epochs"} if cfg.train.time else set())
    choices = [c for c in _rules(cfg, task, data, cpu) if c.setting not in given]
    values = cfg.model_dump()
    for choice in choices:
        section, key = choice.setting.split(".")
        values[section][key] = choice.value
    return RunConfig.model_validate(values), choices


def _rules(cfg: RunConfig, task: Task, data: DataProfile, cpu: bool) -> list[Choice]:
    rules = KIND_RULES[task.kind]
    imgsz, why_size = _input_size(task, rules, data, cpu)
    batch = min(task.default_batch, max(2, data.images // MIN_STEPS_PER_EPOCH))
    why_batch = f"the task's default {task.default_batch}"
    if batch < task.default_batch:
        why_batch = f"{data.images} training images: at least {MIN_STEPS_PER_EPOCH} optimizer steps per epoch"
    epochs, why_epochs = _epochs(cfg, rules, data)
    steps = epochs * -(-data.images // batch)
    metric = task.monitor[0]
    choices = [
        Choice("model.name", cfg.model.name, rules.model_reason),
        Choice("data.imgsz", imgsz, why_size),
        Choice("data.batch", batch, why_batch),
        Choice("train.epochs", epochs, why_epochs),
        Choice("data.augment", *rules.augment(imgsz)),
        Choice("train.monitor", f"val_{metric}", f"the task's main metric ({metric})"),
    ]
    if steps >= EMA_MIN_STEPS:
        choices.append(Choice("train.ema", 0.999, f"{steps:,} optimizer steps: averaging the last ~1,000 smooths "
                                                  "the noise of the final epochs"))  # fmt: skip
    else:
        choices.append(Choice("train.ema", None, f"off: {steps:,} optimizer steps are too few for a 1,000-step "
                                                 "average to catch up with training"))  # fmt: skip
    for extra in rules.more(task, data):  # a kind's own rules replace the general ones for the same setting
        choices = [c for c in choices if c.setting != extra.setting] + [extra]
    return choices


def _input_size(task: Task, rules: KindRules, data: DataProfile, cpu: bool) -> tuple[int, str]:
    size = task.default_imgsz(data.shapes)
    side = "longer" if rules.longest_side else "shorter"
    median = statistics.median((max if rules.longest_side else min)(s) for s in data.shapes)
    why = f"median {side} side of the training images {median:.0f} px, kept within the task's range"
    limit = rules.cpu_size
    if limit is not None and cpu and size > limit:
        small = statistics.median(data.object_sides) * limit if data.object_sides else None
        if small is None or small >= SMALL_OBJECT_PX:
            seen = f"the median object spans {small:.0f} px there" if small else "no object sizes to check"
            cheaper = (size / limit) ** 2
            return limit, (
                f"images of {median:.0f} px trained at {limit} px ({seen}): {cheaper:.1f}× cheaper per image than "
                f"{size} px on a CPU"
            )
        why += f"; objects too small for {limit} px (median {small:.0f} px there)"
    return size, why


def _epochs(cfg: RunConfig, rules: KindRules, data: DataProfile) -> tuple[int, str]:
    low, high = rules.epochs
    scale = RECIPE_SCALE[cfg.train.recipe]
    epochs = round(min(high, max(low, rules.images_seen / max(1, data.images))) * scale)
    return max(1, epochs), (
        f"recipe {cfg.train.recipe}: about {rules.images_seen:,} training images seen "
        f"({data.images} per epoch), within {low}–{high} epochs" + (f", × {scale}" if scale != 1 else "")
    )


def _classification_augment(imgsz: int) -> tuple[str, str]:
    if imgsz <= 32:
        return "light", f"{imgsz} px images: crops and flips; stronger changes erase what so few pixels hold"
    return "medium", f"{imgsz} px images: crops, flips and colour changes"


def _classification_rules(task: Task, data: DataProfile) -> list[Choice]:
    """Monitor, label smoothing and class weights of single-label classification (multi-label keeps mAP)."""
    if task.monitor[0] != "accuracy":
        return []
    choices = []
    if data.classes == 2:
        choices.append(Choice("train.monitor", "val_auc", "two classes: AUC ranks the best epoch without a "
                                                          "threshold (accuracy moves in coarse steps)"))  # fmt: skip
        choices.append(Choice("train.label_smoothing", 0.0, "two classes: probabilities are kept calibrated for "
                                                            "the decision threshold"))  # fmt: skip
        choices.append(Choice("train.class_weights", False, "off: the decision threshold chosen on validation "
                                                            "handles the imbalance"))  # fmt: skip
        return choices
    choices.append(Choice("train.label_smoothing", 0.0, "off: the recipes chosen on validation here "
                                                        "(docs/benchmarks.md §2) train without it"))  # fmt: skip
    if data.imbalance > IMBALANCE:
        why = f"classes {data.imbalance:.1f}× imbalanced"
        choices.append(Choice("train.monitor", "val_f1_macro", f"{why}: macro F1 counts every class equally"))
        choices.append(Choice("train.class_weights", True, f"{why}: the loss weighs each class equally"))
    else:
        choices.append(Choice("train.class_weights", False, "off: the classes are balanced enough"))
    return choices


@dataclass(frozen=True)
class KindRules:
    """What the recipe knows of one kind of task: the schedule's length in images seen and its epoch range, the
    default model's reason, how input size is measured (longer or shorter side) and capped on a CPU, the
    augmentation preset for an input size, and the kind's own further rules."""

    images_seen: int
    epochs: tuple[int, int]
    model_reason: str
    augment: Callable[[int], tuple[str, str]]
    longest_side: bool = False
    cpu_size: int | None = None
    more: Callable[[Task, DataProfile], list[Choice]] = lambda task, data: []


# Images seen and epoch ranges: measured here, BreastMNIST (546 images) kept improving on validation to 40 epochs,
# raccoon's 144 photos to 40, ISBI's 22 crops to ~200 (docs/benchmarks.md, sections 2, 5.3 and 6.1). The upper
# ends keep a run with no options on small data to minutes on a CPU; `--time` or `--recipe best` train longer.
_SEGMENT_AUGMENT = ("light", "flips only: ISBI's stronger preset scored no better (docs/benchmarks.md 6.1)")
KIND_RULES: dict[str, KindRules] = {
    "classify": KindRules(
        25_000, (15, 60), "a small ConvNet that learns from scratch in minutes on a CPU, no download needed",
        _classification_augment, more=_classification_rules,
    ),
    "detect": KindRules(
        6_000, (20, 40), "a 0.9 M-parameter anchor-free detector that trains from scratch on a CPU",
        lambda imgsz: ("medium", "photometric changes, scale and crops: from scratch, boxes need varied sizes"),
        longest_side=True, cpu_size=DETECT_CPU_SIZE,
    ),
    "segment": KindRules(
        4_000, (20, 60), "a compact U-Net that trains from scratch on a CPU (best of those measured on ISBI)",
        lambda imgsz: _SEGMENT_AUGMENT,
    ),
    "instance": KindRules(4_000, (20, 60), "the instance segmenter", lambda imgsz: _SEGMENT_AUGMENT),
}  # fmt: skip
