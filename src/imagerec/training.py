"""One training run: config → data index → task, model, loaders → engine → run directory.

This is the glue the engine must not contain: it knows the concrete task, the data formats and the run layout.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lightning_fabric import Fabric
from lightning_fabric.loggers import TensorBoardLogger
from lightning_fabric.utilities.seed import seed_everything
from rich.console import Console
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from imagerec.config import RunConfig
from imagerec.data.datasets import ClassificationDataset, channel_statistics
from imagerec.data.formats import load_index
from imagerec.data.images import image_channels, read_image
from imagerec.data.index import DataIndex
from imagerec.data.split import apply_split_record, ensure_splits
from imagerec.engine.autotune import ComputeSettings, choose_cpu_settings, default_settings
from imagerec.engine.checkpoint import Checkpointer, load_weights, rng_state, set_rng_state
from imagerec.engine.finetune import FineTuning, plan_finetuning
from imagerec.engine.loop import FitLoop, FitState, evaluate, fit
from imagerec.engine.optim import build_optimizer, build_scheduler, ema_with_warmup
from imagerec.errors import UserError
from imagerec.models.classification import check_input_size
from imagerec.models.weights import LoadReport, apply_weights, fit_channels, weights_model, weights_preprocessing
from imagerec.outputs.predict import Predictor, load
from imagerec.runs import RUN_FORMAT, RunDir, new_run_dir, write_json, write_yaml
from imagerec.tasks.build import build_task, check_task_data, data_format

if TYPE_CHECKING:
    from imagerec.tasks.build import AnyTask

# Default input size: the data's median image size (shorter side for classification, longer for detection).
AUTO_IMGSZ = {"classify": (32, 224), "detect": (64, 640), "segment": (32, 256)}  # segment: training crop size


@dataclass
class Run:
    """A finished training run: where it lives and what it measured."""

    path: Path
    metrics: dict[str, Any] = field(default_factory=dict)  # on the test split when there is one, else val
    best_epoch: int = 0
    epochs: int = 0
    split: str = ""  # which split `metrics` were measured on
    primary: bool = True  # False in the other processes of a multi-process run, which should stay quiet

    def load(self, **kwargs: Any) -> Predictor:
        return load(self.path, **kwargs)


def _sampled(index: DataIndex, n: int = 64) -> list[Path]:
    samples = index.samples("train")
    step = max(1, len(samples) // n)
    return [s.path for s in samples[::step]]


def _data_channels(index: DataIndex) -> int:
    return max(image_channels(p) for p in _sampled(index))


def _auto_imgsz(index: DataIndex, task: str) -> int:
    side = max if task == "detect" else min
    median = statistics.median(side(read_image(p).shape[1:]) for p in _sampled(index))
    low, high = AUTO_IMGSZ[task]
    size = int(min(high, max(low, median)))
    return -(-size // 32) * 32 if task == "detect" else size  # detectors pad to a multiple of 32 anyway


def _prepare_index(cfg: RunConfig, record: dict[str, list[str]] | None) -> DataIndex:
    index = load_index(cfg.data.path, format=data_format(cfg))
    if record is not None and "all" in index.splits:
        index = apply_split_record(index, record)
    else:
        index = ensure_splits(index, val=cfg.data.val, test=cfg.data.test, seed=cfg.train.seed)
    # One order whether the split was just drawn or re-read from split.json: a resumed run sees the same batches.
    for samples in index.splits.values():
        samples.sort(key=lambda s: index.relative(s.path))
    return index


def _model_info(cfg: RunConfig, index: DataIndex, task: AnyTask) -> dict[str, Any]:
    channels = _data_channels(index)
    pretrained = _pretrained_preprocessing(cfg)
    same_task = pretrained is not None and pretrained.get("task") == cfg.task
    imgsz = cfg.data.imgsz or (pretrained["imgsz"] if same_task else None) or _auto_imgsz(index, cfg.task)
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
    common = {"format": RUN_FORMAT, "task": cfg.task, "model": cfg.model.name, "classes": index.classes}
    if index.category_ids:  # COCO ids, so predictions can be written back as COCO results
        common["category_ids"] = index.category_ids
    return {
        **common, "channels": channels, "imgsz": imgsz, "mean": list(cfg.data.mean or mean),
        "std": list(cfg.data.std or std), **task.model_fields(cfg.model),
    }  # fmt: skip


def _pretrained_preprocessing(cfg: RunConfig) -> dict[str, Any] | None:
    if cfg.model.weights is None:
        return None
    return weights_preprocessing(
        cfg.model.weights, model_name=weights_model(cfg.task, cfg.model.name, cfg.model.backbone)
    )


def make_loader(
    dataset: Dataset, *, batch: int, train: bool, workers: int, collate: Any, seed: int, balanced: bool
) -> DataLoader:
    """A DataLoader whose shuffling is re-seeded every epoch (see engine.loop._set_epoch)."""
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
        drop_last=train and len(dataset) > batch,  # a last batch of one image breaks batch norm
        num_workers=workers,
        persistent_workers=workers > 0,
        collate_fn=collate,
    )


def _versions() -> dict[str, str]:
    import lightning_fabric
    import torchvision

    from imagerec import __version__

    return {
        "imagerec": __version__,
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "lightning_fabric": lightning_fabric.__version__,
    }


class TrainingSession:
    """Builds everything a run needs, then hands the loop to the engine."""

    def __init__(self, cfg: RunConfig, *, console: Console, resume: RunDir | None = None) -> None:
        self.cfg, self.console, self.resume = cfg, console, resume
        t = cfg.train
        if t.device == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda asked for, but no CUDA GPU is visible; use --device cpu or auto")
        self.accelerator = (
            "cuda" if t.device == "cuda" or (t.device == "auto" and torch.cuda.is_available()) else t.device
        )
        if self.accelerator == "auto":
            self.accelerator = "cpu"
        self.world = t.devices * t.num_nodes
        seed_everything(t.seed, workers=True, verbose=False)

    # -- preparation -------------------------------------------------------------------------------------------
    def prepare_data(self) -> tuple[DataIndex, dict[str, Any], AnyTask]:
        """The split data index, the model description (model.json) and the task."""
        cfg = self.cfg
        if self.resume is not None:
            index = _prepare_index(cfg, self.resume.read_split())
            info = self.resume.read_model_info()
        else:
            index = _prepare_index(cfg, None)
            info = None
        check_task_data(cfg, index)
        task = build_task(cfg, index)
        if info is None:
            info = _model_info(cfg, index, task)
        elif info["classes"] != index.classes:
            raise UserError(
                f"{cfg.data.path}: the data's classes ({len(index.classes)}: {', '.join(index.classes[:5])}…) differ "
                f"from the run's ({len(info['classes'])}); resume with the data the run started on, or start a new run"
            )
        return index, info, task

    def _loaders(self, index: DataIndex, info: dict[str, Any], task: AnyTask) -> dict[str, DataLoader]:
        d = self.cfg.data
        batch = d.batch or task.default_batch
        loaders = {}
        for split in ("train", "val", "test"):
            if not index.samples(split):
                continue
            train = split == "train"
            dataset = task.dataset(index.samples(split), info=info, augment=d.augment if train else None, cache=d.cache)
            loaders[split] = make_loader(
                dataset,
                batch=batch,
                train=train,
                workers=d.workers,
                collate=task.collate(d.augment if train else None),
                seed=self.cfg.train.seed if train else 0,
                balanced=train and d.balanced_sampler,
            )
        return loaders

    def _compute_settings(self, model: torch.nn.Module, loader: DataLoader, task: AnyTask) -> ComputeSettings:
        requested = self.cfg.train.precision
        if self.resume is not None:  # keep the numerics the run started with
            saved = self.resume.read_config().get("resolved", {}).get("compute", {})
            if "precision" in saved:
                return ComputeSettings(saved["precision"], bool(saved.get("channels_last")))
        if self.accelerator != "cpu" or self.world > 1 or not task.autotune:
            return default_settings(model, accelerator=self.accelerator, requested=requested)
        images, targets = next(iter(loader))
        probe = (images[:16], targets[:16])  # enough to rank settings, cheap for big models
        return choose_cpu_settings(model, probe, lambda m, b: task.step(m, b)["loss"], requested=requested)

    # -- the run ---------------------------------------------------------------------------------------------------
    def run(self) -> Run:
        cfg = self.cfg
        saved = self._resumable() if self.resume is not None else None
        index, info, task = self.prepare_data()
        loaders = self._loaders(index, info, task)
        net = task.build_model(cfg.model, info)
        loaded = self.load_pretrained(net) if saved is None else None
        check_input_size(net, name=cfg.model.name, in_channels=info["channels"], imgsz=info["imgsz"])
        finetuning = plan_finetuning(
            net, cfg.train, name=cfg.model.name, in_channels=info["channels"], imgsz=info["imgsz"]
        )
        settings = self._compute_settings(net, loaders["train"], task)
        fabric = Fabric(
            accelerator=self.accelerator,
            devices=cfg.train.devices,
            num_nodes=cfg.train.num_nodes,
            precision=settings.precision,
            strategy=self._strategy(),
        )
        fabric.launch()
        # Rank 0 picks the run directory; the others must not race to pick their own.
        run = self.resume or RunDir(Path(fabric.broadcast(str(new_run_dir(cfg.out, cfg.task).path), src=0)))
        if fabric.is_global_zero:
            self.write_run_files(run, index, info, settings, loaded)
            counts = " / ".join(f"{len(index.samples(s))} {s}" for s in ("train", "val", "test"))
            self.console.print(f"run directory: [bold]{run.path}[/]  ({settings.describe()}; {counts} images)")
            for line in (loaded.summary() if loaded else "", finetuning.summary()):
                if line:
                    self.console.print(line, markup=False)
        if settings.channels_last:
            net = net.to(memory_format=torch.channels_last)
        parts = self._optimization(fabric, net, loaders, finetuning)
        checkpointer = Checkpointer(run, enabled=fabric.is_global_zero)
        state = self._restore(saved, net, parts) if saved is not None else FitState()
        logger = TensorBoardLogger(root_dir=run.path, name="tensorboard", version="") if fabric.is_global_zero else None
        loop = FitLoop(
            optimizer=parts.optimizer, scheduler=parts.scheduler, train_loader=parts.train_loader,
            val_loader=parts.eval_loaders.get("val"), epochs=cfg.train.epochs,
            monitor=self._monitor(task, "val" in parts.eval_loaders), patience=cfg.train.patience,
            eval_every=cfg.train.eval_every,
            accumulate=cfg.train.accumulate, clip_grad=cfg.train.clip_grad, seed=cfg.train.seed,
            eval_model=parts.ema.module if parts.ema is not None else None,
            on_step=(lambda: parts.ema.update_parameters(net)) if parts.ema is not None else None,
            on_epoch_start=finetuning.apply,
            save=_saver(checkpointer, net, parts, logger),
        )  # fmt: skip
        state = fit(fabric, task, parts.model, loop, state, self.console)
        if logger is not None:
            logger.finalize("success")
        return self._finish(fabric, task, run, parts.ema.module if parts.ema is not None else net, parts, state)

    def _strategy(self) -> str:
        if self.world == 1:
            return "auto"
        # Gradual unfreezing brings parameters into training after DDP has wrapped the model: DDP must then look
        # for parameters without gradients on every step, or it fails at the first step after the change.
        return "ddp_find_unused_parameters_true" if self.cfg.train.finetune == "gradual" else "ddp"

    def _optimization(
        self, fabric: Fabric, net: torch.nn.Module, loaders: dict[str, DataLoader], finetuning: FineTuning
    ) -> _Parts:
        t = self.cfg.train
        if t.finetune != "gradual":
            finetuning.apply(1)  # before DDP wraps the model: it syncs the parameters that require grad at that time
        model, optimizer = fabric.setup(net, build_optimizer(net, t, lr_scales=finetuning.lr_scales()))
        train_loader = fabric.setup_dataloaders(loaders["train"])
        # Every process evaluates the whole val/test set: exact metrics without gathering padded shards.
        evals = {
            k: fabric.setup_dataloaders(v, use_distributed_sampler=False) for k, v in loaders.items() if k != "train"
        }
        scheduler = build_scheduler(optimizer, t, steps_per_epoch=-(-len(train_loader) // t.accumulate))
        ema = AveragedModel(net, avg_fn=ema_with_warmup(t.ema), use_buffers=True) if t.ema else None
        return _Parts(model, optimizer, scheduler, train_loader, evals, ema)

    def _monitor(self, task: AnyTask, has_val: bool) -> tuple[str, str]:
        metric, mode = task.monitor
        key = self.cfg.train.monitor or (f"val_{metric}" if has_val else "train_loss")
        return key, "min" if key.endswith("loss") else mode

    def load_pretrained(self, net: torch.nn.Module) -> LoadReport | None:
        """Load `--weights` into `net`, if given, and say what was loaded."""
        model = self.cfg.model
        if model.weights is None:
            return None
        return apply_weights(net, model.weights, model_name=weights_model(self.cfg.task, model.name, model.backbone))

    def write_run_files(
        self, run: RunDir, index: DataIndex, info: dict[str, Any], settings: ComputeSettings, loaded: LoadReport | None
    ) -> None:
        """run.yaml (config, versions, data fingerprint, numerics, weights report), model.json and split.json."""
        if self.resume is not None:
            return
        saved = self.cfg.model_dump(mode="json")
        saved["data"]["path"] = str(Path(self.cfg.data.path).resolve())
        saved["out"] = str(run.path)
        write_yaml(run.config, {
            **saved,
            "resolved": {
                "format": RUN_FORMAT, "versions": _versions(), "data_fingerprint": index.fingerprint(),
                "data_notes": index.notes, "compute": {"precision": settings.precision,
                "channels_last": settings.channels_last, "measured_images_per_s": settings.measured},
                "weights": loaded.to_dict() if loaded is not None else None,
            },
        })  # fmt: skip
        write_json(run.model_info, info)
        write_json(run.split, index.split_record())

    def _resumable(self) -> dict[str, Any]:
        """The saved training state, refused at once (before any set-up) when there is nothing left to train."""
        saved = Checkpointer(self.resume).load_state()
        state = FitState(**saved["fit"])
        if state.epoch >= self.cfg.train.epochs or state.stopped_early:
            reason = "stopped early" if state.stopped_early else f"finished all {state.epoch} epochs"
            raise UserError(
                f"{self.resume.path}: the run {reason}; nothing to resume. To train further pass --epochs with "
                f"more than {state.epoch}, or start a new run"
            )
        return saved

    def _restore(self, saved: dict[str, Any], net: torch.nn.Module, parts: _Parts) -> FitState:
        state = FitState(**saved["fit"])
        net.load_state_dict(saved["model"])
        parts.optimizer.load_state_dict(saved["optimizer"])
        # Restore where the schedule stands, not its length: a resume may extend --epochs (OneCycleLR saves its total).
        position = {k: v for k, v in saved["scheduler"].items() if k in ("last_epoch", "_step_count", "_last_lr")}
        parts.scheduler.load_state_dict({**parts.scheduler.state_dict(), **position})
        if parts.ema is not None and saved.get("ema") is not None:
            parts.ema.load_state_dict(saved["ema"])
        set_rng_state(saved["rng"])
        self.console.print(f"resuming {self.resume.path} after epoch {state.epoch}")
        return state

    def _finish(
        self,
        fabric: Fabric,
        task: AnyTask,
        run: RunDir,
        best: torch.nn.Module,
        parts: _Parts,
        state: FitState,
    ) -> Run:
        """Evaluate the best weights on the test split (or val) and record it."""
        if run.best.exists():
            best.load_state_dict({k: v.to(fabric.device) for k, v in load_weights(run.best).items()})
        split = next((s for s in ("test", "val") if s in parts.eval_loaders), None)
        metrics: dict[str, Any] = {}
        if split is not None:
            metrics = evaluate(fabric, task, best, parts.eval_loaders[split])
            if fabric.is_global_zero:
                write_json(run.evaluation(split), {"split": split, "data": str(self.cfg.data.path), **metrics})
        if fabric.is_global_zero:
            self._report(run, split, metrics)
        return Run(
            run.path,
            metrics=metrics,
            best_epoch=state.best_epoch,
            epochs=state.epoch,
            split=split or "",
            primary=fabric.is_global_zero,
        )

    def _report(self, run: RunDir, split: str | None, metrics: dict[str, Any]) -> None:
        """report.html in the run directory, on the split just measured; drawing it must never cost the run."""
        from imagerec.outputs.report import write_report

        measured = {"split": split, "data": str(self.cfg.data.path), **metrics} if split is not None else None
        try:
            device = "cpu" if self.accelerator == "cpu" else "auto"
            path = write_report(run, split=split or "test", evaluate=split is not None, metrics=measured, device=device)
        except Exception as error:  # a plotting bug or odd data must not lose a finished run
            message = f"warning: report.html not written: {type(error).__name__}: {error}"
            self.console.print(message, style="yellow", markup=False)
        else:
            self.console.print(f"report: {path}", markup=False)


@dataclass
class _Parts:
    """What Fabric set up for one run."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_loader: DataLoader
    eval_loaders: dict[str, DataLoader]
    ema: AveragedModel | None


def _saver(
    checkpointer: Checkpointer, net: torch.nn.Module, parts: _Parts, logger: TensorBoardLogger | None
) -> Callable[[FitState, bool], None]:
    """The end-of-epoch callback: checkpoint everything --resume needs, then log to TensorBoard."""

    def save(state: FitState, best: bool) -> None:
        ema = parts.ema
        checkpointer.save_epoch(
            history=state.history,
            weights=(ema.module if ema is not None else net).state_dict(),
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
