"""One self-supervised pretraining run (`imagerec pretrain`): unlabelled images → a backbone in a run directory.

The images are the training split of any data imagerec reads (labels ignored; the split is the one `imagerec train`
draws with the same seed, so its validation and test images are never pretrained on), or every image under a
folder without labels. The network is the classifier `--model` with its classifier layer replaced by
`models.embedding.Embedding`; `models.ssl` adds the method's heads and loss (Lightly's), and the engine's own `fit`
trains it on Fabric, with progress, checkpoints, `--resume` and `--time` as in training.

After each epoch the backbone embeds the validation images: `EmbeddingMetrics` gives the collapse check
(`val_embedding_spread`) and, when they have classes, the leave-one-out k-NN accuracy that picks the best epoch.
best.safetensors holds the backbone alone, so the run directory is an ordinary one: `--weights RUN` starts any
task from it, and `embed` and `neighbors` read it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from lightning_fabric import Fabric
from lightning_fabric.loggers import TensorBoardLogger
from lightning_fabric.utilities.seed import seed_everything
from rich.console import Console

from imagerec.config import PretrainConfig, duration_seconds
from imagerec.data.formats import detect_format, load_index
from imagerec.data.images import image_channels, is_image_file
from imagerec.data.index import DataIndex
from imagerec.data.split import apply_split_record, drawn_by_run, ensure_splits
from imagerec.data.targets import Sample
from imagerec.engine.autotune import default_settings
from imagerec.engine.budget import TimeBudget, estimate_epoch_seconds
from imagerec.engine.checkpoint import Checkpointer
from imagerec.engine.finetune import FineTuning
from imagerec.engine.inputs import check_min_imgsz
from imagerec.engine.loop import FitLoop, FitState
from imagerec.errors import UserError
from imagerec.metrics.embedding import COLLAPSED, UNLABELLED, knn_measurable
from imagerec.models.classification import check_input_size
from imagerec.models.ssl import build_ssl_model, check_method, headless
from imagerec.records import ModelInfo
from imagerec.runs import Run, RunDir, write_json
from imagerec.tasks.classification import ClassificationTask
from imagerec.tasks.pretrain import PretrainObjective
from imagerec.training import (
    accelerator,
    claim_run_dir,
    epoch_saver,
    fit_parts,
    fit_run,
    launch_fabric,
    load_pretrained,
    make_loader,
    model_info,
    planned_epochs,
    rank_zero_plan,
    remove_temporaries_of,
    replanner,
    restore,
    session,
    update_run_config,
    write_run_files,
)

DEFAULT_MODEL = "resnet18"  # a backbone every task can start from (detectors and segmenters take it by name)
DEFAULT_BATCH = 64
MIN_BATCH = 16  # the default batch is cut to the images there are, never below this
MONITOR_IMAGES = 256  # unlabelled data: training images embedded after each epoch for the collapse check


def pretrain_index(cfg: PretrainConfig, record: dict[str, list[str]] | None = None) -> DataIndex:
    """The data's index split as `imagerec train` would split it with the same seed (or as `record` says); a
    folder without labels (no class folders) is one `train` split of every image under it."""
    path = Path(cfg.data.path).expanduser()
    fmt = cfg.data.format
    if fmt == "auto" and path.is_dir() and detect_format(path) == "imagefolder":
        try:
            index = load_index(path, format="imagefolder")
        except UserError:  # not class folders: images without labels, which is all pretraining needs
            index = _unlabelled(path)
    else:
        index = load_index(path, format=fmt)
    if drawn_by_run(index, record):
        index = apply_split_record(index, record)
    elif "all" in index.splits and index.classes:
        index = ensure_splits(index, val=cfg.data.val, test=cfg.data.test, seed=cfg.train.seed)
    for samples in index.splits.values():
        samples.sort(key=lambda s: index.relative(s.path))
    return index


def _unlabelled(path: Path) -> DataIndex:
    images = sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
    if not images:
        raise UserError(f"{path}: no image files found in it or its subfolders")
    index = DataIndex(root=path, classes=[], splits={"train": [Sample(p, UNLABELLED) for p in images]}, format="images")
    index.notes.append(f"no class labels: all {len(images)} images train the backbone; no k-NN monitor")
    return index


def _monitor_samples(index: DataIndex) -> tuple[list[Sample], bool]:
    """The images embedded after each epoch, and whether their classes give the k-NN accuracy: the validation
    split, else a spread sample of the training images (collapse check only)."""
    val = index.samples("val")
    if val:
        return val, knn_measurable([s.target for s in val if isinstance(s.target, int) and s.target != UNLABELLED])
    train = index.samples("train")
    return train[:: max(1, len(train) // MONITOR_IMAGES)], False


def _batch(cfg: PretrainConfig, images: int) -> int:
    """`--batch`, else 64 or as many as the images allow per process (the methods compare the images of a batch
    with each other, so a batch has at least MIN_BATCH); a UserError naming the minimum when the images are too
    few."""
    processes = cfg.train.devices * cfg.train.num_nodes
    batch = cfg.data.batch or max(MIN_BATCH, min(DEFAULT_BATCH, images // processes))
    if batch < 2:
        raise UserError("--batch 1: self-supervised methods compare the images of a batch; use at least 2")
    if images < batch * processes:
        given = "" if cfg.data.batch else " (the smallest default batch)"
        raise UserError(
            f"{cfg.data.path}: {images} training images, fewer than one batch of {batch}{given} per process; "
            f"give at least {batch * processes} images, or a smaller --batch (at least 2)"
        )
    return batch


def _mixed_channels(index: DataIndex, info: ModelInfo, limit: int) -> str | None:
    train = index.samples("train")
    counts = {image_channels(s.path, max_pixels=limit) for s in train[:: max(1, len(train) // 64)]}
    if len(counts) < 2:
        return None
    return (
        f"images with {' and '.join(map(str, sorted(counts)))} channels: all read as {info.channels}, as training does"
    )


def pretrain_run(cfg: PretrainConfig, *, console: Console, resume: RunDir | None = None) -> Run:
    """Pretrain `cfg.model.name` on the images of `cfg.data.path` with `cfg.method` (or continue `resume`)."""
    with session(cfg, resume) as held:
        return _pretrain(cfg, console, resume, held)


def _pretrain(cfg: PretrainConfig, console: Console, resume: RunDir | None, held: contextlib.ExitStack) -> Run:
    budget = TimeBudget(duration_seconds(cfg.train.time)) if cfg.train.time and resume is None else None
    device = accelerator(cfg.train)
    seed_everything(cfg.train.seed, workers=True, verbose=False)
    saved = _committed(cfg, resume) if resume is not None else None
    index = pretrain_index(cfg, resume.read_split() if saved is not None else None)
    task = ClassificationTask([])
    info = resume.read_model_info() if saved is not None else _model_info(cfg, index, task)
    network = task.build_model(info.model_copy(update={"head": None}))
    check_method(cfg.method, network, model_name=cfg.model.name)
    layer, width = headless(network)
    info = info.model_copy(update={"head": {"kind": "pretrained", "layer": layer, "dim": width, "method": cfg.method}})
    loaded = load_pretrained(cfg, task, network) if saved is None else None
    check_input_size(network, name=cfg.model.name, in_channels=info.channels, imgsz=info.imgsz)
    check_min_imgsz(network, name=cfg.model.name, in_channels=info.channels, imgsz=info.imgsz)
    model = build_ssl_model(cfg.method, network, width)
    monitor, labelled = _monitor_samples(index)
    objective = PretrainObjective(cfg.method, labelled)
    batch = _batch(cfg, len(index.samples("train")))
    loaders = {
        split: make_loader(
            objective.dataset(samples, info=info, train=split == "train", cache=cfg.data.cache,
                              max_image_pixels=cfg.data.max_image_pixels),
            batch=batch, train=split == "train", workers=cfg.data.workers, collate=None, seed=cfg.train.seed,
            balanced=False, processes=cfg.train.devices * cfg.train.num_nodes,
        )
        for split, samples in (("train", index.samples("train")), ("val", monitor))
    }  # fmt: skip
    settings = default_settings(model, accelerator=device, requested=cfg.train.precision)
    if budget is not None:
        cfg = _budgeted(cfg, budget, objective, model, loaders, settings.precision, console)
    fabric = launch_fabric(cfg.train, accelerator=device, precision=settings.precision)
    cfg = rank_zero_plan(fabric, cfg, budget)
    run = resume if resume is not None else claim_run_dir(fabric, cfg, held, prefix="pretrain")
    if fabric.is_global_zero:
        if saved is None:
            write_run_files(cfg, run, index, info, settings, loaded)
        else:
            update_run_config(cfg, run)
            remove_temporaries_of(run, console)
        counts = f"{len(index.samples('train'))} training images, {len(monitor)} monitored"
        console.print(f"run directory: [bold]{run.path}[/]  ({cfg.method}, {settings.describe()}; {counts})")
        for line in filter(None, [*index.notes, _mixed_channels(index, info, cfg.data.max_image_pixels),
                                  loaded.summary() if loaded else ""]):  # fmt: skip
            console.print(line, markup=False)
    parts = fit_parts(fabric, cfg.train, model, loaders, FineTuning(model, None))
    checkpointer = Checkpointer(run, enabled=fabric.is_global_zero)
    state = restore(saved, model, parts) if saved is not None else FitState()
    if resume is not None:
        checkpointer.agree(saved and saved["fit"], network.state_dict() if saved is not None else None)
        console.print(f"resuming {run.path} after epoch {state.epoch}", markup=False)
    logger = TensorBoardLogger(root_dir=run.path, name="tensorboard", version="") if fabric.is_global_zero else None
    t = cfg.train
    loop = FitLoop(
        optimizer=parts.optimizer, scheduler=parts.scheduler, train_loader=parts.train_loader,
        val_loader=parts.eval_loaders["val"], epochs=t.epochs, monitor=objective.monitor, patience=t.patience,
        eval_every=t.eval_every, accumulate=t.accumulate, clip_grad=t.clip_grad, seed=t.seed,
        save=epoch_saver(checkpointer, model, parts, logger, network.state_dict), budget=budget,
        replan=replanner(fabric, cfg, run, parts) if budget is not None else None,
        shown=("val_knn_accuracy", "val_embedding_spread"),
    )  # fmt: skip
    state = fit_run(fabric, objective, parts.model, loop, state, console, run=run, lr=cfg.train.lr, logger=logger)
    return _finish(fabric, cfg, run, state, console)


def _committed(cfg: PretrainConfig, run: RunDir) -> dict[str, Any] | None:
    """The committed state to continue from (None: no epoch was committed, so pretraining starts again in the
    same folder); refused when every epoch is done."""
    saved = Checkpointer(run).load_state()
    if saved is not None and FitState(**saved["fit"]).epoch >= cfg.train.epochs and run.evaluation("val").exists():
        raise UserError(
            f"{run.path}: pretraining finished all {saved['fit']['epoch']} epochs; nothing to resume. To train "
            "further pass --epochs with more, or start a new run"
        )
    return saved


def _model_info(cfg: PretrainConfig, index: DataIndex, task: ClassificationTask) -> ModelInfo:
    """The classifier record of the backbone, without classes: channels, input size and statistics measured on the
    training images as for a training run."""
    info = model_info(cfg, index, task)
    return info.model_copy(update={"classes": [], "category_ids": None})


def _budgeted(
    cfg: PretrainConfig,
    budget: TimeBudget,
    objective: PretrainObjective,
    model: torch.nn.Module,
    loaders: dict[str, Any],
    precision: str,
    console: Console,
) -> PretrainConfig:
    views, targets = next(iter(loaders["train"]))
    seconds = estimate_epoch_seconds(
        model, ([v[:16] for v in views], targets[:16]), lambda m, b: objective.step(m, b)["loss"],
        precision=precision, train_images=len(loaders["train"].dataset), eval_images=len(loaders["val"].dataset),
    )  # fmt: skip
    return planned_epochs(cfg, budget, seconds, console)


def _finish(fabric: Fabric, cfg: PretrainConfig, run: RunDir, state: FitState, console: Console) -> Run:
    """Record the monitor at the kept epoch in evaluation/val.json and say whether the embeddings collapsed."""
    kept = next((row for row in state.history if row["epoch"] == (state.best_epoch or state.epoch)), {})
    metrics = {k[4:]: v for k, v in kept.items() if k.startswith("val_")}
    if fabric.is_global_zero and metrics:
        write_json(run.evaluation("val"), {"split": "val", "data": str(cfg.data.path), "epoch": kept["epoch"],
                                           "method": cfg.method, **metrics})  # fmt: skip
        if metrics.get("embedding_spread", 1.0) < COLLAPSED:
            console.print(
                f"[yellow]warning[/]: the embeddings collapsed (spread {metrics['embedding_spread']:.3f}, below "
                f"{COLLAPSED}): they carry little about the images; try another --method or a lower --lr"
            )
    best = state.best_epoch or state.epoch
    return Run(run.path, metrics, best, state.epoch, "val", primary=fabric.is_global_zero)
