"""The ``varied`` synthetic chest CT: anatomy that varies, findings that are not tumour, tumours of every kind.

:func:`lung_tumor.data.synth.synthesize_case` calls these with ``variety="varied"``; the default engine
never does, so its output stays the same for the same seed. Everything draws from the case's own
generator, so a varied case too depends only on ``(seed, case number)``.

- Anatomy (:func:`vary_anatomy`): body size and shape, lung height and width, diaphragm height with
  the right (liver) dome rising up to 9 cm into the lowest lung slices (seen as a round soft-tissue
  island surrounded by lung), heart size and position.
- Vessels and bronchi (:func:`paint_trees`): per lung an arterial tree that runs beside the bronchi
  (bronchovascular bundles) and a venous tree, both connected, tapering with each generation
  (asymmetric branching: a major child keeps 82-95 % of the radius, a minor one 60-85 %) down to a
  grid-dependent minimum radius that they reach near the pleura; bronchi with walls.
- Fissures (:func:`paint_lung_wide`): two oblique and the right horizontal fissure, thin slightly dense
  sheets painted with their partial-volume share of each voxel.
- Findings, never labelled: emphysema, ground-glass, atelectasis, pleural effusion, scarring,
  calcified granulomas.
- Tumours (:func:`paint_tumours`): the kinds of :data:`lung_tumor.data.tumour_model.TUMOUR_KINDS`, at
  peripheral, pleural-based, perihilar or mediastinal-abutting locations, 3 mm to 10 cm (the smallest
  is max(3 mm, 3 pixels, 2 slices)), one to five per scan, kinds in turn by case number; in every
  block of five consecutive case numbers one (drawn by seed) has no tumour (:func:`has_tumour`).

Every voxel painted as a finding or tumour part gets a code in the case's ``tissue`` map
(:data:`TISSUE_CODES`), which tests and the HU comparison read.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from lung_tumor.data.tumour_model import TUMOUR_KINDS, tumour_of_kind

if TYPE_CHECKING:
    from lung_tumor.data.synth import _Anatomy, _Volume

VARIETIES = ("default", "varied")
FINDINGS = ("emphysema", "ground_glass", "atelectasis", "effusion", "scar", "granuloma")
LOCATIONS = ("peripheral", "pleural", "perihilar", "mediastinal")
TUMOUR_FREE_EVERY = 5  # one case in five has no tumour
MAX_TUMOUR_MM = 100.0
TISSUE_CODES = {
    "vessel": 1,
    "airway": 2,
    "fissure": 3,
    **{name: 10 + k for k, name in enumerate(FINDINGS)},
    "tumour_solid": 20,
    "tumour_ground_glass": 21,
    "tumour_cavity": 22,
}
_SLAB = 16


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)


def _turn(rng: np.random.Generator, direction: np.ndarray, angle: float) -> np.ndarray:
    perpendicular = _unit(np.cross(direction, _unit(rng.standard_normal(3))))
    return _unit(math.cos(angle) * direction + math.sin(angle) * perpendicular)


def vary_anatomy(anat: _Anatomy, rng: np.random.Generator) -> _Anatomy:
    """Redraw body size and shape, lung size, diaphragm and liver dome, heart (the grid stays as drawn).

    The extra values are read by ``_paint_slabs`` with neutral defaults, so the default engine is unchanged.
    """
    fov = anat.shape[0] * anat.spacing[0]
    extent = anat.shape[2] * anat.spacing[2]
    half_width = min(anat.half_width * rng.uniform(0.8, 1.12), 0.47 * fov)
    half_depth = half_width * rng.uniform(0.55, 0.85)
    z_diaphragm = rng.uniform(0.06, 0.22) * extent
    lung_height = min(rng.uniform(170.0, 290.0), extent - z_diaphragm - 10.0)
    values = dict(anat.values)
    values.update(
        body_lobes=rng.uniform(0.02, 0.08),
        dome_right=rng.uniform(0.5, 1.8),  # times the default 35-55 mm: the liver dome reaches 2-9 cm up
        dome_left=rng.uniform(0.6, 1.4),
        dome_width=rng.uniform(0.38, 0.6),
        heart_scale=rng.uniform(0.8, 1.3),
        heart_dx=rng.uniform(-12.0, 25.0),
        heart_dz=rng.uniform(-15.0, 20.0),
        lung_centre=rng.uniform(0.45, 0.51),
        lung_width=rng.uniform(0.47, 0.56),
    )
    return dataclasses.replace(
        anat,
        half_width=half_width,
        half_depth=half_depth,
        z_diaphragm=z_diaphragm,
        lung_height=lung_height,
        values=values,
    )


def _paint_tube(
    vol: _Volume, start: np.ndarray, end: np.ndarray, r0: float, r1: float, hu: float, code: int, solid: bool
) -> None:
    """A tube inside the lung; ``solid`` ones (large vessels, bronchi) leave the lung mask so tumours abut them."""
    index, inside = vol.tube(start, end, r0, r1)
    inside &= vol.lung[index]
    vol.hu[index][inside] = hu
    vol.tissue[index][inside] = code
    if solid:
        vol.lung[index] &= ~inside


def paint_trees(
    vol: _Volume,
    anat: _Anatomy,
    rng: np.random.Generator,
    hila: list[tuple[int, np.ndarray]],
    airway: Callable[[np.ndarray, np.ndarray, float, float, bool], None],
) -> None:
    """Arterial trees with bronchi beside them, and venous trees, out of each hilum.

    Args:
        vol: the volume being painted.
        anat: the case's anatomy.
        rng: the case's generator.
        hila: (side, hilum in grid mm) per lung.
        airway: paints an airway (wall then lumen) ``(start, end, r0, r1, only_lung)``.
    """
    v = anat.values
    min_radius = anat.geometry.min_vessel_radius_mm
    min_lumen = max(2.0, 0.45 * float(anat.spacing[0]))  # bronchi fade out before the arteries beside them
    budget = 2 * anat.geometry.max_vessel_segments
    for side, hilum in hila:
        for tree in ("artery", "vein"):
            root = hilum.copy()
            if tree == "vein":  # the pulmonary veins drain lower and more anterior, into the left atrium
                root = root + np.array([-side * 5.0, -rng.uniform(10, 20), -rng.uniform(20, 35)])
            blood = v["blood"] + rng.uniform(-20, 20)
            segments = 0
            stack = []
            for _ in range(int(rng.integers(5, 9))):  # lobar and segmental branches
                d = _unit(np.array([side * 0.5, 0.0, 0.0]) + rng.standard_normal(3) * (0.5, 0.8, 2.0))
                d[0] = side * abs(d[0])
                radius = rng.uniform(3.5, 6.5)
                bronchus = radius * rng.uniform(0.8, 1.1) if tree == "artery" else 0.0
                beside = _unit(np.cross(d, rng.standard_normal(3)))
                start = root + rng.uniform(-1, 1, 3) * (3, 8, 15)
                stack.append((start, d, radius, bronchus, start + beside * (radius + bronchus + 1.5), beside, 0))
            while stack and segments < budget:
                start, direction, r0, rb, b_start, beside, generation = stack.pop(0)  # breadth first
                length = rng.uniform(3.0, 6.0) * r0 + 2.0
                r1 = r0 * rng.uniform(0.95, 0.99)
                end = start + direction * length
                grows = generation < 2 or _in_lung_or_tree(vol, end)
                _paint_tube(vol, start, end, r0, r1, blood, TISSUE_CODES["vessel"], solid=r0 > 2.5)
                segments += 1
                b_end = None
                if rb >= min_lumen:
                    offset = _unit(np.cross(direction, np.cross(beside, direction)))
                    b_end = end + offset * (r1 + rb + 0.3 * rb + 0.5)
                    airway(b_start, b_end, rb, rb * 0.95, True)
                if r1 < min_radius / 0.82 or not grows:
                    continue
                outward = _unit(_unit(end - root) + np.array([0.3 * side, 0.0, 0.0]))
                major = r1 * rng.uniform(0.82, 0.95)
                minor = r1 * rng.uniform(0.6, 0.85)
                for r_child, angle in ((major, rng.uniform(0.1, 0.4)), (minor, rng.uniform(0.6, 1.1))):
                    if r_child < min_radius:
                        continue
                    child = _turn(rng, _unit(direction + 0.5 * outward), angle)
                    rb_child = rb * r_child / r1 if b_end is not None else 0.0
                    b_next = b_end if b_end is not None else end
                    stack.append((end, child, r_child, rb_child, b_next, beside, generation + 1))


def _in_lung_or_tree(vol: _Volume, point: np.ndarray) -> bool:
    """In the lung or in a vessel or bronchus painted there (large ones leave the lung mask)."""
    index = np.round(point / vol.spacing).astype(int)
    if np.any(index < 0) or np.any(index >= vol.shape):
        return False
    index = tuple(index)
    return bool(vol.lung[index]) or vol.tissue[index] in (TISSUE_CODES["vessel"], TISSUE_CODES["airway"])


def paint_lung_wide(vol: _Volume, anat: _Anatomy, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Fissures, pleural effusion and emphysema: the painting that runs over every lung voxel, slab by slab.

    Returns:
        Finding records (effusion, emphysema) for the truth file.
    """
    nx, ny, nz = anat.shape
    px, py, dz = (float(s) for s in anat.spacing)
    a, b = anat.half_width, anat.half_depth
    cx, cy = float(anat.centre[0]), float(anat.centre[1])
    z0, height = anat.z_diaphragm, anat.lung_height
    x = (np.arange(nx, dtype=np.float32) * px - cx)[:, None, None]
    y = (np.arange(ny, dtype=np.float32) * py - cy)[None, :, None]
    # Fissures as heights z = f(x, y): oblique ones fall from the posterior upper lung to the front of the
    # diaphragm; the right horizontal one is nearly level at the hilum, in front of the oblique one.
    oblique = [(rng.uniform(0.55, 0.75), rng.uniform(0.0, 0.12), rng.uniform(-0.15, 0.15)) for _ in range(2)]
    horizontal = (rng.uniform(0.42, 0.55), rng.uniform(-0.06, 0.06))
    fissure_hu, thickness = rng.uniform(-100.0, 60.0), rng.uniform(0.6, 1.2)
    effusion_side = int(rng.choice([0, -1, 1, 2], p=[0.7, 0.12, 0.1, 0.08]))  # none, right, left, both
    effusion_depth, effusion_top = rng.uniform(10.0, 60.0), rng.uniform(0.2, 0.55)
    effusion_hu = rng.uniform(0.0, 20.0)
    emphysema = rng.random() < 0.35
    records: list[dict[str, Any]] = []
    counts = {"effusion": 0, "emphysema": 0}
    if emphysema:
        counts["emphysema"] = _paint_emphysema(vol, anat, rng)
    for k0 in range(0, nz, _SLAB):
        k1 = min(k0 + _SLAB, nz)
        z = (np.arange(k0, k1, dtype=np.float32) * dz)[None, None, :]
        lung = vol.lung[:, :, k0:k1]
        hu = vol.hu[:, :, k0:k1]
        tissue = vol.tissue[:, :, k0:k1]
        if effusion_side:
            depth = effusion_depth * np.clip(1 - (z - z0) / (effusion_top * height), 0, 1)
            ys = np.where(lung, np.arange(ny)[None, :, None], -1).max(axis=1, keepdims=True) * py - cy
            sides = x < 0 if effusion_side == -1 else (x > 0 if effusion_side == 1 else np.ones_like(x, bool))
            fluid = lung & sides & (y > ys - depth)
            hu[fluid] = effusion_hu + rng.uniform(-3, 3)
            tissue[fluid] = TISSUE_CODES["effusion"]
            lung &= ~fluid
            counts["effusion"] += int(fluid.sum())
        share = np.zeros(lung.shape, np.float32)
        for k, (rise, tilt, curve) in enumerate(oblique):
            side = -1.0 if k == 0 else 1.0
            # z = z0 + height * (tilt + rise * (y / b + 1) / 2 + curve * (x / a) ** 2), posterior higher
            slope_y = height * rise / (2 * b)
            f = z0 + height * (tilt + rise * (y / b + 1) / 2 + curve * (x / a) ** 2)
            normal = np.array([0.0, slope_y, 1.0]) / math.hypot(slope_y, 1.0)
            share = np.maximum(share, _sheet_share(np.where(side * x > 0, z - f, 1e3), normal, thickness, px, py, dz))
        level, tilt = horizontal
        f_obl = z0 + height * (oblique[0][1] + oblique[0][0] * (y / b + 1) / 2 + oblique[0][2] * (x / a) ** 2)
        f_h = z0 + height * (level + tilt * y / b)
        ahead = (x < 0) & (f_h > f_obl)  # only in the right upper lung, anterior to the oblique fissure
        share = np.maximum(
            share, _sheet_share(np.where(ahead, z - f_h, 1e3), np.array([0, 0, 1.0]), thickness, px, py, dz)
        )
        on = lung & (share > 0)
        hu[on] += share[on] * (fissure_hu - hu[on])
        tissue[on & (share > 0.25) & (tissue == 0)] = TISSUE_CODES["fissure"]
    for kind in ("effusion", "emphysema"):
        if counts[kind]:
            records.append(
                {"kind": kind, "voxels": counts[kind], "volume_ml": round(counts[kind] * px * py * dz / 1000, 2)}
            )
    return records


def _sheet_share(
    distance_z: np.ndarray, normal: np.ndarray, thickness: float, px: float, py: float, dz: float
) -> np.ndarray:
    """Partial-volume share of a sheet of ``thickness`` mm in each voxel, from the vertical distance to it."""
    across = np.abs(distance_z) * abs(float(normal[2]))
    extent = abs(normal[0]) * px + abs(normal[1]) * py + abs(normal[2]) * dz  # voxel extent along the normal
    covered = np.clip(np.minimum(thickness, (thickness + extent) / 2 - across), 0, None)
    return (covered / max(extent, thickness)).astype(np.float32)


def _random_lung_point(
    vol: _Volume, rng: np.random.Generator, where: Callable[[np.ndarray], bool] | None = None
) -> np.ndarray | None:
    shape = np.array(vol.shape)
    for _ in range(400):
        point = rng.integers(0, shape) * vol.spacing
        if vol.inside_lung(point) and (where is None or where(point)):
            return point
    return None


def _ball(vol: _Volume, centre: np.ndarray, radius: float) -> tuple[tuple[slice, ...], np.ndarray] | None:
    found = vol.box(centre - radius, centre + radius)
    if found is None:
        return None
    index, (gx, gy, gz) = found
    return index, (gx - centre[0]) ** 2 + (gy - centre[1]) ** 2 + (gz - centre[2]) ** 2 < radius**2


def _paint_emphysema(vol: _Volume, anat: _Anatomy, rng: np.random.Generator) -> int:
    """Centrilobular emphysema: round holes below -950 HU, most in the upper lung; returns the voxel count."""
    smallest = 1.2 * float(max(anat.spacing[:2]))
    upper = anat.z_diaphragm + rng.uniform(0.3, 0.6) * anat.lung_height
    holes = int(rng.integers(50, 400))
    count = 0
    for _ in range(holes):
        point = _random_lung_point(vol, rng, lambda p: p[2] > upper or rng.random() < 0.2)
        if point is None:
            break
        found = _ball(vol, point, rng.uniform(smallest, max(2.5 * smallest, 8.0)))
        if found is None:
            continue
        index, inside = found
        inside &= vol.lung[index]
        vol.hu[index][inside] = rng.uniform(-1000.0, -975.0)
        vol.tissue[index][inside] = TISSUE_CODES["emphysema"]
        count += int(inside.sum())
    return count


def paint_findings(vol: _Volume, anat: _Anatomy, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Atelectasis, scarring, calcified granulomas and ground-glass patches (none labelled)."""
    records = []
    pixel = float(max(anat.spacing[:2]))
    z_low = anat.z_diaphragm + 0.4 * anat.lung_height

    def record(kind: str, index: tuple[slice, ...], mask: np.ndarray, size_mm: float) -> None:
        centre = np.argwhere(mask).mean(axis=0) + [s.start for s in index]
        records.append(
            {
                "kind": kind,
                "centre_voxel": [round(float(c), 2) for c in centre],
                "size_mm": round(size_mm, 2),
                "voxels": int(mask.sum()),
            }
        )

    for _ in range(int(rng.choice([0, 1, 2], p=[0.6, 0.3, 0.1]))):  # atelectasis: basal, posterior wedge
        point = _random_lung_point(vol, rng, lambda p: p[2] < z_low and p[1] > anat.centre[1])
        if point is None:
            break
        step = _unit(np.array([0.0, 1.0, -0.3]) + 0.3 * rng.standard_normal(3))
        while vol.inside_lung(point + step):
            point = point + step
        length = rng.uniform(20.0, 50.0)
        inward = _unit(-step + 0.2 * rng.standard_normal(3))
        apex = point + inward * length
        found = vol.box(np.minimum(apex, point) - length, np.maximum(apex, point) + length)
        if found is None:
            continue
        index, (gx, gy, gz) = found
        vx, vy, vz = gx - apex[0], gy - apex[1], gz - apex[2]
        along = -(vx * inward[0] + vy * inward[1] + vz * inward[2])
        across2 = vx**2 + vy**2 + vz**2 - along**2
        half_angle = math.tan(rng.uniform(0.3, 0.55))
        wedge = (along > 0) & (along < 1.4 * length) & (across2 < (along * half_angle) ** 2) & vol.lung[index]
        vol.hu[index][wedge] = rng.uniform(10.0, 50.0) + rng.uniform(-8, 8)
        vol.tissue[index][wedge] = TISSUE_CODES["atelectasis"]
        vol.lung[index] &= ~wedge
        if wedge.any():
            record("atelectasis", index, wedge, length)

    for _ in range(int(rng.choice([0, 1, 2, 3], p=[0.55, 0.25, 0.12, 0.08]))):  # scars: bands to the pleura
        point = _random_lung_point(vol, rng)
        if point is None:
            break
        direction = _unit(rng.standard_normal(3) * (1, 1, 0.3))  # mostly in-plane, like most scars
        radius = max(0.8, 0.5 * pixel)
        hu = rng.uniform(-80.0, 30.0)
        start = point
        pieces = []
        for _ in range(int(rng.integers(2, 5))):
            end = start + direction * rng.uniform(8, 18)
            index, inside = vol.tube(start, end, radius, radius)
            inside &= vol.lung[index]
            vol.hu[index][inside] = hu
            vol.tissue[index][inside] = TISSUE_CODES["scar"]
            vol.lung[index] &= ~inside
            pieces.append(np.argwhere(inside) + [s.start for s in index])
            start, direction = end, _turn(rng, direction, rng.uniform(0.0, 0.35))
        band = np.concatenate(pieces)
        if len(band):
            lo = band.min(axis=0)
            box = tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, band.max(axis=0), strict=True))
            mask = np.zeros([s.stop - s.start for s in box], bool)
            mask[tuple((band - lo).T)] = True
            record("scar", box, mask, float(np.linalg.norm(start - point)))

    for _ in range(int(rng.choice([0, 1, 2, 4], p=[0.5, 0.25, 0.15, 0.1]))):  # calcified granulomas
        point = _random_lung_point(vol, rng)
        if point is None:
            break
        point = np.round(point / vol.spacing) * vol.spacing  # on a voxel centre: the core stays dense after blur
        radius = rng.uniform(max(1.5, 1.2 * pixel), max(4.0, 1.6 * pixel))
        found = _ball(vol, point, radius)
        if found is None:
            continue
        index, inside = found
        inside &= vol.lung[index]
        vol.hu[index][inside] = rng.uniform(600.0, 1200.0)
        vol.tissue[index][inside] = TISSUE_CODES["granuloma"]
        vol.lung[index] &= ~inside
        if inside.any():
            record("granuloma", index, inside, 2 * radius)

    for _ in range(int(rng.choice([0, 1, 2], p=[0.6, 0.3, 0.1]))):  # ground-glass patches
        point = _random_lung_point(vol, rng)
        if point is None:
            break
        radius = rng.uniform(max(12.0, 4 * pixel), 40.0)
        found = vol.box(point - radius, point + radius)
        if found is None:
            continue
        index, (gx, gy, gz) = found
        r2 = (
            ((gx - point[0]) / 1.0) ** 2 + ((gy - point[1]) / rng.uniform(0.6, 1.0)) ** 2 + ((gz - point[2]) / 1.2) ** 2
        )
        wobble = rng.standard_normal(r2.shape).astype(np.float32)
        wobble = ndimage.gaussian_filter(wobble, 2.0)
        wobble /= max(float(wobble.std()), 1e-6)
        weight = np.clip(2.5 * (1 - r2 / radius**2) + 0.5 * wobble, 0, 1) * vol.lung[index]
        target = rng.uniform(-650.0, -480.0)
        vol.hu[index] += weight * (target - vol.hu[index])
        core = (weight > 0.7) & (vol.tissue[index] == 0)
        vol.tissue[index][core] = TISSUE_CODES["ground_glass"]
        if core.any():
            record("ground_glass", index, core, 2 * radius)
    return records


def has_tumour(seed: int, case_index: int) -> bool:
    """One case in each block of five consecutive case numbers (drawn by seed) has no tumour: exactly a fifth."""
    block = TUMOUR_FREE_EVERY
    return int(np.random.default_rng([seed, case_index // block, block]).integers(block)) != case_index % block


def tumour_sizes(anat: _Anatomy) -> tuple[float, float]:
    """Smallest and largest tumour diameter (mm) on this grid: 3 mm where the grid is fine enough, up to 10 cm."""
    px, _, dz = (float(s) for s in anat.spacing)
    return max(3.0, 3 * px, 2 * dz), MAX_TUMOUR_MM


def paint_tumours(
    vol: _Volume,
    anat: _Anatomy,
    rng: np.random.Generator,
    hila: list[tuple[int, np.ndarray]],
    count: int,
    case_index: int,
) -> list[dict[str, Any]]:
    """Place ``count`` tumours of all kinds at all locations; paints HU, label and tissue codes.

    Returns:
        Raw lesion records (``index``, ``mask``, ``centre``, ``radius``, ``kind``, ``location``).
    """
    lesions: list[dict[str, Any]] = []
    lo_d, hi_d = tumour_sizes(anat)
    kind_sizes = {
        "ground-glass": (lo_d, 40.0),
        "part-solid": (max(lo_d, 8.0, 8 * float(anat.spacing[0])), 50.0),
        "cavitary": (max(lo_d, 15.0, 8 * float(anat.spacing[0])), hi_d),
    }
    for k in range(count):
        # kinds in turn (by case number), and the first tumour's location too, so that every few cases show
        # every kind and location; further locations are drawn, peripheral ones most often
        kind = TUMOUR_KINDS[(case_index + k) % len(TUMOUR_KINDS)]
        if k == 0:
            location = LOCATIONS[case_index % len(LOCATIONS)]
        else:
            location = str(rng.choice(LOCATIONS, p=[0.35, 0.3, 0.2, 0.15]))
        lo, hi = kind_sizes.get(kind, (lo_d, hi_d))
        diameter = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        for attempt in range(40):
            if attempt and attempt % 10 == 0:
                diameter = max(lo, 0.75 * diameter)  # a tumour too big for this lung is drawn smaller
            lesion = _place_tumour(vol, anat, rng, hila, kind, location, diameter / 2, lesions)
            if lesion is not None:
                lesions.append(lesion)
                break
    return lesions


def _place_tumour(
    vol: _Volume,
    anat: _Anatomy,
    rng: np.random.Generator,
    hila: list[tuple[int, np.ndarray]],
    kind: str,
    location: str,
    radius: float,
    others: list[dict[str, Any]],
) -> dict[str, Any] | None:
    if location == "perihilar":
        side, hilum = hila[int(rng.integers(0, len(hila)))]
        point = hilum + np.array([side * rng.uniform(5, 25), rng.uniform(-20, 20), rng.uniform(-30, 30)])
        if not vol.inside_lung(point):
            return None
    else:
        point = _random_lung_point(vol, rng)
        if point is None:
            return None
    if location in ("pleural", "mediastinal"):
        side = 1.0 if point[0] > anat.centre[0] else -1.0
        step = np.array([side, 0.0, 0.0]) * (1 if location == "pleural" else -1)
        step = _unit(step + 0.4 * rng.standard_normal(3) * np.array([0, 1, 0.5]))
        while vol.inside_lung(point + step):
            point = point + step
        point = point - step * 0.6 * radius
    if any(np.linalg.norm(point - other["centre"]) < radius + other["radius"] + 5 for other in others):
        return None
    found = vol.box(point - 2.3 * radius, point + 2.3 * radius)
    if found is None:
        return None
    index, coords = found
    mask, hu, parts = tumour_of_kind(rng, coords, point, radius, kind)
    # never touching another tumour (not even diagonally), so each label component belongs to one lesion
    allowed = vol.lung[index] & ~ndimage.binary_dilation(vol.label[index] > 0, np.ones((3, 3, 3), bool))
    mask &= allowed
    nominal_voxels = 4 / 3 * np.pi * radius**3 / float(np.prod(anat.spacing))
    if mask.sum() < max(0.4 * nominal_voxels, 4) or any(not (part & mask).any() for part in parts.values()):
        return None
    vol.hu[index][mask] = hu[mask]
    vol.label[index][mask] = 1
    vol.lung[index] &= ~mask
    for part, part_mask in parts.items():
        vol.tissue[index][part_mask & mask] = TISSUE_CODES[f"tumour_{part}"]
    return {"index": index, "mask": mask, "centre": point, "radius": radius, "location": location, "kind": kind}
