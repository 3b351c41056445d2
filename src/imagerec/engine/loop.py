"""train_one_epoch and fit: plain functions over the Task contract, on Lightning Fabric (scoring: engine.evaluate)."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import torch
from lightning_fabric import Fabric
from rich.console import Console
from rich.progress import Progress
from torch import nn
from torch.utils.data import DataLoader

from imagerec.engine.budget import TimeBudget
from imagerec.engine.evaluate import evaluate_split
from imagerec.errors import UserError
from imagerec.progress import image_counter, image_progress
from imagerec.tasks.base import Task

CHECK_EVERY = 10  # steps between reads of the loss on the host (progress bar, divergence): each read syncs a GPU


class Diverged(Exception):
    """The loss or the weights became NaN or infinite: training cannot recover, and nothing of it should be saved."""

    def __init__(self, epoch: int, step: int, steps: int) -> None:
        super().__init__(f"the loss or the weights became NaN or infinite at epoch {epoch}, step {step} of {steps}")
        self.epoch, self.step, self.steps = epoch, step, steps


@dataclass
class FitState:
    """Where training stands after the last finished epoch (saved in state.pt)."""

    epoch: int = 0
    best: float | None = None
    best_loss: float | None = None  # validation loss at the best epoch: breaks ties of the monitored metric
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def train_one_epoch(
    fabric: Fabric,
    task: Task,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader: DataLoader,
    *,
    accumulate: int = 1,
    clip_grad: float | None = None,
    on_step: Callable[[], None] | None = None,
    on_train: Callable[[], None] | None = None,
    progress: Progress | None = None,
    description: str = "train",
    epoch: int = 0,
) -> dict[str, float]:
    """One pass over `loader`; returns mean loss, last LR, throughput and time. `on_train` runs right after
    `model.train()`, e.g. to put frozen BatchNorms back in evaluation mode.

    Raises Diverged (naming `epoch` and the first bad step) within CHECK_EVERY steps of a NaN or infinite loss, and
    at the end when the last steps left NaN or infinite weights."""
    model.train()
    if on_train:
        on_train()
    bar = progress.add_task(description, total=len(loader), status="") if progress else None
    # Summed on the device: reading it back every step would stall a GPU on each batch.
    loss_sum, seen, start = torch.zeros((), device=fabric.device), 0, time.perf_counter()
    steps = len(loader)
    first_bad = torch.full((), steps, device=fabric.device)  # index of the first non-finite loss; `steps`: none yet
    for i, batch in enumerate(loader):
        stepping = (i + 1) % accumulate == 0 or i + 1 == len(loader)
        with fabric.no_backward_sync(model, enabled=not stepping):
            loss = task.step(model, batch)["loss"]
            fabric.backward(loss / accumulate)
        if stepping:
            if clip_grad:
                fabric.clip_gradients(model, optimizer, max_norm=clip_grad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if on_step:
                on_step()
        size = task.batch_size(batch)
        loss_sum += loss.detach().float() * size
        seen += size
        first_bad = torch.where(torch.isfinite(loss.detach()), first_bad, first_bad.clamp(max=i))
        if i % CHECK_EVERY == 0 or i + 1 == steps:
            _check_finite(fabric, first_bad, epoch=epoch, steps=steps)
            if bar is not None:
                speed = seen / (time.perf_counter() - start)
                progress.update(bar, completed=i + 1, status=f"loss {float(loss_sum) / seen:.4f}  {speed:.0f} img/s")
    if not bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all()):
        raise Diverged(epoch, steps, steps)
    elapsed = time.perf_counter() - start
    if bar is not None:
        progress.remove_task(bar)
    # Mean loss over all processes, so every rank logs and decides the same.
    mean_loss = fabric.all_reduce(loss_sum / max(seen, 1), reduce_op="mean")
    return {
        "train_loss": round(float(mean_loss), 6),
        "lr": optimizer.param_groups[0]["lr"],
        "images_per_s": round(seen * fabric.world_size / elapsed, 1),
        "epoch_time_s": round(elapsed, 2),
    }


def _check_finite(fabric: Fabric, first_bad: torch.Tensor, *, epoch: int, steps: int) -> None:
    """Raise Diverged when any process saw a non-finite loss; all processes decide together, so none is left
    waiting for the others in the next step."""
    at = int(fabric.all_reduce(first_bad.clone(), reduce_op="min"))
    if at < steps:
        raise Diverged(epoch, at + 1, steps)


def _improved(score: float, best: float | None, mode: str) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(score)
    return score > best if mode == "max" else score < best


@dataclass
class FitLoop:
    """Everything `fit` needs besides the task and model, grouped so the signature stays readable."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_loader: DataLoader
    val_loader: DataLoader | None
    epochs: int
    monitor: tuple[str, str]
    patience: int = 0
    accumulate: int = 1
    clip_grad: float | None = None
    seed: int = 0
    eval_every: int = 1  # validate every N epochs and after the last one
    eval_model: nn.Module | None = None  # e.g. the EMA copy; defaults to the trained model
    on_step: Callable[[], None] | None = None
    on_epoch_start: Callable[[int], None] | None = None  # called with the epoch number right after model.train()
    save: Callable[[FitState, bool], None] | None = None  # called after every finished epoch
    budget: TimeBudget | None = None  # --time: the epochs are re-planned after the first and checked after each
    replan: Callable[[int], torch.optim.lr_scheduler.LRScheduler] | None = None  # the schedule for N epochs
    epoch_seconds: list[float] = field(default_factory=list)  # wall time of each epoch of this call, for the budget
    shown: tuple[str, ...] = ()  # metrics printed after each epoch besides the losses and the monitored one


def fit(fabric: Fabric, task: Task, model: nn.Module, loop: FitLoop, state: FitState, console: Console) -> FitState:
    """Train from `state.epoch + 1` to `loop.epochs` (nothing when `state` stopped early), evaluating,
    checkpointing and stopping early (or at the time budget). Raises Diverged before saving an epoch whose loss or
    weights became NaN or infinite."""
    key = loop.monitor[0]
    progress = image_progress(console, enabled=fabric.is_global_zero)
    first = state.epoch + 1
    with progress:
        epoch = first
        while epoch <= loop.epochs and not state.stopped_early:
            started = time.monotonic()
            _set_epoch(loop.train_loader, loop.seed + epoch)
            row: dict[str, Any] = {"epoch": epoch}
            start = partial(loop.on_epoch_start, epoch) if loop.on_epoch_start else None
            row |= train_one_epoch(
                fabric, task, model, loop.optimizer, loop.scheduler, loop.train_loader,
                accumulate=loop.accumulate, clip_grad=loop.clip_grad, on_step=loop.on_step, on_train=start,
                progress=progress, description=f"epoch {epoch}/{loop.epochs}", epoch=epoch,
            )  # fmt: skip
            validated = loop.val_loader is not None and (epoch % loop.eval_every == 0 or epoch == loop.epochs)
            if validated:
                with image_counter(progress, f"validate {epoch}", len(loop.val_loader.dataset)) as advance:
                    val = evaluate_split(
                        task, loop.eval_model or model, loop.val_loader, autocast=fabric.autocast, progress=advance
                    ).as_dict()
                # Rank 0's scores decide for all: the EMA copy averages each process's own BatchNorm statistics,
                # so processes score it differently, and could disagree on the best epoch or on stopping early.
                row |= fabric.broadcast({f"val_{k}": v for k, v in val.items() if isinstance(v, int | float)}, src=0)
            state.epoch, state.history = epoch, [*state.history, row]
            best = _judge(state, row, loop.monitor) if validated or loop.val_loader is None else False
            state.stopped_early = bool(loop.patience) and state.bad_epochs >= loop.patience
            if loop.save:
                loop.save(state, best)
            fabric.barrier()
            if fabric.is_global_zero:
                console.print(_summary(row, (key, *loop.shown), best))
                if state.stopped_early:
                    console.print(f"early stop: {key} did not improve for {loop.patience} epochs")
            if state.stopped_early or (
                loop.budget and not _within_budget(fabric, loop, epoch, first, started, console)
            ):
                break
            epoch += 1
    return state


def _within_budget(fabric: Fabric, loop: FitLoop, epoch: int, first: int, started: float, console: Console) -> bool:
    """After the run's first epoch, plan the epochs that fit the budget; after later ones, whether another fits.
    Rank 0 decides for all, so every process stops at the same epoch."""
    loop.epoch_seconds.append(time.monotonic() - started)
    typical = statistics.median(loop.epoch_seconds[-5:])
    total = int(fabric.broadcast(loop.budget.epochs_after(epoch, typical), src=0))
    if epoch != first:
        total = min(total, loop.epochs)  # after the first epoch the schedule only ever shortens
    if total != loop.epochs and loop.replan is not None:
        loop.epochs, loop.scheduler = total, loop.replan(total)
        if fabric.is_global_zero and epoch != first:
            console.print(f"time budget: epochs now take {typical:.1f} s; the schedule ends after epoch {total}")
    if fabric.is_global_zero and epoch == first:
        console.print(f"time budget: {typical:.1f} s per epoch measured; {total} epochs planned")
    return epoch < total


def _judge(state: FitState, row: dict[str, Any], monitor: tuple[str, str]) -> bool:
    """Whether this epoch is the best so far by the monitored metric; updates the state's best and patience."""
    key, mode = monitor
    if key not in row:  # a misspelt monitor would silently never save a best checkpoint
        measured = ", ".join(k for k in row if k != "epoch")
        raise UserError(f"monitor {key!r} is not a measured metric; use one of: {measured}")
    score = float(row[key])
    loss = float(row.get("val_loss", math.nan))
    # Small validation sets tie often on accuracy-like metrics; the lower loss wins a tie.
    best = _improved(score, state.best, mode) or (
        score == state.best and _improved(loss, state.best_loss, "min") and not key.endswith("loss")
    )
    if best:
        state.best, state.best_loss, state.best_epoch, state.bad_epochs = score, loss, row["epoch"], 0
    else:
        state.bad_epochs += 1
    return best


def _set_epoch(loader: DataLoader, seed: int) -> None:
    """Reshuffle deterministically per epoch, so a resumed run sees the order an uninterrupted one would."""
    sampler = loader.sampler
    if hasattr(sampler, "set_epoch"):  # DistributedSampler under DDP
        sampler.set_epoch(seed)
    generator = getattr(sampler, "generator", None) or getattr(loader, "generator", None)
    if generator is not None:
        generator.manual_seed(seed)


def _summary(row: dict[str, Any], keys: tuple[str, ...], best: bool) -> str:
    shown = [f"epoch {row['epoch']}", f"train_loss {row['train_loss']:.4f}"]
    shown += [f"{k} {v:.4f}" for k, v in row.items() if k.startswith("val_") and k in ("val_loss", *keys)]
    shown += [f"{row['images_per_s']:.0f} img/s", f"{row['epoch_time_s']:.1f}s"]
    return "  ".join(shown) + ("  [green]best[/]" if best else "")
