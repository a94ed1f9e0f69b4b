"""Array transforms that MONAI does not offer, written as MONAI invertible transforms.

- :class:`CropFromSlice` keeps the axial slices from a given index upward (the recipe's "from slice 30"),
  with an explicit policy for volumes that are too thin.
- :class:`WindowIntensity` maps a HU window to [0, 1], as ``ScaleIntensityRange(b_min=0, b_max=1)``
  does, in three in-place passes instead of five on a new array.
- :class:`ResampleInPlane` resamples the axial plane to a fixed physical pixel size and leaves the
  slices untouched, slice by slice in 2D; on a 512x512x300 volume it is several times faster than
  :class:`monai.transforms.Spacing` (3D grid resampling) and than :class:`monai.transforms.Resize`
  (3D interpolation after a transposing copy); see ``scripts/bench_preprocess.py``.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.transforms import Crop, Transform
from monai.transforms.inverse import InvertibleTransform, TraceableTransform
from monai.transforms.utils import scale_affine
from monai.utils import TraceKeys, TransformBackends

from lung_tumor.config import THIN_VOLUME_POLICIES
from lung_tumor.errors import LungTumorError

log = logging.getLogger(__name__)

SLICES_PER_CHUNK = 32


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


class ResampleInPlane(InvertibleTransform):
    """Resample the first two spatial axes to ``pixel_mm`` millimetres, keeping the slices as they are.

    The output in-plane size is ``round(size * spacing / pixel_mm)``: the physical scale is the same for
    every scan (a blind resize to a fixed pixel count is not). The affine is updated as
    :class:`monai.transforms.Resize` updates it (``scale_affine``, pixel centres aligned), so world
    coordinates are preserved and the transform is invertible with MONAI's ``Invertd`` / ``Compose.inverse``.

    It interpolates each axial slice in 2D with the slices as the batch. NIfTI data is stored with the
    first axis fastest, so the slices of a (C, X, Y, Z) volume are already contiguous: no transposing
    copy is made (MONAI's ``LoadImage`` + ``Resize`` make one, which costs more than decoding the file).

    Args:
        pixel_mm: target in-plane pixel size in millimetres.
        mode: ``bilinear`` for images (computed in float32), ``nearest-exact`` for masks (dtype kept).

    Examples::

        volume = MetaTensor(torch.zeros(1, 512, 512, 40), affine=torch.diag(torch.tensor([0.7, 0.7, 2.5, 1.0])))
        ResampleInPlane(1.4)(volume).shape  # (1, 256, 256, 40)
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, pixel_mm: float, mode: str = "bilinear") -> None:
        if pixel_mm <= 0:
            raise ValueError(f"pixel_mm must be positive, got {pixel_mm}")
        if mode not in ("bilinear", "nearest-exact"):
            raise ValueError(f"mode must be 'bilinear' or 'nearest-exact', got {mode!r}")
        self.pixel_mm = float(pixel_mm)
        self.mode = mode

    def output_size(self, img: MetaTensor) -> tuple[int, ...]:
        """The spatial size after resampling (the slice axis unchanged)."""
        shape = tuple(int(s) for s in img.shape[1:])
        spacing = np.asarray(affine_to_spacing(img.affine, r=len(shape)), dtype=float)
        in_plane = tuple(max(1, round(n * s / self.pixel_mm)) for n, s in zip(shape[:2], spacing[:2], strict=True))
        return in_plane + shape[2:]

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if not isinstance(img, MetaTensor) or img.ndim != 4:
            raise TypeError("ResampleInPlane needs a channel-first 3D MetaTensor with an affine")
        return self.resample(img, self.output_size(img), self.mode, self.get_transform_info())

    @staticmethod
    def resample(img: MetaTensor, out_size: tuple[int, ...], mode: str, transform_info: dict | None) -> MetaTensor:
        """Interpolate the slices of ``img`` to ``out_size`` and record the step in its metadata."""
        orig_size = tuple(int(s) for s in img.shape[1:])
        meta = TraceableTransform.track_transform_meta(
            img,
            sp_size=out_size,
            affine=scale_affine(orig_size, out_size),
            extra_info={"mode": mode},
            orig_size=orig_size,
            transform_info=transform_info,
        )
        data = img.as_tensor()
        slices = data.permute(3, 0, 2, 1)  # (Z, C, Y, X)
        dtype = torch.float32 if mode == "bilinear" or data.is_floating_point() else data.dtype
        out = torch.empty((slices.shape[0], slices.shape[1], out_size[1], out_size[0]), dtype=dtype)
        # a few slices at a time: the float32 copy of the input never exists whole
        for start in range(0, slices.shape[0], SLICES_PER_CHUNK):
            chunk = slices[start : start + SLICES_PER_CHUNK].to(dtype)
            out[start : start + SLICES_PER_CHUNK] = F.interpolate(chunk, size=out.shape[2:], mode=mode)
        return MetaTensor(out.permute(1, 3, 2, 0)).copy_meta_from(meta)  # (C, X', Y', Z)

    def inverse(self, data: torch.Tensor) -> torch.Tensor:
        transform = self.pop_transform(data)
        orig_size = tuple(int(s) for s in transform[TraceKeys.ORIG_SIZE])
        with self.trace_transform(False):
            return self.resample(data, orig_size, transform[TraceKeys.EXTRA_INFO]["mode"], None)


class WindowIntensity(Transform):
    """Map intensities ``low`` -> 0 and ``high`` -> 1, clipping outside the window if ``clip``.

    The result equals ``monai.transforms.ScaleIntensityRange(low, high, 0.0, 1.0, clip=clip)``; it is
    computed in place on a float32 copy (or on the input itself when it is already float32).

    Args:
        low: intensity mapped to 0 (e.g. -1350 HU for the lung window W1500/L-600).
        high: intensity mapped to 1.
        clip: clip the result to [0, 1].

    Raises:
        ValueError: ``high`` is not above ``low``.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, low: float, high: float, clip: bool = True) -> None:
        if not high > low:
            raise ValueError(f"the window needs high > low, got [{low}, {high}]")
        self.low, self.high, self.clip = float(low), float(high), clip

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        out = img if img.dtype == torch.float32 else img.to(torch.float32)
        out.sub_(self.low).mul_(1.0 / (self.high - self.low))
        return out.clamp_(0.0, 1.0) if self.clip else out
