"""Input channels other than RGB: the first 3-channel convolution of a built model swapped for one that fits."""

from __future__ import annotations

from torch import nn


def replace_first_conv(model: nn.Module, in_channels: int) -> None:
    """Swap the first 3-channel convolution for one taking `in_channels` (fresh weights)."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                conv = nn.Conv2d(
                    in_channels,
                    child.out_channels,
                    child.kernel_size,
                    stride=child.stride,
                    padding=child.padding,
                    dilation=child.dilation,
                    groups=child.groups,
                    bias=child.bias is not None,
                    padding_mode=child.padding_mode,
                )
                setattr(parent, child_name, conv)
                return
    raise ValueError(f"{type(model).__name__}: no 3-channel input convolution to adapt")
