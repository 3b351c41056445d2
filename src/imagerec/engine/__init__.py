"""The task-agnostic training engine on Lightning Fabric."""

from imagerec.engine.loop import FitState, evaluate, fit, train_one_epoch

__all__ = ["FitState", "evaluate", "fit", "train_one_epoch"]
