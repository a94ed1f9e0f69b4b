"""The tumour model shared by the synthetic CT engine and the tumour-insertion transform.

A tumour is a lobulated, optionally spiculated solid around a centre (:func:`tumour_shape`) with a
smooth internal texture and, above 30 mm, a darker necrotic core (:func:`tumour_texture`). Both work
on the broadcastable millimetre coordinates of a box of voxels (``index * spacing`` per axis), so the
same draws give the same shape on any grid.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

TEXTURE_HU = 18.0  # standard deviation of the internal structure
NECROSIS_MIN_DIAMETER_MM = 30.0
NECROSIS_HU = 35.0  # how much darker the core of a large tumour is


def _random_direction(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(3)
    return v / max(float(np.linalg.norm(v)), 1e-9)


def tumour_shape(
    rng: np.random.Generator,
    coords: list[np.ndarray],
    centre: np.ndarray,
    radius: float,
    lobes: int | None = None,
    spiculated: bool | None = None,
) -> np.ndarray:
    """Lobulated, optionally spiculated solid of nominal ``radius`` (mm) around ``centre`` (mm).

    Args:
        rng: the draws that fix the shape (the same draws give the same shape at another radius, up to
            the spikes' width, which stays in mm).
        coords: broadcastable mm coordinates of the box along each axis.
        centre: the centre in the same mm frame.
        radius: nominal radius in mm.
        lobes: number of lobes; drawn from 0-4 when None.
        spiculated: with or without spikes; drawn (even odds) when None.

    Returns:
        A boolean mask of the box.
    """
    vx, vy, vz = coords[0] - centre[0], coords[1] - centre[1], coords[2] - centre[2]
    r = np.sqrt(vx**2 + vy**2 + vz**2) + 1e-6
    ux, uy, uz = vx / r, vy / r, vz / r
    boundary = np.float32(1.0)
    for _ in range(4):
        n = _random_direction(rng)
        m = _random_direction(rng)
        boundary = boundary + rng.uniform(-0.12, 0.12) * (ux * n[0] + uy * n[1] + uz * n[2])
        boundary = boundary + rng.uniform(-0.2, 0.2) * ((ux * m[0] + uy * m[1] + uz * m[2]) ** 2 - 1 / 3)
    mask = r < radius * boundary
    for _ in range(rng.integers(0, 5) if lobes is None else lobes):
        n = _random_direction(rng) * radius * rng.uniform(0.45, 0.75)
        lobe_r = radius * rng.uniform(0.35, 0.6)
        mask |= (vx - n[0]) ** 2 + (vy - n[1]) ** 2 + (vz - n[2]) ** 2 < lobe_r**2
    if (rng.random() < 0.5) if spiculated is None else spiculated:  # thin spikes reaching out of the surface
        for _ in range(rng.integers(5, 16)):
            n = _random_direction(rng)
            reach = radius * rng.uniform(1.4, 2.2)
            along = vx * n[0] + vy * n[1] + vz * n[2]
            across2 = r**2 - along**2
            width = rng.uniform(0.8, 2.0) * np.clip(1 - along / reach, 0, 1)
            mask |= (along > 0) & (across2 < width**2)
    return mask


def tumour_texture(
    rng: np.random.Generator,
    coords: list[np.ndarray],
    centre: np.ndarray,
    radius: float,
    hu_range: tuple[float, float] = (-5.0, 50.0),
    sigma: float | tuple[float, ...] = 1.5,
) -> np.ndarray:
    """Tumour HU on the box: a mean drawn from ``hu_range``, smooth structure, a necrotic core above 30 mm.

    Args:
        rng: the draws that fix the texture and the mean.
        coords: broadcastable mm coordinates of the box (as for :func:`tumour_shape`).
        centre: the centre in mm.
        radius: nominal radius in mm (the core is the inner 35 %).
        hu_range: the mean HU is drawn uniformly from it (exactly ``low`` when ``low == high``).
        sigma: correlation length of the structure in voxels (one value or one per axis).

    Returns:
        float32 HU of the box (no scanner noise), unclipped.
    """
    shape = np.broadcast_shapes(*(c.shape for c in coords))
    structure = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    structure /= max(float(structure.std()), 1e-6)
    mean_hu = rng.uniform(*hu_range)
    hu = mean_hu + TEXTURE_HU * structure
    if 2 * radius > NECROSIS_MIN_DIAMETER_MM:
        core = (coords[0] - centre[0]) ** 2 + (coords[1] - centre[1]) ** 2 + (coords[2] - centre[2]) ** 2
        hu = np.where(core < (0.35 * radius) ** 2, hu - NECROSIS_HU, hu)
    return hu


TUMOUR_KINDS = ("solid", "part-solid", "ground-glass", "cavitary", "lobulated", "spiculated")
SOLID_HU = (-50.0, 90.0)  # clip of solid tumour tissue (before scanner noise)
GROUND_GLASS_HU = (-700.0, -450.0)  # mean of a ground-glass component
CAVITY_HU = (-1000.0, -975.0)


def tumour_of_kind(
    rng: np.random.Generator, coords: list[np.ndarray], centre: np.ndarray, radius: float, kind: str
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Shape, HU and parts of one tumour of a given kind (non-small-cell lung cancer appearances).

    ``solid``: a compact solid with at most one lobe; ``lobulated``: 3-6 lobes; ``spiculated``: spikes;
    ``part-solid``: a solid core (40-65 % of the radius) inside a ground-glass halo; ``ground-glass``:
    the halo alone; ``cavitary``: a thick solid wall (25-45 % of the radius) around air. The label of
    every kind is the whole lesion (halo and cavity included), as radiologists outline it.

    Args:
        rng: the draws that fix the tumour.
        coords: broadcastable mm coordinates of the box (as for :func:`tumour_shape`).
        centre: the centre in mm.
        radius: nominal radius in mm.
        kind: one of :data:`TUMOUR_KINDS`.

    Returns:
        The lesion mask, its HU (float32 on the whole box, meaningful on the mask, no scanner noise) and
        its parts (``solid``, ``ground_glass``, ``cavity``; boolean masks within the lesion).

    Raises:
        ValueError: unknown kind.
    """
    if kind not in TUMOUR_KINDS:
        raise ValueError(f"unknown tumour kind {kind!r}; use one of {TUMOUR_KINDS}")
    lobes = {"solid": int(rng.integers(0, 2)), "lobulated": int(rng.integers(3, 7))}.get(kind, int(rng.integers(0, 3)))
    mask = tumour_shape(rng, coords, centre, radius, lobes=lobes, spiculated=kind == "spiculated")
    solid = np.clip(tumour_texture(rng, coords, centre, radius), *SOLID_HU)
    if kind in ("solid", "lobulated", "spiculated"):
        return mask, solid, {"solid": mask}
    if kind == "cavitary":
        wall = radius * rng.uniform(0.25, 0.45)
        shift = rng.uniform(-0.3, 0.3, 3) * wall  # cavities are often eccentric
        inner = sum((c - (m + s)) ** 2 for c, m, s in zip(coords, centre, shift, strict=True)) < (radius - wall) ** 2
        cavity = mask & inner
        air = rng.uniform(*CAVITY_HU) + 5 * rng.standard_normal(mask.shape).astype(np.float32)
        return mask, np.where(cavity, air, solid).astype(np.float32), {"solid": mask & ~cavity, "cavity": cavity}
    structure = ndimage.gaussian_filter(rng.standard_normal(mask.shape).astype(np.float32), 1.0)
    structure /= max(float(structure.std()), 1e-6)
    halo = np.clip(rng.uniform(*GROUND_GLASS_HU) + 35 * structure, -740.0, -320.0)
    if kind == "ground-glass":
        return mask, halo.astype(np.float32), {"ground_glass": mask}
    offset = rng.uniform(-0.2, 0.2, 3) * radius
    core = mask & tumour_shape(rng, coords, centre + offset, radius * rng.uniform(0.4, 0.65), lobes=1, spiculated=False)
    return mask, np.where(core, solid, halo).astype(np.float32), {"solid": core, "ground_glass": mask & ~core}
