"""Segmentation networks; MONAI's own (``monai.networks.nets``) are used directly as baselines."""

from __future__ import annotations

from lung_tumor.networks.unet2d import UNet2D

__all__ = ["UNet2D"]
