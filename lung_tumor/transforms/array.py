"""Array transforms that MONAI does not offer, written as MONAI invertible transforms.

- :class:`CropFromSlice` keeps the axial slices from a given index upward (the recipe's "from slice 30"),
  with an explicit policy for volumes that are too thin.
- :class:`WindowIntensity` maps a HU window to [0, 1], as ``ScaleIntensityRange(b_min=0, b_max=1)``
  does, in three in-place passes instead of five on a new array.
- :class:`ResampleInPlane` resamples the axial plane to a fixed physical pixel size and leaves the
  slices untouched, slice by slice in 2D; on a 512x512x300 volume it is several times faster than
  :class:`monai.transforms.Spacing` (3D grid resampling) and than :class:`monai.transforms.Resize`
  (3D interpolation after a transposing copy); see ``scripts/bench_preprocess.py``.
- :class:`InsertTumour` / :class:`RandInsertTumour` insert synthetic tumours, with their label, into a
  real CT's lung (label-free tumour synthesis as augmentation; machinery in
  :mod:`lung_tumor.transforms.tumour_insertion`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.transforms import Crop, RandomizableTransform, Transform
from monai.transforms.inverse import InvertibleTransform, TraceableTransform
from monai.transforms.utils import scale_affine
from monai.utils import TraceKeys, TransformBackends, convert_to_dst_type, convert_to_numpy

from lung_tumor.config import THIN_VOLUME_POLICIES
from lung_tumor.errors import LungTumorError
from lung_tumor.report import axial_axis, lung_mask, voxel_spacing
from lung_tumor.transforms.tumour_insertion import (
    GROUND_GLASS_HU,
    LOCATIONS,
    SOLID_HU,
    TumourSpec,
    draw_tumours,
    insert_tumours,
)

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


@dataclass
class _Scan:
    """A channel-first CT as the insertion machinery needs it: (X, Y, Z) HU, geometry, lung, tumours."""

    hu: np.ndarray
    spacing: np.ndarray
    axis: int
    lung: np.ndarray
    existing: np.ndarray
    source: str


def _spatial(data: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    array = convert_to_numpy(data)
    if array.ndim != 4 or array.shape[0] != 1:
        raise ValueError(f"{name} must be channel-first with one channel, (1, X, Y, Z); got shape {array.shape}")
    return array[0]


def _read_scan(
    img: np.ndarray | torch.Tensor, label: np.ndarray | torch.Tensor | None, lung: np.ndarray | torch.Tensor | None
) -> _Scan:
    """The scan's HU, spacing (from a MetaTensor's affine, else 1 mm), lung (given or found) and label."""
    hu = _spatial(img, "image")
    if isinstance(img, MetaTensor):
        affine = np.asarray(convert_to_numpy(img.affine), dtype=float)
    else:
        log.warning("image without an affine (not a MetaTensor): assuming 1 mm voxels, axial axis last")
        affine = np.eye(4)
    existing = np.zeros(hu.shape, dtype=bool) if label is None else _spatial(label, "label") > 0
    lungs = lung_mask(hu, affine) if lung is None else _spatial(lung, "lung") > 0
    if existing.shape != hu.shape or lungs.shape != hu.shape:
        raise ValueError(f"label and lung must have the image's shape {hu.shape}")
    spacing = np.asarray(voxel_spacing(affine), dtype=float)
    return _Scan(hu, spacing, axial_axis(affine), lungs, existing, source_name(img))


def _write_back(
    scan: _Scan,
    painted: np.ndarray,
    inserted: np.ndarray,
    img: np.ndarray | torch.Tensor,
    label: np.ndarray | torch.Tensor | None,
) -> tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]:
    """The painted image in the input's type and dtype (integers rounded and clipped), the label ORed."""
    dtype = scan.hu.dtype
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        painted = np.clip(np.rint(painted), info.min, info.max)
    image, *_ = convert_to_dst_type(painted.astype(dtype)[None], img)
    if label is None:
        out_label, *_ = convert_to_dst_type(inserted.astype(np.uint8)[None], img, dtype=np.uint8)
    else:
        old = convert_to_numpy(label)
        out_label, *_ = convert_to_dst_type(np.maximum(old, inserted[None].astype(old.dtype)), label)
    return image, out_label


def empty_label_like(img: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """An all-zero uint8 label of the image's type, shape and metadata."""
    empty = np.zeros((1, *_spatial(img, "image").shape), dtype=np.uint8)
    return convert_to_dst_type(empty, img, dtype=np.uint8)[0]


def _check_location(location: str) -> None:
    if location not in LOCATIONS:
        raise ValueError(f"location must be one of {LOCATIONS}, got {location!r}")


def _check_range(name: str, value: Sequence[float], low: float, high: float) -> tuple[float, float]:
    if len(value) != 2 or not low <= value[0] <= value[1] <= high:
        raise ValueError(f"{name} must be (min, max) with {low:g} <= min <= max <= {high:g}, got {tuple(value)}")
    return float(value[0]), float(value[1])


class InsertTumour(Transform):
    """Insert given synthetic tumours, with their label, into a CT's lung.

    The deterministic twin of :class:`RandInsertTumour`: every tumour is a
    :class:`~lung_tumor.transforms.tumour_insertion.TumourSpec` (centre voxel, equivalent diameter in
    mm, mean HU, ground glass or solid, seed of shape, texture and noise). The lung is found from the
    HU (:func:`lung_tumor.report.lung_mask`) unless given; each tumour is cut to it (to its interior
    for ``location="inside"``) and kept clear of labelled tumours. See
    :mod:`lung_tumor.transforms.tumour_insertion` for how a tumour is sized and painted.

    Call with a channel-first image (MetaTensor, numpy or torch; HU), optionally its label and a lung
    mask on the same grid; returns ``(image, label)``: the image in its own type and dtype with its
    metadata, and the label ORed with the tumour voxels (a new uint8 label when none is given). The
    voxel sizes come from a MetaTensor's affine; plain arrays are taken as 1 mm voxels.

    Args:
        tumours: one tumour or several (``TumourSpec`` or a mapping of its fields), inserted in order.
        location: ``inside`` keeps the tumours off the lung's border; ``pleural`` and ``any`` cut them
            to the lung only (the centres decide whether they touch it).

    Raises:
        LungTumorError: a centre not in the lung, a tumour the lung cannot hold at its size.

    Examples::

        spec = TumourSpec(centre=(60, 40, 70), diameter_mm=15.0, mean_hu=35.0, seed=3)
        image, label = InsertTumour(spec)(image)
    """

    backend = [TransformBackends.NUMPY]

    def __init__(self, tumours: TumourSpec | Mapping | Sequence[TumourSpec | Mapping], location: str = "any") -> None:
        _check_location(location)
        if isinstance(tumours, (TumourSpec, Mapping)):
            tumours = [tumours]
        self.tumours = [t if isinstance(t, TumourSpec) else TumourSpec(**t) for t in tumours]
        self.location = location

    def __call__(
        self,
        img: np.ndarray | torch.Tensor,
        label: np.ndarray | torch.Tensor | None = None,
        lung: np.ndarray | torch.Tensor | None = None,
    ) -> tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]:
        return self._apply(_read_scan(img, label, lung), img, label)

    def _apply(
        self, scan: _Scan, img: np.ndarray | torch.Tensor, label: np.ndarray | torch.Tensor | None
    ) -> tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]:
        """Insert the tumours into an already read scan (see :func:`_read_scan`)."""
        if not scan.lung.any():
            raise LungTumorError("no lung found (no air-like voxels below -400 HU inside the body)", scan.source)
        painted, inserted = insert_tumours(
            scan.hu, scan.lung, scan.existing, self.tumours, scan.spacing, scan.axis, self.location, scan.source
        )
        return _write_back(scan, painted, inserted, img, label)


class RandInsertTumour(RandomizableTransform):
    """Insert randomly drawn synthetic tumours, with their label, into a CT's lung.

    Label-free tumour synthesis as augmentation (SynTumor's idea, with the lung tumour model of
    ``lung-tumor synth``): with probability ``prob``, ``count`` tumours of an equivalent diameter drawn
    log-uniformly from ``diameter_mm`` are placed in the lung at ``location`` (``inside``: off the
    lung's border; ``pleural``: abutting the chest wall, mediastinum or diaphragm; ``any``: either),
    solid (``hu_range``) or, with probability ``ground_glass_prob``, ground glass. Placement and look
    are drawn from ``self.R``, then :class:`InsertTumour` paints them; the tumours of the last call are
    in ``self.tumours``. Input and output as for :class:`InsertTumour`.

    Args:
        prob: probability of inserting anything.
        count: number of tumours, or an inclusive (min, max) range to draw it from.
        diameter_mm: (min, max) equivalent diameter in mm.
        location: ``inside``, ``pleural`` or ``any``.
        hu_range: (min, max) mean HU of solid tumours.
        ground_glass_prob: probability that a tumour is ground glass.
        ground_glass_hu: (min, max) mean HU of ground-glass tumours.
        max_tries: placements tried per tumour before giving up.

    Raises:
        ValueError: a parameter out of range (at construction).
        LungTumorError: no lung in the image, or no place for a tumour after ``max_tries``.

    Examples::

        insert = RandInsertTumour(count=(1, 2), diameter_mm=(8, 25), location="pleural")
        insert.set_random_state(seed=0)
        image, label = insert(image, label)
    """

    backend = [TransformBackends.NUMPY]

    def __init__(
        self,
        prob: float = 1.0,
        count: int | Sequence[int] = 1,
        diameter_mm: Sequence[float] = (5.0, 30.0),
        location: str = "any",
        hu_range: Sequence[float] = SOLID_HU,
        ground_glass_prob: float = 0.0,
        ground_glass_hu: Sequence[float] = GROUND_GLASS_HU,
        max_tries: int = 50,
    ) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {prob}")
        RandomizableTransform.__init__(self, prob)
        counts = (count, count) if isinstance(count, int) else tuple(count)
        if len(counts) != 2 or not 1 <= counts[0] <= counts[1] or not all(isinstance(c, int) for c in counts):
            raise ValueError(
                f"count must be a positive int or an (min, max) int range with 1 <= min <= max, got {count}"
            )
        self.count = counts
        self.diameter_mm = _check_range("diameter_mm", diameter_mm, 1e-3, 200.0)
        _check_location(location)
        self.location = location
        self.hu_range = _check_range("hu_range", hu_range, -200.0, 300.0)
        if not 0.0 <= ground_glass_prob <= 1.0:
            raise ValueError(f"ground_glass_prob must be in [0, 1], got {ground_glass_prob}")
        self.ground_glass_prob = float(ground_glass_prob)
        self.ground_glass_hu = _check_range("ground_glass_hu", ground_glass_hu, -900.0, -100.0)
        if max_tries < 1:
            raise ValueError(f"max_tries must be at least 1, got {max_tries}")
        self.max_tries = int(max_tries)
        self.tumours: list[TumourSpec] = []
        self._count = counts[0]

    def randomize(self, data: None = None) -> None:
        """Draw whether to insert and how many tumours; where and how they look is drawn at the call."""
        super().randomize(None)
        self._count = int(self.R.randint(self.count[0], self.count[1] + 1))

    def __call__(
        self,
        img: np.ndarray | torch.Tensor,
        label: np.ndarray | torch.Tensor | None = None,
        lung: np.ndarray | torch.Tensor | None = None,
        randomize: bool = True,
    ) -> tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]:
        if randomize:
            self.randomize()
        if not self._do_transform:
            self.tumours = []
            return img, empty_label_like(img) if label is None else label
        scan = _read_scan(img, label, lung)
        self.tumours = draw_tumours(
            self.R,
            scan.hu,
            scan.lung,
            scan.existing,
            scan.spacing,
            self._count,
            self.location,
            self.diameter_mm,
            self.hu_range,
            self.ground_glass_prob,
            self.ground_glass_hu,
            self.max_tries,
            scan.source,
        )
        return InsertTumour(self.tumours, self.location)._apply(scan, img, label)
