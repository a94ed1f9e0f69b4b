"""lung_tumor: slice-wise 2D lung tumour segmentation on chest CT, built on MONAI and Ignite."""

from __future__ import annotations

__version__ = "0.1.0"
