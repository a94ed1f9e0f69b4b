"""MONAI transforms of lung_tumor: array classes, their dictionary twins, and the preprocessing chain."""

from lung_tumor.transforms.array import CropFromSlice, ResampleInPlane, WindowIntensity
from lung_tumor.transforms.dictionary import CropFromSliced, ResampleInPlaned, WindowIntensityd
from lung_tumor.transforms.pipeline import load_volume, preprocess_transforms

__all__ = [
    "CropFromSlice",
    "CropFromSliced",
    "ResampleInPlane",
    "ResampleInPlaned",
    "WindowIntensity",
    "WindowIntensityd",
    "load_volume",
    "preprocess_transforms",
]
