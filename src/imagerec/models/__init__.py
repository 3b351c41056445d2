"""Model builders: one registry per task, one entry point `create_model`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from imagerec.errors import UserError
from imagerec.models.classification import CLASSIFIERS, create_classifier, list_classifiers

__all__ = ["CLASSIFIERS", "create_classifier", "create_model", "list_classifiers", "list_models", "model_device"]


def create_model(
    task: str, name: str, *, num_outputs: int, in_channels: int, imgsz: int, **kwargs: object
) -> nn.Module:
    """Build the model `name` for `task` with fresh weights.

    For "segment", `num_outputs` is the number of logits per pixel (1 for a binary task with one logit) and
    `encoder` picks an smp encoder; instance models (Mask R-CNN) take `num_outputs` classes, no background, and
    optional `mean` and `std` (default: none, images are taken as they are).
    """
    builders = {"classify": create_classifier, "segment": _create_segmenter}
    if task not in builders:
        raise ValueError(f"no models for task {task!r}")
    return builders[task](name, num_outputs=num_outputs, in_channels=in_channels, imgsz=imgsz, **kwargs)


def _create_segmenter(
    name: str,
    *,
    num_outputs: int,
    in_channels: int,
    imgsz: int,
    encoder: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> nn.Module:
    from imagerec.models.detection import DetectorSpec
    from imagerec.models.segmentation import (
        SegmenterSpec,
        create_instance_segmenter,
        create_segmenter,
        is_instance_segmenter,
    )

    if is_instance_segmenter(name):
        spec = DetectorSpec(
            num_classes=num_outputs,
            in_channels=in_channels,
            imgsz=imgsz,
            mean=mean or [0.0] * in_channels,
            std=std or [1.0] * in_channels,
            backbone=encoder,
        )
        return create_instance_segmenter(name, spec)
    # One logit per pixel is a two-class (background / foreground) task.
    spec = SegmenterSpec(
        num_classes=max(num_outputs, 2),
        in_channels=in_channels,
        imgsz=imgsz,
        num_outputs=num_outputs,
        encoder=encoder,
    )
    return create_segmenter(name, spec)


def list_models(task: str = "classify") -> list[dict[str, str]]:
    """Names `--model` accepts for `task`, with where each comes from (`source`) and the formats it exports to
    (`export`, as measured by benchmarks/export_sweep.py)."""
    from imagerec.models.exportable import export_support

    listings = {"classify": list_classifiers, "detect": _list_detectors, "segment": _list_segmenters}
    if task not in listings:
        raise UserError(f"unknown task {task!r}: use classify, detect or segment")
    return [row | {"export": export_support(row["name"])} for row in listings[task]()]


def _list_detectors() -> list[dict[str, str]]:
    from imagerec.models.detection import list_detectors  # detection models load only when listed

    return list_detectors()


def _list_segmenters() -> list[dict[str, str]]:
    from imagerec.models.segmentation import list_segmenters

    return list_segmenters()


def model_device(model: nn.Module) -> torch.device:
    """Where `model`'s weights live; the CPU for a model without any (an exported graph run by ONNX Runtime or
    OpenVINO)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))
