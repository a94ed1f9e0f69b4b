"""The original recipe's 2D U-Net, assembled from MONAI's ``BasicUNet`` building blocks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Conv
from monai.networks.nets.basic_unet import Down, TwoConv, UpCat
from torch import nn


class UNet2D(nn.Module):
    """A four-level 2D U-Net: 4 encoder double-conv blocks, 3 decoder double-conv blocks, a 1x1 conv to logits.

    Each block is (conv 3x3, norm, act, dropout) x 2. The encoder halves the size with 2x2 max pooling;
    the decoder doubles it with a transposed conv, pads by one pixel where pooling dropped an odd edge
    (as MONAI's ``UpCat`` does), and concatenates the skip connection. Any input size works.

    For 2.5D input (a slice and ``k`` neighbours on each side), set ``in_channels = 2k + 1``.

    Args:
        spatial_dims: must be 2 (accepted for MONAI compatibility).
        in_channels: input channels (slices of the 2.5D stack).
        out_channels: output channels (1 for a tumour logit map).
        features: the four encoder widths, deepest last; the decoder mirrors the first three.
        act: activation type and arguments (MONAI factory names).
        norm: normalisation type and arguments, or ``None`` for none.
        dropout: dropout ratio after each convolution.
        bias: whether the convolutions have a bias term.
        prior_probability: initial foreground probability of the output (the final bias starts at
            ``log(p / (1 - p))``, as in RetinaNet), so training does not spend its first hundreds of steps
            learning that tumour pixels are rare; ``None`` keeps PyTorch's default initialisation.

    Examples::

        net = UNet2D(in_channels=3, out_channels=1, features=(16, 32, 64, 128))
        logits = net(torch.zeros(2, 3, 97, 128))  # -> (2, 1, 97, 128)
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        features: Sequence[int] = (64, 128, 256, 512),
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple | None = ("batch", {"affine": True}),
        dropout: float = 0.0,
        bias: bool = True,
        prior_probability: float | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"UNet2D is two-dimensional; spatial_dims must be 2, got {spatial_dims}")
        features = tuple(int(f) for f in features)
        if len(features) != 4 or min(features) < 1:
            raise ValueError(f"features must be four positive widths, got {features}")
        if prior_probability is not None and not 0 < prior_probability < 1:
            raise ValueError(f"prior_probability must be in (0, 1), got {prior_probability}")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
        f0, f1, f2, f3 = features
        self.conv_0 = TwoConv(2, in_channels, f0, act, norm, bias, dropout)
        self.down_1 = Down(2, f0, f1, act, norm, bias, dropout)
        self.down_2 = Down(2, f1, f2, act, norm, bias, dropout)
        self.down_3 = Down(2, f2, f3, act, norm, bias, dropout)
        # the transposed conv halves the width (as in the original U-Net) before joining the skip connection
        self.upcat_3 = UpCat(2, f3, f2, f2, act, norm, bias, dropout)
        self.upcat_2 = UpCat(2, f2, f1, f1, act, norm, bias, dropout)
        self.upcat_1 = UpCat(2, f1, f0, f0, act, norm, bias, dropout)
        self.final_conv = Conv["conv", 2](f0, out_channels, kernel_size=1)
        if prior_probability is not None:
            nn.init.constant_(self.final_conv.bias, math.log(prior_probability / (1 - prior_probability)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, in_channels, H, W) to raw logits (B, out_channels, H, W); apply a sigmoid for probabilities."""
        x0 = self.conv_0(x)
        x1 = self.down_1(x0)
        x2 = self.down_2(x1)
        x3 = self.down_3(x2)
        u2 = self.upcat_3(x3, x2)
        u1 = self.upcat_2(u2, x1)
        u0 = self.upcat_1(u1, x0)
        return self.final_conv(u0)
