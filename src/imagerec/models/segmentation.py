"""Segmentation models: our compact U-Net, segmentation-models-pytorch's decoders on any encoder, torchvision's
FCN / DeepLabV3 / LR-ASPP, and Mask R-CNN for instances.

Every semantic model is wrapped in `Segmenter`, so the rest of imagerec sees one interface: N×C×H×W images in,
N×num_outputs×H×W logits out, at the input's own size whatever it is. Instance models are detectors with masks
(`Detector` from models/detection.py) and live in their own registry, `INSTANCE_SEGMENTERS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from imagerec.errors import UserError
from imagerec.models.detection import Detector, DetectorSpec, finish_detector
from imagerec.models.first_conv import replace_first_conv
from imagerec.registry import Registry

Builder = Callable[["SegmenterSpec"], nn.Module]
SEGMENTERS: Registry[Builder] = Registry("segmentation model")
INSTANCE_SEGMENTERS: Registry[Callable[[DetectorSpec], Detector]] = Registry("instance segmentation model")
DEFAULT_ENCODER = "resnet18"  # the smallest of smp's ResNet encoders: trains from scratch on a CPU


@dataclass(frozen=True)
class SegmenterSpec:
    """What a semantic segmenter builder needs: the data's classes and channels, the training crop size, the
    number of logits per pixel (1 for a binary task with one sigmoid logit, else `num_classes`), and an encoder
    name for the models that take one (segmentation-models-pytorch's)."""

    num_classes: int
    in_channels: int
    imgsz: int
    num_outputs: int
    encoder: str | None = None


class Segmenter(nn.Module):
    """Any semantic model seen as images → logits at the input's own size.

    Encoder–decoder models with skip connections (U-Net, smp's decoders) concatenate or add a decoder map to the
    encoder map of the same stride, so every side must divide by the total stride (16 or 32); otherwise the two
    maps differ by a pixel and the model fails or shifts. Rather than refuse odd sizes, the input is padded up to
    the next multiple and the logits cropped back, so training crops, whole validation images and tiles of any
    size all work. Reflection padding continues the image's texture, as the U-Net paper extrapolates the missing
    context at borders by mirroring. torchvision's models resize their output to the input themselves
    (`multiple=1`) and return a dict, of which "out" is the segmentation.
    """

    def __init__(self, model: nn.Module, *, multiple: int = 1) -> None:
        super().__init__()
        self.model = model
        self.multiple = multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % self.multiple, -width % self.multiple
        # An exported graph is traced on one size but must pad whatever size it is given later: tracing always pads.
        if pad_h or pad_w or (self.multiple > 1 and torch.jit.is_tracing()):
            # Reflection needs the pad to be smaller than the side; tiny inputs repeat their edge instead.
            mode = "reflect" if pad_h < height and pad_w < width else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        out = self.model(x)
        if isinstance(out, dict):
            out = out["out"]
        return out[..., :height, :width]


# --- the compact U-Net -------------------------------------------------------------------------------------


class DoubleConv(nn.Sequential):
    """The U-Net paper's block: two 3×3 convolutions, each followed by batch norm (our addition) and ReLU.
    Padded ('same') convolutions keep the map's size, so skip connections need no cropping."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class UNetEncoder(nn.Module):
    """The contracting path: a block, then (2×2 max pool, block doubling the channels) per level.
    Returns every level's map, finest first: the decoder's skip connections read them."""

    def __init__(self, in_channels: int, widths: Sequence[int]) -> None:
        super().__init__()
        self.stem = DoubleConv(in_channels, widths[0])
        pairs = zip(widths[:-1], widths[1:], strict=True)
        self.downs = nn.ModuleList(nn.Sequential(nn.MaxPool2d(2), DoubleConv(cin, cout)) for cin, cout in pairs)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [self.stem(x)]
        for down in self.downs:
            features.append(down(features[-1]))
        return features


class UNetDecoder(nn.Module):
    """The expanding path: per level, a 2×2 up-convolution halving the channels, concatenation with the encoder
    map of the same size (the skip connection), and a block."""

    def __init__(self, widths: Sequence[int]) -> None:
        super().__init__()
        pairs = list(zip(widths[:0:-1], widths[-2::-1], strict=True))  # (coarse, fine) channels, bottom level first
        self.ups = nn.ModuleList(nn.ConvTranspose2d(cin, cout, 2, stride=2) for cin, cout in pairs)
        self.blocks = nn.ModuleList(DoubleConv(2 * cout, cout) for _, cout in pairs)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for up, block, skip in zip(self.ups, self.blocks, features[-2::-1], strict=True):
            x = block(torch.cat([skip, up(x)], dim=1))
        return x


class UNet(nn.Module):
    """U-Net (Ronneberger et al., 2015): `depth` pooling levels, `width` channels at full resolution doubling per
    level (the paper: depth 4, width 64; ours by default: width 16), and a 1×1 convolution to the logits.
    Inputs must divide by 2**depth; `Segmenter` pads them."""

    def __init__(self, in_channels: int, num_outputs: int, *, width: int = 16, depth: int = 4) -> None:
        super().__init__()
        widths = [width * 2**level for level in range(depth + 1)]
        self.encoder = UNetEncoder(in_channels, widths)
        self.decoder = UNetDecoder(widths)
        self.head = nn.Conv2d(widths[0], num_outputs, 1)
        self.multiple = 2**depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        return self.head(self.decoder(features))


def _unet_builder(width: int) -> Builder:
    def build(spec: SegmenterSpec) -> Segmenter:
        if spec.encoder is not None:
            raise UserError("unet has its own encoder; for a U-Net on another one use --model smp_unet --backbone NAME")
        model = UNet(spec.in_channels, spec.num_outputs, width=width)
        return Segmenter(model, multiple=model.multiple)

    build.__doc__ = f"imagerec's compact U-Net: 4 levels, {width} channels at full resolution"
    return build


# The paper's width is 64 (31 M parameters); on a CPU a narrower net takes more steps in the same time, which
# matters more when training from scratch: 16 channels (1.9 M parameters) is the default, 32 (7.8 M) in between.
UNET_WIDTHS = {"unet": 16, "unet_w32": 32, "unet_w64": 64}
for _name, _width in UNET_WIDTHS.items():
    SEGMENTERS.add(_name, _unet_builder(_width))


# --- segmentation-models-pytorch -----------------------------------------------------------------------------


def _smp_builder(architecture: str) -> Builder:
    def build(spec: SegmenterSpec) -> Segmenter:
        import segmentation_models_pytorch as smp

        encoder = spec.encoder or DEFAULT_ENCODER
        try:
            model = getattr(smp, architecture)(
                encoder, encoder_weights=None, in_channels=spec.in_channels, classes=spec.num_outputs
            )
        except KeyError:  # smp's message lists every encoder: far more than one line
            raise UserError(
                f"unknown segmentation-models-pytorch encoder {encoder!r}: see smp.encoders.get_encoder_names()"
            ) from None
        multiple = model.encoder.output_stride if model.requires_divisible_input_shape else 1
        return Segmenter(model, multiple=multiple)

    build.__doc__ = f"segmentation-models-pytorch's {architecture} on any encoder (default {DEFAULT_ENCODER})"
    return build


for _name, _architecture in (
    ("smp_unet", "Unet"),
    ("smp_unetplusplus", "UnetPlusPlus"),
    ("smp_fpn", "FPN"),
    ("smp_deeplabv3plus", "DeepLabV3Plus"),
):
    SEGMENTERS.add(_name, _smp_builder(_architecture))


# --- torchvision ---------------------------------------------------------------------------------------------


def _torchvision_builder(name: str) -> Builder:
    def build(spec: SegmenterSpec) -> Segmenter:
        import torchvision

        if spec.encoder is not None:
            raise UserError(f"{name} has a fixed backbone; for another encoder use an smp_* model with --backbone")
        model = torchvision.models.get_model(
            name, weights=None, weights_backbone=None, num_classes=spec.num_outputs, aux_loss=False
        )
        if spec.in_channels != 3:
            replace_first_conv(model.backbone, spec.in_channels)
        return Segmenter(model)

    build.__doc__ = f"torchvision's {name}"
    return build


for _name in (
    "fcn_resnet50",
    "fcn_resnet101",
    "deeplabv3_resnet50",
    "deeplabv3_resnet101",
    "deeplabv3_mobilenet_v3_large",
    "lraspp_mobilenet_v3_large",
):
    SEGMENTERS.add(_name, _torchvision_builder(_name))


# --- instance segmentation -----------------------------------------------------------------------------------


def _mask_rcnn_builder(name: str) -> Callable[[DetectorSpec], Detector]:
    def build(spec: DetectorSpec) -> Detector:
        import torchvision

        if spec.backbone is not None:
            raise UserError(f"{name} has a fixed backbone (ResNet-50 with an FPN); drop --backbone")
        # +1: torchvision's region-based models reserve label 0 for the background; Detector hides the shift.
        model = torchvision.models.get_model(
            name, weights=None, weights_backbone=None, num_classes=spec.num_classes + 1
        )
        return finish_detector(model, spec)

    build.__doc__ = f"torchvision's {name}: Faster R-CNN with a mask head"
    return build


for _name in ("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"):
    INSTANCE_SEGMENTERS.add(_name, _mask_rcnn_builder(_name))


def create_segmenter(name: str, spec: SegmenterSpec) -> Segmenter:
    """Build semantic segmenter `name` with fresh weights: images → N×num_outputs×H×W logits at the input's size."""
    return SEGMENTERS.get(name)(spec)


def create_instance_segmenter(name: str, spec: DetectorSpec) -> Detector:
    """Build instance segmenter `name` (Mask R-CNN) with fresh weights; it behaves as a detector whose outputs
    also carry `masks` (N×1×H×W probabilities at the input image's size)."""
    return INSTANCE_SEGMENTERS.get(name)(spec)


def is_instance_segmenter(name: str) -> bool:
    """Whether `name` is an instance model (trains on objects with masks, like a detector)."""
    return name in INSTANCE_SEGMENTERS


def list_segmenters() -> list[dict[str, str]]:
    """Every name `--model` accepts for segmentation, semantic then instance, with its source."""

    def source(name: str) -> str:
        if name in UNET_WIDTHS:
            return f"imagerec (U-Net, {UNET_WIDTHS[name]} channels at full resolution)"
        if name.startswith("smp_"):
            return f"segmentation-models-pytorch (--backbone ENCODER, default {DEFAULT_ENCODER})"
        return "torchvision"

    semantic = [{"name": n, "source": source(n)} for n in SEGMENTERS.names()]
    instance = [{"name": n, "source": "torchvision (instance: masks per object)"} for n in INSTANCE_SEGMENTERS.names()]
    return semantic + instance
