"""Fine-tuning strategies: which backbone stages train in which epoch, and at which learning rate.

- `full`: everything trains; `linear`: only the head; `last-n`: the head and the last `--stages` stages;
  `gradual`: the head alone in epoch 1, then one more stage from the top each following epoch.
- Discriminative learning rates: `--layer-decay d` gives the stage k levels below the head lr × d^k (the last
  stage d, the stem d^n), `--backbone-lr-mult m` gives the whole backbone lr × m.
- A BatchNorm whose parameters are frozen stays in evaluation mode while the model trains, so its running
  statistics stay those of the weights it came with. `model.train()` undoes that every epoch, hence
  `FineTuning.apply(epoch)` right after it (FitLoop.on_epoch_start).

The trainable state is a function of the epoch number alone, so a resumed run ends up where an uninterrupted one
would.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from imagerec.config import TrainConfig
from imagerec.errors import UserError
from imagerec.models.stages import Stages, model_stages


@dataclass(frozen=True)
class FineTuning:
    """A strategy applied to one model: which stages train at each epoch, and each parameter's learning-rate scale."""

    model: nn.Module = field(repr=False)
    stages: Stages | None  # None: nothing to freeze or scale (full fine-tuning at one learning rate)
    strategy: str = "full"
    last: int = 1  # last-n: how many stages train
    layer_decay: float | None = None
    backbone_lr_mult: float | None = None
    fixed: frozenset[str] = frozenset()  # frozen by the model itself (e.g. a fixed position embedding): stay frozen

    def trainable(self, epoch: int) -> int:
        """How many of the last stages train in `epoch` (1-based)."""
        count = len(self.stages) if self.stages is not None else 0
        if self.strategy == "linear":
            return 0
        if self.strategy == "last-n":
            return self.last
        if self.strategy == "gradual":
            return min(count, max(epoch - 1, 0))
        return count

    def apply(self, epoch: int) -> None:
        """Set `requires_grad` for `epoch` and put the BatchNorms of frozen layers in evaluation mode; call it right
        after every `model.train()`."""
        if self.stages is None:
            return
        keep = len(self.stages) - self.trainable(epoch)
        frozen = {name for stage in self.stages.stages[:keep] for name in stage}
        for name, param in self.model.named_parameters():
            param.requires_grad_(name not in frozen and name not in self.fixed)
        freeze_batchnorm(self.model)

    def lr_scales(self) -> dict[str, float] | None:
        """Learning-rate multiplier per parameter name, for `build_optimizer`; None: 1 for all."""
        if self.stages is None or (self.layer_decay is None and self.backbone_lr_mult is None):
            return None
        scales: dict[str, float] = {}
        for k, stage in enumerate(reversed(self.stages.stages), start=1):
            scale = self.layer_decay**k if self.layer_decay is not None else self.backbone_lr_mult
            scales |= dict.fromkeys(stage, scale)
        return scales

    def summary(self) -> str:
        """One line for the console, e.g. "finetune linear: 11.2 M of 11.2 M parameters frozen (5 stages: …)"."""
        if self.stages is None:
            return ""
        sizes = {name: p.numel() for name, p in self.model.named_parameters()}
        total, head = sum(sizes.values()), sum(sizes[n] for n in self.stages.head)
        n = len(self.stages)
        listed = f"{n} stages: {self.stages.describe()}"
        if self.strategy == "linear":
            line = f"{_count(total - head)} of {_count(total)} parameters frozen ({listed}), head {_count(head)}"
            line += " trainable"
        elif self.strategy == "last-n":
            frozen = sum(sizes[p] for stage in self.stages.stages[: n - self.last] for p in stage)
            names = self.stages.names[n - self.last :]
            trained = ", ".join(names) if len(names) <= 3 else f"{names[0]} … {names[-1]}"
            line = f"{_count(frozen)} of {_count(total)} parameters frozen ({listed}); {trained} and the head train"
        elif self.strategy == "gradual":
            line = (
                f"the head ({_count(head)}) alone in epoch 1, then one more of {listed} per epoch from "
                f"{self.stages.names[-1]}: all {_count(total)} parameters train from epoch {n + 1}"
            )
        else:
            line = f"all {_count(total)} parameters train ({listed})"
        if self.layer_decay is not None:
            lowest = f"{self.stages.names[0]} × {self.layer_decay**n:.2g}"
            line += f"; lr × {self.layer_decay:g} per stage below the head ({lowest})"
        elif self.backbone_lr_mult is not None:
            line += f"; backbone lr × {self.backbone_lr_mult:g}"
        return f"finetune {self.strategy}{' ' + str(self.last) if self.strategy == 'last-n' else ''}: {line}"


def plan_finetuning(model: nn.Module, cfg: TrainConfig, *, name: str, in_channels: int, imgsz: int) -> FineTuning:
    """Check `cfg`'s fine-tuning options against `model` (named `name` in messages) and find its stages; full
    fine-tuning at one learning rate needs no stages and skips the probe."""
    if cfg.layer_decay is not None and cfg.backbone_lr_mult is not None:
        raise UserError("--layer-decay and --backbone-lr-mult both scale the backbone's learning rate; pass one")
    if cfg.finetune == "full" and cfg.layer_decay is None and cfg.backbone_lr_mult is None:
        return FineTuning(model, None)
    stages = model_stages(model, in_channels=in_channels, imgsz=imgsz)
    if cfg.finetune == "last-n" and cfg.stages > len(stages):
        raise UserError(
            f"--stages {cfg.stages}: {name} has {len(stages)} stages ({stages.describe()}); "
            f"pass at most {len(stages)}, or --finetune full"
        )
    return FineTuning(
        model,
        stages,
        strategy=cfg.finetune,
        last=cfg.stages,
        layer_decay=cfg.layer_decay,
        backbone_lr_mult=cfg.backbone_lr_mult,
        fixed=frozenset(n for n, p in model.named_parameters() if not p.requires_grad),
    )


def freeze_batchnorm(model: nn.Module) -> None:
    """Evaluation mode for every BatchNorm whose parameters are all frozen, training mode (if the model trains) for
    the others. BatchNorms without parameters (affine=False) are left as they are."""
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            params = list(module.parameters(recurse=False))
            if params:
                module.train(model.training and any(p.requires_grad for p in params))


def _count(n: int) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.1f} M"
    return f"{n / 1e3:.1f} k" if n >= 1e3 else str(n)
