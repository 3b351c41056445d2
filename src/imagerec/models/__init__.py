"""Model builders: one registry per task, one entry point `create_model`."""

from __future__ import annotations

from torch import nn

from imagerec.errors import UserError
from imagerec.models.classification import CLASSIFIERS, create_classifier, list_classifiers

__all__ = ["CLASSIFIERS", "create_classifier", "create_model", "list_classifiers", "list_models"]


def create_model(
    task: str, name: str, *, num_outputs: int, in_channels: int, imgsz: int, **kwargs: object
) -> nn.Module:
    """Build the model `name` for `task` with fresh weights."""
    if task == "classify":
        return create_classifier(name, num_outputs=num_outputs, in_channels=in_channels, imgsz=imgsz, **kwargs)
    raise ValueError(f"no models for task {task!r}")


def list_models(task: str = "classify") -> list[dict[str, str]]:
    """Names `--model` accepts for `task`, with where each comes from."""
    if task == "detect":
        from imagerec.models.detection import list_detectors

        return list_detectors()
    if task != "classify":
        raise UserError(f"unknown task {task!r}: use classify or detect")
    return list_classifiers()
