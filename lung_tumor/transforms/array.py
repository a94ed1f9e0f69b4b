"""Array transforms that MONAI does not offer, written as MONAI invertible transforms.

- :class:`CropFromSlice` keeps the axial slices from a given index upward (the recipe's "from slice 30"),
  with an explicit policy for volumes that are too thin.
- :class:`ResampleInPlane` resamples the axial plane to a fixed physical pixel size and leaves the
  slices untouched; it is :class:`monai.transforms.Resize` with the output size derived from the
  voxel spacing, so that the physical scale is the same for every scan (a blind resize to a fixed
  pixel count is not). It runs ``torch.nn.functional.interpolate``, about 7x faster on a
  512x512x300 volume than :class:`monai.transforms.Spacing`'s grid resampling on this CPU.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.transforms import Crop, Resize

from lung_tumor.config import THIN_VOLUME_POLICIES
from lung_tumor.errors import LungTumorError

log = logging.getLogger(__name__)


def source_name(img: torch.Tensor) -> str:
    """The file an image was loaded from, for error messages (``<array>`` when unknown)."""
    if isinstance(img, MetaTensor):
        return str(img.meta.get("filename_or_obj", "<array>"))
    return "<array>"


class CropFromSlice(Crop):
    """Keep the slices from ``first_slice`` upward along the last spatial axis.

    After reorientation to RAS the last axis runs from inferior to superior, so this drops the
    lowest slices (in MSD lung scans, the upper abdomen).

    Args:
        first_slice: index of the first slice kept.
        thin_volume: what to do when the volume has no more than ``first_slice`` slices: ``keep``
            all of them (logged as a warning) or raise an ``error``.
        lazy: MONAI lazy resampling flag.

    Raises:
        LungTumorError: the volume is too thin and ``thin_volume="error"``.

    Examples::

        >>> CropFromSlice(30)(torch.zeros(1, 8, 8, 50)).shape
        torch.Size([1, 8, 8, 20])
    """

    def __init__(self, first_slice: int, thin_volume: str = "keep", lazy: bool = False) -> None:
        super().__init__(lazy=lazy)
        if first_slice < 0:
            raise ValueError(f"first_slice must be >= 0, got {first_slice}")
        if thin_volume not in THIN_VOLUME_POLICIES:
            raise ValueError(f"thin_volume must be one of {THIN_VOLUME_POLICIES}, got {thin_volume!r}")
        self.first_slice = first_slice
        self.thin_volume = thin_volume

    def start_for(self, num_slices: int, source: str = "<array>") -> int:
        """The first slice kept for a volume of ``num_slices`` slices."""
        if num_slices > self.first_slice:
            return self.first_slice
        if self.thin_volume == "error":
            raise LungTumorError(
                f"volume has {num_slices} axial slices, not more than crop_from_slice={self.first_slice}", source
            )
        if self.first_slice:
            log.warning(
                "%s: %d axial slices, not more than crop_from_slice=%d; keeping all slices",
                source,
                num_slices,
                self.first_slice,
            )
        return 0

    def __call__(self, img: torch.Tensor, lazy: bool | None = None) -> torch.Tensor:  # type: ignore[override]
        shape = img.peek_pending_shape() if isinstance(img, MetaTensor) else img.shape[1:]
        start = self.start_for(int(shape[-1]), source_name(img))
        slices = (slice(None),) * (len(shape) - 1) + (slice(start, None),)
        return super().__call__(img, slices=slices, lazy=self.lazy if lazy is None else lazy)


class ResampleInPlane(Resize):
    """Resample the first two spatial axes to ``pixel_mm`` millimetres, keeping the slice axis as it is.

    The output in-plane size is ``round(size * spacing / pixel_mm)``; the affine is updated by
    :class:`monai.transforms.Resize`, so world coordinates are preserved and the transform is invertible.

    Args:
        pixel_mm: target in-plane pixel size in millimetres.
        mode: interpolation mode (``bilinear`` for images, ``nearest-exact`` for labels).
        dtype: computation dtype; float32 by default.
    """

    def __init__(self, pixel_mm: float, mode: str = "bilinear", dtype: torch.dtype = torch.float32) -> None:
        if pixel_mm <= 0:
            raise ValueError(f"pixel_mm must be positive, got {pixel_mm}")
        super().__init__(spatial_size=(-1, -1, -1), mode=mode, dtype=dtype)
        self.pixel_mm = float(pixel_mm)

    def output_size(self, img: torch.Tensor) -> tuple[int, ...]:
        """The spatial size after resampling (the slice axis unchanged)."""
        if not isinstance(img, MetaTensor):
            raise TypeError("ResampleInPlane needs a MetaTensor with an affine")
        shape = tuple(int(s) for s in img.peek_pending_shape())
        spacing = np.asarray(affine_to_spacing(img.peek_pending_affine(), r=len(shape)), dtype=float)
        in_plane = tuple(max(1, round(n * s / self.pixel_mm)) for n, s in zip(shape[:2], spacing[:2], strict=True))
        return in_plane + shape[2:]

    def __call__(self, img: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:  # type: ignore[override]
        self.spatial_size = self.output_size(img)
        return super().__call__(img, *args, **kwargs)  # type: ignore[arg-type]
