"""Optimizers and per-step learning-rate schedules with linear warmup."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from imagerec.config import TrainConfig

WARMUP_START = 0.01  # warmup ramps the LR linearly from 1% of its peak


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, Adam or SGD; biases and normalisation weights get no weight decay."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim > 1 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
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
        return OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total, pct_start=pct_start)
    kwargs = {
        "schedule": cfg.scheduler,
        "total": total,
        "warmup": warmup,
        "step_every": cfg.step_size * steps_per_epoch,
    }
    return LambdaLR(optimizer, lambda step: lr_factor(step, **kwargs))


def ema_with_warmup(decay: float) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor | int], torch.Tensor]:
    """An AveragedModel `avg_fn` for an exponential moving average whose decay ramps up as
    min(decay, (1 + n) / (10 + n)) over the first updates, as timm's ModelEma does; torch's
    get_ema_avg_fn uses the full decay from the first step, so a short run would keep near-initial weights."""

    def average(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor | int) -> torch.Tensor:
        n = int(num_averaged)
        d = min(decay, (1 + n) / (10 + n))
        return d * averaged + (1 - d) * current

    return average
