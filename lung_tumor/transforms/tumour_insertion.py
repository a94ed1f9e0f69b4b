"""Synthetic tumours in a real CT's lung: where they go, how large they are, how they look.

The numpy machinery behind :class:`~lung_tumor.transforms.array.InsertTumour` and
:class:`~lung_tumor.transforms.array.RandInsertTumour`, on (X, Y, Z) volumes in HU. The tumour model
(lobulated, optionally spiculated shape; smooth texture; necrotic core above 30 mm) is the synthetic
CT engine's, :mod:`lung_tumor.data.tumour_model`. Everything is computed in voxel space with the
affine's voxel sizes (``index * spacing`` mm per axis), so anisotropic grids in any orientation work.

- **Where**: the lung is :func:`lung_tumor.report.lung_mask` (air-like voxels inside the torso, holes
  filled, so vessels count as lung) unless a mask is given. A tumour is cut to the lung and never
  reaches the volume's faces: ``inside`` keeps it off the lung's border (its 26-neighbours are all
  lung), ``pleural`` puts its centre 0.25-0.75 radii from the border so that it abuts the chest wall,
  the mediastinum or the diaphragm (at least 3 tissue voxels > -500 HU next to it), ``any`` either.
- **How large**: ``diameter_mm`` is the equivalent diameter (the sphere of the same volume) of the
  inserted label; the shape's nominal radius is rescaled until the cut shape has it.
- **How it looks**: solid tumours replace the tissue with the model's HU plus noise of the scan's own
  level (estimated on homogeneous soft tissue nearby) correlated in-plane; ground-glass ones raise the
  parenchyma to their HU and keep what is denser (vessels). Partial volume: the tumour is blended
  into the one-voxel shell around it (lung only), and its own edge voxels are at least half tumour.
  The label is exactly the tumour's voxels; nothing outside them and their shell changes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lung_tumor.data.tumour_model import tumour_shape, tumour_texture
from lung_tumor.errors import LungTumorError
from lung_tumor.evaluation.lesions import label_lesions
from lung_tumor.report import BODY_MIN_HU, mask_bounding_box

log = logging.getLogger(__name__)

LOCATIONS = ("inside", "pleural", "any")
SOLID_HU = (0.0, 60.0)
GROUND_GLASS_HU = (-700.0, -300.0)
SHAPE_REACH = 2.3  # the model's shape lies within 2.3 nominal radii of its centre (spikes reach 2.2)
BODY_REACH = 1.4  # ... and its body (lobes included) within 1.4
PLEURAL_DEPTH = (0.25, 0.75)  # centre depth below the lung's border, in nominal radii
SIZE_ITERATIONS = 8
EDGE_SIGMA_VOXELS = 0.6  # partial-volume blur; with truncate 1.5 its kernel reaches exactly one voxel
TEXTURE_SIGMA_MM = 1.5
NOISE_SIGMA_VOXELS = 0.7  # in-plane correlation of the added noise (a reconstruction kernel's)
NOISE_NEIGHBOURHOOD_MM = 40.0
NOISE_TISSUE_HU = (-150.0, 150.0)
MIN_NOISE_SAMPLES = 200
MIN_CONTACT_VOXELS = 3
EXISTING_MARGIN_VOXELS = 2
_STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class TumourSpec:
    """One tumour to insert, fully determined.

    Attributes:
        centre: voxel index (x, y, z) of the centre; must lie in the lung.
        diameter_mm: equivalent diameter of the inserted label (the sphere of the same volume).
        mean_hu: mean HU (solid about 0-60, ground glass about -700..-300).
        ground_glass: raise the parenchyma to ``mean_hu`` and keep denser structures (vessels) visible.
        seed: fixes the shape, the texture and the noise.
    """

    centre: tuple[int, int, int]
    diameter_mm: float
    mean_hu: float = 30.0
    ground_glass: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.centre) != 3:
            raise ValueError(f"centre must be a voxel index (x, y, z), got {self.centre!r}")
        if not self.diameter_mm > 0:
            raise ValueError(f"diameter_mm must be positive, got {self.diameter_mm}")


def equivalent_diameter_mm(voxels: int, spacing: np.ndarray) -> float:
    """Diameter of the sphere with the volume of ``voxels`` voxels of size ``spacing`` mm."""
    return (6 * voxels * float(np.prod(spacing)) / math.pi) ** (1 / 3)


def _box(centre: np.ndarray, reach_mm: float, spacing: np.ndarray, shape: tuple[int, ...]):
    """Index box within ``reach_mm`` of a voxel ``centre`` and its broadcastable mm coordinates."""
    lo = np.maximum(np.floor(centre - reach_mm / spacing).astype(int), 0)
    hi = np.minimum(np.ceil(centre + reach_mm / spacing).astype(int) + 1, shape)
    index = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    coords = [
        (np.arange(a, b, dtype=np.float32) * s).reshape([-1 if d == axis else 1 for d in range(3)])
        for axis, (a, b, s) in enumerate(zip(lo, hi, spacing, strict=True))
    ]
    return index, coords


def allowed_region(lung: np.ndarray, existing: np.ndarray, location: str) -> np.ndarray:
    """Where a tumour may lie: the lung (its interior for ``inside``), off the faces and existing tumours."""
    if location == "inside":
        region = np.zeros(lung.shape, dtype=bool)
        lung_box = mask_bounding_box(lung, 1)
        if lung_box is not None:  # border_value 0: the volume's faces go too
            region[lung_box] = ndimage.binary_erosion(lung[lung_box], _STRUCTURE_26)
    else:
        region = lung.copy()
        for axis in range(3):
            np.moveaxis(region, axis, 0)[[0, -1]] = False
    box = mask_bounding_box(existing, EXISTING_MARGIN_VOXELS)
    if box is not None:
        region[box] &= ~ndimage.binary_dilation(existing[box], _STRUCTURE_26, EXISTING_MARGIN_VOXELS)
    return region


def tumour_voxels(
    spec: TumourSpec, allowed: np.ndarray, spacing: np.ndarray
) -> tuple[tuple[slice, ...], np.ndarray, float]:
    """The voxels of a tumour: its shape cut to ``allowed``, the part connected to the centre.

    The nominal radius is rescaled (at most :data:`SIZE_ITERATIONS` times) until the equivalent
    diameter of the voxels is ``spec.diameter_mm``; the closest result is returned.

    Returns:
        The index box, the boolean mask inside it and the nominal radius used.

    Raises:
        ValueError: the centre is not in ``allowed``.
    """
    centre = np.asarray(spec.centre, dtype=int)
    if np.any(centre < 0) or np.any(centre >= allowed.shape) or not allowed[tuple(centre)]:
        raise ValueError(f"tumour centre {tuple(int(c) for c in centre)} is not in the allowed lung region")
    centre_mm = centre * spacing
    target = math.pi / 6 * spec.diameter_mm**3 / float(np.prod(spacing))
    radius = spec.diameter_mm / 2
    best: tuple[float, tuple[slice, ...], np.ndarray, float] | None = None
    for _ in range(SIZE_ITERATIONS):
        index, coords = _box(centre, SHAPE_REACH * radius + 2 * float(spacing.max()), spacing, allowed.shape)
        mask = tumour_shape(np.random.default_rng(spec.seed), coords, centre_mm, radius) & allowed[index]
        labels, _ = label_lesions(mask)
        mask = labels == labels[tuple(centre - [s.start for s in index])]
        voxels = int(mask.sum())
        error = abs(equivalent_diameter_mm(voxels, spacing) - spec.diameter_mm)
        if best is None or error < best[0]:
            best = (error, index, mask, radius)
        if error <= 0.1 * float(spacing.min()):
            break
        radius *= (target / voxels) ** (1 / 3)
    return best[1], best[2], best[3]


def touches_border(index: tuple[slice, ...], mask: np.ndarray, lung: np.ndarray, hu: np.ndarray) -> bool:
    """Whether at least :data:`MIN_CONTACT_VOXELS` tissue voxels outside the lung neighbour the tumour."""
    shell = ndimage.binary_dilation(mask, _STRUCTURE_26) & ~mask
    return int((shell & ~lung[index] & (hu[index] > BODY_MIN_HU)).sum()) >= MIN_CONTACT_VOXELS


def _tissue_residuals(hu: np.ndarray, axis: int) -> np.ndarray:
    """HU minus the 5x5 in-plane mean, on voxels whose 5x5 neighbourhood is all soft tissue."""
    size = [5, 5, 5]
    size[axis] = 1
    tissue = (hu > NOISE_TISSUE_HU[0]) & (hu < NOISE_TISSUE_HU[1])
    homogeneous = ndimage.minimum_filter(tissue, size=size)
    return (hu - ndimage.uniform_filter(hu, size=size))[homogeneous]


def estimate_noise_hu(hu: np.ndarray, index: tuple[slice, ...], spacing: np.ndarray, axis: int) -> float:
    """Scanner noise (SD, HU) near a box: robust SD of homogeneous soft tissue about its local mean.

    Looks within :data:`NOISE_NEIGHBOURHOOD_MM` in-plane and one slice above and below the box, then in
    the whole volume when there is too little soft tissue there; 0 when there is none at all.
    """
    near = tuple(
        slice(max(s.start - 1, 0), s.stop + 1)
        if a == axis
        else slice(
            max(s.start - int(NOISE_NEIGHBOURHOOD_MM / spacing[a]), 0),
            s.stop + int(NOISE_NEIGHBOURHOOD_MM / spacing[a]),
        )
        for a, s in enumerate(index)
    )
    for region in (near, (slice(None),) * 3):
        values = _tissue_residuals(hu[region], axis)
        if values.size >= MIN_NOISE_SAMPLES:
            mad = float(np.median(np.abs(values - np.median(values))))
            return 1.4826 * mad * math.sqrt(25 / 24)  # the 5x5 mean holds the voxel itself
    log.warning("no homogeneous soft tissue (%g..%g HU) found: inserted tumours get no noise", *NOISE_TISSUE_HU)
    return 0.0


def paint_tumour(
    hu: np.ndarray,
    index: tuple[slice, ...],
    mask: np.ndarray,
    spec: TumourSpec,
    radius: float,
    spacing: np.ndarray,
    axis: int,
    lung: np.ndarray,
    noise_hu: float,
) -> None:
    """Paint one tumour into the float32 HU volume ``hu`` in place (its voxels and their lung shell)."""
    centre_mm = np.asarray(spec.centre) * spacing
    coords = [
        (np.arange(s.start, s.stop, dtype=np.float32) * spacing[a]).reshape([-1 if d == a else 1 for d in range(3)])
        for a, s in enumerate(index)
    ]
    rng = np.random.default_rng([spec.seed, 1])
    sigma = tuple(max(TEXTURE_SIGMA_MM / s, 0.5) for s in spacing)
    target = tumour_texture(rng, coords, centre_mm, radius, (spec.mean_hu, spec.mean_hu), sigma)
    noise_sigma = tuple(0.0 if a == axis else NOISE_SIGMA_VOXELS for a in range(3))
    noise = ndimage.gaussian_filter(rng.standard_normal(mask.shape, dtype=np.float32), noise_sigma)
    target = target + noise_hu / max(float(noise.std()), 1e-6) * noise
    old = hu[index]
    if spec.ground_glass:
        target = np.maximum(old, target)
    soft = ndimage.gaussian_filter(mask.astype(np.float32), EDGE_SIGMA_VOXELS, truncate=1.5)
    alpha = np.where(mask, np.maximum(soft, 0.5), np.minimum(soft, 0.5) * lung[index])
    hu[index] = old + alpha * (target - old)


def insert_tumours(
    hu: np.ndarray,
    lung: np.ndarray,
    existing: np.ndarray,
    specs: list[TumourSpec],
    spacing: np.ndarray,
    axis: int,
    location: str = "any",
    source: str = "<array>",
) -> tuple[np.ndarray, np.ndarray]:
    """Insert tumours into a copy of ``hu``.

    Args:
        hu: (X, Y, Z) HU volume.
        lung: boolean lung mask of the same grid.
        existing: tumours already labelled (kept clear of, by two voxels).
        specs: the tumours, inserted in order (each kept clear of the ones before).
        spacing: voxel size in mm per axis.
        axis: the axial axis (noise is correlated in the other two).
        location: ``inside`` cuts each tumour to the lung's interior, else to the lung.
        source: the image's file, for error messages.

    Returns:
        The float32 HU volume with the tumours and the boolean mask of the inserted tumour voxels.

    Raises:
        LungTumorError: a centre outside the allowed lung, or a tumour that the lung cannot hold at
            the requested size (more than one voxel off).
    """
    out = np.array(hu, dtype=np.float32)
    inserted = np.zeros(hu.shape, dtype=bool)
    for spec in specs:
        allowed = allowed_region(lung, existing | inserted, location)
        try:
            index, mask, radius = tumour_voxels(spec, allowed, spacing)
        except ValueError as error:
            raise LungTumorError(f"{error} (location={location!r})", source) from None
        achieved = equivalent_diameter_mm(int(mask.sum()), spacing)
        if abs(achieved - spec.diameter_mm) > float(spacing.max()):
            raise LungTumorError(
                f"the lung holds a tumour of {achieved:.1f} mm at {spec.centre}, not {spec.diameter_mm:.1f} mm",
                source,
            )
        paint_tumour(out, index, mask, spec, radius, spacing, axis, lung, estimate_noise_hu(hu, index, spacing, axis))
        inserted[index] |= mask
    return out, inserted


def draw_tumours(
    rng: np.random.RandomState,
    hu: np.ndarray,
    lung: np.ndarray,
    existing: np.ndarray,
    spacing: np.ndarray,
    count: int,
    location: str,
    diameter_mm: tuple[float, float],
    hu_range: tuple[float, float],
    ground_glass_prob: float,
    ground_glass_hu: tuple[float, float],
    max_tries: int,
    source: str = "<array>",
) -> list[TumourSpec]:
    """Draw ``count`` tumours that fit the lung at ``location``, each tried up to ``max_tries`` times.

    Each try draws a diameter (log-uniform), a centre among the lung voxels deep enough (or, for
    ``pleural``, shallow enough), a look and a seed, then keeps the tumour only if it reaches its size
    within a voxel and, for ``pleural``, touches the border.

    Raises:
        LungTumorError: no lung, or no place found for a tumour.
    """
    if not lung.any():
        raise LungTumorError(
            "no lung found (no air-like voxels below -400 HU inside the body): cannot insert a tumour", source
        )
    box = mask_bounding_box(lung, 1)
    candidates = np.flatnonzero(lung)  # C order, as the lung voxels of the box below
    depth_mm = ndimage.distance_transform_edt(lung[box], sampling=spacing)[lung[box]].astype(np.float32)
    face_mm = np.full(candidates.shape, np.inf, dtype=np.float32)
    stride = 1
    for axis in reversed(range(3)):  # one coordinate at a time: a CT's lung has millions of voxels
        n = lung.shape[axis]
        coordinate = (candidates // stride) % n
        face_mm = np.minimum(face_mm, np.minimum(coordinate, n - 1 - coordinate) * np.float32(spacing[axis]))
        stride *= n
    size_tolerance = 0.5 * float(spacing.min())
    specs: list[TumourSpec] = []
    inserted = np.zeros(lung.shape, dtype=bool)
    for number in range(count):
        allowed = allowed_region(lung, existing | inserted, location)
        for _ in range(max_tries):
            diameter = float(np.exp(rng.uniform(np.log(diameter_mm[0]), np.log(diameter_mm[1]))))
            ground_glass = bool(rng.uniform() < ground_glass_prob)
            mean_hu = float(rng.uniform(*(ground_glass_hu if ground_glass else hu_range)))
            seed = int(rng.randint(2**31))
            pick = rng.uniform()
            radius = diameter / 2
            fits = (face_mm >= BODY_REACH * radius) & allowed.ravel()[candidates]
            if location == "inside":
                fits &= depth_mm >= BODY_REACH * radius + float(spacing.max())
            elif location == "pleural":
                fits &= (depth_mm >= PLEURAL_DEPTH[0] * radius) & (depth_mm <= PLEURAL_DEPTH[1] * radius)
            else:
                fits &= depth_mm >= PLEURAL_DEPTH[0] * radius
            places = np.flatnonzero(fits)
            if not places.size:
                continue
            flat = candidates[places[min(int(pick * places.size), places.size - 1)]]
            centre = tuple(int(c) for c in np.unravel_index(flat, lung.shape))
            spec = TumourSpec(centre, diameter, mean_hu, ground_glass, seed)
            index, mask, _ = tumour_voxels(spec, allowed, spacing)
            if abs(equivalent_diameter_mm(int(mask.sum()), spacing) - diameter) > size_tolerance:
                continue
            if location == "pleural" and not touches_border(index, mask, lung, hu):
                continue
            specs.append(spec)
            inserted[index] |= mask
            break
        else:
            raise LungTumorError(
                f"no place found for tumour {number + 1} of {count} ({location}, {diameter_mm[0]:g}-"
                f"{diameter_mm[1]:g} mm) in a lung of {lung.sum() * float(np.prod(spacing)) / 1000:.0f} ml "
                f"after {max_tries} tries; ask for smaller tumours or another location",
                source,
            )
    return specs
