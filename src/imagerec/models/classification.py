"""Classification models: our seed ConvNet, torchvision's families and timm's models, any channels and classes."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from imagerec.errors import UserError
from imagerec.models.first_conv import replace_first_conv
from imagerec.registry import Registry

Builder = Callable[..., nn.Module]
CLASSIFIERS: Registry[Builder] = Registry("classification model")
TIMM_PREFIX = "timm:"


class SeedCNN(nn.Module):
    """The two-convolution network this project started from, made size-agnostic.

    conv 64 → pool → conv 128 → pool → fc 256 → fc classes. Batch norm after each convolution and an adaptive
    pool before the first fully connected layer let it train quickly and accept any input size.
    """

    def __init__(self, *, num_outputs: int, in_channels: int = 3, dropout: float = 0.0, grid: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(grid),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(128 * grid * grid, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(256, num_outputs),
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@CLASSIFIERS.register("seed_cnn")
def seed_cnn(*, num_outputs: int, in_channels: int, imgsz: int, dropout: float = 0.0) -> nn.Module:
    return SeedCNN(num_outputs=num_outputs, in_channels=in_channels, dropout=dropout)


def _torchvision_builder(name: str) -> Builder:
    def build(*, num_outputs: int, in_channels: int, imgsz: int, dropout: float | None = None) -> nn.Module:
        import torchvision

        kwargs: dict[str, object] = {"weights": None, "num_classes": num_outputs}
        if name.startswith("vit_"):
            kwargs["image_size"] = imgsz
        if name in ("googlenet", "inception_v3"):
            kwargs.update(aux_logits=False, init_weights=True)
        if dropout and name.startswith(("efficientnet", "mobilenet", "convnext", "vit", "maxvit", "mnasnet")):
            kwargs["dropout"] = dropout
        model = torchvision.models.get_model(name, **kwargs)
        if in_channels != 3:
            replace_first_conv(model, in_channels)
        return model

    build.__doc__ = f"torchvision's {name}"
    return build


def _register_torchvision() -> None:
    import torchvision

    for name in torchvision.models.list_models(module=torchvision.models):
        CLASSIFIERS.add(name, _torchvision_builder(name))


_register_torchvision()


def _create_timm(name: str, *, num_outputs: int, in_channels: int, imgsz: int, dropout: float = 0.0) -> nn.Module:
    import timm

    if not timm.is_model(name):
        import difflib

        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(TIMM_PREFIX + c for c in close)}?" if close else "see timm.list_models()"
        raise UserError(f"unknown timm model {name!r}: {hint}")
    kwargs: dict[str, object] = {"pretrained": False, "num_classes": num_outputs, "in_chans": in_channels}
    if dropout:
        kwargs["drop_rate"] = dropout
    try:
        return timm.create_model(name, img_size=imgsz, **kwargs)
    except TypeError:  # convnets take no img_size
        return timm.create_model(name, **kwargs)


def create_classifier(name: str, *, num_outputs: int, in_channels: int, imgsz: int, dropout: float = 0.0) -> nn.Module:
    """Build classifier `name` (a registered name or `timm:<name>`) with fresh weights."""
    if name.startswith(TIMM_PREFIX):
        return _create_timm(
            name[len(TIMM_PREFIX) :], num_outputs=num_outputs, in_channels=in_channels, imgsz=imgsz, dropout=dropout
        )
    return CLASSIFIERS.get(name)(num_outputs=num_outputs, in_channels=in_channels, imgsz=imgsz, dropout=dropout)


@torch.no_grad()
def check_input_size(model: nn.Module, *, name: str, in_channels: int, imgsz: int) -> None:
    """Run one blank image through `model` so a too-small `imgsz` fails here with a clear message,
    not as a shape error deep inside the first training step."""
    was_training = model.training
    try:
        model.eval()(torch.zeros(1, in_channels, imgsz, imgsz))
    except (RuntimeError, ValueError, AssertionError) as error:
        detail = str(error).splitlines()[0][:160]
        raise UserError(
            f"model {name!r} cannot take {imgsz}×{imgsz} inputs ({detail}); pass a larger --imgsz (e.g. 64 or 224)"
        ) from None
    finally:
        model.train(was_training)


def list_classifiers() -> list[dict[str, str]]:
    """Every name `--model` accepts for classification, with its source."""
    rows = [{"name": n, "source": "imagerec" if n == "seed_cnn" else "torchvision"} for n in CLASSIFIERS.names()]
    rows.append({"name": "timm:<name>", "source": "timm (any of timm.list_models())"})
    return rows
