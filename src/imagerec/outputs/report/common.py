"""Report sections every task shares: a summary, the evaluated metrics, training curves, the learning-rate
schedule, time and throughput per epoch, and the run's configuration, data fingerprint and library versions; and
the per-image predictions table each task fills with its own columns.

They are drawn from the run's own files (metrics.csv, run.yaml, model.json), so they need no evaluation data.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure as MplFigure

from imagerec.outputs.report.blocks import Figure, Panels, ReportContext, Section, Table, Text
from imagerec.outputs.report.inference import inference_section
from imagerec.outputs.visualize import class_colour, enlarge
from imagerec.runs import RunDir
from imagerec.tasks.build import unread_settings

TRAIN_COLOUR, VAL_COLOUR = class_colour(4), class_colour(0)  # Okabe–Ito blue and orange
DASH = "—"
PANEL_SIZE = (5.2, 3.8)  # inches of one panel of a pair: two fit side by side on a wide page, one on a phone
PREDICTIONS_SHOWN = 200  # rows of the per-image table on the page; predictions.csv holds them all


def plain_figure(
    width: float,
    height: float,
    *,
    rows: int = 1,
    left: float = 0.85,
    bottom: float = 0.6,
    right: float = 0.25,
) -> MplFigure:
    """A figure with fixed margins (inches), for plots whose labels' sizes are known in advance: saving it draws
    it once, where a layout engine draws it twice to measure the labels first."""
    top = 0.4
    figure = MplFigure(figsize=(width, height))
    axes_height = (height - bottom - top - 0.3 * (rows - 1)) / rows
    figure.subplots_adjust(
        left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
        hspace=0.3 / axes_height,
    )  # fmt: skip
    return figure


def panel() -> tuple[MplFigure, Any]:
    """One panel of a pair (its figure and axes): each is its own PNG, side by side on a wide page."""
    figure = plain_figure(*PANEL_SIZE)
    return figure, figure.subplots()


def drawing_canvas(image: torch.Tensor, side: int, largest: int) -> tuple[torch.Tensor, float]:
    """`image` (C×H×W in [0, 1]) ready to draw on: enlarged by the whole factor that brings its longest side to
    `side` (square pixels, no invented detail) without passing `largest`, or brought down to `largest` when
    longer; and the factor applied, to scale boxes by."""
    longest = max(image.shape[-2:])
    if longest <= largest:
        scale = max(1, min(-(-side // longest), largest // longest))
        return enlarge(image, scale), float(scale)
    scale = largest / longest
    size = [max(1, round(v * scale)) for v in image.shape[-2:]]
    small = torch.nn.functional.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True)[0]
    return small.clamp(0, 1), scale


def image_name(ctx: ReportContext, path: str | Path) -> str:
    """An evaluated image's path relative to the data's root (as the data names it), else as given."""
    root = ctx.index.root if ctx.index is not None else None
    if root is not None:
        base = root if root.is_dir() else root.parent
        with contextlib.suppress(ValueError):
            return Path(path).relative_to(base).as_posix()
    return str(path)


def predictions_section(columns: list[str], rows: list[list[Any]], how: str) -> Section:
    """Every evaluated image's prediction and score, worst first (`rows`, under `columns`; `how` says how they are
    ranked and scored): the page shows the first PREDICTIONS_SHOWN, sortable by any column; predictions.csv beside
    it holds them all."""
    caption = f"{how} Click a column's header to sort by it."
    table = Table(columns, rows, caption, sortable=True, file="predictions.csv", shown=PREDICTIONS_SHOWN)
    return Section("predictions", "Predictions per image", [table])


def read_history(run: RunDir) -> list[dict[str, Any]]:
    """metrics.csv as one dict per epoch, numbers parsed; a value an epoch did not measure is left out."""
    if not run.metrics.exists():
        return []
    with run.metrics.open(newline="") as handle:
        return [{k: _number(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]


def _number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def monitor(ctx: ReportContext) -> tuple[str, str]:
    """The metrics.csv column that picked the best epoch, and whether higher (max) or lower (min) is better."""
    key = ctx.config.get("train", {}).get("monitor")
    if ctx.info.pretraining:  # the monitor pretraining used (tasks.pretrain.PretrainObjective)
        labelled = any("val_knn_accuracy" in row for row in ctx.history)
        return ("val_knn_accuracy", "max") if labelled else ("train_loss", "min")
    if key:
        return key, "min" if key.endswith("loss") else ctx.task.monitor[1]
    metric, mode = ctx.task.monitor
    if any(f"val_{metric}" in row for row in ctx.history):
        return f"val_{metric}", mode
    return "train_loss", "min"


def best_epoch(history: list[dict[str, Any]], key: str, mode: str) -> int | None:
    """The epoch training kept as best: the best `key`, ties going to the lower validation loss, then the earlier
    epoch (as the training loop decides)."""
    rows = [r for r in history if isinstance(r.get(key), int | float) and not math.isnan(r[key])]
    if not rows:
        return None
    sign = -1 if mode == "max" else 1
    return min(rows, key=lambda r: (sign * r[key], r.get("val_loss", math.inf), r["epoch"]))["epoch"]


def sections(ctx: ReportContext) -> tuple[list[Section], list[Section]]:
    """The shared sections to put before the task's sections, and those to put after them."""
    key, mode = monitor(ctx)
    first = [summary_section(ctx, key, mode)]
    if ctx.metrics:
        first.append(metrics_section(ctx))
    first.append(training_section(ctx, key, mode))
    if ctx.history:
        first += [learning_rate_section(ctx), speed_section(ctx)]
    if not ctx.info.pretraining:  # a backbone without classes predicts nothing to time
        first.append(inference_section(ctx))
    return first, [configuration_section(ctx)]


def summary_section(ctx: ReportContext, key: str, mode: str) -> Section:
    info, train = ctx.info, ctx.config.get("train", {})
    classes = list(info.classes)
    shown = ", ".join(classes[:12]) + (f", … ({len(classes)} in all)" if len(classes) > 12 else "")
    model = info.model + (f" on {info.backbone}" if info.backbone else "")
    best = best_epoch(ctx.history, key, mode)
    task = f"self-supervised pretraining ({info.pretraining})" if info.pretraining else info.task
    rows: list[list[Any]] = [
        ["run", str(ctx.run.path)],
        ["task", task + (" (multi-label)" if info.multilabel else "")],
        ["model", model],
        ["classes", shown or "none: a backbone to train from"],
        ["input", f"{info.imgsz} px, {info.channels} channel(s)"],
        ["epochs trained", f"{len(ctx.history)} of {train.get('epochs', '?')}"],
        ["best epoch", DASH if best is None else f"{best} (by {key})"],
    ]
    if ctx.split is not None:
        data = ctx.metrics.get("data", "?")
        rows.append(["evaluated on", f"the {ctx.split} split of {data}: {len(ctx.samples)} images"])
    section = Section("summary", "Summary", [Table(["", ""], rows)])
    if info.pretraining:
        section.blocks.append(
            Text(
                "A pretraining run: a backbone without classes, so there is nothing to evaluate. Train any task "
                f"from it with imagerec train DATA --weights {ctx.run.path}; embed and neighbors read it as is."
            )
        )
    elif ctx.split is None:
        section.blocks.append(
            Text(
                "No evaluation data: this report shows how training went. Give the run's data "
                "(imagerec report RUN --data DATA) for the sections that judge the model's predictions."
            )
        )
    return section


def metrics_section(ctx: ReportContext) -> Section:
    """The single-number metrics `imagerec evaluate` measured on the split (per-class values are in the task's
    sections)."""
    rows = [[k, v] for k, v in ctx.metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)]
    title = f"Metrics on the {ctx.split} split"
    return Section("metrics", title, [Table(["metric", "value"], rows, "As `imagerec evaluate` measures them.")])


def training_section(ctx: ReportContext, key: str, mode: str) -> Section:
    section = Section("training", "Training curves")
    if not ctx.history:
        why = (
            "metrics.csv holds no finished epoch yet."
            if ctx.run.metrics.exists()
            else "This run has no metrics.csv: it was fitted in one go, without training epochs (--head knn or "
            "logistic on frozen embeddings)."
        )
        section.blocks.append(Text(why))
        return section
    best = best_epoch(ctx.history, key, mode)
    validated = " and on the validation split" if series(ctx.history, "val_loss")[0] else ""  # detectors have none
    section.blocks.append(
        Panels(
            _curves_figures(ctx.history, key, best),
            f"Loss per epoch on the training images (mean over the epoch's batches, with augmentation){validated}; "
            f"then {key}, the metric that picked the best epoch"
            + (f" (epoch {best}, dotted line)." if best is not None else "."),
        )
    )
    return section


def series(history: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    rows = [r for r in history if isinstance(r.get(key), int | float)]
    return [r["epoch"] for r in rows], [float(r[key]) for r in rows]


def _curves_figures(history: list[dict[str, Any]], key: str, best: int | None) -> list[Figure]:
    (loss_figure, loss_ax), (metric_figure, metric_ax) = panel(), panel()
    for column, colour, label in (("train_loss", TRAIN_COLOUR, "training"), ("val_loss", VAL_COLOUR, "validation")):
        epochs, values = series(history, column)
        if epochs:
            loss_ax.plot(epochs, values, marker="o", markersize=3, color=colour, label=label)
    loss_ax.set(title="loss", xlabel="epoch")
    loss_ax.legend(frameon=False)
    epochs, values = series(history, key)
    metric_ax.plot(epochs, values, marker="o", markersize=3, color=VAL_COLOUR)
    metric_ax.set(title=key, xlabel="epoch")
    for ax in (loss_ax, metric_ax):
        if best is not None:
            ax.axvline(best, color="#555555", linestyle=":", linewidth=1)
        ax.grid(alpha=0.3)
        epoch_ticks(ax, [r["epoch"] for r in history])
    return [
        Figure("training_loss.png", loss_figure, "loss per epoch"),
        Figure("training_metric.png", metric_figure, f"{key} per epoch"),
    ]


def epoch_ticks(ax: Any, epochs: list[int]) -> None:
    """Whole epochs on the x axis: each one when there are few, else whole numbers the locator picks."""
    if 0 < len(epochs) <= 12:
        ax.set_xticks(epochs)
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    else:
        ax.xaxis.get_major_locator().set_params(integer=True)


def learning_rate_section(ctx: ReportContext) -> Section:
    train = ctx.config.get("train", {})
    section = Section("learning-rate", "Learning-rate schedule")
    epochs, values = series(ctx.history, "lr")
    describe = (
        f"{train.get('optimizer', '?')} with peak learning rate {train.get('lr', '?')}, {train.get('scheduler', '?')} "
        f"schedule, {train.get('warmup_epochs', 0)} warm-up epoch(s), weight decay {train.get('weight_decay', '?')}."
    )
    if not epochs:
        section.blocks.append(Text(describe))
        return section
    figure = plain_figure(6, 3.2)
    ax = figure.subplots()
    ax.plot(epochs, values, marker="o", markersize=3, color=TRAIN_COLOUR)
    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) > 20:
        ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel="learning rate")
    ax.grid(alpha=0.3)
    epoch_ticks(ax, epochs)
    caption = f"The learning rate of the first parameter group at the end of each epoch. {describe}"
    section.blocks.append(Figure("learning_rate.png", figure, caption))
    return section


def speed_section(ctx: ReportContext) -> Section:
    section = Section("speed", "Time and throughput")
    epochs, seconds = series(ctx.history, "epoch_time_s")
    _, speeds = series(ctx.history, "images_per_s")
    compute = ctx.resolved.compute
    rows: list[list[Any]] = [
        ["training time (sum of epochs)", f"{sum(seconds):.1f} s" if seconds else DASH],
        ["time per epoch (median)", f"{statistics.median(seconds):.2f} s" if seconds else DASH],
        ["training images/s (median after epoch 1)", _steady(speeds)],
        ["device", (compute.device if compute else None) or ctx.config.get("train", {}).get("device", "?")],
        ["precision", compute.precision if compute else "?"],
        ["channels last", compute.channels_last if compute else "?"],
    ]
    section.blocks.append(Table(["", ""], rows, "Epoch times cover the training pass only, not validation."))
    if epochs:
        (time_figure, time_ax), (speed_figure, speed_ax) = panel(), panel()
        time_ax.bar(epochs, seconds, color=TRAIN_COLOUR)
        time_ax.set(title="training time per epoch", xlabel="epoch", ylabel="seconds")
        speed_ax.plot(epochs, speeds, marker="o", markersize=3, color=TRAIN_COLOUR)
        top = 1.1 * max(speeds, default=0) or 1
        speed_ax.set(title="throughput", xlabel="epoch", ylabel="training images/s", ylim=(0, top))
        for ax in (time_ax, speed_ax):
            ax.grid(alpha=0.3)
            epoch_ticks(ax, epochs)
        figures = [
            Figure("speed_epoch_time.png", time_figure, "training time per epoch"),
            Figure("speed_throughput.png", speed_figure, "training images per second"),
        ]
        section.blocks.append(Panels(figures, "Seconds per training epoch, and images per second."))
    return section


def _steady(speeds: list[float]) -> str:
    if not speeds:
        return DASH
    return f"{statistics.median(speeds[1:] or speeds):.1f}"


def configuration_section(ctx: ReportContext) -> Section:
    """Every setting the run's task reads, as run.yaml saved it (what auto became, where recorded), the data's
    fingerprint, notes and split, the library versions and the starting weights."""
    config, resolved = ctx.config, ctx.resolved
    section = Section("configuration", "Configuration and versions")
    used = _used_values(ctx)
    unread = unread_settings(() if ctx.info.pretraining else ctx.task.settings)  # binary_head means nothing to boxes
    for part in ("data", "model", "train"):
        values = {k: v for k, v in config.get(part, {}).items() if k not in unread}
        if values:
            rows = [
                [k, used.get((part, k), _value(v)) if v in (None, "auto") else _value(v)] for k, v in values.items()
            ]
            section.blocks.append(Table([f"{part} setting", "value"], rows))
    data_rows = [["fingerprint", resolved.data_fingerprint or DASH]]
    data_rows += [["note", note] for note in resolved.data_notes]
    split = ctx.run.read_split()
    if split:
        data_rows.append(["recorded split", ", ".join(f"{len(paths)} {name}" for name, paths in split.items())])
    about = "The fingerprint hashes every file's path, size and label: it changes with the data."
    section.blocks.append(Table(["data", ""], data_rows, about))
    versions = resolved.versions
    section.blocks.append(Table(["library", "version"], [[k, v] for k, v in versions.items()], "Library versions."))
    if resolved.weights:
        rows = [[k, _value(v)] for k, v in resolved.weights.items()]
        section.blocks.append(Table(["starting weights", ""], rows))
    return section


def _used_values(ctx: ReportContext) -> dict[tuple[str, str], str]:
    """What a setting left to imagerec (None or auto in run.yaml) came out as, where the run recorded it."""
    compute = ctx.resolved.compute
    used = {("data", "imgsz"): f"{ctx.info.imgsz} (from the data)"}
    if compute is not None:
        used["train", "precision"] = f"{compute.precision} (auto)"
        if compute.device:
            used["train", "device"] = f"{compute.device} (auto)"
    return used


def _value(value: Any) -> str:
    if value is None:
        return DASH
    if isinstance(value, list) and all(not isinstance(v, dict | list) for v in value):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)  # settings read as written (0.05, not 0.0500)
