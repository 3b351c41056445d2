"""One training run, built from small plain functions: config → data index and task → the model record →
loaders → Fabric parts → engine → run directory.

`train_run` composes them; `train --head knn|logistic` (embedding_head.py) and `--resume` reuse the same pieces.
This is the glue the engine must not contain: it knows the data formats and the run layout, and asks the Task for
everything task-specific.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

import torch
from lightning_fabric import Fabric
from lightning_fabric.loggers import TensorBoardLogger
from lightning_fabric.utilities.seed import seed_everything
from rich.console import Console
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from imagerec.config import RunConfig, TrainConfig, duration_seconds
from imagerec.data.datasets import ClassificationDataset, channel_statistics
from imagerec.data.formats import load_index
from imagerec.data.images import MAX_PIXELS as MAX_IMAGE_PIXELS
from imagerec.data.images import image_channels, read_image
from imagerec.data.index import DataIndex
from imagerec.data.split import apply_split_record, drawn_by_run, ensure_splits
from imagerec.engine.autotune import ComputeSettings, cached_cpu_settings, choose_cpu_settings, default_settings
from imagerec.engine.budget import TimeBudget, estimate_epoch_seconds
from imagerec.engine.checkpoint import Checkpointer, rng_state, set_rng_state
from imagerec.engine.evaluate import SplitScores, evaluate_split
from imagerec.engine.finetune import FineTuning, plan_finetuning
from imagerec.engine.inputs import check_min_imgsz
from imagerec.engine.launch import check_launcher, launch_rank
from imagerec.engine.loop import Diverged, FitLoop, FitState, fit
from imagerec.engine.optim import build_optimizer, build_scheduler, ema_with_warmup, reschedule, schedule_position
from imagerec.errors import UserError
from imagerec.models.classification import check_input_size
from imagerec.models.weights import LoadReport, apply_weights, fit_channels, weights_preprocessing
from imagerec.progress import counting
from imagerec.recipe import Choice
from imagerec.records import RUN_FORMAT, Compute, ModelInfo, Resolved
from imagerec.runs import (
    Run,
    RunDir,
    new_run_dir,
    refuse_existing,
    remove_stale_temporaries,
    run_lock,
    write_json,
    write_yaml,
)
from imagerec.tasks.base import Task
from imagerec.tasks.build import build_task, check_task_data, data_format, pretrained_imgsz
from imagerec.weights_io import load_weights

ConfigT = TypeVar("ConfigT", bound=RunConfig)  # a run's config, or a pretraining run's (PretrainConfig)


def accelerator(cfg: TrainConfig) -> str:
    """The device kind to train on: `cfg.device`, with `auto` meaning CUDA when a GPU is visible, else the CPU."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA GPU is visible; use --device cpu or auto")
    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.device


def prepare_data(cfg: RunConfig, resume: RunDir | None = None) -> tuple[DataIndex, Task]:
    """The split data index (the run's recorded split when resuming) and the task that learns from it."""
    index = _index(cfg, resume.read_split() if resume is not None else None)
    check_task_data(cfg, index)
    return index, build_task(cfg, index)


def _index(cfg: RunConfig, record: dict[str, list[str]] | None) -> DataIndex:
    index = load_index(cfg.data.path, format=data_format(cfg))
    if drawn_by_run(index, record):
        index = apply_split_record(index, record)
    else:
        index = ensure_splits(index, val=cfg.data.val, test=cfg.data.test, seed=cfg.train.seed)
    # One order whether the split was just drawn or re-read from split.json: a resumed run sees the same batches.
    for samples in index.splits.values():
        samples.sort(key=lambda s: index.relative(s.path))
    return index


def _sampled(index: DataIndex, n: int = 64) -> list[Path]:
    samples = index.samples("train")
    step = max(1, len(samples) // n)
    return [s.path for s in samples[::step]]


def sampled_shapes(index: DataIndex, max_pixels: int = MAX_IMAGE_PIXELS) -> list[tuple[int, int]]:
    """(height, width) of up to 64 training images spread over the split: what sizes are planned from."""
    return [tuple(read_image(p, max_pixels=max_pixels).shape[1:]) for p in _sampled(index)]


def model_info(cfg: RunConfig, index: DataIndex, task: Task) -> ModelInfo:
    """The new run's model record: classes, channels, input size and statistics (as given, else those of the
    pretrained weights, else measured on the training images) and the task's preprocessing and fields."""
    sampled = _sampled(index)
    limit = cfg.data.max_image_pixels
    channels = max(image_channels(p, max_pixels=limit) for p in sampled)
    pretrained = _pretrained_preprocessing(cfg, task)
    imgsz = cfg.data.imgsz or pretrained_imgsz(cfg, pretrained) or task.default_imgsz(sampled_shapes(index, limit))
    for name, given in (("mean", cfg.data.mean), ("std", cfg.data.std)):
        if given is not None and len(given) != channels:
            raise UserError(f"--{name} has {len(given)} values but the images have {channels} channels")
    if cfg.data.mean is not None and cfg.data.std is not None:
        mean, std = cfg.data.mean, cfg.data.std
    elif pretrained is not None:  # the statistics the weights learned with, fitted to the data's channels
        mean, std = (fit_channels(pretrained[k], channels) for k in ("mean", "std"))
    else:  # measured on the training images only when the user did not give both
        stats_set = ClassificationDataset(index.samples("train"), channels=channels, num_classes=len(index.classes))
        mean, std = channel_statistics(stats_set, limit=500)
    mean, std = list(cfg.data.mean or mean), list(cfg.data.std or std)
    extra = {"category_ids": index.category_ids} if index.category_ids else {}  # written back as COCO results
    return ModelInfo(
        format=RUN_FORMAT, record_version=ModelInfo.model_fields["record_version"].default, task=task.name,
        kind=task.kind, model=cfg.model.name, classes=index.classes, **extra, channels=channels, imgsz=imgsz,
        mean=mean, std=std, **task.record_fields(cfg.model),
        preprocessing=task.preprocessing(channels=channels, imgsz=imgsz, mean=mean, std=std),
    )  # fmt: skip


def resumed_info(cfg: RunConfig, index: DataIndex, resume: RunDir) -> ModelInfo:
    """The resumed run's model record, refused when the data's classes are no longer the run's."""
    info = resume.read_model_info()
    if info.classes != index.classes:
        raise UserError(
            f"{cfg.data.path}: the data's classes ({len(index.classes)}: {', '.join(index.classes[:5])}…) differ "
            f"from the run's ({len(info.classes)}); resume with the data the run started on, or start a new run"
        )
    return info


def _pretrained_preprocessing(cfg: RunConfig, task: Task) -> dict[str, Any] | None:
    if cfg.model.weights is None:
        return None
    return weights_preprocessing(cfg.model.weights, model_name=task.weights_model(cfg.model))


def load_pretrained(cfg: RunConfig, task: Task, net: torch.nn.Module) -> LoadReport | None:
    """Load `--weights` into `net`, if given, and say what was loaded."""
    if cfg.model.weights is None:
        return None
    return apply_weights(net, cfg.model.weights, model_name=task.weights_model(cfg.model))


def make_loader(
    dataset: Dataset,
    *,
    batch: int,
    train: bool,
    workers: int,
    collate: Any,
    seed: int,
    balanced: bool,
    processes: int = 1,
) -> DataLoader:
    """A DataLoader whose shuffling is re-seeded every epoch (see engine.loop._set_epoch). With `processes` > 1
    Fabric shares the training images out (DistributedSampler): each process gets len / processes of them."""
    generator = torch.Generator().manual_seed(seed)
    sampler = None
    if train and balanced:
        labels = torch.tensor([int(dataset.target(i)) for i in range(len(dataset))])
        weights = (1.0 / torch.bincount(labels).float())[labels]
        sampler = WeightedRandomSampler(weights, num_samples=len(dataset), generator=generator)
    return DataLoader(
        dataset,
        batch_size=batch,
        shuffle=train and sampler is None,
        sampler=sampler,
        generator=generator if sampler is None else None,
        # A last batch of one image breaks batch norm; but each process must keep one batch of its share.
        drop_last=train and -(-len(dataset) // processes) > batch,
        num_workers=workers,
        persistent_workers=workers > 0,
        collate_fn=collate,
    )


def make_loaders(cfg: RunConfig, index: DataIndex, info: ModelInfo, task: Task) -> dict[str, DataLoader]:
    """One loader per split that has images: train augmented and shuffled, val and test as stored."""
    d = cfg.data
    loaders = {}
    for split in ("train", "val", "test"):
        if not index.samples(split):
            continue
        train = split == "train"
        augment = d.augment if train else None
        dataset = task.dataset(
            index.samples(split), info=info, augment=augment, cache=d.cache, coding=index.masks,
            max_image_pixels=d.max_image_pixels,
        )  # fmt: skip
        loaders[split] = make_loader(
            dataset, batch=d.batch or task.default_batch, train=train, workers=d.workers,
            collate=task.collate(augment), seed=cfg.train.seed if train else 0, balanced=train and d.balanced_sampler,
            processes=cfg.train.devices * cfg.train.num_nodes,
        )  # fmt: skip
    return loaders


def compute_settings(
    cfg: RunConfig, task: Task, model: torch.nn.Module, loader: DataLoader, *, device: str, resume: RunDir | None
) -> ComputeSettings:
    """Precision and memory format: the resumed run's, else measured on the CPU where the task allows, else the
    requested (or default) ones."""
    if resume is not None:  # keep the numerics the run started with
        saved = resume.read_resolved().compute
        if saved is not None:
            return ComputeSettings(saved.precision, saved.channels_last)
    requested = cfg.train.precision
    if device != "cpu" or cfg.train.devices * cfg.train.num_nodes > 1 or not task.autotune:
        return default_settings(model, accelerator=device, requested=requested)
    images, targets = next(iter(loader))
    probe = (images[:16], targets[:16])  # enough to rank settings, cheap for big models
    parameters = sum(p.numel() for p in model.parameters())
    key = f"{task.kind} {cfg.model.name} ({parameters:,} parameters) {tuple(images.shape[1:])} {requested}"
    return cached_cpu_settings(
        key, lambda: choose_cpu_settings(model, probe, lambda m, b: task.step(m, b)["loss"], requested=requested)
    )


def _versions() -> dict[str, str]:
    import lightning_fabric
    import torchvision

    return {
        "imagerec": version("imagerec"),
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "lightning_fabric": lightning_fabric.__version__,
    }


def _saved_config(cfg: RunConfig, run: RunDir) -> dict[str, Any]:
    saved = cfg.model_dump(mode="json")
    saved["data"]["path"] = str(Path(cfg.data.path).resolve())
    saved["out"] = str(run.path)
    return saved


def update_run_config(cfg: RunConfig, run: RunDir) -> None:
    """run.yaml's config after `--resume` changed training options (more epochs, patience): the resolved part
    stays as the run started."""
    resolved = run.read_config().get("resolved", {})
    write_yaml(run.config, {**_saved_config(cfg, run), "resolved": resolved})


def write_run_files(
    cfg: RunConfig,
    run: RunDir,
    index: DataIndex,
    info: ModelInfo,
    settings: ComputeSettings,
    loaded: LoadReport | None,
    recipe: Sequence[Choice] = (),
) -> None:
    """run.yaml (config, versions, data fingerprint, numerics, threads, the recipe's choices, weights report),
    model.json and split.json."""
    saved = _saved_config(cfg, run)
    resolved = Resolved(
        format=RUN_FORMAT, versions=_versions(), data_fingerprint=index.fingerprint(), data_notes=index.notes,
        compute=Compute(precision=settings.precision, channels_last=settings.channels_last,
                        measured_images_per_s=settings.measured, device=accelerator(cfg.train)),
        weights=loaded.to_dict() if loaded is not None else None, threads=torch.get_num_threads(),
        recipe=[c.to_dict() for c in recipe],
    )  # fmt: skip
    write_yaml(run.config, {**saved, "resolved": resolved.model_dump(mode="json")})
    run.write_model_info(info)
    write_json(run.split, index.split_record())


def resumable_state(cfg: RunConfig, resume: RunDir) -> dict[str, Any] | None:
    """The committed training state (state.pt) to continue from; None when no epoch was committed, so training
    starts again from epoch 1. Refused at once (before any set-up) when the run has nothing left to do: trained,
    tested and reported."""
    saved = Checkpointer(resume).load_state()
    finished = resume.report.exists() and any(resume.evaluation(s).exists() for s in ("test", "val"))
    if saved is None:
        if finished:
            raise UserError(f"{resume.path}: the run finished and its state.pt was removed; nothing to resume")
        return None
    state = FitState(**saved["fit"])
    if (state.epoch >= cfg.train.epochs or state.stopped_early) and finished:
        reason = "stopped early" if state.stopped_early else f"finished all {state.epoch} epochs"
        raise UserError(
            f"{resume.path}: the run {reason}; nothing to resume. To train further pass --epochs with "
            f"more than {state.epoch}, or start a new run"
        )
    return saved


def _resuming(saved: dict[str, Any] | None, epochs: int, run: RunDir) -> str:
    """What --resume is about to do, in one line."""
    if saved is None:
        return f"resuming {run.path}: no epoch was committed (no state.pt), so training starts again from epoch 1"
    state = FitState(**saved["fit"])
    if state.epoch >= epochs or state.stopped_early:
        return f"resuming {run.path}: training ended after epoch {state.epoch}; completing the test evaluation"
    return f"resuming {run.path} after epoch {state.epoch}"


@dataclass
class FitParts:
    """What Fabric set up for one run."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_loader: DataLoader
    eval_loaders: dict[str, DataLoader]
    ema: AveragedModel | None


def fit_parts(
    fabric: Fabric, cfg: TrainConfig, net: torch.nn.Module, loaders: dict[str, DataLoader], finetuning: FineTuning
) -> FitParts:
    """Model, optimizer and loaders set up by Fabric, the schedule and the EMA copy."""
    if cfg.finetune != "gradual":
        finetuning.apply(1)  # before DDP wraps the model: it syncs the parameters that require grad at that time
    model, optimizer = fabric.setup(net, build_optimizer(net, cfg, lr_scales=finetuning.lr_scales()))
    train_loader = fabric.setup_dataloaders(loaders["train"])
    # Every process evaluates the whole val/test set: exact metrics without gathering padded shards.
    evals = {k: fabric.setup_dataloaders(v, use_distributed_sampler=False) for k, v in loaders.items() if k != "train"}
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch=-(-len(train_loader) // cfg.accumulate))
    ema = AveragedModel(net, avg_fn=ema_with_warmup(cfg.ema), use_buffers=True) if cfg.ema else None
    return FitParts(model, optimizer, scheduler, train_loader, evals, ema)


def restore(saved: dict[str, Any], net: torch.nn.Module, parts: FitParts) -> FitState:
    """Put the model, optimizer, schedule position, EMA and random state back where the saved epoch left them."""
    net.load_state_dict(saved["model"])
    parts.optimizer.load_state_dict(saved["optimizer"])
    # Restore where the schedule stands, not its length: a resume may extend --epochs (OneCycleLR saves its total).
    parts.scheduler.load_state_dict({**parts.scheduler.state_dict(), **schedule_position(saved["scheduler"])})
    if parts.ema is not None and saved.get("ema") is not None:
        parts.ema.load_state_dict(saved["ema"])
    set_rng_state(saved["rng"])
    return FitState(**saved["fit"])


def launch_fabric(cfg: TrainConfig, *, accelerator: str, precision: str) -> Fabric:
    """Fabric for these settings, launched (the DDP processes when devices × nodes > 1), with the threads asked for.
    Fabric's own log line naming a mixed precision is left out: the run's first line names it with the rest."""
    log = logging.getLogger("lightning_fabric.utilities.rank_zero")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        fabric = Fabric(
            accelerator=accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes, precision=precision,
            strategy=_strategy(cfg),
        )  # fmt: skip
    finally:
        log.setLevel(level)
    fabric.launch()
    _keep_threads(cfg)
    return fabric


def _strategy(cfg: TrainConfig) -> str:
    if cfg.devices * cfg.num_nodes == 1:
        return "auto"
    # Gradual unfreezing brings parameters into training after DDP has wrapped the model: DDP must then look
    # for parameters without gradients on every step, or it fails at the first step after the change.
    return "ddp_find_unused_parameters_true" if cfg.finetune == "gradual" else "ddp"


def _monitor(cfg: TrainConfig, task: Task, has_val: bool) -> tuple[str, str]:
    metric, mode = task.monitor
    key = cfg.monitor or (f"val_{metric}" if has_val else "train_loss")
    return key, "min" if key.endswith("loss") else mode


def torch_threads(cfg: TrainConfig) -> int:
    """`--threads`, else IMAGEREC_THREADS, else one thread on a machine with two cores or fewer, else torch's
    default. On two cores shared with another process, two intra-op threads ran training up to 115× slower than
    one (docs/benchmarks.md, "One torch thread"): each waits for the other to be scheduled."""
    if cfg.threads:
        return cfg.threads
    if os.environ.get("IMAGEREC_THREADS", "").isdigit() and int(os.environ["IMAGEREC_THREADS"]) > 0:
        return int(os.environ["IMAGEREC_THREADS"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 1 if cores <= 2 else torch.get_num_threads()


def train_run(
    cfg: RunConfig, *, console: Console, resume: RunDir | None = None, recipe: Sequence[Choice] = ()
) -> tuple[Run, SplitScores | None]:
    """Train `cfg` (or continue `resume`), then score the best weights on the test split (else val).

    Returns the Run and those scores, with each image's outputs kept so that the report need not predict again.
    `recipe` lists the settings the recipe chose (recorded in run.yaml). Torch's thread count is set for the run
    (`torch_threads`) and put back afterwards. The run directory is locked (`runs.run_lock`) while training writes
    into it, a resumed one from the start (before its state is read): a second training into it is refused.
    """
    with session(cfg, resume) as held:
        return _train(cfg, console, resume, recipe, held)


@contextlib.contextmanager
def session(cfg: RunConfig, resume: RunDir | None) -> Iterator[contextlib.ExitStack]:
    """What holds while a run trains: the launcher checked, torch's thread count set (`torch_threads`, put back
    afterwards) and a resumed run's directory locked; the stack yielded holds the locks taken later."""
    check_launcher(cfg.train.devices, cfg.train.num_nodes)
    before = torch.get_num_threads()
    torch.set_num_threads(torch_threads(cfg.train))
    try:
        with contextlib.ExitStack() as held:
            # Global rank 0 is known from the environment before Fabric launches; only it locks the run directory.
            if resume is not None and launch_rank(cfg.train.devices) == 0:
                held.enter_context(run_lock(resume))
            yield held
    finally:
        torch.set_num_threads(before)


def claim_run_dir(fabric: Fabric, cfg: RunConfig, held: contextlib.ExitStack, *, prefix: str | None = None) -> RunDir:
    """Rank 0 picks the new run directory (`--out`, else runs/<prefix or task>-NNN) and locks it until `held`
    closes; the others get its path."""
    path = ""
    if fabric.is_global_zero:
        run = new_run_dir(cfg.out, prefix or cfg.task)
        held.enter_context(run_lock(run))
        refuse_existing(run)  # again, now that no other training can be writing into it
        path = str(run.path)
    return RunDir(Path(fabric.broadcast(path, src=0)))


def _train(
    cfg: RunConfig, console: Console, resume: RunDir | None, recipe: Sequence[Choice], held: contextlib.ExitStack
) -> tuple[Run, SplitScores | None]:
    budget = TimeBudget(duration_seconds(cfg.train.time)) if cfg.train.time and resume is None else None
    device = accelerator(cfg.train)
    seed_everything(cfg.train.seed, workers=True, verbose=False)
    saved, continued, recipe = _resume_point(cfg, resume, recipe) if resume is not None else (None, None, recipe)
    index, task = prepare_data(cfg, continued)
    info = resumed_info(cfg, index, continued) if continued is not None else model_info(cfg, index, task)
    loaders = make_loaders(cfg, index, info, task)
    net = task.build_model(info, dropout=cfg.model.dropout)
    loaded = load_pretrained(cfg, task, net) if saved is None else None
    check_input_size(net, name=cfg.model.name, in_channels=info.channels, imgsz=info.imgsz)
    check_min_imgsz(net, name=cfg.model.name, in_channels=info.channels, imgsz=info.imgsz)
    finetuning = plan_finetuning(net, cfg.train, name=cfg.model.name, in_channels=info.channels, imgsz=info.imgsz)
    settings = compute_settings(cfg, task, net, loaders["train"], device=device, resume=continued)
    if budget is not None:
        cfg = _budgeted(cfg, budget, task, net, loaders, settings, console)
    fabric = launch_fabric(cfg.train, accelerator=device, precision=settings.precision)
    cfg = rank_zero_plan(fabric, cfg, budget)
    run = resume if resume is not None else claim_run_dir(fabric, cfg, held)
    if fabric.is_global_zero:
        if continued is None:
            write_run_files(cfg, run, index, info, settings, loaded, recipe)
        else:
            update_run_config(cfg, run)
        if resume is not None:
            remove_temporaries_of(run, console)
        counts = " / ".join(f"{len(index.samples(s))} {s}" for s in ("train", "val", "test"))
        console.print(f"run directory: [bold]{run.path}[/]  ({settings.describe()}; {counts} images)")
        for line in filter(None, (loaded.summary() if loaded else "", finetuning.summary())):
            console.print(line, markup=False)
    if settings.channels_last:
        net = net.to(memory_format=torch.channels_last)
    parts = fit_parts(fabric, cfg.train, net, loaders, finetuning)
    checkpointer = Checkpointer(run, enabled=fabric.is_global_zero)
    state = restore(saved, net, parts) if saved is not None else FitState()
    if resume is not None:
        checkpointer.agree(saved and saved["fit"], _epoch_weights(net, parts) if saved is not None else None)
        console.print(_resuming(saved, cfg.train.epochs, run), markup=False)
    logger = TensorBoardLogger(root_dir=run.path, name="tensorboard", version="") if fabric.is_global_zero else None
    t = cfg.train
    loop = FitLoop(
        optimizer=parts.optimizer, scheduler=parts.scheduler, train_loader=parts.train_loader,
        val_loader=parts.eval_loaders.get("val"), epochs=t.epochs,
        monitor=_monitor(t, task, "val" in parts.eval_loaders), patience=t.patience, eval_every=t.eval_every,
        accumulate=t.accumulate, clip_grad=t.clip_grad, seed=t.seed,
        eval_model=parts.ema.module if parts.ema is not None else None,
        on_step=(lambda: parts.ema.update_parameters(net)) if parts.ema is not None else None,
        on_epoch_start=finetuning.apply, budget=budget,
        save=epoch_saver(checkpointer, net, parts, logger, lambda: _epoch_weights(net, parts)),
        replan=replanner(fabric, cfg, run, parts) if budget is not None else None,
    )  # fmt: skip
    state = fit_run(fabric, task, parts.model, loop, state, console, run=run, lr=cfg.train.lr, logger=logger)
    best = parts.ema.module if parts.ema is not None else net
    return _test(fabric, cfg, task, info, run, best, parts.eval_loaders, state, console)


def _resume_point(
    cfg: RunConfig, run: RunDir, recipe: Sequence[Choice]
) -> tuple[dict[str, Any] | None, RunDir | None, Sequence[Choice]]:
    """The committed state to continue from, the run to resume, and the recipe to record. With nothing committed
    (killed before the first state.pt) the run starts again as a new one in its own folder, with its recorded
    recipe: (None, None, that recipe)."""
    saved = resumable_state(cfg, run)
    if saved is not None:
        return saved, run, recipe
    return None, None, [Choice(**choice) for choice in run.read_resolved().recipe]


def remove_temporaries_of(run: RunDir, console: Console) -> None:
    """Remove the temporary files of the writes a kill interrupted."""
    removed = remove_stale_temporaries(run.path)
    if removed:
        console.print(f"removed {len(removed)} temporary files of interrupted writes", markup=False)


def fit_run(
    fabric: Fabric,
    objective: Any,
    model: torch.nn.Module,
    loop: FitLoop,
    state: FitState,
    console: Console,
    *,
    run: RunDir,
    lr: float,
    logger: TensorBoardLogger | None,
) -> FitState:
    """`engine.loop.fit` for a run directory: a diverged loss becomes one line saying what is kept, and the
    TensorBoard log is closed when training ends."""
    try:
        state = fit(fabric, objective, model, loop, state, console)
    except Diverged as error:
        raise _diverged_error(error, run, state, lr) from None
    if logger is not None:
        logger.finalize("success")
    return state


def _diverged_error(error: Diverged, run: RunDir, state: FitState, lr: float) -> UserError:
    """The one line for a run whose loss became NaN or infinite; `state` is the last epoch saved before it."""
    if state.epoch:
        best = f", best.safetensors from epoch {state.best_epoch}" if state.best_epoch else ""
        kept = f"the last good checkpoint, epoch {state.epoch}, is kept in {run.path} (last.safetensors{best})"
    else:
        kept = f"no epoch had finished, so {run.path} holds no weights"
    return UserError(f"training diverged: {error}; {kept}. Start a new run with a lower --lr than {lr:g}")


def _budgeted(
    cfg: RunConfig,
    budget: TimeBudget,
    task: Task,
    net: torch.nn.Module,
    loaders: dict[str, DataLoader],
    settings: ComputeSettings,
    console: Console,
) -> RunConfig:
    """`cfg` with the epochs a first estimate fits into the budget (re-planned after the first epoch)."""
    images, targets = next(iter(loaders["train"]))
    seconds = estimate_epoch_seconds(
        net, (images[:16], targets[:16]), lambda m, b: task.step(m, b)["loss"], precision=settings.precision,
        train_images=len(loaders["train"].dataset), eval_images=len(loaders["val"].dataset) if "val" in loaders else 0,
    )  # fmt: skip
    return planned_epochs(cfg, budget, seconds, console)


def planned_epochs(cfg: ConfigT, budget: TimeBudget, seconds: float, console: Console) -> ConfigT:
    """`cfg` with the epochs of `seconds` each that the budget's first estimate fits, said on the console."""
    epochs = budget.first_estimate(seconds, text=cfg.train.time or "")
    console.print(f"time budget {cfg.train.time}: about {seconds:.1f} s per epoch estimated, {epochs} epochs planned")
    return with_epochs(cfg, epochs)


def _keep_threads(cfg: TrainConfig) -> None:
    """Fabric's launch sets cores ÷ processes torch threads in each process when OMP_NUM_THREADS is unset, over
    `--threads`; threads the user asked for win again (the default stays Fabric's share of the cores)."""
    if cfg.threads or os.environ.get("IMAGEREC_THREADS", "").isdigit():
        torch.set_num_threads(torch_threads(cfg))


def rank_zero_plan(fabric: Fabric, cfg: RunConfig, budget: TimeBudget | None) -> RunConfig:
    """`cfg` with the epochs rank 0 planned for the time budget. Each process timed its own estimate before launch;
    all follow rank 0's, or their schedules (and so their learning rates) would differ while DDP averages their
    gradients."""
    if budget is None:
        return cfg
    return with_epochs(cfg, int(fabric.broadcast(cfg.train.epochs, src=0)))


def with_epochs(cfg: ConfigT, epochs: int) -> ConfigT:
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": epochs})})


def replanner(
    fabric: Fabric, cfg: RunConfig, run: RunDir, parts: FitParts
) -> Callable[[int], torch.optim.lr_scheduler.LRScheduler]:
    """The time budget's re-planning: a schedule `epochs` long from where training stands, recorded in run.yaml."""
    steps_per_epoch = -(-len(parts.train_loader) // cfg.train.accumulate)

    def replan(epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
        train = cfg.train.model_copy(update={"epochs": epochs})
        parts.scheduler = reschedule(parts.optimizer, parts.scheduler, train, steps_per_epoch)
        if fabric.is_global_zero:
            update_run_config(cfg.model_copy(update={"train": train}), run)
        return parts.scheduler

    return replan


def _test(
    fabric: Fabric,
    cfg: RunConfig,
    task: Task,
    info: ModelInfo,
    run: RunDir,
    best: torch.nn.Module,
    loaders: dict[str, DataLoader],
    state: FitState,
    console: Console,
) -> tuple[Run, SplitScores | None]:
    """Choose the decision threshold on val, then score the best weights at it on the test split (or val) and
    record it in evaluation/<split>.json."""
    if run.best.exists():
        best.load_state_dict({k: v.to(fabric.device) for k, v in load_weights(run.best).items()})
    task = _decide(fabric, cfg, task, info, run, best, loaders.get("val"), console)
    split = next((s for s in ("test", "val") if s in loaders), None)
    scores = None
    if split is not None:
        shown = console if fabric.is_global_zero else None
        with counting(shown, f"{split} split", len(loaders[split].dataset)) as advance:
            scores = evaluate_split(
                task, best, loaders[split], autocast=fabric.autocast, keep_outputs=fabric.is_global_zero,
                progress=advance,
            )  # fmt: skip
        if fabric.is_global_zero:
            write_json(run.evaluation(split), {"split": split, "data": str(cfg.data.path), **scores.as_dict()})
    metrics = scores.as_dict() if scores is not None else {}
    ran = Run(run.path, metrics, state.best_epoch, state.epoch, split or "", primary=fabric.is_global_zero)
    return ran, scores


def _decide(
    fabric: Fabric,
    cfg: RunConfig,
    task: Task,
    info: ModelInfo,
    run: RunDir,
    best: torch.nn.Module,
    val: DataLoader | None,
    console: Console,
) -> Task:
    """The task at the decision threshold `--threshold-by` picks on the validation split, saved in model.json
    (the task as it is when it has no threshold to choose; without a validation split, its default threshold, so
    that the record still names what it is about, such as the positive class)."""
    metrics = task.metrics()
    if val is not None:
        shown = console if fabric.is_global_zero else None
        with counting(shown, "decision threshold on val", len(val.dataset)) as advance:
            evaluate_split(task, best, val, autocast=fabric.autocast, metrics=metrics, progress=advance)
    decision = metrics.decide(cfg.train.threshold_by)
    if decision is None:
        return task
    if fabric.is_global_zero:
        run.write_model_info(info.model_copy(update={"decision": decision}))
        console.print(f"decision: {decision.describe()}", markup=False)
    return task.with_decision(decision)


def _epoch_weights(net: torch.nn.Module, parts: FitParts) -> dict[str, torch.Tensor]:
    """The weights an epoch saves as last (and maybe best): the EMA copy's when there is one."""
    return (parts.ema.module if parts.ema is not None else net).state_dict()


def epoch_saver(
    checkpointer: Checkpointer,
    net: torch.nn.Module,
    parts: FitParts,
    logger: TensorBoardLogger | None,
    weights: Callable[[], dict[str, torch.Tensor]],
) -> Callable[[FitState, bool], None]:
    """The end-of-epoch callback: checkpoint everything --resume needs (`weights()` gives what last and best
    hold), then log to TensorBoard."""

    def save(state: FitState, best: bool) -> None:
        ema = parts.ema
        checkpointer.save_epoch(
            history=state.history,
            weights=weights(),
            state={
                "fit": state.to_dict(),
                "model": net.state_dict(),
                "optimizer": parts.optimizer.state_dict(),
                "scheduler": parts.scheduler.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "rng": rng_state(),
            },
            best=best,
        )
        if logger is not None:
            logger.log_metrics({k: v for k, v in state.history[-1].items() if k != "epoch"}, step=state.epoch)

    return save
