"""The augmented views each self-supervised method learns from: Lightly's view transforms, sized for our input.

Lightly's transforms are written for PIL images (its blur and solarisation call Pillow), so the float C×H×W
tensor our datasets decode is handed to them as an 8-bit PIL image; they end with `ToTensor` and normalise with
the run's mean and std. Views hold 8-bit pixels, and only one- and three-channel images can be pretrained.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from torchvision.transforms.v2.functional import to_pil_image

from imagerec.errors import UserError

# DINO's local views: a small crop of the image, at half the input size.
LOCAL_VIEWS = 2


class _Views:
    """A Lightly transform given the decoded tensor as a PIL image, quiet about torchvision's deprecated
    `to_tensor` that it calls for each view."""

    def __init__(self, transform: Callable[[torch.Tensor], list[torch.Tensor]]) -> None:
        self.transform = transform

    def __call__(self, image: torch.Tensor) -> list[torch.Tensor]:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The function `to_tensor", category=UserWarning)
            return self.transform(to_pil_image(image))


def view_transform(
    method: str, *, imgsz: int, channels: int, mean: Sequence[float], std: Sequence[float]
) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """The transform that turns one image into the list of views `method` trains on."""
    from lightly.transforms import (
        BYOLTransform,
        BYOLView1Transform,
        BYOLView2Transform,
        DINOTransform,
        MAETransform,
        SimCLRTransform,
    )

    if channels not in (1, 3):
        raise UserError(
            f"the images have {channels} channels; pretraining's views (Lightly's colour and blur transforms) take "
            "grey or RGB images: convert them, or train without pretraining"
        )
    normalize = {"mean": list(mean), "std": list(std)}
    if method == "simclr":
        return _Views(SimCLRTransform(input_size=imgsz, normalize=normalize))
    if method == "byol":
        views = {"input_size": imgsz, "normalize": normalize}
        return _Views(
            BYOLTransform(view_1_transform=BYOLView1Transform(**views), view_2_transform=BYOLView2Transform(**views))
        )
    if method == "dino":
        return _Views(DINOTransform(
            global_crop_size=imgsz, local_crop_size=max(8, imgsz // 2), n_local_views=LOCAL_VIEWS, normalize=normalize,
        ))  # fmt: skip
    if method == "mae":
        return _Views(MAETransform(input_size=imgsz, normalize=normalize))
    raise ValueError(f"unknown method {method!r}")
