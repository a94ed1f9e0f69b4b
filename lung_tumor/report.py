"""The tumour spread report: volume, lesions, calipers, RECIST 1.1, size-based T, attenuation, contacts.

Geometry comes from the affine alone, so any voxel order works (RAS, LPS, oblique, anisotropic voxels):
the axial axis is the voxel axis most aligned with world z, the left-right axis the one most aligned with
world x (``nibabel.orientations.io_orientation``). Internally world coordinates are nibabel's RAS+
millimetres (``centroid_world_mm``: **+x points to the patient's right**); what a reader compares with a
viewer (caliper endpoints, ``centroid_lps_mm``) is given in DICOM's LPS. The measurements are in
:mod:`lung_tumor.measurements`, the attenuation in :mod:`lung_tumor.attenuation`; the fields and their
units are documented in ``docs/report_schema.md`` (``SCHEMA_VERSION``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from lung_tumor.attenuation import (
    CALCIFICATION_MIN_HU,
    CAVITY_MAX_HU,
    GROUND_GLASS_MAX_SOLID_MM,
    GROUND_GLASS_MIN_HU,
    MIN_FINDING_MM3,
    SOLID_KIND_MIN_FRACTION,
    SOLID_MIN_HU,
    lesion_attenuation,
)
from lung_tumor.cores import executor, thread_count
from lung_tumor.evaluation.lesions import LESION_CONNECTIVITY, label_lesions, lesion_components
from lung_tumor.io import write_atomic
from lung_tumor.measurements import (
    LUNG_ORGAN,
    SMALL_DIAMETER_MM,
    SMALL_VOLUME_MM3,
    VESSEL_LIKE_AXES_RATIO,
    axial_axis,
    left_right_axis,
    lesion_measurements,
    ras_to_lps,
    recist_assessment,
    reliability_flags,
    size_t_descriptor,
    voxel_spacing,
)
from lung_tumor.provenance import DISCLAIMER

if TYPE_CHECKING:
    from lung_tumor.thorax import ThoraxMasks

BODY_MIN_HU = -500.0  # soft tissue and bone are above, air and lung parenchyma below
AIR_MAX_HU = -400.0  # "air-like" for the lung mask (lung parenchyma is about -900..-500)
CONTACT_DILATION_VOXELS = 2
MIN_CONTACT_VOXELS = 3
SCHEMA_VERSION = "2.6"

CONVENTIONS = {
    "schema_version": f"{SCHEMA_VERSION}: fields, units and conventions in docs/report_schema.md",
    "world_coordinates": "centroid_world_mm: nibabel RAS+ mm (+x patient's right, +y anterior, +z superior); "
    "every *_lps_mm field: DICOM LPS mm as viewers show (+x patient's left, +y posterior, +z superior)",
    "orientation": "nibabel axis codes of the voxel axes (where each array axis points), not of the coordinates",
    "axial_axis": "the voxel axis most aligned with world z (nibabel io_orientation)",
    "slice_numbers": "*_slice_number(s): 1-based, counted from the most inferior slice towards superior; "
    "*_slice and axial_slice_range: 0-based array indices along axial_axis",
    "lesions": f"{LESION_CONNECTIVITY}-connected components of the mask, numbered by decreasing volume",
    "voxel_volume": "abs(det(affine[:3, :3])) mm3",
    "diameters": "edge to edge, as calipers: the caliper joins the centres of the two farthest boundary voxels and "
    "reaches half a voxel beyond each (the voxel's extent along the line, on the ellipsoid inscribed in the voxel: "
    "one pixel for square pixels), in mm through the affine's columns (anisotropic, flipped or rotated voxels "
    "alike); a box of n pixels measures n pixels, a one-pixel lesion one pixel",
    "longest_axial_diameter_mm": "the largest in-slice diameter over the lesion's axial slices; its endpoints lie "
    "on the centre plane of that slice",
    "short_axis_diameter_mm": "on the same slice, the caliper width perpendicular to the long axis (the longest "
    "perpendicular chord for a convex section)",
    "greatest_3d_diameter_mm": "the largest diameter in any direction",
    "equivalent_diameter_mm": "diameter of the sphere of the lesion's volume",
    "craniocaudal_extent_mm": "edge to edge: world z span of the voxel centres plus one voxel's z extent "
    "(last minus first slice position plus the slice spacing)",
    "recist": "RECIST 1.1: measurable when longest axial diameter >= 10 mm and >= 2 x slice thickness (the "
    "axial voxel spacing unless given); targets: the largest measurable lesions, at most 5, at most 2 per organ; "
    f"every lesion's organ is '{LUNG_ORGAN}' (both lungs count as one organ), so at most 2 targets here; the "
    "others are non-target; sum of diameters = sum of the targets' longest axial diameters",
    "t_category": "TNM 8th edition size descriptor of the lesion with the largest longest axial diameter, size "
    "criterion only (T1a <= 10 mm < T1b <= 20 < T1c <= 30 < T2a <= 40 < T2b <= 50 < T3 <= 70 < T4); a part-solid "
    "lesion is sized by its solid part's longest axial diameter; pure ground-glass or lung-like: not assessed",
    "attenuation": f"needs the CT: HU over the lesion's voxels; solid > {SOLID_MIN_HU:g} HU, ground-glass "
    f"{GROUND_GLASS_MIN_HU:g}..{SOLID_MIN_HU:g} HU; cavity: voxels < {CAVITY_MAX_HU:g} HU inside the lesion with "
    f"holes filled (3D and per axial slice), rim excluded; calcification: > {CALCIFICATION_MIN_HU:g} HU inside; "
    f"cavitary / calcified when >= {MIN_FINDING_MM3:g} mm3; kind from the interior (lesion eroded by one voxel): "
    f"lung-like when under half of it is >= {GROUND_GLASS_MIN_HU:g} HU (aerated lung: suspect), else solid when "
    f">= {SOLID_KIND_MIN_FRACTION:g} of its solid and ground-glass voxels are solid, else "
    f"ground-glass when the solid part's longest axial diameter < {GROUND_GLASS_MAX_SOLID_MM:g} mm, else part-solid",
    "probability": "mean and maximum of the model's tumour probability over the lesion's voxels (null without it)",
    "flags": f"small: longest axial diameter < {SMALL_DIAMETER_MM:g} mm or volume < {SMALL_VOLUME_MM3:g} mm3; "
    f"vessel_like: principal_axes_ratio (sqrt of the largest over the second largest eigenvalue of the lesion's "
    f"second moments in mm, voxels as uniform boxes) > {VESSEL_LIKE_AXES_RATIO:g}",
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


def _threshold_for(values: np.ndarray, threshold_hu: float, above: bool) -> Any:
    """``threshold_hu`` in the CT's own integer type when that gives the same comparison, else as it is.

    An int16 CT compared with a float threshold is converted to float64 on the way (several times slower); for
    integers ``v > t`` is ``v > floor(t)`` and ``v < t`` is ``v < ceil(t)``.
    """
    dtype = np.asarray(values).dtype
    if np.issubdtype(dtype, np.integer) and math.isfinite(threshold_hu):
        bound = math.floor(threshold_hu) if above else math.ceil(threshold_hu)
        info = np.iinfo(dtype)
        if info.min <= bound <= info.max:
            return dtype.type(bound)
    return threshold_hu


def hu_above(values: np.ndarray, threshold_hu: float, out: np.ndarray | None = None) -> np.ndarray:
    """``values > threshold_hu``, compared in the CT's own type where that is exact (:func:`_threshold_for`)."""
    return np.greater(values, _threshold_for(values, threshold_hu, above=True), out=out)


def hu_below(values: np.ndarray, threshold_hu: float) -> np.ndarray:
    """``values < threshold_hu``, compared in the CT's own type where that is exact (:func:`_threshold_for`)."""
    return np.less(values, _threshold_for(values, threshold_hu, above=False))


def tissue_like_padding(image_hu: np.ndarray, axial: int) -> Any:
    """The value the scanner wrote outside its reconstruction circle, when it would pass for tissue (> -500 HU).

    That value fills the four corners of every axial slice exactly (noise never repeats one value in all of them);
    a padding at or below -500 HU (-1024, -2048, -3024) is air-like anyway and needs no care: None then, and
    None where the corners differ (no circle: air or a body cut by the field of view reaches them).
    """
    corners = np.moveaxis(np.asarray(image_hu), axial, -1)[[0, 0, -1, -1], [0, -1, 0, -1]]
    first = corners.flat[0]
    return first if bool((corners == first).all()) and float(first) > BODY_MIN_HU else None


def body_mask(image_hu: np.ndarray, padding: Any = None, out: np.ndarray | None = None) -> np.ndarray:
    """Soft tissue and bone (> -500 HU), less the voxels holding the scan's :func:`tissue_like_padding` if any."""
    body = hu_above(image_hu, BODY_MIN_HU, out=out)
    if padding is not None:
        body &= np.asarray(image_hu) != padding
    return body


def _body_counts(image_hu: np.ndarray, axes: list[int], padding: Any = None) -> dict[int, np.ndarray]:
    """Body voxels (:func:`body_mask`) per index along each of ``axes``, read in chunks along the slowest axis."""
    hu = np.asarray(image_hu)
    slow = hu.ndim - 1 if hu.flags.f_contiguous and not hu.flags.c_contiguous else 0
    step = max(1, (1 << 22) // max(1, hu.size // max(hu.shape[slow], 1)))  # about 4 M voxels a chunk
    counts = {i: np.zeros(hu.shape[i], dtype=np.int64) for i in axes}
    # one buffer for every chunk, in the CT's memory order: a fresh 4 MB array per chunk costs page faults
    shape = tuple(min(step, n) if a == slow else n for a, n in enumerate(hu.shape))
    order = "F" if slow else "C"
    fast = 0 if slow else hu.ndim - 1  # the axis along which memory runs
    buffer = np.empty(shape, dtype=bool, order=order)
    for start in range(0, hu.shape[slow], step):
        chunk = slice(start, start + step)
        part = hu[(slice(None),) * slow + (chunk,)]
        body = body_mask(part, padding, out=buffer[(slice(None),) * slow + (slice(0, part.shape[slow]),)])
        for i in axes:
            per_index = body.size // max(body.shape[i], 1)
            if i == fast:
                # the other axes run as one in memory: a 2D sum, into uint16 where no index holds more than 65535
                # voxels of the chunk (about twice as fast as a sum over two axes into int32)
                rows = body.view(np.uint8).reshape((body.shape[i], -1) if slow else (-1, body.shape[i]), order=order)
                summed = rows.sum(axis=1 if slow else 0, dtype=np.uint16 if per_index <= 65535 else np.int32)
            else:
                # bytes summed into int32 (a chunk holds < 2**31 voxels): several times faster than a bool sum
                summed = body.view(np.uint8).sum(axis=tuple(a for a in range(hu.ndim) if a != i), dtype=np.int32)
            if i == slow:
                counts[i][chunk] = summed
            else:
                counts[i] += summed
    return counts


def body_midline_x(affine: np.ndarray, shape: tuple[int, ...], image_hu: np.ndarray | None) -> tuple[float, str]:
    """World x (mm) of the patient's midline and how it was found.

    The x-centre of mass of the body (voxels above -500 HU, less a :func:`tissue_like_padding` outside the scan
    circle) when the CT is given, else the image centre. Only the voxel axes that move along world x are counted
    (one for an axis-aligned scan).
    """
    affine = np.asarray(affine, dtype=float)
    centre = (np.asarray(shape[:3], dtype=float) - 1) / 2
    method = "image centre (no CT given)"
    if image_hu is not None:
        axes = [int(i) for i in np.flatnonzero(affine[0, :3])]
        padding = tissue_like_padding(image_hu, axial_axis(affine))
        counts = _body_counts(image_hu, axes, padding)
        if counts[axes[0]].any():
            for i in axes:
                centre[i] = np.average(np.arange(shape[i]), weights=counts[i])
            method = f"x-centre of mass of the body (voxels > {BODY_MIN_HU:g} HU)"
            if padding is not None:
                method += f", less the scanner's padding of {float(padding):g} HU outside the scan circle"
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


def nearest_along_lines(mask: np.ndarray, axis: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """For the voxels at ``start:stop`` along ``axis``: the index of the nearest ``mask`` voxel at or before each
    one on its line along ``axis`` (-1 when none), and at or after it (the line's length when none).

    int32 positions (a line is far shorter than 2**31); the running maximum runs from the line's start to ``stop``
    only, the running minimum from ``start`` to the line's end: what the voxels in ``start:stop`` see of them.
    """
    length = mask.shape[axis]

    def along(low: int, high: int) -> tuple[slice, ...]:
        return tuple(slice(low, high) if a == axis else slice(None) for a in range(mask.ndim))

    index = np.arange(length, dtype=np.int32).reshape([-1 if a == axis else 1 for a in range(mask.ndim)])
    head, tail = along(0, stop), along(start, length)
    before = np.maximum.accumulate(np.where(mask[head], index[head], -1), axis=axis)[along(start, stop)]
    after = np.flip(np.minimum.accumulate(np.flip(np.where(mask[tail], index[tail], length), axis), axis=axis), axis)
    return before, after[along(0, stop - start)]


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
    tissue = dilated & (all_lesions[box] == 0) & ~lungs_box & body_mask(image_hu[box], getattr(thorax, "padding", None))
    if tissue.sum() < MIN_CONTACT_VOXELS:
        return False, False
    # Along the patient's left-right line through each contact voxel, find the nearest lung voxel on either
    # side: tissue whose two nearest lung voxels lie on opposite sides of the midline is between the lungs.
    length = row_lungs.shape[lr_axis]
    before, after = nearest_along_lines(row_lungs, lr_axis, box[lr_axis].start, box[lr_axis].stop)
    before, after = before[tissue], after[tissue]
    voxels = np.argwhere(tissue) + np.array([s.start for s in box])
    x = voxels @ affine[0, :3] + affine[0, 3]
    step = affine[0, lr_axis]  # world x change per voxel along the left-right axis
    x_before = x + step * (before - voxels[:, lr_axis]) - midline_x
    x_after = x + step * (after - voxels[:, lr_axis]) - midline_x
    between = (before >= 0) & (after < length) & (x_before * x_after < 0)
    return int((~between).sum()) >= MIN_CONTACT_VOXELS, int(between.sum()) >= MIN_CONTACT_VOXELS


def tumour_report(
    mask: np.ndarray,
    affine: np.ndarray,
    image_hu: np.ndarray | None = None,
    thorax: ThoraxMasks | None = None,
    probability: np.ndarray | None = None,
    slice_thickness_mm: float | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Describe the tumour of a segmentation mask: volume, lesions, calipers, RECIST 1.1, T, attenuation, contacts.

    Args:
        mask: (X, Y, Z) tumour mask; any non-zero voxel is tumour.
        affine: 4x4 voxel-to-world (RAS+ mm) affine of the mask, as nibabel gives it.
        image_hu: the CT in Hounsfield units on the same grid; needed for the body midline, the attenuation
            and the chest-wall / mediastinum contacts (``None`` with a reason without it).
        thorax: the CT's lungs when already found (:func:`lung_tumor.thorax.thorax_masks` of ``image_hu``,
            as ``predict --lung-mask`` does); found here when needed and not given.
        probability: the model's tumour probability on the same grid (per-lesion confidence), if known.
        slice_thickness_mm: the reconstructed slice thickness for RECIST measurability (default: the
            spacing of the axial voxel axis).
        workers: threads for the steps that can run side by side (default: the cores this process may use);
            the report is the same for any number.

    Returns:
        A JSON-ready mapping, documented field by field in ``docs/report_schema.md``: ``schema_version``,
        ``disclaimer``, ``total_volume_ml``, ``lesion_count``, ``spacing_mm``, ``orientation``, ``midline_x_mm``,
        ``midline_method``, ``recist``, ``t_category``, ``lesions`` (largest volume first) and ``conventions``.

    Raises:
        ValueError: the mask is not 3D, the affine not 4x4, the CT's or the probability's shape differs from
            the mask's, or the slice thickness is not positive.
    """
    from lung_tumor.thorax import ThoraxMasks, thorax_masks

    mask = np.asarray(mask)  # any dtype: compared with 0 box by box, never as a whole-CT copy
    affine = np.asarray(affine, dtype=float)
    if mask.ndim != 3 or affine.shape != (4, 4):
        raise ValueError(f"need a 3D mask and a 4x4 affine, got {mask.shape} and {affine.shape}")
    for name, array in (("CT", image_hu), ("probability", probability)):
        if array is not None and np.shape(array) != mask.shape:
            raise ValueError(f"{name} shape {np.shape(array)} differs from the mask's {mask.shape}")
    voxel_mm3 = abs(float(np.linalg.det(affine[:3, :3])))
    spacing = voxel_spacing(affine)
    axis = axial_axis(affine)
    if slice_thickness_mm is None:
        slice_thickness_mm = spacing[axis]
    if not slice_thickness_mm > 0:
        raise ValueError(f"slice thickness must be > 0 mm, got {slice_thickness_mm}")
    margin = CONTACT_DILATION_VOXELS + 1
    # the scan-level steps that do not wait for one another run side by side on the cores there are (scipy and
    # numpy release the GIL in them): the midline, the lesions' labelling, the lungs, the airway, each lesion
    workers = thread_count(workers)
    with executor(workers) as pool:
        midline_job = pool.submit(body_midline_x, affine, mask.shape, image_hu)
        # lesions labelled inside the mask's bounding box grown by the margin: every lesion's box fits in it
        outer = mask_bounding_box(mask, margin)
        thorax_job = airway_job = located = anatomy = None
        if image_hu is not None and outer is not None and not isinstance(thorax, ThoraxMasks):
            # left and right lungs come from the coarse lungs of ThoraxMasks (found here for other lung masks)
            thorax_job = pool.submit(thorax_masks, image_hu, affine, workers)
        outer = outer or (slice(0, 1),) * 3  # an empty mask: one empty voxel
        components = lesion_components(mask[outer])
        count = len(components)
        midline_x, midline_method = midline_job.result()
        if image_hu is not None and count:
            from lung_tumor.location import track_airway

            airway_job = pool.submit(track_airway, image_hu, affine, midline_x)

        boxes = [
            tuple(
                slice(max(o.start + s.start - margin, 0), min(o.start + s.stop + margin, n))
                for o, s, n in zip(outer, local, mask.shape, strict=True)
            )
            for local, _ in components
        ]
        lesion_boxes = []  # each lesion's own voxels in its box grown by the margin
        for box, (local, lesion) in zip(boxes, components, strict=True):
            grown = np.zeros([b.stop - b.start for b in box], dtype=bool)
            at = [o.start + s.start - b.start for o, s, b in zip(outer, local, box, strict=True)]
            grown[tuple(slice(a, a + n) for a, n in zip(at, lesion.shape, strict=True))] = lesion
            lesion_boxes.append(grown)
        contact_note = None
        if image_hu is None:
            contact_note = "unknown: no CT given"
        elif count:
            located = thorax if thorax_job is None else thorax_job.result()
            thorax = located if thorax is None else thorax
            slab = tuple(outer[a] if a == axis else slice(None) for a in range(3))
            if not thorax.any_lungs(slab):
                contact_note = "unknown: no lung found in the CT (HU-based lung mask empty)"
        # each lesion's steps are submitted largest lesion first: the longest task starts first, a short one ends last
        largest_first = sorted(range(count), key=lambda i: -lesion_boxes[i].size)

        def per_lesion(function: Any, *args: Any) -> list[Any]:
            """``function(lesion_box, box, *args)`` of each lesion, run in the pool; in the lesions' order."""
            jobs = {i: pool.submit(function, lesion_boxes[i], boxes[i], *args) for i in largest_first}
            return [jobs[i] for i in range(count)]

        # the contact flags need the lungs only, each lesion's own figures nothing: they run while the lungs are
        # split and the tissue around them labelled (submitted earlier, they would slow the lungs' search down)
        touching = [None] * count if contact_note else per_lesion(_contacts, mask, thorax, image_hu, affine, midline_x)
        measured = per_lesion(_lesion_entry, affine, mask.shape, image_hu, probability, midline_x)
        placed = [None] * count
        if contact_note is None and count:
            from lung_tumor.location import lesion_surroundings, lung_anatomy, place_lesion

            airway = airway_job.result()
            # what each lesion's location needs of the CT around it is found while the lungs are split here
            around = per_lesion(lesion_surroundings, mask, image_hu, located, affine, airway)
            anatomy = lung_anatomy(image_hu, affine, located, midline_x, tumour=mask, airway=airway, tumour_box=outer)
            jobs = {i: pool.submit(place_lesion, around[i].result(), anatomy) for i in largest_first}
            placed = [jobs[i] for i in range(count)]
        lesions = []
        for entry, contacts, where in zip(measured, touching, placed, strict=True):
            lesion = entry.result()
            lesion["contact_note"] = contact_note
            if contacts is not None:
                lesion["touches_chest_wall"], lesion["touches_mediastinum"] = contacts.result()
            lesion.update(_unplaced(contact_note) if where is None else where.result())
            lesions.append(lesion)
    lesions.sort(key=lambda lesion: -lesion["volume_ml"])
    for number, lesion in enumerate(lesions, start=1):
        lesion["lesion"] = number
    from lung_tumor.location import lesion_relations

    return {
        "schema_version": SCHEMA_VERSION,
        "disclaimer": DISCLAIMER,
        "lungs": anatomy.summary() if anatomy is not None else {"note": contact_note or "no lesion"},
        "lesion_relations": lesion_relations(lesions),
        "total_volume_ml": float(np.count_nonzero(mask[outer]) * voxel_mm3 / 1000.0),
        "lesion_count": count,
        "spacing_mm": list(spacing),
        "orientation": "".join(nib.aff2axcodes(affine)),
        "axial_axis": axis,
        "midline_x_mm": midline_x,
        "midline_method": midline_method,
        "recist": recist_assessment(lesions, float(slice_thickness_mm)),
        "t_category": size_t_descriptor(lesions),
        "lesions": lesions,
        "conventions": CONVENTIONS,
    }


def _lesion_entry(
    lesion_box: np.ndarray,
    box: tuple[slice, ...],
    affine: np.ndarray,
    shape: tuple[int, ...],
    image_hu: np.ndarray | None,
    probability: np.ndarray | None,
    midline_x: float,
) -> dict[str, Any]:
    """One lesion's entry from its own voxels (given inside ``box``): size, calipers, attenuation, confidence.

    Its contact flags are left unknown here, in the places the report keeps for them.
    """
    offset = np.array([s.start for s in box], dtype=float)
    voxel_mm3 = abs(float(np.linalg.det(affine[:3, :3])))
    volume_ml = int(lesion_box.sum()) * voxel_mm3 / 1000.0
    centroid = np.argwhere(lesion_box).mean(axis=0) + offset
    world = affine[:3, :3] @ centroid + affine[:3, 3]
    calipers = lesion_measurements(lesion_box, offset.astype(int), affine, shape)
    inside = None if probability is None else np.asarray(probability[box], dtype=np.float64)[lesion_box]
    return {
        "volume_ml": volume_ml,
        "equivalent_diameter_mm": (6.0 * volume_ml * 1000.0 / math.pi) ** (1 / 3),
        **calipers,
        "centroid_voxel": [float(c) for c in centroid],
        "centroid_world_mm": [float(c) for c in world],
        "centroid_lps_mm": [float(c) for c in ras_to_lps(world)],
        "organ": LUNG_ORGAN,
        "side": "right" if world[0] > midline_x else "left",
        "distance_from_midline_mm": float(abs(world[0] - midline_x)),
        "touches_chest_wall": None,
        "touches_mediastinum": None,
        "contact_note": None,
        "attenuation": None
        if image_hu is None
        else lesion_attenuation(
            lesion_box, image_hu[box], affine, longest_axial_mm=calipers["longest_axial_diameter_mm"]
        ),
        "probability_mean": None if inside is None else float(inside.mean()),
        "probability_max": None if inside is None else float(inside.max()),
        "flags": reliability_flags(
            volume_ml * 1000.0, calipers["longest_axial_diameter_mm"], calipers["principal_axes_ratio"]
        ),
    }


def _unplaced(note: str | None) -> dict[str, Any]:
    """The location of a lesion whose lungs are unknown, and why."""
    why = note or "unknown"
    return {"location": {"lung": why, "zone": why, "depth": why, "lobe": why}, "contacts": None, "airway": None}


def _yes_no(value: bool | None, note: str | None) -> str:
    if value is None:
        return note or "unknown"
    return "yes" if value else "no"


def _numbers(values: list[int]) -> str:
    return ", ".join(str(v) for v in values) or "none"


def _point(values: list[float]) -> str:
    return "(" + ", ".join(f"{c:.1f}" for c in values) + ")"


def _attenuation_line(attenuation: dict[str, Any] | None) -> str:
    if attenuation is None:
        return "  attenuation: unknown (no CT given)"
    findings = [attenuation["kind"]]
    if attenuation["cavitary"]:
        findings.append(f"cavity {attenuation['cavity_volume_ml'] * 1000:.0f} mm3")
    if attenuation["calcified"]:
        findings.append(f"calcification {attenuation['calcification_volume_ml'] * 1000:.0f} mm3")
    return (
        f"  attenuation: {', '.join(findings)}; mean {attenuation['hu_mean']:.0f} HU (SD {attenuation['hu_sd']:.0f}); "
        f"solid part {attenuation['solid_volume_ml']:.2f} ml, longest axial "
        f"{attenuation['solid_longest_axial_diameter_mm']:.1f} mm; "
        f"ground-glass {attenuation['ground_glass_volume_ml']:.2f} ml"
    )


def _provenance_lines(provenance: dict[str, Any] | None) -> list[str]:
    if not provenance:
        return []
    settings = provenance["post_processing"]
    return [
        f"  model: lung_tumor {provenance['package_version']}, run {provenance['run_dir']}, "
        f"checkpoint {provenance['checkpoint']}",
        f"  settings: threshold {provenance['threshold']:g}, min lesion {settings['min_lesion_mm3']:g} mm3, "
        f"lung mask {'on' if settings['lung_mask'] else 'off'}, "
        f"mirror images {'on' if settings.get('flip_tta') else 'off'}, "
        f"min depth ratio {settings.get('min_depth_ratio', 0.0):g}, network slices "
        + (f"at least {settings['min_slice_mm']:g} mm apart" if settings.get("min_slice_mm") else "as scanned")
        + (
            f", second look at {settings['second_look_mm']:g} mm (cut {settings['second_look_threshold']:g}, "
            f"first pass at least {settings['second_look_support']:g})"
            if settings.get("second_look_mm")
            else ""
        ),
        f"  input: {provenance['input']} (sha256 {provenance['input_sha256']}"
        + (f", series {provenance['series_instance_uid']}" if provenance.get("series_instance_uid") else "")
        + f"), report date {provenance['date_utc']}",
    ]


def format_report(report: dict[str, Any]) -> str:
    """The report as readable text for a clinician (one block per lesion, largest first)."""
    spacing = " x ".join(f"{s:.2f}" for s in report["spacing_mm"])
    recist, t = report["recist"], report["t_category"]
    lines = [
        f"Tumour report (schema {report['schema_version']})",
        f"  {report['disclaimer']}",
        *_provenance_lines(report.get("provenance")),
        f"  total tumour volume: {report['total_volume_ml']:.2f} ml in {report['lesion_count']} lesion(s)",
        f"  voxel size: {spacing} mm; voxel axes point {','.join(report['orientation'])}; "
        "coordinates below are patient LPS mm (as DICOM viewers); slice numbers count from the most inferior slice (1)",
        f"  midline: LPS x = {-report['midline_x_mm']:.1f} mm ({report['midline_method']})",
        f"  RECIST 1.1: slice thickness {recist['slice_thickness_mm']:.2f} mm, measurable from "
        f"{recist['min_measurable_diameter_mm']:.1f} mm; target lesions {_numbers(recist['target_lesions'])}, "
        f"sum of diameters {recist['sum_of_diameters_mm']:.1f} mm; non-target {_numbers(recist['non_target_lesions'])}",
    ]
    if t["category"] is not None:
        lines.append(
            f"  T ({t['label']}): {t['category']} from lesion {t['lesion']}, {t['size_mm']:.1f} mm ({t['size_basis']})"
        )
    else:
        lines.append(f"  T ({t['label']}): not assessed ({t['note']})")
    lines.append(f"    not assessed: {'; '.join(t['not_assessed'])}")
    from lung_tumor.location import format_location, format_lungs

    lines += format_lungs(report)
    if not report["lesions"]:
        lines.append("  no tumour found")
    for lesion in report["lesions"]:
        first, last = lesion["axial_slice_numbers"]
        ends = lesion["longest_axial_diameter_endpoints_lps_mm"]
        flags = [name.replace("_", "-") for name, on in lesion["flags"].items() if on]
        confidence = (
            "unknown"
            if lesion["probability_mean"] is None
            else f"mean {lesion['probability_mean']:.2f}, max {lesion['probability_max']:.2f}"
        )
        lines += [
            f"Lesion {lesion['lesion']}: {lesion['volume_ml']:.2f} ml, patient's {lesion['side']} side "
            f"({lesion['distance_from_midline_mm']:.1f} mm from the midline); RECIST "
            f"{'measurable' if lesion['recist_measurable'] else 'not measurable'}, {lesion['recist_role']}",
            f"  longest axial diameter: {lesion['longest_axial_diameter_mm']:.1f} mm on slice "
            f"{lesion['longest_axial_diameter_slice_number']}, from {_point(ends[0])} to {_point(ends[1])}; "
            f"short axis {lesion['short_axis_diameter_mm']:.1f} mm",
            f"  greatest 3D diameter: {lesion['greatest_3d_diameter_mm']:.1f} mm; equivalent sphere diameter: "
            f"{lesion['equivalent_diameter_mm']:.1f} mm",
            f"  craniocaudal extent: {lesion['craniocaudal_extent_mm']:.1f} mm (slices {first}-{last})",
            f"  centroid: LPS {_point(lesion['centroid_lps_mm'])} mm",
            _attenuation_line(lesion["attenuation"]),
            f"  model probability: {confidence}" + (f"; flags: {', '.join(flags)}" if flags else ""),
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
