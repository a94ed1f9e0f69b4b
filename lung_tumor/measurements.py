"""Lesion measurements a radiologist can check: calipers, RECIST 1.1 and the size-based T descriptor.

Every diameter is measured **edge to edge**, as calipers are placed on a screen: the caliper joins the
centres of the two farthest boundary voxels and reaches half a voxel beyond each, to the outer edges of the
end voxels along the caliper line (the voxel's extent along the line is taken on the ellipsoid inscribed in
the voxel: one pixel for square pixels, whatever the direction). So a box of n pixels measures n pixels
along an axis, a one-pixel lesion measures one pixel, and a rasterised disk of radius R measures 2R within a
pixel. (Corner-to-corner distances were not used: they overstate a round lesion by up to a pixel's diagonal.)
Millimetres come from the affine's columns, so anisotropic, flipped (LPS/RAS) and rotated voxels are measured
alike.

Coordinates are given in **LPS** millimetres, as DICOM viewers show them (x grows towards the patient's
left, y towards posterior, z towards superior; LPS = (-x, -y, z) of nibabel's RAS). Slices are numbered as a
viewer counts them here: 1-based along the axial direction from inferior to superior (slice 1 is the most
inferior slice of the volume, whatever the voxel order of the file).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

HULL_MIN_POINTS = 64  # below this, all pairwise distances are cheaper than a convex hull
PAIRWISE_BLOCK = 512  # rows of the blockwise pairwise-distance search
BOUND_SLACK_MM = 1e-6  # a slice is skipped only when its bound falls this much short (rounding of the lengths)

RECIST_MIN_DIAMETER_MM = 10.0
RECIST_MAX_TARGETS = 5
RECIST_MAX_TARGETS_PER_ORGAN = 2
LUNG_ORGAN = "lung"

# TNM 8th edition, lung: T by the greatest dimension (cm -> mm), upper bounds inclusive
T_SIZE_CUTOFFS_MM = ((10.0, "T1a"), (20.0, "T1b"), (30.0, "T1c"), (40.0, "T2a"), (50.0, "T2b"), (70.0, "T3"))
T_LARGEST = "T4"
T_NOT_ASSESSED = (
    "regional lymph nodes (N)",
    "distant metastasis (M)",
    "invasion of neighbouring structures (T3/T4 by invasion), separate nodules, atelectasis, airway involvement",
    "Tis and T1mi (need histology)",
    "invasive size by histology (pathological T)",
)
ROUNDING_MM = 1e-6  # cut-offs are compared after rounding away floating-point noise, not to whole millimetres

SMALL_DIAMETER_MM = 5.0
SMALL_VOLUME_MM3 = 65.0  # about a 5 mm sphere
VESSEL_LIKE_AXES_RATIO = 3.0


def _axis_along(affine: np.ndarray, world_axis: int) -> int:
    ornt = nib.orientations.io_orientation(np.asarray(affine, dtype=float))
    return int(np.flatnonzero(ornt[:, 0] == world_axis)[0])


def axial_axis(affine: np.ndarray) -> int:
    """The voxel axis most aligned with world z (superior-inferior)."""
    return _axis_along(affine, 2)


def left_right_axis(affine: np.ndarray) -> int:
    """The voxel axis most aligned with world x (the patient's right-left)."""
    return _axis_along(affine, 0)


def voxel_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along the three array axes (lengths of the affine's columns)."""
    return tuple(float(s) for s in np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0))


def ras_to_lps(points: np.ndarray) -> np.ndarray:
    """nibabel RAS+ mm to DICOM LPS mm (negate x and y)."""
    return np.asarray(points, dtype=float) * np.array([-1.0, -1.0, 1.0])


def slice_number(index: int, affine: np.ndarray, shape: Sequence[int]) -> int:
    """The 1-based slice number, counted from the most inferior slice, of axial array index ``index``."""
    axis = axial_axis(affine)
    return int(index) + 1 if affine[2, axis] > 0 else int(shape[axis]) - int(index)


def _hull_subset(points_mm: np.ndarray) -> np.ndarray:
    """Indices of the points on the convex hull (all of them when few); a degenerate set is joggled."""
    if len(points_mm) < HULL_MIN_POINTS:
        return np.arange(len(points_mm))
    try:
        return ConvexHull(points_mm).vertices
    except QhullError:  # coplanar or collinear points: a joggled hull keeps the extreme points
        try:
            return ConvexHull(points_mm, qhull_options="QJ").vertices
        except QhullError:
            return np.arange(len(points_mm))


def voxel_chord(direction_mm: np.ndarray, to_mm: np.ndarray) -> np.ndarray:
    """A voxel's extent along unit directions (..., D) through its centre, on the ellipsoid inscribed in the voxel.

    One pixel for square pixels whatever the direction; the spacing along an axis for anisotropic voxels.
    """
    index = np.asarray(direction_mm) @ np.linalg.inv(to_mm)  # mm direction -> index offsets
    return 1.0 / np.linalg.norm(index, axis=-1)


def caliper_diameter(centres: np.ndarray, to_mm: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """The longest edge-to-edge diameter of a set of voxels.

    The caliper joins the centres of two voxels and reaches half a voxel beyond each (:func:`voxel_chord`):
    the distance between the outer edges of the end voxels along the caliper line. It is maximised over the
    pairs of voxels whose centres lie on the convex hull of all centres; a single voxel measures its largest
    spacing.

    Args:
        centres: (N, D) index coordinates of the voxels (boundary voxels suffice).
        to_mm: (D, D) matrix mapping index offsets (row vectors) to mm: ``mm = index @ to_mm``.

    Returns:
        The diameter in mm and its two endpoints in index coordinates.
    """
    centres = np.asarray(centres, dtype=float)
    outer = centres[_hull_subset(centres @ to_mm)]
    points = outer @ to_mm
    spacing = np.linalg.norm(to_mm, axis=1)
    longest = int(np.argmax(spacing))
    best = (float(spacing[longest]), 0, 0)
    for start in range(0, len(points), PAIRWISE_BLOCK):
        offsets = points[None, :, :] - points[start : start + PAIRWISE_BLOCK, None, :]
        distance = np.linalg.norm(offsets, axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            length = distance + voxel_chord(offsets / distance[..., None], to_mm)
        length = np.where(distance > 0, length, -1.0)
        i, j = np.unravel_index(int(np.argmax(length)), length.shape)
        if length[i, j] > best[0]:
            best = (float(length[i, j]), start + int(i), int(j))
    length, i, j = best
    if i == j:  # one voxel (or all points at one place): across its longest side
        step = np.zeros(centres.shape[1])
        step[longest] = 0.5
        return length, outer[i] - step, outer[i] + step
    unit = (points[j] - points[i]) / np.linalg.norm(points[j] - points[i])
    half = 0.5 * float(voxel_chord(unit, to_mm)) * unit @ np.linalg.inv(to_mm)
    return length, outer[i] - half, outer[j] + half


def _boundary(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def _section_bounds(lesion: np.ndarray, axis: int, to_plane: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The slices along ``axis`` that hold lesion voxels, and a bound (mm) of each one's caliper diameter.

    The bound is the longest diagonal of the section's bounding box in mm, plus the longest chord of a voxel (the
    largest singular value of ``to_plane``): no two voxel centres of the section lie further apart, and
    :func:`caliper_diameter` adds at most one chord to their distance.
    """
    lesion = np.asarray(lesion, dtype=bool)
    in_plane = [a for a in range(3) if a != axis]
    extents = []
    for other in in_plane[::-1]:  # the extent along the first in-plane axis, then along the second
        seen = np.moveaxis(np.any(lesion, axis=other), axis if axis < other else axis - 1, 0)  # (slice, along)
        first = np.argmax(seen, axis=1)
        last = seen.shape[1] - 1 - np.argmax(seen[:, ::-1], axis=1)
        extents.append((last - first).astype(float))
    slices = np.flatnonzero(np.any(lesion, axis=tuple(in_plane)))
    rows, columns = extents[0][slices], extents[1][slices]
    diagonal = np.maximum(
        np.linalg.norm(np.c_[rows, columns] @ to_plane, axis=1),
        np.linalg.norm(np.c_[rows, -columns] @ to_plane, axis=1),
    )
    return slices, diagonal + float(np.linalg.svd(to_plane, compute_uv=False).max())


def axial_calipers(lesion: np.ndarray, affine: np.ndarray) -> dict[str, Any] | None:
    """Longest axial diameter (edge to edge) and the perpendicular short axis on the same slice.

    Args:
        lesion: 3D binary mask of one lesion (or a crop of it: indices are the crop's).
        affine: the image's voxel-to-world affine (only the 3x3 part is used).

    Returns:
        ``None`` for an empty mask, else ``long_mm``, ``short_mm``, ``slice`` (index along the axial axis) and
        ``ends`` (2, 3): the long axis's endpoints in the crop's index coordinates, on the slice's centre plane.
        The short axis is the caliper width of the section perpendicular to the long axis, edge to edge (the
        longest perpendicular chord for a convex section).
    """
    affine = np.asarray(affine, dtype=float)
    axis = axial_axis(affine)
    in_plane = [a for a in range(3) if a != axis]
    columns = affine[:3, in_plane]
    basis, _ = np.linalg.qr(columns)  # orthonormal basis of the slice plane: 3D mm -> 2D mm, distances kept
    to_plane = columns.T @ basis  # (2, 2): in-plane index offsets -> in-plane mm
    slices, bound = _section_bounds(lesion, axis, to_plane)
    best = None
    # the slices most likely to hold the longest diameter first; a slice whose bound falls short of the longest
    # found cannot hold it, nor tie with it; of equal lengths the first slice wins, as in a loop over all slices
    for position in np.argsort(-bound, kind="stable"):
        if best is not None and bound[position] < best[0] - BOUND_SLACK_MM:
            break
        k = int(slices[position])
        section = np.take(lesion, k, axis=axis).astype(bool)
        points = np.argwhere(_boundary(section)).astype(float)
        length, a, b = caliper_diameter(points, to_plane)
        if best is None or length > best[0] or (length == best[0] and k < best[1]):
            best = (length, k, a, b, points)
    if best is None:
        return None
    length, k, a, b, points = best
    ends = np.zeros((2, 3))
    ends[:, axis] = k
    ends[:, in_plane] = np.stack([a, b])
    along = (b - a) @ to_plane
    across = np.array([-along[1], along[0]]) / max(float(np.linalg.norm(along)), 1e-12)
    projected = points @ to_plane @ across
    short = float(projected.max() - projected.min() + voxel_chord(across, to_plane))
    return {"long_mm": length, "short_mm": short, "slice": k, "ends": ends}


def greatest_diameter(lesion: np.ndarray, affine: np.ndarray) -> tuple[float, np.ndarray]:
    """The greatest 3D diameter (edge to edge) in mm and its two endpoints (2, 3) in the crop's index coordinates."""
    points = np.argwhere(_boundary(np.asarray(lesion, dtype=bool))).astype(float)
    if not len(points):
        return 0.0, np.zeros((2, 3))
    length, a, b = caliper_diameter(points, np.asarray(affine, dtype=float)[:3, :3].T)
    return length, np.stack([a, b])


def craniocaudal_extent(voxels: np.ndarray, affine: np.ndarray) -> float:
    """Superior-inferior extent in mm, edge to edge: the span of the voxel centres' world z plus one voxel along z.

    For an axial scan this is (last slice position - first slice position) + slice spacing.
    """
    linear = np.asarray(affine, dtype=float)[:3, :3]
    z = np.asarray(voxels, dtype=float) @ linear[2]
    return float(z.max() - z.min() + voxel_chord(np.array([0.0, 0.0, 1.0]), linear.T))


def principal_axes_ratio(voxels: np.ndarray, affine: np.ndarray) -> float:
    """sqrt(largest / second largest eigenvalue) of the lesion's second moments in mm (voxels as uniform boxes)."""
    linear = np.asarray(affine, dtype=float)[:3, :3]
    points = np.asarray(voxels, dtype=float) @ linear.T
    covariance = np.cov(points.T, bias=True) if len(points) > 1 else np.zeros((3, 3))
    covariance = covariance + linear @ linear.T / 12.0  # a voxel's own spread, so one voxel is not a line
    eigen = np.sort(np.linalg.eigvalsh(covariance))[::-1]
    return float(np.sqrt(eigen[0] / eigen[1]))


def lesion_measurements(
    lesion: np.ndarray, offset: Sequence[int], affine: np.ndarray, shape: Sequence[int]
) -> dict[str, Any]:
    """Every caliper measurement of one lesion, for the report.

    Args:
        lesion: binary mask of one lesion inside a crop of the image.
        offset: the crop's first voxel index in the image.
        affine: the image's voxel-to-world (RAS+) affine.
        shape: the image's shape (for slice numbers).

    Returns:
        ``longest_axial_diameter_mm``, ``longest_axial_diameter_slice`` (array index) and
        ``longest_axial_diameter_slice_number`` (viewer), ``longest_axial_diameter_endpoints_lps_mm``,
        ``short_axis_diameter_mm``, ``greatest_3d_diameter_mm`` and its ``..._endpoints_lps_mm``,
        ``craniocaudal_extent_mm``, ``axial_slice_range`` (array indices), ``axial_slice_numbers`` (first and
        last, viewer), ``principal_axes_ratio``.
    """
    affine = np.asarray(affine, dtype=float)
    offset = np.asarray(offset, dtype=float)
    axis = axial_axis(affine)

    def lps(index_points: np.ndarray) -> list[list[float]]:
        world = (index_points + offset) @ affine[:3, :3].T + affine[:3, 3]
        return [[round(float(c), 3) for c in point] for point in ras_to_lps(world)]

    voxels = np.argwhere(lesion)
    calipers = axial_calipers(lesion, affine)
    greatest, greatest_ends = greatest_diameter(lesion, affine)
    slices = np.unique(voxels[:, axis]) + int(offset[axis])
    numbers = sorted(slice_number(k, affine, shape) for k in (slices.min(), slices.max()))
    long_slice = calipers["slice"] + int(offset[axis])
    return {
        "longest_axial_diameter_mm": calipers["long_mm"],
        "longest_axial_diameter_slice": long_slice,
        "longest_axial_diameter_slice_number": slice_number(long_slice, affine, shape),
        "longest_axial_diameter_endpoints_lps_mm": lps(calipers["ends"]),
        "short_axis_diameter_mm": calipers["short_mm"],
        "greatest_3d_diameter_mm": greatest,
        "greatest_3d_diameter_endpoints_lps_mm": lps(greatest_ends),
        "craniocaudal_extent_mm": craniocaudal_extent(voxels, affine),
        "axial_slice_range": [int(slices.min()), int(slices.max())],
        "axial_slice_numbers": numbers,
        "principal_axes_ratio": principal_axes_ratio(voxels, affine),
    }


def reliability_flags(volume_mm3: float, longest_axial_mm: float, axes_ratio: float) -> dict[str, bool]:
    """``small``: longest axial diameter < 5 mm or volume < 65 mm3; ``vessel_like``: principal-axes ratio > 3."""
    return {
        "small": bool(longest_axial_mm < SMALL_DIAMETER_MM or volume_mm3 < SMALL_VOLUME_MM3),
        "vessel_like": bool(axes_ratio > VESSEL_LIKE_AXES_RATIO),
    }


def is_measurable(longest_axial_mm: float, slice_thickness_mm: float) -> bool:
    """RECIST 1.1: longest diameter >= 10 mm and >= twice the slice thickness."""
    limit = max(RECIST_MIN_DIAMETER_MM, 2.0 * slice_thickness_mm)
    return bool(round(longest_axial_mm, 6) >= round(limit, 6))


def select_targets(diameters_mm: Sequence[float], measurable: Sequence[bool], organs: Sequence[str]) -> list[int]:
    """RECIST 1.1 target lesions: the largest measurable ones, at most 5 in all and 2 per organ.

    Returns:
        Indices into the inputs, largest diameter first (ties: the earlier index first).
    """
    order = sorted(range(len(diameters_mm)), key=lambda i: (-diameters_mm[i], i))
    targets: list[int] = []
    per_organ: dict[str, int] = {}
    for i in order:
        if not measurable[i] or per_organ.get(organs[i], 0) >= RECIST_MAX_TARGETS_PER_ORGAN:
            continue
        targets.append(i)
        per_organ[organs[i]] = per_organ.get(organs[i], 0) + 1
        if len(targets) == RECIST_MAX_TARGETS:
            break
    return targets


def recist_assessment(lesions: list[dict[str, Any]], slice_thickness_mm: float) -> dict[str, Any]:
    """Mark each lesion measurable or not, target or non-target (in place) and sum the targets' diameters.

    Each lesion needs ``lesion`` (its number), ``longest_axial_diameter_mm`` and ``organ``.
    """
    diameters = [lesion["longest_axial_diameter_mm"] for lesion in lesions]
    measurable = [is_measurable(d, slice_thickness_mm) for d in diameters]
    targets = select_targets(diameters, measurable, [lesion["organ"] for lesion in lesions])
    for i, lesion in enumerate(lesions):
        lesion["recist_measurable"] = measurable[i]
        lesion["recist_role"] = "target" if i in targets else "non-target"
    return {
        "slice_thickness_mm": float(slice_thickness_mm),
        "min_measurable_diameter_mm": max(RECIST_MIN_DIAMETER_MM, 2.0 * float(slice_thickness_mm)),
        "target_lesions": [lesions[i]["lesion"] for i in targets],
        "non_target_lesions": [lesion["lesion"] for i, lesion in enumerate(lesions) if i not in targets],
        "sum_of_diameters_mm": float(sum(diameters[i] for i in targets)),
    }


def t_category(size_mm: float) -> str:
    """TNM 8th edition T descriptor by size alone (T1a <= 10 mm < T1b <= 20 ... T3 <= 70 mm < T4)."""
    size = round(float(size_mm), 6)
    for upper, category in T_SIZE_CUTOFFS_MM:
        if size <= upper:
            return category
    return T_LARGEST


def size_t_descriptor(lesions: list[dict[str, Any]]) -> dict[str, Any]:
    """The size-based T descriptor of the largest lesion (by longest axial diameter).

    A part-solid lesion is sized by its solid part (needs the CT); a ground-glass lesion is not sized (its
    T, Tis or T1mi, needs histology).
    """
    result: dict[str, Any] = {
        "label": "size criterion only",
        "category": None,
        "lesion": None,
        "size_mm": None,
        "size_basis": None,
        "not_assessed": list(T_NOT_ASSESSED),
        "note": None,
    }
    if not lesions:
        result["note"] = "no lesion"
        return result
    largest = max(lesions, key=lambda lesion: (lesion["longest_axial_diameter_mm"], -lesion["lesion"]))
    result["lesion"] = largest["lesion"]
    kind = (largest.get("attenuation") or {}).get("kind")
    if kind == "lung-like":
        result["size_basis"] = "none: the lesion is mostly aerated lung (below -800 HU)"
        result["note"] = "mostly aerated lung: not a measurable tumour; the size criterion is not applied"
        return result
    if kind == "ground-glass":
        result["size_basis"] = "none: pure ground-glass lesion"
        result["note"] = "pure ground-glass: Tis or T1mi by histology; the size criterion is not applied"
        return result
    if kind == "part-solid":
        size, basis = largest["attenuation"]["solid_longest_axial_diameter_mm"], "solid part, longest axial diameter"
    else:
        size, basis = largest["longest_axial_diameter_mm"], "whole lesion, longest axial diameter"
        if kind is None:
            result["note"] = "attenuation unknown (no CT): a part-solid lesion would be sized by its solid part"
    result.update(category=t_category(size), size_mm=float(size), size_basis=basis)
    return result
