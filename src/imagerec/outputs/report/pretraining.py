"""The report's part for a pretraining run (`imagerec pretrain`): whether the embeddings learned and did not
collapse. A pretraining run has no classes, so nothing is evaluated; what it measured after each epoch is in
metrics.csv (the k-NN accuracy on labelled validation images, when there are some, is the training curves' right
panel, as the monitor that kept the epoch)."""

from __future__ import annotations

from typing import Any

from imagerec.metrics.embedding import COLLAPSED
from imagerec.outputs.report.blocks import Figure, ReportContext, Section, Table, Text
from imagerec.outputs.report.common import DASH, VAL_COLOUR, best_epoch, epoch_ticks, monitor, plain_figure, series

SPREAD = "val_embedding_spread"
PURPOSE = "learn image features from unlabelled images (self-supervised pretraining)"


def sections(ctx: ReportContext) -> list[Section]:
    section = Section("embeddings", "Embedding quality")
    epochs, spreads = series(ctx.history, SPREAD)
    if not epochs:
        section.blocks.append(Text("metrics.csv holds no measured epoch yet."))
        return [section]
    key, mode = monitor(ctx)
    kept = best_epoch(ctx.history, key, mode) or epochs[-1]
    row = next(r for r in ctx.history if r["epoch"] == kept)
    value = row.get(SPREAD)
    verdict = DASH if value is None else ("collapsed" if value < COLLAPSED else "not collapsed")
    knn = row.get("val_knn_accuracy")
    rows: list[list[Any]] = [
        ["method", ctx.info.pretraining],
        ["kept epoch", f"{kept} (by {key})"],
        ["embedding spread (collapse check)", DASH if value is None else f"{value:.3f}: {verdict}"],
        ["k-NN accuracy on the validation images", DASH if knn is None else f"{knn:.3f}"],
        ["images embedded after each epoch", row.get("val_count", DASH)],
    ]
    section.blocks.append(Table(["", ""], rows))
    section.blocks.append(Figure("embedding_spread.png", _spread_figure(epochs, spreads, kept), _CAPTION))
    if knn is None:
        section.blocks.append(
            Text(
                "The validation images have no classes, so there is no k-NN accuracy: the lowest training loss "
                "kept the epoch, and the spread is the only sign of what the backbone learned."
            )  # fmt: skip
        )
    return [section]


_CAPTION = (
    "Embedding spread per epoch: √d × the mean per-dimension standard deviation of the L2-normalised embeddings of "
    f"the monitored images. About 1 when they spread evenly, 0 when all images collapsed to one vector; below "
    f"{COLLAPSED} (dashed line) the backbone carries little about the images. Dotted line: the kept epoch."
)


def _spread_figure(epochs: list[int], spreads: list[float], kept: int) -> Any:
    figure = plain_figure(6, 3.2)
    ax = figure.subplots()
    ax.plot(epochs, spreads, marker="o", markersize=3, color=VAL_COLOUR)
    ax.axhline(COLLAPSED, color="#aa3333", linestyle="--", linewidth=1)
    ax.axvline(kept, color="#555555", linestyle=":", linewidth=1)
    ax.set(xlabel="epoch", ylabel="embedding spread", ylim=(0, max(1.1, 1.1 * max(spreads))))
    ax.grid(alpha=0.3)
    epoch_ticks(ax, epochs)
    return figure
