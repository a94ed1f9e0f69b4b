"""MONAI transforms of lung_tumor: array classes, their dictionary twins, and the preprocessing chain."""

from lung_tumor.transforms.array import CropFromSlice, InsertTumour, RandInsertTumour, ResampleInPlane, WindowIntensity
from lung_tumor.transforms.dictionary import (
    CropFromSliced,
    InsertTumourd,
    RandInsertTumourd,
    ResampleInPlaned,
    WindowIntensityd,
)
from lung_tumor.transforms.pipeline import load_volume, preprocess_transforms
from lung_tumor.transforms.tumour_insertion import TumourSpec

__all__ = [
    "CropFromSlice",
    "CropFromSliced",
    "InsertTumour",
    "InsertTumourd",
    "RandInsertTumour",
    "RandInsertTumourd",
    "ResampleInPlane",
    "ResampleInPlaned",
    "TumourSpec",
    "WindowIntensity",
    "WindowIntensityd",
    "load_volume",
    "preprocess_transforms",
]
