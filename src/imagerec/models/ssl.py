"""Self-supervised models: a backbone with the heads and loss of one method, all from Lightly.

The backbone is an ordinary classifier network of ours whose classifier layer became `Embedding` (it outputs the
pooled pre-logits features). Each model takes either a batch of images (a tensor), and returns their embeddings,
or the list of augmented views of one batch, and returns the method's loss: one `forward` for both, so that
training and the k-NN monitor both go through the wrapper Fabric puts around the model.

The losses, heads, momentum updates and masking are Lightly's (`lightly.loss`, `lightly.models`), not written
here. Momentum is constant (0.99) rather than Lightly's cosine ramp from 0.996: the ramp needs the total number of
steps, which a time budget changes as training goes, and CPU-sized runs take a few thousand steps, not the
hundreds of thousands 0.996 was tuned for.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn

from imagerec.errors import UserError
from imagerec.models.embedding import Embedding, classifier_name, replace_module

METHODS = ("simclr", "byol", "dino", "mae")
MOMENTUM = 0.99
INSTALL = "pip install 'imagerec[pretrain]'"


def lightly() -> Any:
    """The lightly package, or one line saying how to install it."""
    try:
        import lightly as package
    except ImportError:
        raise UserError(f"self-supervised pretraining needs Lightly, which is not installed: {INSTALL}") from None
    return package


def is_transformer(backbone: nn.Module) -> bool:
    """A timm vision transformer (patch embedding and blocks): the kind MAE masks patches of."""
    return hasattr(backbone, "patch_embed") and hasattr(backbone, "blocks")


def suited_methods(backbone: nn.Module) -> tuple[str, ...]:
    """The methods that can train `backbone`: MAE only for vision transformers, the others for any network."""
    return METHODS if is_transformer(backbone) else tuple(m for m in METHODS if m != "mae")


def headless(network: nn.Module) -> tuple[str, int]:
    """Replace the classifier layer of `network` by `Embedding` (in place); its name and the embedding's width."""
    layer = classifier_name(network)
    old = network.get_submodule(layer)
    width = getattr(old, "in_features", None) or getattr(old, "in_channels", None) or network.num_features
    replace_module(network, layer, Embedding())
    return layer, int(width)


def _frozen_copy(module: nn.Module) -> nn.Module:
    teacher = copy.deepcopy(module)
    for parameter in teacher.parameters():
        parameter.requires_grad = False
    return teacher


class SelfSupervised(nn.Module):
    """The common part: `backbone(images)` gives embeddings; a list of views gives the loss."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            return self.backbone(x)
        return self.loss(list(x))

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


class SimCLR(SelfSupervised):
    """Two views; a projection head; the NT-Xent contrastive loss over the batch."""

    def __init__(self, backbone: nn.Module, width: int) -> None:
        super().__init__(backbone)
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead

        self.projection = SimCLRProjectionHead(width, 512, 128)
        self.criterion = NTXentLoss()

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        first, second = (self.projection(self.backbone(v)) for v in views[:2])
        return self.criterion(first, second)


class _Momentum(SelfSupervised):
    """Methods with a teacher: a copy of the student that follows it by exponential moving average."""

    def update_teacher(self) -> None:
        from lightly.models.utils import update_momentum

        for student, teacher in self.pairs():
            update_momentum(student, teacher, m=MOMENTUM)

    def pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        if self.training and not isinstance(x, torch.Tensor):
            self.update_teacher()
        return super().forward(x)


class BYOL(_Momentum):
    """Two views; the student's prediction of the teacher's projection (negative cosine similarity, symmetric)."""

    def __init__(self, backbone: nn.Module, width: int) -> None:
        super().__init__(backbone)
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead

        self.projection = BYOLProjectionHead(width, 1024, 256)
        self.prediction = BYOLPredictionHead(256, 1024, 256)
        self.teacher_backbone = _frozen_copy(backbone)
        self.teacher_projection = _frozen_copy(self.projection)
        self.criterion = NegativeCosineSimilarity()

    def pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.teacher_backbone), (self.projection, self.teacher_projection)]

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        first, second = views[:2]
        p1, p2 = (self.prediction(self.projection(self.backbone(v))) for v in (first, second))
        with torch.no_grad():
            z1, z2 = (self.teacher_projection(self.teacher_backbone(v)) for v in (first, second))
        return 0.5 * (self.criterion(p1, z2) + self.criterion(p2, z1))


def _copyable(head: nn.Module) -> nn.Module:
    """Lightly's DINO head with its last layer's weight normalisation (norm fixed at 1) as a parametrization: torch's
    old weight_norm hook holds a computed tensor that deepcopy refuses, and the teacher, the time budget's probe and
    autotune's all copy the model."""
    layer = nn.utils.remove_weight_norm(head.last_layer)  # weight = v / ‖v‖, since Lightly fixes the norm at 1
    head.last_layer = nn.utils.parametrizations.weight_norm(layer, dim=0)
    head.last_layer.parametrizations.weight.original0.requires_grad_(False)
    return head


class DINO(_Momentum):
    """Two global and some local views; the student matches the teacher's centred, sharpened outputs."""

    OUTPUT_DIM = 2048

    def __init__(self, backbone: nn.Module, width: int) -> None:
        super().__init__(backbone)
        from lightly.loss import DINOLoss
        from lightly.models.modules import DINOProjectionHead

        with warnings.catch_warnings():  # Lightly's head uses torch's deprecated weight_norm: replaced below
            warnings.filterwarnings("ignore", message=".*weight_norm.* is deprecated", category=FutureWarning)
            self.head = _copyable(DINOProjectionHead(width, 512, 64, self.OUTPUT_DIM))
        self.teacher_backbone = _frozen_copy(backbone)
        self.teacher_head = _frozen_copy(self.head)
        self.criterion = DINOLoss(output_dim=self.OUTPUT_DIM, warmup_teacher_temp_epochs=0)

    def pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.teacher_backbone), (self.head, self.teacher_head)]

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            teacher = [self.teacher_head(self.teacher_backbone(v)) for v in views[:2]]  # global views only
        student = [self.head(self.backbone(v)) for v in views]
        return self.criterion(teacher, student)


class MAE(SelfSupervised):
    """One view, three quarters of its patches hidden; a small decoder predicts their pixels (vision transformers)."""

    MASK_RATIO = 0.75

    def __init__(self, backbone: nn.Module, width: int) -> None:
        super().__init__(backbone)
        from lightly.models.modules import MAEDecoderTIMM, MaskedVisionTransformerTIMM

        self.encoder = MaskedVisionTransformerTIMM(vit=backbone)  # shares the backbone's weights
        self.patch_size = backbone.patch_embed.patch_size[0]
        # Lightly 1.6 (pinned) deprecates this decoder for one that leaves the token embedding and the pixel
        # prediction to the caller; until the pin moves, the complete one is used, and its warning silenced.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="MAEDecoderTIMM is deprecated", category=FutureWarning)
            self.decoder = MAEDecoderTIMM(
                num_patches=backbone.patch_embed.num_patches, patch_size=self.patch_size,
                in_chans=backbone.patch_embed.proj.in_channels, embed_dim=width,
                decoder_embed_dim=128, decoder_depth=1, decoder_num_heads=4,
            )  # fmt: skip

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        from lightly.models import utils

        images = views[0]
        length = self.encoder.sequence_length
        keep, masked = utils.random_token_mask(
            size=(len(images), length), mask_ratio=self.MASK_RATIO, device=images.device
        )
        encoded = self.encoder.encode(images=images, idx_keep=keep)
        tokens = utils.repeat_token(self.decoder.mask_token, (len(images), length))
        tokens = utils.set_at_index(tokens, keep, self.decoder.embed(encoded).type_as(tokens))
        predicted = self.decoder.predict(utils.get_at_index(self.decoder.decode(tokens), masked))
        # The class token is position 0 of the sequence but has no patch of pixels: patch indices are one lower.
        target = utils.get_at_index(utils.patchify(images, self.patch_size), masked - 1)
        return nn.functional.mse_loss(predicted, target)


_MODELS: dict[str, type[SelfSupervised]] = {"simclr": SimCLR, "byol": BYOL, "dino": DINO, "mae": MAE}


def check_method(method: str, network: nn.Module, *, model_name: str) -> None:
    """Refuse a method that cannot train `network` (MAE on a convolutional network), naming those that can."""
    lightly()
    suited = suited_methods(network)
    if method not in suited:
        other = "a vision transformer (e.g. timm:vit_tiny_patch16_224)" if method == "mae" else "another model"
        raise UserError(f"--method {method} does not suit {model_name}; use --method {' | '.join(suited)}, or {other}")


def build_ssl_model(method: str, backbone: nn.Module, width: int) -> SelfSupervised:
    """`backbone` (a network ending in `Embedding`, `width` wide) with the heads and loss of `method`."""
    return _MODELS[method](backbone, width)
