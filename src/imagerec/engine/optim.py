"""Optimizers and per-step learning-rate schedules with linear warmup."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from imagerec.config import TrainConfig

WARMUP_START = 0.01  # warmup ramps the LR linearly from 1% of its peak


def build_optimizer(
    model: nn.Module, cfg: TrainConfig, *, lr_scales: Mapping[str, float] | None = None
) -> torch.optim.Optimizer:
    """AdamW, Adam or SGD; biases and normalisation weights get no weight decay.

    `lr_scales` multiplies `cfg.lr` per parameter name (discriminative learning rates, engine/finetune.py; 1 where
    absent): one group per scale and decay, the base learning rate's groups first. Frozen parameters go in too,
    so unfreezing one later needs no new optimizer: a frozen parameter's .grad stays None (the loop zeroes
    gradients with set_to_none=True), and torch's Adam, AdamW (a subclass of Adam) and SGD leave every parameter
    whose .grad is None untouched, weight decay included (their `_init_group` keeps `if p.grad is not None`).
    """
    scales = lr_scales or {}
    split: dict[tuple[float, bool], list[nn.Parameter]] = {(1.0, True): [], (1.0, False): []}
    for name, param in model.named_parameters():
        split.setdefault((scales.get(name, 1.0), param.ndim > 1), []).append(param)
    ordered = sorted(split.items(), key=lambda item: (item[0][0] != 1.0, -item[0][0], not item[0][1]))
    groups = [
        {"params": params, "lr": cfg.lr * scale, "weight_decay": cfg.weight_decay if decay else 0.0}
        for (scale, decay), params in ordered
        if params or scale == 1.0  # the two base groups always, as a resumed optimizer state expects
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def lr_factor(step: int, *, schedule: str, total: int, warmup: int, step_every: int, gamma: float = 0.1) -> float:
    """Multiplier of the peak LR at optimizer step `step` (0-based)."""
    if step < warmup:
        return WARMUP_START + (1 - WARMUP_START) * step / warmup
    if schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if schedule == "step":
        return gamma ** ((step - warmup) // max(1, step_every))
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> LRScheduler:
    """A scheduler stepped once per optimizer step."""
    total = cfg.epochs * steps_per_epoch
    warmup = min(int(cfg.warmup_epochs * steps_per_epoch), total - 1)
    if cfg.scheduler == "onecycle":
        # Peak at step `warmup` like the other schedules; OneCycleLR divides by both phase lengths, so keep them > 0.
        pct_start = min(max(warmup, 1) + 1, total - 0.5) / total
        max_lr = [group["lr"] for group in optimizer.param_groups]  # per group: discriminative learning rates
        return OneCycleLR(optimizer, max_lr=max_lr, total_steps=total, pct_start=pct_start)
    kwargs = {
        "schedule": cfg.scheduler,
        "total": total,
        "warmup": warmup,
        "step_every": cfg.step_size * steps_per_epoch,
    }
    return LambdaLR(optimizer, lambda step: lr_factor(step, **kwargs))


def schedule_position(state: dict[str, Any]) -> dict[str, Any]:
    """Where a scheduler stands (its step count and last LR), from its state dict, without its length: what a
    longer or re-planned schedule takes over (OneCycleLR saves its total in its state)."""
    return {k: v for k, v in state.items() if k in ("last_epoch", "_step_count", "_last_lr")}


def reschedule(
    optimizer: torch.optim.Optimizer, scheduler: LRScheduler, cfg: TrainConfig, steps_per_epoch: int
) -> LRScheduler:
    """A schedule `cfg.epochs` long that continues from where `scheduler` stands (a time budget re-planned)."""
    new = build_scheduler(optimizer, cfg, steps_per_epoch)
    new.load_state_dict({**new.state_dict(), **schedule_position(scheduler.state_dict())})
    for group, lr in zip(optimizer.param_groups, new.get_last_lr(), strict=True):  # building it reset the LR
        group["lr"] = lr
    return new


def ema_with_warmup(decay: float) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor | int], torch.Tensor]:
    """An AveragedModel `avg_fn` for an exponential moving average whose decay ramps up as
    min(decay, (1 + n) / (10 + n)) over the first updates, as timm's ModelEma does; torch's
    get_ema_avg_fn uses the full decay from the first step, so a short run would keep near-initial weights."""

    def average(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor | int) -> torch.Tensor:
        n = int(num_averaged)
        d = min(decay, (1 + n) / (10 + n))
        return d * averaged + (1 - d) * current

    return average
