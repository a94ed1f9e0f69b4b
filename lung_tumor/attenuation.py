"""Attenuation of a lesion on CT: HU statistics, solid and ground-glass parts, cavitation, calcification.

Thresholds (Hounsfield units): solid > -300; ground-glass -800 to -300 (both inclusive); air (cavity)
< -900; calcification > 200. The lesion's "inside" is its mask with holes filled (per axial slice and in
3D), so a cavity or a calcification the segmentation left out still counts when the lesion encloses it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from lung_tumor.measurements import axial_axis, axial_calipers

SOLID_MIN_HU = -300.0
GROUND_GLASS_MIN_HU = -800.0
CAVITY_MAX_HU = -900.0
CALCIFICATION_MIN_HU = 200.0
PERCENTILES = (5, 25, 50, 75, 95)
SOLID_KIND_MIN_FRACTION = 0.8  # solid voxels among the interior's solid and ground-glass voxels
GROUND_GLASS_MAX_SOLID_MM = 2.0  # a solid part narrower than this is noise or a vessel speck
MIN_FINDING_MM3 = 4.0  # a cavity or calcification of at least a 2 mm sphere is reported as present


def _filled(lesion: np.ndarray, axis: int) -> np.ndarray:
    """The lesion with its holes filled in 3D and on every axial slice (all slices at once)."""
    from lung_tumor.thorax import fill_holes_in_plane  # thorax imports the report, which imports this module

    return ndimage.binary_fill_holes(lesion) | fill_holes_in_plane(lesion, axis)


def lesion_attenuation(
    lesion: np.ndarray, image_hu: np.ndarray, affine: np.ndarray, longest_axial_mm: float | None = None
) -> dict[str, Any]:
    """Attenuation findings of one lesion.

    Args:
        lesion: binary mask of one lesion in a crop with at least one voxel of margin.
        image_hu: the CT in HU on the same crop.
        affine: the image's affine (voxel volume and in-plane geometry).
        longest_axial_mm: the lesion's longest axial diameter when already measured
            (:func:`~lung_tumor.measurements.axial_calipers`); measured here when not given.

    Returns:
        ``hu_mean``, ``hu_sd``, ``hu_percentiles`` (``p5`` ... ``p95``), ``solid_volume_ml``,
        ``ground_glass_volume_ml``, ``solid_longest_axial_diameter_mm``, ``consolidation_tumour_ratio``,
        ``cavity_volume_ml``, ``calcification_volume_ml``, ``kind`` (``solid``, ``part-solid``,
        ``ground-glass``, or ``lung-like`` when most of the interior is below -800 HU), ``cavitary`` and
        ``calcified``.
    """
    lesion = np.asarray(lesion, dtype=bool)
    hu = np.asarray(image_hu, dtype=np.float32)
    affine = np.asarray(affine, dtype=float)
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    values = hu[lesion]
    percentiles = np.percentile(values, PERCENTILES)
    solid = lesion & (hu > SOLID_MIN_HU)
    ground_glass = lesion & (hu >= GROUND_GLASS_MIN_HU) & (hu <= SOLID_MIN_HU)
    inside = _filled(lesion, axial_axis(affine))
    enclosed = ndimage.binary_erosion(inside)  # an air voxel on the lesion's rim is lung, not a cavity
    cavity_ml = int((enclosed & (hu < CAVITY_MAX_HU)).sum()) * voxel_ml
    calcification_ml = int((inside & (hu > CALCIFICATION_MIN_HU)).sum()) * voxel_ml
    solid_calipers = axial_calipers(solid, affine)
    solid_mm = solid_calipers["long_mm"] if solid_calipers else 0.0
    if longest_axial_mm is None:
        whole = axial_calipers(lesion, affine)
        longest_axial_mm = whole["long_mm"] if whole else 0.0
    # the kind is read from the interior: the rim's partial volume makes any solid lesion look ground-glass there
    interior = ndimage.binary_erosion(lesion)
    if not interior.any():
        interior = lesion
    n_solid = int((interior & solid).sum())
    n_soft = n_solid + int((interior & ground_glass).sum())
    if n_soft < 0.5 * int(interior.sum()):  # mostly below -800 HU: aerated lung, not a nodule
        kind = "lung-like"
    elif n_solid / n_soft >= SOLID_KIND_MIN_FRACTION:
        kind = "solid"
    elif solid_mm < GROUND_GLASS_MAX_SOLID_MM:
        kind = "ground-glass"
    else:
        kind = "part-solid"
    return {
        "hu_mean": float(values.mean()),
        "hu_sd": float(values.std()),
        "hu_percentiles": {f"p{p}": float(v) for p, v in zip(PERCENTILES, percentiles, strict=True)},
        "solid_volume_ml": int(solid.sum()) * voxel_ml,
        "ground_glass_volume_ml": int(ground_glass.sum()) * voxel_ml,
        "solid_longest_axial_diameter_mm": float(solid_mm),
        "consolidation_tumour_ratio": float(solid_mm / longest_axial_mm) if longest_axial_mm else 0.0,
        "cavity_volume_ml": cavity_ml,
        "calcification_volume_ml": calcification_ml,
        "kind": kind,
        "cavitary": bool(cavity_ml * 1000.0 >= MIN_FINDING_MM3),
        "calcified": bool(calcification_ml * 1000.0 >= MIN_FINDING_MM3),
    }
