"""The task-agnostic training engine on Lightning Fabric."""

from imagerec.engine.evaluate import SplitScores, evaluate_split
from imagerec.engine.loop import FitState, fit, train_one_epoch

__all__ = ["FitState", "evaluate_split", "SplitScores", "fit", "train_one_epoch"]
