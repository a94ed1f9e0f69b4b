"""The tumour spread report: volume, lesions, RECIST-style diameters, position and contacts.

Geometry comes from the affine alone, so any voxel order works (RAS, LPS, oblique, anisotropic voxels):
the axial axis is the voxel axis most aligned with world z, the left-right axis the one most aligned with
world x (``nibabel.orientations.io_orientation``). World coordinates are nibabel's RAS+ millimetres:
**+x points to the patient's right** (x = -x of DICOM's LPS), +y anterior, +z superior.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist

from lung_tumor.evaluation.lesions import LESION_CONNECTIVITY, label_lesions
from lung_tumor.io import write_atomic

if TYPE_CHECKING:
    from lung_tumor.location import LungAnatomy
    from lung_tumor.thorax import ThoraxMasks

BODY_MIN_HU = -500.0  # soft tissue and bone are above, air and lung parenchyma below
AIR_MAX_HU = -400.0  # "air-like" for the lung mask (lung parenchyma is about -900..-500)
CONTACT_DILATION_VOXELS = 2
MIN_CONTACT_VOXELS = 3
HULL_MIN_POINTS = 64  # below this, all pairwise distances are cheaper than a convex hull

CONVENTIONS = {
    "world_coordinates": "nibabel RAS+ mm: +x patient's right, +y anterior, +z superior",
    "axial_axis": "the voxel axis most aligned with world z (nibabel io_orientation)",
    "lesions": f"{LESION_CONNECTIVITY}-connected components of the mask, numbered by decreasing volume",
    "voxel_volume": "abs(det(affine[:3, :3])) mm3",
    "longest_axial_diameter_mm": "RECIST-style: the largest distance between boundary-pixel centres of the lesion "
    "within one axial slice (in-plane affine columns, so anisotropic or rotated pixels are measured in mm), "
    "maximised over the lesion's slices; centre to centre, so a one-pixel lesion measures 0 mm",
    "equivalent_diameter_mm": "diameter of the sphere of the lesion's volume",
    "craniocaudal_extent_mm": "number of axial slices the lesion spans times the slice spacing",
    "side": "patient's right when the lesion centroid's world x is greater than the midline x, else left; the "
    "midline is the x-centre of mass of the body (voxels > -500 HU) when the CT is given, else the image centre",
    "contacts": "HU heuristic, needs the CT: lung = air-like voxels (< -400 HU) inside the body (per axial slice, "
    "inside the convex hull of the largest soft-tissue component > -500 HU), the two largest 3D components, "
    "holes filled per slice (vessels and nodules inside the lung count as lung); found once on a grid of every "
    "f-th voxel (coarse voxel at most 3 mm) and refined around each lesion at full resolution: the air-like "
    "voxels within one coarse voxel of the coarse lungs, holes filled per slice. The lesion is dilated by 2 "
    "voxels; if at least 3 dilated voxels are non-lung tissue (> -500 HU), it touches the mediastinum where that "
    "tissue lies between the lungs (along the patient's left-right line, the nearest lung voxels on either side "
    "lie on opposite sides of the midline), otherwise the chest wall (lateral, anterior or posterior wall, diaphragm)",
}


def axial_axis(affine: np.ndarray) -> int:
    """The voxel axis most aligned with world z (superior-inferior)."""
    return _axis_along(affine, 2)


def left_right_axis(affine: np.ndarray) -> int:
    """The voxel axis most aligned with world x (the patient's right-left)."""
    return _axis_along(affine, 0)


def _axis_along(affine: np.ndarray, world_axis: int) -> int:
    ornt = nib.orientations.io_orientation(np.asarray(affine, dtype=float))
    return int(np.flatnonzero(ornt[:, 0] == world_axis)[0])


def voxel_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along the three array axes (lengths of the affine's columns)."""
    return tuple(float(s) for s in np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0))


def _longest_in_plane_distance(points_mm: np.ndarray) -> float:
    """Largest pairwise distance of 2D points (the convex hull's vertices suffice when there are many)."""
    if len(points_mm) < 2:
        return 0.0
    if len(points_mm) >= HULL_MIN_POINTS:
        try:
            points_mm = points_mm[ConvexHull(points_mm).vertices]
        except QhullError:  # collinear points: the brute force below is exact
            pass
    return float(pdist(points_mm).max())


def longest_axial_diameter(lesion: np.ndarray, affine: np.ndarray) -> tuple[float, int | None]:
    """RECIST-style longest in-plane diameter of one lesion, in mm, and the axial slice where it lies.

    Args:
        lesion: (X, Y, Z) binary mask of one lesion (or a crop of it; only the affine's 3x3 part is used).
        affine: the image's voxel-to-world affine.

    Returns:
        The diameter in mm and the slice index along :func:`axial_axis` (``None`` for an empty mask).
    """
    axis = axial_axis(affine)
    in_plane = [a for a in range(3) if a != axis]
    columns = np.asarray(affine, dtype=float)[:3, in_plane]
    basis, _ = np.linalg.qr(columns)  # orthonormal basis of the slice plane: 3D mm -> 2D mm, distances kept
    to_plane = columns.T @ basis  # (2, 2): pixel index offsets -> in-plane mm
    best, best_slice = 0.0, None
    for k in np.flatnonzero(np.any(lesion, axis=tuple(in_plane))):
        section = np.take(lesion, k, axis=axis).astype(bool)
        boundary = section & ~ndimage.binary_erosion(section)
        diameter = _longest_in_plane_distance(np.argwhere(boundary).astype(float) @ to_plane)
        if best_slice is None or diameter > best:
            best, best_slice = diameter, int(k)
    return best, best_slice


def _body_counts(image_hu: np.ndarray, axes: list[int]) -> dict[int, np.ndarray]:
    """Body voxels (> -500 HU) per index along each of ``axes``, read in chunks along the slowest axis."""
    hu = np.asarray(image_hu)
    slow = hu.ndim - 1 if hu.flags.f_contiguous and not hu.flags.c_contiguous else 0
    step = max(1, (1 << 22) // max(1, hu.size // max(hu.shape[slow], 1)))  # about 4 M voxels a chunk
    counts = {i: np.zeros(hu.shape[i], dtype=np.int64) for i in axes}
    for start in range(0, hu.shape[slow], step):
        chunk = slice(start, start + step)
        body = hu[(slice(None),) * slow + (chunk,)] > BODY_MIN_HU
        for i in axes:
            summed = body.sum(axis=tuple(a for a in range(hu.ndim) if a != i))
            if i == slow:
                counts[i][chunk] = summed
            else:
                counts[i] += summed
    return counts


def body_midline_x(affine: np.ndarray, shape: tuple[int, ...], image_hu: np.ndarray | None) -> tuple[float, str]:
    """World x (mm) of the patient's midline and how it was found.

    The x-centre of mass of the body (voxels above -500 HU) when the CT is given, else the image centre.
    Only the voxel axes that move along world x are counted (one for an axis-aligned scan).
    """
    affine = np.asarray(affine, dtype=float)
    centre = (np.asarray(shape[:3], dtype=float) - 1) / 2
    method = "image centre (no CT given)"
    if image_hu is not None:
        axes = [int(i) for i in np.flatnonzero(affine[0, :3])]
        counts = _body_counts(image_hu, axes)
        if counts[axes[0]].any():
            for i in axes:
                centre[i] = np.average(np.arange(shape[i]), weights=counts[i])
            method = f"x-centre of mass of the body (voxels > {BODY_MIN_HU:g} HU)"
        else:
            method = "image centre (no body voxel above -500 HU)"
    return float(affine[0, :3] @ centre + affine[0, 3]), method


def lung_mask(image_hu: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The lung mask of a whole CT at full resolution (see :mod:`lung_tumor.thorax`); may be empty."""
    from lung_tumor.thorax import thorax_masks

    return thorax_masks(image_hu, affine).lungs()


def mask_bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """The smallest box holding every non-zero voxel, grown by ``margin`` voxels; None for an empty mask.

    One pass over the whole mask finds the first axis's range; the others are searched inside it.
    """
    box, inside = [], mask
    for axis in range(mask.ndim):
        hits = np.flatnonzero(np.any(inside, axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if not hits.size:
            return None
        low, high = int(hits[0]), int(hits[-1]) + 1
        inside = inside[(slice(None),) * axis + (slice(low, high),)]
        box.append(slice(max(low - margin, 0), min(high + margin, mask.shape[axis])))
    return tuple(box)


def label_in_bounding_box(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """:func:`label_lesions` computed only inside the mask's bounding box (a whole CT takes seconds)."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    box = mask_bounding_box(mask)
    if box is None:
        return labels, 0
    labels[box], count = label_lesions(mask[box])
    return labels, count


def _contacts(
    lesion_box: np.ndarray,
    box: tuple[slice, ...],
    all_lesions: np.ndarray,
    thorax: ThoraxMasks,
    image_hu: np.ndarray,
    affine: np.ndarray,
    midline_x: float,
) -> tuple[bool, bool]:
    """Whether the lesion (given inside ``box``) touches the chest wall and the mediastinum."""
    # the lungs on the patient's left-right lines through the box: the whole width of the CT
    lr_axis = left_right_axis(affine)
    row_box = tuple(slice(None) if a == lr_axis else box[a] for a in range(3))
    row_lungs = thorax.lungs(row_box)
    lungs_box = row_lungs[tuple(box[a] if a == lr_axis else slice(None) for a in range(3))]
    dilated = ndimage.binary_dilation(lesion_box, iterations=CONTACT_DILATION_VOXELS)
    tissue = dilated & ~all_lesions[box] & ~lungs_box & (image_hu[box] > BODY_MIN_HU)
    if tissue.sum() < MIN_CONTACT_VOXELS:
        return False, False
    # Along the patient's left-right line through each contact voxel, find the nearest lung voxel on either
    # side: tissue whose two nearest lung voxels lie on opposite sides of the midline is between the lungs.
    length = row_lungs.shape[lr_axis]
    index = np.arange(length).reshape([-1 if a == lr_axis else 1 for a in range(3)])
    before = np.maximum.accumulate(np.where(row_lungs, index, -1), axis=lr_axis)
    after = np.flip(np.minimum.accumulate(np.flip(np.where(row_lungs, index, length), lr_axis), axis=lr_axis), lr_axis)
    columns = np.arange(box[lr_axis].start, box[lr_axis].stop)
    before = np.take(before, columns, axis=lr_axis)[tissue]
    after = np.take(after, columns, axis=lr_axis)[tissue]
    voxels = np.argwhere(tissue) + np.array([s.start for s in box])
    x = voxels @ affine[0, :3] + affine[0, 3]
    step = affine[0, lr_axis]  # world x change per voxel along the left-right axis
    x_before = x + step * (before - voxels[:, lr_axis]) - midline_x
    x_after = x + step * (after - voxels[:, lr_axis]) - midline_x
    between = (before >= 0) & (after < length) & (x_before * x_after < 0)
    return int((~between).sum()) >= MIN_CONTACT_VOXELS, int(between.sum()) >= MIN_CONTACT_VOXELS


def tumour_report(
    mask: np.ndarray, affine: np.ndarray, image_hu: np.ndarray | None = None, thorax: ThoraxMasks | None = None
) -> dict[str, Any]:
    """Describe the tumour of a segmentation mask: volume, lesions, diameters, position and contacts.

    Args:
        mask: (X, Y, Z) tumour mask; any non-zero voxel is tumour.
        affine: 4x4 voxel-to-world (RAS+ mm) affine of the mask, as nibabel gives it.
        image_hu: the CT in Hounsfield units on the same grid; needed for the body midline and the
            chest-wall / mediastinum contacts (``None`` with a reason without it).
        thorax: the CT's lungs when already found (:func:`lung_tumor.thorax.thorax_masks` of ``image_hu``,
            as ``predict --lung-mask`` does); found here when needed and not given.

    Returns:
        A JSON-ready mapping: ``total_volume_ml``, ``lesion_count``, ``spacing_mm``, ``orientation``,
        ``midline_x_mm`` and ``midline_method``, ``conventions`` and ``lesions`` (largest first), each with
        ``volume_ml``, ``equivalent_diameter_mm``, ``longest_axial_diameter_mm`` and its ``slice``,
        ``centroid_voxel``, ``centroid_world_mm``, ``axial_slice_range``, ``craniocaudal_extent_mm``,
        ``side`` (``"right"`` / ``"left"`` of the patient), ``distance_from_midline_mm``,
        ``touches_chest_wall``, ``touches_mediastinum`` and ``contact_note``.

    Raises:
        ValueError: the mask is not 3D, the affine not 4x4, or the CT's shape differs from the mask's.
    """
    mask = np.asarray(mask) != 0
    affine = np.asarray(affine, dtype=float)
    if mask.ndim != 3 or affine.shape != (4, 4):
        raise ValueError(f"need a 3D mask and a 4x4 affine, got {mask.shape} and {affine.shape}")
    if image_hu is not None and np.shape(image_hu) != mask.shape:
        raise ValueError(f"CT shape {np.shape(image_hu)} differs from the mask's {mask.shape}")
    voxel_mm3 = abs(float(np.linalg.det(affine[:3, :3])))
    spacing = voxel_spacing(affine)
    axis = axial_axis(affine)
    midline_x, midline_method = body_midline_x(affine, mask.shape, image_hu)
    margin = CONTACT_DILATION_VOXELS + 1
    # lesions labelled inside the mask's bounding box grown by the margin: every lesion's box fits in it
    outer = mask_bounding_box(mask, margin) or (slice(0, 1),) * 3  # an empty mask: one empty voxel
    labels, count = label_lesions(mask[outer])

    contact_note = None
    if image_hu is None:
        contact_note = "unknown: no CT given"
    elif count:
        if thorax is None:
            from lung_tumor.thorax import thorax_masks

            thorax = thorax_masks(image_hu, affine)
        slab = tuple(outer[a] if a == axis else slice(None) for a in range(3))
        if not thorax.any_lungs(slab):
            contact_note = "unknown: no lung found in the CT (HU-based lung mask empty)"
    anatomy = located = None
    if contact_note is None and count:
        from lung_tumor.location import lung_anatomy
        from lung_tumor.thorax import ThoraxMasks, thorax_masks

        # left and right lungs come from the coarse lungs of ThoraxMasks (found here for other lung masks)
        located = thorax if isinstance(thorax, ThoraxMasks) else thorax_masks(image_hu, affine)
        anatomy = lung_anatomy(image_hu, affine, located, midline_x, tumour=mask)

    lesions = []
    for index, local in enumerate(ndimage.find_objects(labels), start=1):
        box = tuple(
            slice(max(o.start + s.start - margin, 0), min(o.start + s.stop + margin, n))
            for o, s, n in zip(outer, local, mask.shape, strict=True)
        )
        lesion_box = (
            labels[tuple(slice(b.start - o.start, b.stop - o.start) for b, o in zip(box, outer, strict=True))] == index
        )
        offset = np.array([s.start for s in box], dtype=float)
        voxels = int(lesion_box.sum())
        volume_ml = voxels * voxel_mm3 / 1000.0
        centroid = np.argwhere(lesion_box).mean(axis=0) + offset
        world = affine[:3, :3] @ centroid + affine[:3, 3]
        diameter, diameter_slice = longest_axial_diameter(lesion_box, affine)
        slices = np.flatnonzero(np.any(lesion_box, axis=tuple(a for a in range(3) if a != axis))) + box[axis].start
        touches_wall = touches_mediastinum = None
        if contact_note is None:
            touches_wall, touches_mediastinum = _contacts(lesion_box, box, mask, thorax, image_hu, affine, midline_x)
        lesions.append(
            {
                "volume_ml": volume_ml,
                "equivalent_diameter_mm": (6.0 * volume_ml * 1000.0 / math.pi) ** (1 / 3),
                "longest_axial_diameter_mm": diameter,
                "longest_axial_diameter_slice": None if diameter_slice is None else diameter_slice + box[axis].start,
                "centroid_voxel": [float(c) for c in centroid],
                "centroid_world_mm": [float(c) for c in world],
                "axial_slice_range": [int(slices.min()), int(slices.max())],
                "craniocaudal_extent_mm": float(len(slices) * spacing[axis]),
                "side": "right" if world[0] > midline_x else "left",
                "distance_from_midline_mm": float(abs(world[0] - midline_x)),
                "touches_chest_wall": touches_wall,
                "touches_mediastinum": touches_mediastinum,
                "contact_note": contact_note,
            }
        )
        lesions[-1].update(_location(lesion_box, box, mask, image_hu, located, anatomy, contact_note))
    lesions.sort(key=lambda lesion: -lesion["volume_ml"])
    for number, lesion in enumerate(lesions, start=1):
        lesion["lesion"] = number
    from lung_tumor.location import lesion_relations

    return {
        "lungs": anatomy.summary() if anatomy is not None else {"note": contact_note or "no lesion"},
        "lesion_relations": lesion_relations(lesions),
        "total_volume_ml": float(np.count_nonzero(mask[outer]) * voxel_mm3 / 1000.0),
        "lesion_count": count,
        "spacing_mm": list(spacing),
        "orientation": "".join(nib.aff2axcodes(affine)),
        "axial_axis": axis,
        "midline_x_mm": midline_x,
        "midline_method": midline_method,
        "lesions": lesions,
        "conventions": CONVENTIONS,
    }


def _location(
    lesion_box: np.ndarray,
    box: tuple[slice, ...],
    mask: np.ndarray,
    image_hu: np.ndarray | None,
    thorax: ThoraxMasks | None,
    anatomy: LungAnatomy | None,
    note: str | None,
) -> dict[str, Any]:
    """Location, contacts and airway distances of one lesion (:mod:`lung_tumor.location`), or why not."""
    from lung_tumor.location import lesion_location

    if anatomy is None:
        why = note or "unknown"
        return {"location": {"lung": why, "zone": why, "depth": why, "lobe": why}, "contacts": None, "airway": None}
    return lesion_location(lesion_box, box, mask, image_hu, thorax, anatomy)


def _yes_no(value: bool | None, note: str | None) -> str:
    if value is None:
        return note or "unknown"
    return "yes" if value else "no"


def format_report(report: dict[str, Any]) -> str:
    """The report as readable text for a clinician (one block per lesion, largest first)."""
    spacing = " x ".join(f"{s:.2f}" for s in report["spacing_mm"])
    lines = [
        "Tumour report",
        f"  total tumour volume: {report['total_volume_ml']:.2f} ml in {report['lesion_count']} lesion(s)",
        f"  voxel size: {spacing} mm, orientation {report['orientation']}",
        f"  midline: x = {report['midline_x_mm']:.1f} mm ({report['midline_method']})",
    ]
    from lung_tumor.location import format_location, format_lungs

    lines += format_lungs(report)
    if not report["lesions"]:
        lines.append("  no tumour found")
    for lesion in report["lesions"]:
        lo, hi = lesion["axial_slice_range"]
        voxel = ", ".join(f"{c:.1f}" for c in lesion["centroid_voxel"])
        world = ", ".join(f"{c:.1f}" for c in lesion["centroid_world_mm"])
        lines += [
            f"Lesion {lesion['lesion']}: {lesion['volume_ml']:.2f} ml, patient's {lesion['side']} side "
            f"({lesion['distance_from_midline_mm']:.1f} mm from the midline)",
            f"  longest axial diameter (RECIST): {lesion['longest_axial_diameter_mm']:.1f} mm "
            f"on slice {lesion['longest_axial_diameter_slice']}",
            f"  equivalent sphere diameter: {lesion['equivalent_diameter_mm']:.1f} mm",
            f"  craniocaudal extent: {lesion['craniocaudal_extent_mm']:.1f} mm (axial slices {lo}-{hi})",
            f"  centroid: voxel ({voxel}); world RAS ({world}) mm",
            f"  touches chest wall: {_yes_no(lesion['touches_chest_wall'], lesion['contact_note'])}; "
            f"touches mediastinum: {_yes_no(lesion['touches_mediastinum'], lesion['contact_note'])}",
        ]
        if "location" in lesion:
            lines += format_location(lesion)
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], json_path: str | Path, text_path: str | Path) -> tuple[Path, Path]:
    """Write the report as JSON and as text, each atomically; returns both paths."""
    text = format_report(report)
    json_file = write_atomic(json_path, lambda f: f.write(json.dumps(report, indent=2) + "\n"))
    text_file = write_atomic(text_path, lambda f: f.write(text))
    return json_file, text_file
