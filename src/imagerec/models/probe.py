"""What every named submodule of a model does on one input: when it runs and the shape it returns, found with
forward hooks. Backbone stages, detection feature levels and CAM layers are all read from such a probe."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ModuleCall:
    """When a module ran during a probe (`enter` of its first call, `exit` of its last, one clock for both) and the
    shape of its last output when that was a tensor."""

    name: str
    enter: int
    exit: int = -1
    shape: tuple[int, ...] | None = None


@torch.no_grad()
def probe_modules(
    model: nn.Module, x: torch.Tensor, *, on_output: Callable[[str, nn.Module, object], None] | None = None
) -> dict[str, ModuleCall]:
    """Run `x` through `model` in evaluation mode (no statistics change) and record every named submodule's call;
    `on_output(name, module, output)` sees each output as it is returned, for callers that need more than its
    shape."""
    calls: dict[str, ModuleCall] = {}
    clock = itertools.count()

    def before(name: str) -> Callable[..., None]:
        def record(_m: nn.Module, _i: object) -> None:
            if name not in calls:
                calls[name] = ModuleCall(name, next(clock))

        return record

    def after(name: str) -> Callable[..., None]:
        def record(module: nn.Module, _i: object, out: object) -> None:
            call = calls[name]
            call.exit, call.shape = next(clock), tuple(out.shape) if isinstance(out, torch.Tensor) else None
            if on_output is not None:
                on_output(name, module, out)

        return record

    handles = []
    for name, module in model.named_modules():
        if name:
            handles += [module.register_forward_pre_hook(before(name)), module.register_forward_hook(after(name))]
    was_training = model.training
    try:
        model.eval()(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return calls
