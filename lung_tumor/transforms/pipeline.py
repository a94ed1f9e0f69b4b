"""The preprocessing chain shared by the slice cache, training, validation and prediction."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    LoadImage,
    Orientationd,
    ResizeWithPadOrCropd,
    ScaleIntensityRanged,
)

from lung_tumor.config import PreprocessConfig
from lung_tumor.errors import LungTumorError
from lung_tumor.transforms.dictionary import CropFromSliced, ResampleInPlaned

AIR_HU = -1000.0
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # nibabel and MONAI world axes


def load_volume(path: str | Path, what: str = "image") -> MetaTensor:
    """Load a 3D CT volume or mask as a channel-first ``MetaTensor`` in its stored dtype.

    A NIfTI file is read with nibabel, a folder as a DICOM series with ITK.

    Raises:
        LungTumorError: missing, unreadable or not a single 3D volume.
    """
    path = Path(path)
    if not path.exists():
        raise LungTumorError(f"{what} not found", path)
    if path.is_dir() and not any(path.iterdir()):
        raise LungTumorError(f"{what} folder is empty (expected a DICOM series)", path)
    reader = "ITKReader" if path.is_dir() else "NibabelReader"
    try:
        volume = LoadImage(reader=reader, image_only=True, ensure_channel_first=True, dtype=None)(str(path))
    except Exception as err:  # nibabel, gzip, zlib and ITK raise many types for a corrupt file
        raise LungTumorError(f"cannot read {what}: {root_cause(err)}", path) from None
    if volume.ndim != 4:
        raise LungTumorError(f"{what} must be a single 3D volume, got shape {tuple(volume.shape[1:])}", path)
    if volume.shape[0] != 1:
        raise LungTumorError(
            f"{what} must be a single 3D volume, got {volume.shape[0]} volumes of shape {tuple(volume.shape[1:])}",
            path,
        )
    if min(volume.shape[1:]) < 1:
        raise LungTumorError(f"{what} is empty, shape {tuple(volume.shape[1:])}", path)
    return volume


def root_cause(err: BaseException) -> str:
    """The innermost message of an exception chain, on one line."""
    while err.__cause__ is not None:
        err = err.__cause__
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) < 200 else text[:197] + "..."


def check_label(image: MetaTensor, label: MetaTensor, label_path: str | Path) -> None:
    """Check that a label matches its image's grid and holds only 0 and 1.

    Raises:
        LungTumorError: shape or affine mismatch, or other label values.
    """
    if image.shape != label.shape:
        raise LungTumorError(
            f"label shape {tuple(label.shape[1:])} differs from image shape {tuple(image.shape[1:])}", label_path
        )
    if not np.allclose(image.affine.numpy(), label.affine.numpy(), atol=1e-3):
        raise LungTumorError("label affine differs from the image affine", label_path)
    values = label.as_tensor()
    if values.is_floating_point() and not torch.equal(values, values.round()):
        raise LungTumorError("label has non-integer values; expected 0 and 1", label_path)
    outside = (values != 0) & (values != 1)
    if bool(outside.any()):
        bad = sorted({float(v) for v in values[outside].unique()[:5].tolist()})
        raise LungTumorError(f"label values must be 0 or 1, found {bad}", label_path)


def intensity_range(cfg: PreprocessConfig) -> tuple[float, float, bool]:
    """HU mapped to 0 and to 1, and whether values outside are clipped."""
    if cfg.intensity["mode"] == "window":
        low, high = (float(v) for v in cfg.intensity["window"])
        return low, high, True
    return 0.0, float(cfg.intensity["divisor"]), False


def scaled_air(cfg: PreprocessConfig) -> float:
    """The value that air (-1000 HU) has after intensity scaling: what the image is padded with."""
    low, high, clip = intensity_range(cfg)
    value = (AIR_HU - low) / (high - low)
    return float(np.clip(value, 0.0, 1.0)) if clip else value


def preprocess_transforms(
    cfg: PreprocessConfig, keys: Sequence[str] = ("image", "label"), crop: bool = True
) -> Compose:
    """Orientation, crop from slice, in-plane resampling, intensity scaling and padding to a fixed size.

    Args:
        cfg: the ``preprocess`` section.
        keys: ``("image",)`` or ``("image", "label")``; the first is the CT, the second a mask.
        crop: drop the slices below ``cfg.crop_from_slice`` (training); prediction keeps every slice.

    Returns:
        An invertible MONAI ``Compose`` over loaded, channel-first ``MetaTensor`` volumes.
    """
    keys = tuple(keys)
    low, high, clip = intensity_range(cfg)
    size = (cfg.image_size, cfg.image_size, -1)
    chain: list[Any] = [Orientationd(keys, axcodes=cfg.orientation, labels=RAS_LABELS)]
    if crop:
        chain.append(CropFromSliced(keys, cfg.crop_from_slice, cfg.thin_volume))
    chain += [
        ResampleInPlaned(keys, cfg.pixel_mm, mode=("bilinear", "nearest-exact")[: len(keys)]),
        ScaleIntensityRanged(keys[0], a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=clip),
        ResizeWithPadOrCropd(keys[0], size, value=scaled_air(cfg)),
    ]
    if len(keys) > 1:
        chain.append(ResizeWithPadOrCropd(keys[1:], size))
    return Compose(chain)


def apply_transforms(transforms: Compose, data: dict[str, Any]) -> dict[str, Any]:
    """Run ``transforms``, re-raising a :class:`LungTumorError` that MONAI wrapped in a ``RuntimeError``."""
    try:
        return transforms(data)
    except RuntimeError as err:
        cause: BaseException | None = err
        while cause is not None:
            if isinstance(cause, LungTumorError):
                raise cause from None
            cause = cause.__cause__
        raise
