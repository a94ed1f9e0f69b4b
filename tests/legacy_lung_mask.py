"""The report's body midline and slice-by-slice lung mask before :mod:`lung_tumor.thorax` (commit 93c446a).

Kept verbatim as the reference that the coarse-grid masks are measured against; it takes seconds on a
whole CT, so only tests call it. :class:`LegacyThorax` puts the old lungs behind the interface of
:class:`lung_tumor.thorax.ThoraxMasks`, so ``tumour_report`` and ``keep_near_lungs`` can run on either.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from lung_tumor.evaluation.lesions import label_lesions
from lung_tumor.report import AIR_MAX_HU, BODY_MIN_HU, axial_axis, mask_bounding_box


def body_midline_x(affine: np.ndarray, shape: tuple[int, ...], image_hu: np.ndarray | None) -> tuple[float, str]:
    """World x (mm) of the patient's midline and how it was found.

    The x-centre of mass of the body (voxels above -500 HU) when the CT is given, else the image centre.
    """
    affine = np.asarray(affine, dtype=float)
    centre = (np.asarray(shape[:3], dtype=float) - 1) / 2
    method = "image centre (no CT given)"
    if image_hu is not None:
        body = np.asarray(image_hu) > BODY_MIN_HU
        if body.any():
            centre = np.array(
                [
                    np.average(np.arange(n), weights=body.sum(axis=tuple(a for a in range(3) if a != i)))
                    for i, n in enumerate(body.shape)
                ]
            )
            method = f"x-centre of mass of the body (voxels > {BODY_MIN_HU:g} HU)"
        else:
            method = "image centre (no body voxel above -500 HU)"
    return float(affine[0, :3] @ centre + affine[0, 3]), method


def _convex_polygon_mask(facets: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels inside a 2D convex hull given by ``ConvexHull.equations`` (a x + b y + c <= 0), row by row."""
    rows = np.arange(shape[0], dtype=float)[:, None]
    a, b, c = facets[:, 0], facets[:, 1], facets[:, 2]
    tol = 1e-9
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = (-c - a * rows) / b  # (rows, facets): the column where each facet's line crosses the row
    upper = np.where(b > tol, bound, np.inf).min(axis=1)
    lower = np.where(b < -tol, bound, -np.inf).max(axis=1)
    row_ok = np.all(np.where(np.abs(b) <= tol, a * rows + c <= tol, True), axis=1)
    columns = np.arange(shape[1], dtype=float)[None, :]
    return row_ok[:, None] & (columns >= lower[:, None] - tol) & (columns <= upper[:, None] + tol)


def _air_inside_torso(section_hu: np.ndarray) -> np.ndarray:
    """Air-like pixels of one axial slice inside the convex hull of its largest soft-tissue component.

    The hull, rather than "air not connected to the image border", keeps the lungs of a tight crop whose
    lungs touch the border, and still excludes the air around the patient and the scanner's padding.
    """
    inside = np.zeros(section_hu.shape, dtype=bool)
    air = section_hu < AIR_MAX_HU
    labels, count = ndimage.label(section_hu > BODY_MIN_HU)
    if not count or not air.any():
        return inside
    torso = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    outline = np.argwhere(torso & ~ndimage.binary_erosion(torso))
    try:
        facets = ConvexHull(outline).equations
    except (QhullError, ValueError):  # fewer than 3 points or all on a line: no enclosed air
        return inside
    return air & _convex_polygon_mask(facets, section_hu.shape)


def lung_mask(image_hu: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """A rough lung mask from Hounsfield units (see :data:`CONVENTIONS` ``contacts``); may be empty."""
    axis = axial_axis(affine)
    hu = np.moveaxis(np.asarray(image_hu), axis, -1)
    inside_air = np.stack([_air_inside_torso(hu[..., k]) for k in range(hu.shape[-1])], axis=-1)
    labels, count = label_lesions(inside_air)
    lungs = np.zeros_like(inside_air)
    if count:
        sizes = np.bincount(labels.ravel())[1:]
        lungs = np.isin(labels, np.argsort(sizes)[::-1][:2] + 1)
        for k in range(lungs.shape[-1]):
            lungs[..., k] = ndimage.binary_fill_holes(lungs[..., k])
    return np.moveaxis(lungs, -1, axis)


def lung_mask_near(mask: np.ndarray, image_hu: np.ndarray, affine: np.ndarray, margin: int) -> np.ndarray:
    """:func:`lung_mask` on the axial slices of the mask's lesions (and ``margin`` more), empty elsewhere.

    The lungs are found slice by slice, so the slab gives the same lungs there as the whole CT would,
    up to the choice of the two largest components, at a fraction of the time.
    """
    lungs = np.zeros(mask.shape, dtype=bool)
    box = mask_bounding_box(mask, margin)
    if box is not None:
        axis = axial_axis(affine)
        slab = tuple(box[a] if a == axis else slice(None) for a in range(3))
        lungs[slab] = lung_mask(np.asarray(image_hu)[slab], affine)
    return lungs


class LegacyThorax:
    """The old lungs (a full-size array, e.g. :func:`lung_mask_near`) with the methods of ``ThoraxMasks``."""

    def __init__(self, lungs: np.ndarray) -> None:
        self.full = lungs

    def lungs(self, box: tuple[slice, ...] | None = None) -> np.ndarray:
        return self.full if box is None else self.full[box]

    def any_lungs(self, box: tuple[slice, ...] | None = None) -> bool:
        return bool(self.lungs(box).any())
