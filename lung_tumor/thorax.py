"""Lung masks from Hounsfield units, found once per scan on a coarse grid and refined where they are used.

The lungs are the air-like voxels (< -400 HU) inside the torso, the two largest 3D components, holes
(vessels, nodules) filled in each axial slice. The torso of a slice is the convex hull of its largest
soft-tissue component (> -500 HU), so the air around the patient, the scanner's padding outside the scan
circle (-1024, -2048, -3024; a padding that would pass for tissue, such as 0 HU, is recognised in the corners
of the slices and is no body either) and the table underneath are left out, while the lungs of a crop that run off
the image are kept where the torso still reaches round them (a crop cut on one or two sides; one that cuts
the walls away all round loses them, as the slice-by-slice mask did).

That search runs once, on every ``f``-th pixel in each direction with ``f`` the largest integer that
keeps the coarse voxel at most :data:`COARSE_MM` (a 512x512x300 scan of 0.96 x 0.96 x 1.06 mm pixels
becomes 171x171x150 voxels): a 3D labelling of the whole grid instead of a loop over slices, the hull of
each slice as a polygon of :data:`HULL_DIRECTIONS` sides computed for all slices at once. Where the
masks are used (around a lesion), :meth:`ThoraxMasks.lungs` refines them at full resolution: the air
voxels within one coarse voxel of the coarse lungs, holes filled per slice, so the lung's edge is the
-400 HU edge of the CT as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from lung_tumor.cores import executor, thread_count
from lung_tumor.evaluation.lesions import label_lesions
from lung_tumor.report import (
    AIR_MAX_HU,
    axial_axis,
    body_mask,
    hu_below,
    mask_bounding_box,
    tissue_like_padding,
    voxel_spacing,
)

COARSE_MM = 3.0  # the coarse grid's voxel is at most this along each axis (no coarser than the scan)
HULL_DIRECTIONS = 32  # sides of the polygon around each slice's torso (at most 0.5% wider than its hull)

_IN_PLANE_CROSS = np.zeros((3, 3, 3), dtype=bool)  # 4-connected within an axial slice (axial axis last)
_IN_PLANE_CROSS[:, 1, 1] = _IN_PLANE_CROSS[1, :, 1] = True


def coarse_factors(spacing: tuple[float, ...]) -> tuple[int, ...]:
    """The sampling step along each axis: the largest integer keeping a coarse voxel at most :data:`COARSE_MM`."""
    return tuple(max(1, int(COARSE_MM // s)) for s in spacing)


def _sample(image: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """Every ``f``-th voxel, from the middle of each block of ``f`` (a last block too short repeats the one before)."""
    offsets = [min(f // 2, n - 1) for f, n in zip(factors, image.shape, strict=True)]
    view = image[tuple(slice(o, None, f) for o, f in zip(offsets, factors, strict=True))]
    short = [(0, -(-n // f) - m) for n, f, m in zip(image.shape, factors, view.shape, strict=True)]
    return np.pad(view, short, mode="edge") if any(s for _, s in short) else np.array(view)


def sample_nonzero(mask: np.ndarray, factors: tuple[int, ...], box: tuple[slice, ...] | None = None) -> np.ndarray:
    """``_sample(mask, factors) != 0``, reading only the voxels in ``box`` (where all non-zero voxels lie, if given)."""
    if box is None:
        return _sample(np.asarray(mask), factors) != 0
    index = []
    for f, n in zip(factors, mask.shape, strict=True):
        offset = min(f // 2, n - 1)
        last = offset + (len(range(offset, n, f)) - 1) * f  # a last block too short repeats the one before
        index.append(np.minimum(offset + f * np.arange(-(-n // f)), last))
    out = np.zeros([len(i) for i in index], dtype=bool)
    inside = [np.flatnonzero((i >= s.start) & (i < s.stop)) for i, s in zip(index, box, strict=True)]
    out[np.ix_(*inside)] = np.asarray(mask)[np.ix_(*(i[k] for i, k in zip(index, inside, strict=True)))] != 0
    return out


def upsample(coarse: np.ndarray, index: list[np.ndarray]) -> np.ndarray:
    """``coarse[np.ix_(*index)]`` for non-decreasing indices (a coarse grid onto a box of the full one), as runs.

    Each axis in turn takes every coarse voxel once and repeats it as often as it occurs: a copy per axis, several
    times cheaper than gathering each voxel through the three index arrays.
    """
    out = coarse
    for axis, along in enumerate(index):
        values, counts = np.unique(along, return_counts=True)
        out = np.repeat(np.take(out, values, axis=axis), counts, axis=axis)
    return out


def _largest_per_slice(tissue: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of each axial slice (axial axis last), all slices at once.

    The slices are labelled axial axis first, so the labels count up slice after slice (each slice's
    components numbered in the same order as before within it): a label's slice follows from each slice's
    highest label, with no search of the label map.
    """
    by_slice = np.ascontiguousarray(np.moveaxis(tissue, -1, 0))
    # intp labels, the index type of bincount and take (no converted copy of the label map); sizes counted on the
    # labelled voxels only
    labels, count = ndimage.label(by_slice, structure=np.moveaxis(_IN_PLANE_CROSS, -1, 0), output=np.intp)
    if not count:
        return np.zeros_like(tissue)
    sizes = np.bincount(labels[by_slice], minlength=count + 1)[1:]
    highest = np.maximum.accumulate(labels.reshape(len(labels), -1).max(axis=1))
    slices = np.searchsorted(highest, np.arange(1, count + 1))
    order = np.lexsort((sizes, slices))  # by slice, then by size: the last of each slice is its largest
    last = order[np.r_[slices[order][1:] != slices[order][:-1], True]]
    keep = np.zeros(count + 1, dtype=bool)
    keep[last + 1] = True
    return np.moveaxis(keep[labels], 0, -1)


def _inside_hulls(torso: np.ndarray) -> np.ndarray:
    """Pixels inside a polygon around each axial slice's ``torso`` (axial axis last), all slices at once.

    The polygon is the intersection of :data:`HULL_DIRECTIONS` half-planes, each through the torso pixel
    furthest along its direction: it holds the convex hull of the torso and barely more. Only the two ends
    of each row of the torso can be furthest, so the polygon costs a few passes over rows, not pixels.
    """
    nx, ny, _ = torso.shape
    rows = torso.any(axis=1)  # (X, Z)
    first = np.argmax(torso, axis=1).astype(float)
    last = ny - 1 - np.argmax(torso[:, ::-1], axis=1).astype(float)
    angles = 2 * math.pi * np.arange(HULL_DIRECTIONS) / HULL_DIRECTIONS
    cos, sin = np.cos(angles)[:, None, None], np.sin(angles)[:, None, None]
    x = np.arange(nx, dtype=float)[None, :, None]
    reach = np.maximum(x * cos + first * sin, x * cos + last * sin)  # (K, X, Z)
    reach = np.where(rows, reach, -np.inf).max(axis=1, keepdims=True)  # (K, 1, Z): the torso's extent
    tol = 1e-6
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = (reach - x * cos) / sin  # (K, X, Z): where each side crosses the row
    along = np.abs(sin) > tol
    upper = np.where(along & (sin > 0), bound, np.inf).min(axis=0)
    lower = np.where(along & (sin < 0), bound, -np.inf).max(axis=0)
    row_ok = np.all(along | (x * cos <= reach + tol), axis=0)
    upper = np.where(row_ok, upper + tol, -np.inf)
    y = np.arange(ny, dtype=float)[None, :, None]
    return (y >= lower[:, None, :] - tol) & (y <= upper[:, None, :])


def fill_holes_in_plane(mask: np.ndarray, axis: int, border: np.ndarray | None = None) -> np.ndarray:
    """Fill the holes of each slice along ``axis``, all slices at once; ``border`` (the mask's shape) walls off edges.

    A hole is background not 4-connected to the slice's edge. Without ``border`` this is
    ``ndimage.binary_fill_holes`` of each slice alone; with it, the edge pixels where ``border`` is True enclose
    (a crop whose edge cuts through the lungs). ``mask`` is boolean.
    """
    moved = np.moveaxis(mask, axis, -1)
    edge = np.zeros_like(moved) if border is None else np.moveaxis(border, axis, -1)
    padded = np.pad(edge, ((1, 1), (1, 1), (0, 0)), mode="edge")
    padded[1:-1, 1:-1] = moved
    labels, count = ndimage.label(~padded, structure=_IN_PLANE_CROSS)
    outside = np.zeros(count + 1, dtype=bool)
    for face in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
        outside[face] = True
    outside[0] = False
    filled = ~outside[labels[1:-1, 1:-1]]
    return np.moveaxis(filled, -1, axis)


def _two_largest(mask: np.ndarray) -> np.ndarray:
    """The two largest 26-connected components of a mask."""
    labels, count = label_lesions(mask)
    if count <= 2:
        return mask.astype(bool)
    sizes = np.bincount(labels[mask != 0], minlength=count + 1)[1:]  # the labelled voxels only
    keep = np.zeros(count + 1, dtype=bool)
    keep[np.argsort(sizes)[::-1][:2] + 1] = True
    return keep[labels]


@dataclass
class ThoraxMasks:
    """The lungs of one CT, found once on a coarse grid (:func:`thorax_masks`), refined box by box.

    Attributes:
        image_hu: the CT in Hounsfield units (kept by reference, for the refinement).
        axial_axis: the voxel axis most aligned with world z.
        factors: the coarse grid's step along each voxel axis.
        coarse_lungs: the lungs on the coarse grid (holes filled), the CT's axis order.
        coarse_body: the coarse voxels above -500 HU (soft tissue and bone), the CT's axis order, when known
            (:mod:`lung_tumor.location` labels the tissue around the lungs on them).
        padding: the scan's :func:`~lung_tumor.report.tissue_like_padding` (None without one): not body.
    """

    image_hu: np.ndarray
    axial_axis: int
    factors: tuple[int, int, int]
    coarse_lungs: np.ndarray
    coarse_body: np.ndarray | None = None
    padding: Any = None

    def _coarse(self, box: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray]:
        """The coarse lungs, and them grown by one coarse voxel, on the full-resolution voxels of ``box``."""
        index = [
            np.minimum(np.arange(s.start, s.stop) // f, n - 1)
            for s, f, n in zip(box, self.factors, self.coarse_lungs.shape, strict=True)
        ]
        # grow only the coarse voxels around the box: one more on each side gives the whole grid's answer
        low = [max(int(i[0]) - 1, 0) for i in index]
        crop = self.coarse_lungs[tuple(slice(lo, int(i[-1]) + 2) for lo, i in zip(low, index, strict=True))]
        grown = ndimage.maximum_filter(crop.view(np.uint8), size=3).view(bool)
        local = [i - lo for i, lo in zip(index, low, strict=True)]
        return upsample(crop, local), upsample(grown, local)

    def _box(self, box: tuple[slice, ...] | None) -> tuple[slice, ...]:
        shape = np.shape(self.image_hu)
        if box is None:
            return tuple(slice(0, n) for n in shape)
        return tuple(slice(*s.indices(n)[:2]) for s, n in zip(box, shape, strict=True))

    def any_lungs(self, box: tuple[slice, ...] | None = None) -> bool:
        """Whether the coarse lungs reach into ``box`` (full-resolution voxel slices; default the whole CT)."""
        box = self._box(box)
        coarse = tuple(
            slice(s.start // f, max(-(-s.stop // f), s.start // f + 1)) for s, f in zip(box, self.factors, strict=True)
        )
        return bool(self.coarse_lungs[coarse].any())

    def lungs(self, box: tuple[slice, ...] | None = None) -> np.ndarray:
        """The lung mask at full resolution on the voxels of ``box`` (default the whole CT).

        The air-like voxels (< -400 HU) of the box within one coarse voxel of the coarse lungs, holes filled
        in each axial slice; where the box's edge cuts through the coarse lungs it encloses as lung does.
        """
        box = self._box(box)
        if any(s.stop <= s.start for s in box):
            return np.zeros([max(s.stop - s.start, 0) for s in box], dtype=bool)
        coarse, region = self._coarse(box)
        candidate = hu_below(np.asarray(self.image_hu[box]), AIR_MAX_HU) & region
        return fill_holes_in_plane(candidate, self.axial_axis, border=coarse)


def _body_and_air(coarse: np.ndarray, padding: Any) -> tuple[np.ndarray, np.ndarray]:
    """The body (:func:`~lung_tumor.report.body_mask`) and the air-like voxels inside each slice's torso hull of a
    slab of axial slices."""
    body = body_mask(coarse, padding)
    return body, hu_below(coarse, AIR_MAX_HU) & _inside_hulls(_largest_per_slice(body))


def thorax_masks(image_hu: np.ndarray, affine: np.ndarray, workers: int | None = None) -> ThoraxMasks:
    """Find the lungs of a CT on its coarse grid (see the module docstring); the result may be empty.

    Args:
        image_hu: (X, Y, Z) CT in Hounsfield units, any dtype and memory order.
        affine: its 4x4 voxel-to-world affine (the axial axis and the voxel size come from it).
        workers: threads sharing the slices (default: the cores this process may use); the masks are the same.

    Returns:
        The masks, to be asked for lungs at full resolution box by box (:meth:`ThoraxMasks.lungs`).
    """
    affine = np.asarray(affine, dtype=float)
    axis = axial_axis(affine)
    factors = coarse_factors(voxel_spacing(affine))
    coarse = np.ascontiguousarray(np.moveaxis(_sample(np.asarray(image_hu), factors), axis, -1))
    padding = tissue_like_padding(image_hu, axis)  # a padding ring of 0 HU would pass for the torso
    # each axial slice alone: the slices are shared out among the cores, in slabs
    slabs = np.array_split(np.arange(coarse.shape[-1]), min(thread_count(workers), coarse.shape[-1]))
    with executor(len(slabs)) as pool:
        jobs = [pool.submit(_body_and_air, coarse[..., slab[0] : slab[-1] + 1], padding) for slab in slabs]
        found = [job.result() for job in jobs]
    body = np.concatenate([b for b, _ in found], axis=-1)
    inside_air = np.concatenate([a for _, a in found], axis=-1)
    lungs = np.zeros(inside_air.shape, dtype=bool)
    box = mask_bounding_box(inside_air)  # nothing outside it: the same components and holes inside it
    if box is not None:
        lungs[box] = fill_holes_in_plane(_two_largest(inside_air[box]), -1)
    return ThoraxMasks(
        image_hu=image_hu,
        axial_axis=axis,
        factors=factors,
        coarse_lungs=np.moveaxis(lungs, -1, axis),
        coarse_body=np.moveaxis(body, -1, axis),
        padding=padding,
    )
