"""The preprocessing chain shared by the slice cache, training, validation and prediction."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import ITKReader, MetaTensor, NibabelReader
from monai.transforms import (
    Compose,
    Orientationd,
    ResizeWithPadOrCropd,
)

from lung_tumor.config import PreprocessConfig
from lung_tumor.data.checks import (
    check_affine,
    check_ct_intensities,
    check_dicom_spacing,
    check_label_values,
    check_nifti_geometry,
)
from lung_tumor.errors import LungTumorError
from lung_tumor.nifti_gzip import read_voxels
from lung_tumor.transforms.dictionary import CropFromSliced, ResampleInPlaned, WindowIntensityd

AIR_HU = -1000.0
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # nibabel and MONAI world axes


class IsalNibabelReader(NibabelReader):
    """MONAI's ``NibabelReader`` whose ``.nii.gz`` voxels are inflated by ISA-L (:mod:`lung_tumor.nifti_gzip`), about
    twice as fast as zlib; header, meta data, dtype, scaling and memory order are unchanged."""

    def _get_array_data(self, img: Any, filename: Any) -> Any:
        if self.to_gpu:
            return super()._get_array_data(img, filename)
        return read_voxels(img, filename)


def load_volume(path: str | Path, what: str = "image") -> MetaTensor:
    """Load a 3D CT volume or mask as a channel-first ``MetaTensor`` in its stored dtype.

    A NIfTI file is read with MONAI's ``NibabelReader`` (:class:`IsalNibabelReader`: its voxels inflated by
    ISA-L), a folder as a DICOM series with its ``ITKReader``. Unlike ``LoadImage``, the array keeps the file's
    memory order (first axis fastest) instead of being copied to C order, which on a 512x512x300 scan costs more
    than decoding it; :class:`~lung_tumor.transforms.array.ResampleInPlane` reads that order directly.

    Every volume passes the input checks of :mod:`lung_tumor.data.checks`, shared by every command:
    its geometry, and for ``what="image"`` intensities that can be CT in HU (otherwise finite values).

    Raises:
        LungTumorError: missing, unreadable, not a single 3D volume, ambiguous or degenerate geometry,
            or (an image) intensities that cannot be CT in Hounsfield units.
    """
    path = Path(path)
    if not path.exists():
        raise LungTumorError(f"{what} not found", path)
    if path.is_dir() and not any(path.iterdir()):
        raise LungTumorError(f"{what} folder is empty (expected a DICOM series)", path)
    reader = ITKReader() if path.is_dir() else IsalNibabelReader()
    try:
        stored = reader.read(str(path))
        array, meta = reader.get_data(stored)
    except Exception as err:  # nibabel, gzip, zlib and ITK raise many types for a corrupt file
        raise LungTumorError(f"cannot read {what}: {root_cause(err)}", path) from None
    array = np.asarray(array)
    if array.ndim != 3:
        raise LungTumorError(f"{what} must be a single 3D volume, got shape {array.shape}", path)
    if min(array.shape) < 1:
        raise LungTumorError(f"{what} is empty, shape {array.shape}", path)
    if path.is_dir():
        check_dicom_spacing(path, meta["spacing"])
    else:
        check_nifti_geometry(path, type(stored.header))
    check_affine(meta["affine"], path)
    if array.dtype == np.float64:  # scaled NIfTI data: float32 is exact enough for HU and halves the memory
        array = array.astype(np.float32)
    if what == "image":
        check_ct_intensities(array, path)
    else:
        check_label_values(array, path)
    if not array.flags.writeable:
        array = array.copy()
    meta["filename_or_obj"] = str(path)
    return MetaTensor(torch.from_numpy(array)[None], meta=meta)


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
    check_label_on_grid(label, tuple(image.shape[1:]), image.affine.numpy(), label_path)


def check_label_on_grid(label: MetaTensor, shape: tuple[int, ...], affine: np.ndarray, label_path: str | Path) -> None:
    """Check that a label loaded by :func:`load_volume` lies on the grid ``shape``/``affine`` and holds only 0 and 1.

    Raises:
        LungTumorError: shape or affine mismatch, or other label values.
    """
    if tuple(label.shape[1:]) != tuple(shape):
        raise LungTumorError(
            f"label shape {tuple(label.shape[1:])} differs from image shape {tuple(shape)}", label_path
        )
    if not np.allclose(np.asarray(affine), label.affine.numpy(), atol=1e-3):
        raise LungTumorError("label affine differs from the image affine", label_path)
    values = label.as_tensor()
    if not values.is_floating_point():
        flat = values.numpy()  # numpy reduces in memory order whatever the strides; torch is slow on F order
        if int(flat.min()) >= 0 and int(flat.max()) <= 1:
            return
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
        # pad with air before scaling, so the padding gets the value that air has after scaling
        ResizeWithPadOrCropd(keys[0], size, value=AIR_HU),
    ]
    if len(keys) > 1:
        chain.append(ResizeWithPadOrCropd(keys[1:], size))
    chain.append(WindowIntensityd(keys[0], low, high, clip=clip))
    return Compose(chain)


def apply_transforms(transforms: Compose | Callable, data: dict[str, Any]) -> dict[str, Any]:
    """Run ``transforms`` one by one, consuming ``data`` (emptied, so each input array can be freed early).

    A :class:`LungTumorError` that MONAI wrapped in a ``RuntimeError`` is re-raised as itself.
    """
    current = dict(data)
    data.clear()
    try:
        for transform in transforms.flatten().transforms if isinstance(transforms, Compose) else [transforms]:
            current = transform(current)
    except RuntimeError as err:
        cause: BaseException | None = err
        while cause is not None:
            if isinstance(cause, LungTumorError):
                raise cause from None
            cause = cause.__cause__
        raise
    return current
