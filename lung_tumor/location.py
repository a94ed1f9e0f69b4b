"""Where a lesion lies and what it touches: lung, zone, depth, contacts in mm, carina and main bronchi.

Everything is found once per scan (:func:`lung_anatomy`) from the lungs of :mod:`lung_tumor.thorax` and the
CT in Hounsfield units, then asked per lesion (:func:`lesion_location`). Geometry comes from the affine alone
(world coordinates are nibabel's RAS+ mm: **+x is the patient's right**), so a scan stored in LPS or RAS,
with anisotropic voxels, gives the same answers.

- **Left and right lungs**: the coarse lungs without the airway; when the two largest components are of
  similar size (the smaller at least :data:`SECOND_LUNG_MIN_FRACTION` of the larger) and lie on either side
  of the body midline they are the two lungs; otherwise the largest is eroded, one coarse voxel at a time
  (at most :data:`MAX_SPLIT_EROSIONS`), until it falls apart into two such parts, and every lung voxel goes
  to the nearer part (a watershed on the distance); failing that it is cut at the body midline. The lung
  whose mean world x is greater is the right lung.
- **Regions of the tissue around the lungs** (coarse grid, tissue > -500 HU): *mediastinum* where, along the
  patient's left-right line, the nearest lung voxels on either side belong to different lungs; *diaphragm*
  where a lung lies above the voxel along its craniocaudal line (tissue under a lung's base); *chest wall*
  the rest (lateral, anterior and posterior to the lungs).
- **Airway**: air (below :data:`AIRWAY_MAX_HU`, -500 HU, so a blurred lumen counts whole) inside the
  mediastinum, followed slice by slice from the scan's most superior slice down. The trachea is the round
  air component there, walled by tissue and near the midline; the carina is where it
  splits in two lumens on either side of it (the top of the ridge between them: halfway between the last
  slice with one lumen and the first with two) or, on a slice thick enough to hold the whole bifurcation,
  the point under the trachea's centre on the slice where one lumen reaches out to both sides. Each main
  bronchus is followed until it divides again, fades or meets the lung (its section grows more than
  :data:`LEAK_GROWTH` times in one slice).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError, cKDTree
from scipy.spatial.distance import pdist

from lung_tumor.report import (
    BODY_MIN_HU,
    axial_axis,
    body_mask,
    hu_above,
    hu_below,
    left_right_axis,
    mask_bounding_box,
    tissue_like_padding,
    voxel_spacing,
)
from lung_tumor.thorax import ThoraxMasks, _sample, sample_nonzero, upsample

CONTACT_THRESHOLD_MM = 2.0  # a lesion touches a structure when the gap between them is at most this
REPORT_GAP_MM = 10.0  # gaps up to this are reported (further structures: gap_mm is None)
AIRWAY_MAX_HU = BODY_MIN_HU  # the airway: not tissue (its blurred edge included); it leaks where it meets lung
SECOND_LUNG_MIN_FRACTION = 0.2
MAX_SPLIT_EROSIONS = 8
TRACHEA_AREA_MM2 = (30.0, 1000.0)  # a trachea's section lies between these (about 6 to 36 mm across)
TRACHEA_MAX_OFFSET_MM = 30.0  # from the body midline (a crop off the body centre moves the midline)
TRACHEA_WALL_MM = 3.0  # the ring this wide round the trachea's lumen is mostly tissue ...
TRACHEA_WALL_TISSUE = 0.8  # ... this fraction of it at least (a main bronchus touches the lung)
MIN_LUMEN_AREA_MM2 = 5.0
LEAK_GROWTH = 2.5
BIFURCATION_MAX_AREA_MM2 = 3000.0  # a slice through the whole bifurcation holds at most this much air
MAIN_BRONCHUS_MAX_MM = 70.0  # followed at most this far below the carina
LUMEN_SEARCH_MM = 20.0  # a lumen is looked for this far around the one on the slice above

NO_TRACHEA = (
    "not found: no trachea on the scan's most superior slice (round air walled by tissue, near the midline): "
    "the scan may start below the carina"
)

# the carina (world RAS mm, None when not found), the main bronchi's and the trachea's world points, a note
Airway = tuple[np.ndarray | None, dict[str, np.ndarray], str]

RIGHT, LEFT = 1, 2
MEDIASTINUM, CHEST_WALL, DIAPHRAGM = 3, 4, 5
STRUCTURES = {"chest_wall": CHEST_WALL, "diaphragm": DIAPHRAGM, "mediastinum": MEDIASTINUM}
ZONES = ("upper", "middle", "lower")
DEPTHS = ("central", "middle", "peripheral")
LOBE_NOTE = (
    "not assessed: lobes need the fissures, which the HU lung mask does not find, and no lobe segmentation "
    "model can be validated here without downloaded weights"
)

LOCATION_CONVENTIONS = {
    "lung": "the lung (left and right separated, see lungs.split_method) holding most lung voxels within the "
    "contact threshold of the lesion; 'outside both lungs (mediastinum)' when fewer than half of the lesion's "
    "neighbouring voxels are lung and its centroid lies between the lungs, 'outside both lungs' when none is lung",
    "zone": "upper, middle or lower third of that lung's craniocaudal extent (world z of its most superior and "
    "inferior voxels), at the lesion centroid; not assessed when the lung reaches the scan's first or last slice",
    "depth": "central, middle or peripheral third of d_m / (d_m + d_c) at the lesion centroid, in its axial "
    "slice: d_m the distance to the mediastinum (hilum side), d_c to the chest wall (costal pleura)",
    "contacts": "separate findings for chest wall, diaphragm and mediastinum (tissue > -500 HU around the lungs, "
    "regions as in lungs.regions); gap_mm: the smallest gap between the lesion's and the structure's voxels "
    "along the line joining their centres; contact when gap_mm <= threshold_mm; contact_length_mm: the "
    "greatest distance between the lesion voxels within the threshold, edge to edge (one voxel measures its "
    "own size)",
    "airway": "distances from the nearest lesion voxel centre to the carina point and to the nearest voxel "
    "centre of a main bronchus",
}


def _box_gap(steps: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Gap (mm) between two voxels ``steps`` voxels apart, along the line joining their centres."""
    reach = np.abs(steps).max(axis=-1)
    length = np.linalg.norm(steps * spacing, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(reach > 0, length * np.clip(1.0 - 1.0 / reach, 0.0, None), 0.0)


def _may_reach(structure: np.ndarray, points: np.ndarray, spacing: np.ndarray, gap_mm: float) -> bool:
    """Whether a voxel of ``structure`` may lie within ``gap_mm`` (:func:`_box_gap`) of one of ``points`` (N, 3).

    False is certain: a voxel ``k`` voxels beyond every point along some axis is at least ``(k - 1)`` voxels of
    that axis away by :func:`_box_gap` (the length joining the centres is at least ``k`` of them, and the line
    crosses at least ``k`` voxels), so only the points' bounding box grown by ``gap_mm / spacing + 1`` voxels is
    searched.
    """
    margin = np.floor(gap_mm / spacing).astype(int) + 1
    low = np.maximum(points.min(axis=0) - margin, 0)
    high = points.max(axis=0) + margin + 1
    return bool(structure[tuple(slice(lo, hi) for lo, hi in zip(low, high, strict=True))].any())


def _nearest_voxels(structure: np.ndarray, points: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """The voxel of ``structure`` nearest each of ``points`` (N, 3), as the feature transform of the whole array
    finds it (``ndimage.distance_transform_edt(~structure, return_indices=True)``), ties broken alike.

    The transform is computed only in the bounding box of the structure and the points, which gives each point the
    same voxel: scipy's transform runs along one axis at a time, one line after another, and a line's voxels outside
    that box hold no candidate (no structure voxel lies in their plane or row), so every line through the box sees
    the same candidates at the same relative positions; along a line the nearest candidate is searched from the
    first, in increasing order of position, and where the search stands at the box's edge does not change what it
    finds inside (past candidates only fall further behind).
    """
    box = mask_bounding_box(structure)
    low = np.minimum([s.start for s in box], points.min(axis=0))
    high = np.maximum([s.stop for s in box], points.max(axis=0) + 1)
    crop = tuple(slice(int(lo), int(hi)) for lo, hi in zip(low, high, strict=True))
    nearest = ndimage.distance_transform_edt(
        ~structure[crop], sampling=spacing, return_distances=False, return_indices=True
    )
    return nearest[(slice(None), *(points - low).T)].T + low


def _extent_mm(points_mm: np.ndarray, columns: np.ndarray) -> float:
    """Greatest distance between voxel centres, plus one voxel's extent along that line (edge to edge)."""
    if len(points_mm) == 0:
        return 0.0
    if len(points_mm) >= 64:
        try:
            points_mm = points_mm[ConvexHull(points_mm).vertices]
        except QhullError:
            pass
    if len(points_mm) == 1:
        return float(np.abs(columns).sum(axis=1).min())
    distances = pdist(points_mm)
    best = int(np.argmax(distances))
    i, j = np.triu_indices(len(points_mm), k=1)
    direction = points_mm[j[best]] - points_mm[i[best]]
    direction /= np.linalg.norm(direction)
    return float(distances[best] + np.abs(direction @ columns).sum())


@dataclass
class LungAnatomy:
    """The scan-level anatomy around the lungs (see the module docstring), on the coarse grid of the lungs.

    Attributes:
        affine: the CT's voxel-to-world affine.
        factors: the coarse grid's step along each voxel axis; ``offsets`` where its first voxel lies.
        regions: coarse label map: 0 none, 1 right lung, 2 left lung, 3 mediastinum, 4 chest wall, 5 diaphragm.
        split_method: how the left and right lungs were separated.
        carina_world: the carina (RAS mm), None when not found; ``airway_note`` says why.
        bronchi_world: world points (RAS mm) of the ``"right"`` and ``"left"`` main bronchi and the ``"trachea"``.
        lung_extent_z: per lung (``"right"``, ``"left"``) its superior and inferior world z (mm) and whether
            the scan cuts it at the top and at the bottom (the lung reaches the scan's first or last slice).
    """

    affine: np.ndarray
    factors: tuple[int, int, int]
    offsets: tuple[int, int, int]
    regions: np.ndarray
    split_method: str
    carina_world: np.ndarray | None
    airway_note: str
    bronchi_world: dict[str, np.ndarray] = field(default_factory=dict)
    lung_extent_z: dict[str, tuple[float, float, bool, bool]] = field(default_factory=dict)

    def coarse_index(self, voxels: np.ndarray) -> np.ndarray:
        """Coarse voxel holding each full-resolution voxel index (N, 3)."""
        limit = np.array(self.regions.shape) - 1
        return np.minimum(voxels // np.array(self.factors), limit)

    def coarse_world(self, coarse: np.ndarray) -> np.ndarray:
        full = coarse * np.array(self.factors) + np.array(self.offsets)
        return full @ self.affine[:3, :3].T + self.affine[:3, 3]

    def regions_at(self, box: tuple[slice, ...], lungs: bool) -> np.ndarray:
        """The nearest coarse lung (``lungs``) or tissue region (else) to each full-resolution voxel of ``box``.

        A voxel takes the label of the nearest coarse voxel of that kind, so the refined lung edge gets a lung
        and the tissue beside it a tissue region even where the coarse grid put them on the other side.
        """
        index = [
            np.minimum(np.arange(s.start, s.stop) // f, n - 1)
            for s, f, n in zip(box, self.factors, self.regions.shape, strict=True)
        ]
        low = [max(int(i[0]) - 3, 0) for i in index]
        crop = self.regions[tuple(slice(lo, int(i[-1]) + 4) for lo, i in zip(low, index, strict=True))]
        keep = (crop == RIGHT) | (crop == LEFT) if lungs else crop >= MEDIASTINUM
        crop = np.where(keep, crop, 0)
        if crop.any() and not keep.all():
            nearest = ndimage.distance_transform_edt(
                ~keep, sampling=np.array(self.factors), return_distances=False, return_indices=True
            )
            crop = crop[tuple(nearest)]
        return upsample(crop, [i - lo for i, lo in zip(index, low, strict=True)])

    def summary(self) -> dict[str, Any]:
        """The scan-level ``lungs`` section of the report."""
        voxel_ml = abs(float(np.linalg.det(self.affine[:3, :3]))) * float(np.prod(self.factors)) / 1000.0
        lungs = {}
        for name, label in (("right", RIGHT), ("left", LEFT)):
            top, bottom, cut_top, cut_bottom = self.lung_extent_z.get(name, (math.nan, math.nan, True, True))
            lungs[name] = {
                "found": name in self.lung_extent_z,
                "volume_ml_coarse": float(np.count_nonzero(self.regions == label) * voxel_ml),
                "superior_z_mm": None if math.isnan(top) else top,
                "inferior_z_mm": None if math.isnan(bottom) else bottom,
                "apex_in_scan": not cut_top,
                "base_in_scan": not cut_bottom,
            }
        return {
            **lungs,
            "split_method": self.split_method,
            "carina_world_mm": None if self.carina_world is None else [float(c) for c in self.carina_world],
            "airway": self.airway_note,
            "main_bronchi_found": sorted(set(self.bronchi_world) - {"trachea"}),
            "lobes": LOBE_NOTE,
            "conventions": LOCATION_CONVENTIONS,
        }


def track_airway(image_hu: np.ndarray, affine: np.ndarray, midline_x: float) -> Airway:
    """The carina and the main bronchi's voxels (world RAS mm), followed slice by slice from the top, and how.

    Returns:
        The carina (None when not found), the world points of the ``"right"`` and ``"left"`` main bronchi and the
        ``"trachea"`` (empty when not found), and a note saying whether and how the airway was found.
    """
    axis = axial_axis(affine)
    in_plane = [a for a in range(3) if a != axis]
    spacing = np.array(voxel_spacing(affine))
    pixel_mm2 = float(np.linalg.norm(np.cross(affine[:3, in_plane[0]], affine[:3, in_plane[1]])))
    n = image_hu.shape[axis]
    order = range(n - 1, -1, -1) if affine[2, axis] > 0 else range(n)  # superior first
    margin = [max(1, int(math.ceil(LUMEN_SEARCH_MM / spacing[a]))) for a in in_plane]

    def world(points2d: np.ndarray, k: int) -> np.ndarray:
        voxels = np.zeros((len(points2d), 3))
        voxels[:, in_plane] = points2d
        voxels[:, axis] = k
        return voxels @ affine[:3, :3].T + affine[:3, 3]

    def section(k: int, box: tuple[slice, slice]) -> np.ndarray:
        index = [slice(None)] * 3
        index[axis] = k
        index[in_plane[0]], index[in_plane[1]] = box
        return hu_below(np.asarray(image_hu[tuple(index)]), AIRWAY_MAX_HU)

    # the trachea on the top slice: a round air component walled by tissue, near the midline
    top = next(iter(order))
    full = (slice(0, image_hu.shape[in_plane[0]]), slice(0, image_hu.shape[in_plane[1]]))
    top_index = [slice(None)] * 3
    top_index[axis] = top
    top_tissue = hu_above(np.asarray(image_hu[tuple(top_index)]), BODY_MIN_HU)
    labels, count = ndimage.label(section(top, full))
    ring_steps = [max(1, int(math.ceil(TRACHEA_WALL_MM / s))) for s in spacing[in_plane]]
    best, best_area = None, 0.0
    for label, obj in enumerate(ndimage.find_objects(labels), start=1):
        if obj is None or any(s.start == 0 or s.stop == m for s, m in zip(obj, labels.shape, strict=True)):
            continue
        pixels = np.argwhere(labels[obj] == label) + [s.start for s in obj]
        area = len(pixels) * pixel_mm2
        box_area = (obj[0].stop - obj[0].start) * (obj[1].stop - obj[1].start) * pixel_mm2
        centre = world(pixels.mean(axis=0, keepdims=True), top)[0]
        # the trachea's wall and the mediastinum round it: tissue all round (a bronchus touches lung)
        grown = tuple(slice(max(o.start - r - 1, 0), o.stop + r + 1) for o, r in zip(obj, ring_steps, strict=True))
        inside = labels[grown] == label
        ring = ndimage.binary_dilation(inside, structure=np.ones((2 * ring_steps[0] + 1, 2 * ring_steps[1] + 1)))
        ring &= ~ndimage.binary_fill_holes(inside)
        walled = ring.any() and top_tissue[grown][ring].mean() >= TRACHEA_WALL_TISSUE
        if (
            TRACHEA_AREA_MM2[0] <= area <= TRACHEA_AREA_MM2[1]
            and area >= 0.5 * box_area
            and abs(centre[0] - midline_x) <= TRACHEA_MAX_OFFSET_MM
            and walled
            and area > best_area
        ):
            best, best_area = pixels, area
    if best is None:
        return None, {}, NO_TRACHEA

    def follow(pixels: np.ndarray, k: int) -> list[np.ndarray]:
        """The lumens on slice ``k`` that overlap ``pixels`` (of the slice above), largest first."""
        low = np.maximum(pixels.min(axis=0) - margin, 0)
        high = np.minimum(pixels.max(axis=0) + margin + 1, [image_hu.shape[a] for a in in_plane])
        air = section(k, (slice(low[0], high[0]), slice(low[1], high[1])))
        labels, _ = ndimage.label(air)
        hit = np.unique(labels[tuple((pixels - low).T)])
        found = [np.argwhere(labels == h) + low for h in hit if h]
        found = [f for f in found if len(f) * pixel_mm2 >= MIN_LUMEN_AREA_MM2]
        return sorted(found, key=len, reverse=True)

    trachea, previous = best, top
    trachea_points = [world(best, top)]
    slices = list(order)[1:]
    carina, split_at = None, 0
    for position, k in enumerate(slices):
        lumens = follow(trachea, k)
        if not lumens:
            return None, {}, "not found: the trachea ends without dividing within the scan"
        parent = world(trachea.mean(axis=0, keepdims=True), previous)[0]
        if len(lumens) == 1 and len(lumens[0]) > LEAK_GROWTH * len(trachea):
            # a thick slice can hold the whole bifurcation: one lumen reaching out to both sides of the trachea
            points = world(lumens[0], k)
            reach = TRACHEA_AREA_MM2[0] ** 0.5
            if (
                len(lumens[0]) * pixel_mm2 <= BIFURCATION_MAX_AREA_MM2
                and points[:, 0].max() - parent[0] >= reach
                and parent[0] - points[:, 0].min() >= reach
            ):
                carina = parent.copy()
                carina[2] = points[0, 2]
                sides = points[:, 0] > parent[0]
                branches = {"right": lumens[0][sides], "left": lumens[0][~sides]}
                split_at = position
                break
            return None, {}, "not found: the trachea's air spreads out (it leaks into the lungs) before dividing"
        if len(lumens) == 1:
            trachea, previous = lumens[0], k
            trachea_points.append(world(trachea, k))
            continue
        centres = [world(lumen.mean(axis=0, keepdims=True), k)[0] for lumen in lumens[:2]]
        if (centres[0][0] - parent[0]) * (centres[1][0] - parent[0]) >= 0:
            return None, {}, "not found: the trachea's first division is not into a right and a left lumen"
        carina = (centres[0] + centres[1]) / 2
        carina[2] = (world(np.zeros((1, 2)), k)[0][2] + world(np.zeros((1, 2)), previous)[0][2]) / 2
        branches = {("right" if c[0] > parent[0] else "left"): lumen for c, lumen in zip(centres, lumens, strict=False)}
        split_at = position
        break
    if carina is None:
        return None, {}, "not found: the scan ends before the trachea divides"
    bronchi = {}
    for side, pixels in branches.items():
        points = [world(pixels, slices[split_at])]
        for k in slices[split_at + 1 :]:
            if abs(world(np.zeros((1, 2)), k)[0][2] - carina[2]) > MAIN_BRONCHUS_MAX_MM:
                break
            lumens = follow(pixels, k)
            if len(lumens) != 1 or len(lumens[0]) > LEAK_GROWTH * len(pixels):
                break
            pixels = lumens[0]
            points.append(world(pixels, k))
        bronchi[side] = np.concatenate(points)
    bronchi["trachea"] = np.concatenate(trachea_points)
    return carina, bronchi, "found: the trachea followed from the scan's most superior slice to the carina"


def _split_lungs(lungs: np.ndarray, coarse_spacing: np.ndarray, x_of: Any, midline_x: float) -> tuple[np.ndarray, str]:
    """Label the coarse lungs 1 (right) / 2 (left); see the module docstring.

    ``x_of(mask, offset)`` is the mean world x of a mask lying at ``offset`` in ``lungs`` (``x_of(None, index)``:
    the world x of each voxel index of ``lungs``).
    """
    labels, count = ndimage.label(lungs, structure=np.ones((3, 3, 3)))
    out = np.zeros(lungs.shape, dtype=np.uint8)
    if count == 0:
        return out, "no lung found"
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(sizes)[::-1] + 1
    first = labels == order[0]

    def two_sides(a: np.ndarray, b: np.ndarray, offset: Any = 0) -> bool:
        return (x_of(a, offset) - midline_x) * (x_of(b, offset) - midline_x) < 0

    parts, method = None, ""
    if count >= 2 and sizes[order[1] - 1] >= SECOND_LUNG_MIN_FRACTION * sizes[order[0] - 1]:
        second = labels == order[1]
        if two_sides(first, second):
            parts, method = (first, second), "separate components"
    if parts is None:
        box = ndimage.find_objects(first.astype(np.uint8))[0]
        start = np.array([s.start for s in box])
        region = first[box]
        eroded = region
        for erosions in range(1, MAX_SPLIT_EROSIONS + 1):
            eroded = ndimage.binary_erosion(eroded)
            sub, n = ndimage.label(eroded, structure=np.ones((3, 3, 3)))
            if n < 2:
                continue
            sub_sizes = np.bincount(sub.ravel())[1:]
            top = np.argsort(sub_sizes)[::-1][:2] + 1
            seeds = [sub == label for label in top]  # in the box of the largest component
            if sub_sizes[top[1] - 1] >= SECOND_LUNG_MIN_FRACTION * sub_sizes[top[0] - 1] and two_sides(*seeds, start):
                seed_labels = np.zeros(region.shape, dtype=np.uint8)
                seed_labels[seeds[0]] = 1
                seed_labels[seeds[1]] = 2
                nearest = ndimage.distance_transform_edt(
                    seed_labels == 0, sampling=coarse_spacing, return_distances=False, return_indices=True
                )
                nearest_label = seed_labels[tuple(nearest)] * region
                parts = tuple(np.zeros(lungs.shape, dtype=bool) for _ in range(2))
                parts[0][box], parts[1][box] = nearest_label == 1, nearest_label == 2
                method = f"one component split by {erosions} erosion(s) and nearest-part assignment (watershed)"
                break
        if parts is None:
            # cut at the midline
            index = np.argwhere(first)
            xs = x_of(None, index)
            a, b = np.zeros(lungs.shape, dtype=bool), np.zeros(lungs.shape, dtype=bool)
            a[tuple(index[xs > midline_x].T)] = True
            b[tuple(index[xs <= midline_x].T)] = True
            parts, method = (a, b), "one component cut at the body midline"
    right_first = (
        x_of(parts[0], 0) > x_of(parts[1], 0) if parts[1].any() and parts[0].any() else x_of(first, 0) > midline_x
    )
    out[parts[0]] = RIGHT if right_first else LEFT
    out[parts[1]] = LEFT if right_first else RIGHT
    return out, method


def lung_anatomy(
    image_hu: np.ndarray,
    affine: np.ndarray,
    thorax: ThoraxMasks,
    midline_x: float,
    tumour: np.ndarray | None = None,
    airway: Airway | None = None,
    tumour_box: tuple[slice, ...] | None = None,
) -> LungAnatomy:
    """Left and right lungs, the tissue regions around them and the airway of one CT (module docstring).

    Args:
        image_hu: (X, Y, Z) CT in Hounsfield units.
        affine: its voxel-to-world (RAS+ mm) affine.
        thorax: its lungs (:func:`lung_tumor.thorax.thorax_masks`).
        midline_x: world x (mm) of the body midline (:func:`lung_tumor.report.body_midline_x`).
        tumour: the tumour mask, when known: its voxels are neither lung nor the tissue around it.
        airway: :func:`track_airway` of the CT when already followed (followed here if not).
        tumour_box: voxel slices holding every tumour voxel, when known (the rest of the mask is not read).
    """
    affine = np.asarray(affine, dtype=float)
    factors = thorax.factors
    shape = np.shape(image_hu)
    offsets = tuple(min(f // 2, n - 1) for f, n in zip(factors, shape, strict=True))
    coarse_spacing = np.array(voxel_spacing(affine)) * np.array(factors)
    carina, bronchi, airway_note = track_airway(image_hu, affine, midline_x) if airway is None else airway

    def to_full(index: np.ndarray) -> np.ndarray:
        return index * np.array(factors) + np.array(offsets)

    def x_of(mask: np.ndarray | None, offset: Any) -> Any:
        """Mean world x of a coarse mask lying at ``offset`` (the coordinates are linear: x of the mean index);
        ``x_of(None, index)``: the world x of each coarse voxel index."""
        if mask is None:
            return to_full(offset) @ affine[0, :3] + affine[0, 3]
        counts = [mask.sum(axis=tuple(b for b in range(3) if b != a)) for a in range(3)]
        mean = np.array([np.dot(np.arange(len(c)), c) / c.sum() for c in counts]) + offset
        return float(to_full(mean) @ affine[0, :3] + affine[0, 3])

    lungs = thorax.coarse_lungs.copy()
    airway_world = [carina[None]] if carina is not None else []
    for points in [*bronchi.values(), *airway_world]:
        full = np.rint((points - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T).astype(int)
        coarse = np.minimum(full // np.array(factors), np.array(lungs.shape) - 1)
        lungs[tuple(np.clip(coarse, 0, None).T)] = False
    # the lungs are split inside their bounding box (the coarse grid also holds the body and the air around it)
    regions = np.zeros(lungs.shape, dtype=np.uint8)
    box = mask_bounding_box(lungs)
    if box is None:
        method = "no lung found"
    else:
        start = np.array([s.start for s in box])
        regions[box], method = _split_lungs(
            lungs[box], coarse_spacing, lambda mask, offset: x_of(mask, start + offset), midline_x
        )

    # the extent of each lung along world z, and whether the scan cuts it at the top or the bottom
    ax = axial_axis(affine)
    last = regions.shape[ax] - 1
    plane_z = to_full(np.outer(np.arange(last + 1), np.eye(3, dtype=int)[ax])) @ affine[2, :3] + affine[2, 3]
    extent = {}
    for name, label in (("right", RIGHT), ("left", LEFT)):
        planes = np.flatnonzero(np.any(regions == label, axis=tuple(a for a in range(3) if a != ax)))
        if planes.size:
            ends = plane_z[planes[[0, -1]]]
            cut = {plane_z[p] > plane_z.mean(): p in (0, last) for p in planes[[0, -1]]}  # {is superior: cut}
            extent[name] = (float(ends.max()), float(ends.min()), cut.get(True, False), cut.get(False, False))

    # the tissue around the lungs (the tumour left out: it is neither)
    body = thorax.coarse_body
    if body is None or body.shape != regions.shape:
        body = body_mask(_sample(np.asarray(image_hu), factors), tissue_like_padding(image_hu, ax))
    tissue = body & (regions == 0)
    if tumour is not None:
        tissue &= ~sample_nonzero(tumour, factors, tumour_box)  # sampled first: no whole-CT copy
    _tissue_regions(regions, tissue, plane_z, extent, left_right_axis(affine), ax)

    return LungAnatomy(
        affine=affine,
        factors=factors,
        offsets=offsets,
        regions=regions,
        split_method=method,
        carina_world=carina,
        airway_note=airway_note,
        bronchi_world=bronchi,
        lung_extent_z=extent,
    )


def _tissue_regions(
    regions: np.ndarray,
    tissue: np.ndarray,
    plane_z: np.ndarray,
    extent: dict[str, tuple[float, float, bool, bool]],
    lr: int,
    ax: int,
) -> None:
    """Label the coarse ``tissue`` in ``regions`` (holding the two lungs) in place: mediastinum, diaphragm, chest wall.

    Mediastinum where the nearest lung voxels along the left-right line belong to different lungs; diaphragm where
    the lowest lung voxel above, on the craniocaudal line, lies in the lower third of its lung and the scan reaches
    below that lung (otherwise a lung's overhang is no diaphragm); chest wall the rest. The line searches run in the
    lungs' bounding box only: outside it no left-right line meets a lung, and below it each craniocaudal line keeps
    the lowest lung voxel of the box's last slice.
    """
    box = mask_bounding_box(regions)
    if box is None:
        regions[tissue] = CHEST_WALL
        return
    crop = regions[box]
    lung = crop > 0
    length = crop.shape[lr]
    # each lung voxel coded as 4 x its index along the line + its lung (1 or 2): the running maximum (minimum)
    # of the codes carries the nearest lung voxel before (after) each voxel and which lung it belongs to
    # int16 codes while they fit (the coarse grid is a few hundred voxels across): half the memory traffic of int32
    code_type = np.int16 if 4 * max(crop.shape) + 4 <= np.iinfo(np.int16).max else np.int32
    coded = np.arange(0, 4 * length, 4, dtype=code_type).reshape([-1 if a == lr else 1 for a in range(3)]) + crop
    before = np.maximum.accumulate(np.where(lung, coded, -1), axis=lr)
    after = np.flip(np.minimum.accumulate(np.flip(np.where(lung, coded, 4 * length), lr), axis=lr), lr)
    label_before = np.where(before >= 0, before & 3, 0)
    label_after = np.where(after < 4 * length, after & 3, 0)
    between = (label_before > 0) & (label_after > 0) & (label_before != label_after)
    superior_first = plane_z[0] > plane_z[-1]
    flip = (lambda a: np.flip(a, ax)) if not superior_first else (lambda a: a)
    slices = crop.shape[ax]
    steps = np.arange(0, 4 * slices, 4, dtype=code_type).reshape([-1 if a == ax else 1 for a in range(3)])
    base = np.maximum.accumulate(np.where(flip(lung), steps + flip(crop), -1), axis=ax)  # superior-first order
    base_label = np.where(base >= 0, base & 3, 0)
    base_step = np.maximum(base >> 2, 0)
    step_z = plane_z[box[ax]] if superior_first else plane_z[box[ax]][::-1]
    under_base = np.zeros(crop.shape, dtype=bool)
    for name, label in (("right", RIGHT), ("left", LEFT)):
        if name in extent and not extent[name][3]:
            top, bottom = extent[name][:2]
            low_enough = step_z <= top - 2 * (top - bottom) / 3  # per slice: in the lung's lower third
            under_base |= (base_label == label) & low_enough[base_step]
    lowest = np.take(under_base, [slices - 1], axis=ax)  # superior-first: the box's most inferior slice
    under_base = flip(under_base)
    crop_tissue = tissue[box]
    regions[tissue] = CHEST_WALL
    crop[crop_tissue & between] = MEDIASTINUM
    crop[crop_tissue & ~between & under_base] = DIAPHRAGM
    # below the box: the tissue under the lowest lung voxels of each craniocaudal line
    n = regions.shape[ax]
    below = slice(box[ax].stop, n) if superior_first else slice(0, box[ax].start)
    slab = tuple(below if a == ax else box[a] for a in range(3))
    regions[slab][tissue[slab] & lowest] = DIAPHRAGM


def _third(fraction: float, names: tuple[str, str, str]) -> str:
    return names[min(int(fraction * 3), 2)]


@dataclass
class LesionSurroundings:
    """One lesion and the CT around it, as far as the contact threshold reaches (:func:`lesion_surroundings`).

    Attributes:
        big: the voxel slices of the box around the lesion; ``lesion``, ``lungs`` (full-resolution lungs, other
            lesions left out) and ``tissue`` (body voxels that are neither lung nor lesion) are masks on it.
        points: the lesion's voxel indices in ``big``; ``world`` their world (RAS mm) centres, ``centroid`` the mean.
        shell: the voxels of ``big`` next to the lesion (one dilation).
        airway: the report's ``airway`` entry (distances to the carina and the nearest main bronchus).
        threshold_mm: the contact threshold.
    """

    big: tuple[slice, ...]
    lesion: np.ndarray
    lungs: np.ndarray
    tissue: np.ndarray
    points: np.ndarray
    world: np.ndarray
    centroid: np.ndarray
    shell: np.ndarray
    airway: dict[str, Any]
    threshold_mm: float


def lesion_surroundings(
    lesion_box: np.ndarray,
    box: tuple[slice, ...],
    all_lesions: np.ndarray,
    image_hu: np.ndarray,
    thorax: ThoraxMasks,
    affine: np.ndarray,
    airway: Airway,
    threshold_mm: float = CONTACT_THRESHOLD_MM,
) -> LesionSurroundings:
    """What :func:`lesion_location` needs of one lesion before the lungs are split left and right.

    Args:
        lesion_box: the lesion's mask on the voxels of ``box`` (full-resolution voxel slices of the CT).
        box: where ``lesion_box`` lies; it is grown here as far as the contact threshold needs.
        all_lesions: the whole tumour mask (other lesions are neither lung nor tissue).
        image_hu: the CT in Hounsfield units; ``affine`` its voxel-to-world affine.
        thorax: its lungs; ``airway``: :func:`track_airway` of it.
        threshold_mm: the contact threshold in millimetres.
    """
    spacing = np.array(voxel_spacing(affine))
    shape = np.shape(image_hu)
    reach = max(threshold_mm, REPORT_GAP_MM)
    grow = [int(math.ceil((reach + 2 * s) / s)) + 1 for s in spacing]
    big = tuple(slice(max(s.start - g, 0), min(s.stop + g, n)) for s, g, n in zip(box, grow, shape, strict=True))
    lesion = np.zeros([s.stop - s.start for s in big], dtype=bool)
    lesion[tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(box, big, strict=True))] = lesion_box
    lesions = np.asarray(all_lesions[big]) != 0
    lungs = thorax.lungs(big) & ~lesions
    tissue = body_mask(np.asarray(image_hu[big]), thorax.padding) & ~lungs & ~lesions
    points = np.argwhere(lesion)
    world = (points + [s.start for s in big]) @ affine[:3, :3].T + affine[:3, 3]
    shell = ndimage.binary_dilation(lesion, iterations=1) & ~lesion
    carina, bronchi, note = airway
    distances: dict[str, Any] = {"note": note}
    if carina is not None:
        distances["distance_to_carina_mm"] = float(np.linalg.norm(world - carina, axis=1).min())
        best = None
        for side, bronchus in bronchi.items():
            if side == "trachea":
                continue
            distance = float(cKDTree(bronchus).query(world)[0].min())
            if best is None or distance < best[1]:
                best = (side, distance)
        distances["nearest_main_bronchus"] = best[0] if best else None
        distances["distance_to_main_bronchus_mm"] = best[1] if best else None
    else:
        distances["distance_to_carina_mm"] = distances["distance_to_main_bronchus_mm"] = None
        distances["nearest_main_bronchus"] = None
    return LesionSurroundings(
        big, lesion, lungs, tissue, points, world, world.mean(axis=0), shell, distances, threshold_mm
    )


def lesion_location(
    lesion_box: np.ndarray,
    box: tuple[slice, ...],
    all_lesions: np.ndarray,
    image_hu: np.ndarray,
    thorax: ThoraxMasks,
    anatomy: LungAnatomy,
    threshold_mm: float = CONTACT_THRESHOLD_MM,
) -> dict[str, Any]:
    """Lung, zone, depth, contacts and airway distances of one lesion (the conventions in the docstrings).

    Args:
        lesion_box: the lesion's mask on the voxels of ``box`` (full-resolution voxel slices of the CT).
        box: where ``lesion_box`` lies; it is grown here as far as the contact threshold needs.
        all_lesions: the whole tumour mask (other lesions are neither lung nor tissue).
        image_hu: the CT in Hounsfield units.
        thorax: its lungs; ``anatomy``: :func:`lung_anatomy` of it.
        threshold_mm: the contact threshold in millimetres.

    Returns:
        ``{"location": {...}, "contacts": {...}, "airway": {...}}`` for the report's lesion entry: :func:`place_lesion`
        of :func:`lesion_surroundings` (the report runs the first while the lungs are split).
    """
    airway = (anatomy.carina_world, anatomy.bronchi_world, anatomy.airway_note)
    near = lesion_surroundings(lesion_box, box, all_lesions, image_hu, thorax, anatomy.affine, airway, threshold_mm)
    return place_lesion(near, anatomy)


def place_lesion(near: LesionSurroundings, anatomy: LungAnatomy) -> dict[str, Any]:
    """:func:`lesion_location` of a lesion whose surroundings are known, in the lungs split left and right."""
    affine = anatomy.affine
    spacing = np.array(voxel_spacing(affine))
    big, lesion, lungs = near.big, near.lesion, near.lungs
    points, world, centroid = near.points, near.world, near.centroid
    threshold_mm = near.threshold_mm
    reach = max(threshold_mm, REPORT_GAP_MM)
    regions = anatomy.regions_at(big, lungs=False)
    offset = np.array([s.start for s in big])

    # contacts, one structure at a time
    contacts: dict[str, Any] = {"threshold_mm": threshold_mm}
    for name, label in STRUCTURES.items():
        structure = near.tissue & (regions == label)
        finding = {"contact": False, "gap_mm": None, "contact_length_mm": 0.0}
        if _may_reach(structure, points, spacing, reach + 1e-6):  # else no gap within reach: none reported
            steps = _nearest_voxels(structure, points, spacing) - points
            gaps = _box_gap(steps.astype(float), spacing)
            gap = float(gaps.min())
            finding["gap_mm"] = gap if gap <= reach else None
            touching = gaps <= threshold_mm + 1e-6
            if touching.any():
                finding["contact"] = True
                finding["contact_length_mm"] = _extent_mm(world[touching], affine[:3, :3])
        contacts[name] = finding

    # which lung: the lung voxels near the lesion
    shell = near.shell
    shell_lung = shell & lungs
    lung_labels = anatomy.regions_at(big, lungs=True)[shell_lung]
    right, left = int(np.count_nonzero(lung_labels == RIGHT)), int(np.count_nonzero(lung_labels == LEFT))
    centre_coarse = anatomy.coarse_index(
        np.rint(np.linalg.solve(affine[:3, :3], centroid - affine[:3, 3])).astype(int)[None]
    )[0]
    centre_voxel = np.clip(np.rint(np.linalg.solve(affine[:3, :3], centroid - affine[:3, 3])) - offset, 0, None)
    centre_voxel = np.minimum(centre_voxel.astype(int), np.array(lesion.shape) - 1)
    centre_region = int(regions[tuple(centre_voxel)])  # the tissue region nearest the lesion's centroid
    shell_count = max(int(np.count_nonzero(shell)), 1)
    location: dict[str, Any] = {"lobe": LOBE_NOTE}
    if right + left == 0:
        lung = "outside both lungs (mediastinum)" if centre_region == MEDIASTINUM else "outside both lungs"
    elif (right + left) / shell_count < 0.5 and centre_region == MEDIASTINUM:
        lung = "outside both lungs (mediastinum)"
    else:
        lung = "right" if right >= left else "left"
    location["lung"] = lung
    location["lung_voxels_around"] = {"right": right, "left": left, "of": shell_count}
    if lung in ("right", "left"):
        top, bottom, cut_top, cut_bottom = anatomy.lung_extent_z[lung]
        if cut_bottom:
            contacts["diaphragm"] = {
                "contact": None,
                "gap_mm": None,
                "contact_length_mm": None,
                "note": "not assessed: the scan ends above this lung's base",
            }
        if cut_top or cut_bottom:
            location["zone"] = "not assessed: the lung reaches the scan's first or last slice (not all of it scanned)"
            location["zone_fraction"] = None
        else:
            fraction = float(np.clip((top - centroid[2]) / max(top - bottom, 1e-6), 0.0, 1.0))
            location["zone"], location["zone_fraction"] = _third(fraction, ZONES), fraction
        location.update(_depth(anatomy, centre_coarse, lung))
    else:
        location["zone"] = location["depth"] = "not assessed: the lesion is outside both lungs"
        location["zone_fraction"] = location["depth_fraction"] = None

    return {"location": location, "contacts": contacts, "airway": near.airway}


def _depth(anatomy: LungAnatomy, centre: np.ndarray, lung: str) -> dict[str, Any]:
    """Central / middle / peripheral third in the lesion centroid's axial slice (coarse grid)."""
    ax = axial_axis(anatomy.affine)
    plane = np.take(anatomy.regions, centre[ax], axis=ax)
    in_plane = [a for a in range(3) if a != ax]
    spacing = np.array(voxel_spacing(anatomy.affine))[in_plane] * np.array(anatomy.factors)[in_plane]
    pixel = tuple(centre[in_plane])
    if not (plane == MEDIASTINUM).any() or not (plane == CHEST_WALL).any():
        return {
            "depth": "not assessed: no mediastinum or chest wall beside the lung on the lesion's slice",
            "depth_fraction": None,
        }
    d_m = ndimage.distance_transform_edt(plane != MEDIASTINUM, sampling=spacing)[pixel]
    d_c = ndimage.distance_transform_edt(plane != CHEST_WALL, sampling=spacing)[pixel]
    fraction = float(d_m / max(d_m + d_c, 1e-6))
    return {"depth": _third(fraction, DEPTHS), "depth_fraction": fraction}


def lesion_relations(lesions: list[dict[str, Any]]) -> dict[str, Any]:
    """Same lung / same zone / other lung for each pair of lesions, and a summary line."""
    pairs = []
    for i, a in enumerate(lesions):
        for b in lesions[i + 1 :]:
            la, lb = a["location"]["lung"], b["location"]["lung"]
            if la not in ("right", "left") or lb not in ("right", "left"):
                relation = "not both in a lung"
            elif la != lb:
                relation = "other lung"
            elif a["location"]["zone"] in ZONES and a["location"]["zone"] == b["location"]["zone"]:
                relation = f"same lung, same zone ({la} lung, {a['location']['zone']} zone)"
            elif a["location"]["zone"] in ZONES and b["location"]["zone"] in ZONES:
                relation = f"same lung, other zone ({la} lung)"
            else:
                relation = f"same lung ({la} lung; zones not assessed)"
            pairs.append({"lesions": [a["lesion"], b["lesion"]], "relation": relation})
    counts: dict[str, list[int]] = {}
    for lesion in lesions:
        counts.setdefault(lesion["location"]["lung"], []).append(lesion["lesion"])
    parts = [f"{len(v)} in the {k} lung" if k in ("right", "left") else f"{len(v)} {k}" for k, v in counts.items()]
    summary = f"{len(lesions)} lesion(s): " + (", ".join(parts) if parts else "none")
    if len(counts.get("right", [])) and len(counts.get("left", [])):
        summary += " (both lungs)"
    return {"pairs": pairs, "summary": summary}


def _finding(name: str, finding: dict[str, Any]) -> str:
    if finding.get("contact") is None:
        return f"{name}: {finding.get('note', 'not assessed')}"
    if finding["contact"]:
        return f"{name}: yes, contact length {finding['contact_length_mm']:.1f} mm"
    gap = finding["gap_mm"]
    return f"{name}: no (gap {gap:.1f} mm)" if gap is not None else f"{name}: no (over {REPORT_GAP_MM:g} mm)"


def format_location(lesion: dict[str, Any]) -> list[str]:
    """Text lines for one lesion's location, contacts and airway distances (see :func:`lesion_location`)."""
    location = lesion["location"]
    lines = [
        f"  lung: {location['lung']}; zone: {location['zone']}; depth: {location['depth']}",
        f"  lobe: {location['lobe']}",
    ]
    contacts = lesion.get("contacts")
    if contacts:
        findings = "; ".join(_finding(name.replace("_", " "), contacts[name]) for name in STRUCTURES)
        lines.append(f"  contact (within {contacts['threshold_mm']:g} mm): {findings}")
    airway = lesion.get("airway")
    if airway:
        if airway["distance_to_carina_mm"] is None:
            lines.append(f"  carina and main bronchi: {airway['note']}")
        else:
            lines.append(
                f"  distance to the carina {airway['distance_to_carina_mm']:.1f} mm, to the "
                f"{airway['nearest_main_bronchus']} main bronchus {airway['distance_to_main_bronchus_mm']:.1f} mm"
            )
    return lines


def format_lungs(report: dict[str, Any]) -> list[str]:
    """Text lines for the scan's lungs and the lesions' relations."""
    lungs = report.get("lungs", {})
    if "split_method" not in lungs:
        return []
    carina = lungs["carina_world_mm"]
    where = "not found" if carina is None else "RAS (" + ", ".join(f"{c:.1f}" for c in carina) + ") mm"
    return [
        f"  lungs: left and right {lungs['split_method']}; carina {where}",
        f"  {report['lesion_relations']['summary']}",
    ]
