"""A chest phantom of known geometry: two box lungs, a mediastinum, a diaphragm, a trachea and two bronchi."""

from __future__ import annotations

import math

import numpy as np

SPACING = (1.0, 1.5, 2.5)  # x (patient's left-right), y, z: anisotropic, mm and voxels differ on two axes
ORIGIN = (-105.0, -80.0, -60.0)
SHAPE = (211, 107, 49)
LUNG_X = (20.0, 70.0)  # each lung spans this |x| (mediastinum between -20 and 20 mm)
LUNG_Y = 45.0
LUNG_Z = (-40.0, 50.0)  # the diaphragm below -40 mm
TRACHEA_RADIUS, BRONCHUS_RADIUS = 8.0, 5.0
BIFURCATION_Z = 20.0
BRONCHUS_ANGLE = math.radians(45)  # from the vertical
BRONCHUS_LENGTH = 30.0
# the carina: the top of the ridge between the bronchi, where their medial walls meet at the midline
CARINA = (0.0, 0.0, BIFURCATION_Z - BRONCHUS_RADIUS / math.sin(BRONCHUS_ANGLE))
LESION_HU = 40.0

AFFINE = np.diag([*SPACING, 1.0])
AFFINE[:3, 3] = ORIGIN


def world_grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World (RAS mm) x, y, z of every voxel centre."""
    axes = [o + s * np.arange(n) for o, s, n in zip(ORIGIN, SPACING, SHAPE, strict=True)]
    return np.meshgrid(*axes, indexing="ij")


def voxel_index(x: float, y: float, z: float) -> tuple[int, int, int]:
    return tuple(int(round((w - o) / s)) for w, o, s in zip((x, y, z), ORIGIN, SPACING, strict=True))


def chest(junction: bool = False) -> np.ndarray:
    """The phantom's HU (RAS voxel order, :data:`AFFINE`); ``junction``: the lungs meet in front of the
    mediastinum (an anterior junction line 7 mm deep, so the two lungs are one component)."""
    x, y, z = world_grid()
    hu = np.full(SHAPE, -1000.0, dtype=np.float32)
    hu[(x / 100) ** 2 + (y / 75) ** 2 <= 1] = 40.0
    lung = (np.abs(x) >= LUNG_X[0]) & (np.abs(x) <= LUNG_X[1]) & (np.abs(y) <= LUNG_Y)
    if junction:
        lung |= (np.abs(x) <= LUNG_X[1]) & (y >= LUNG_Y - 7) & (y <= LUNG_Y)
    hu[lung & (z >= LUNG_Z[0]) & (z <= LUNG_Z[1])] = -850.0
    hu[(x**2 + y**2 <= TRACHEA_RADIUS**2) & (z >= BIFURCATION_Z)] = -1000.0
    for side in (1, -1):
        direction = np.array([side * math.sin(BRONCHUS_ANGLE), 0.0, -math.cos(BRONCHUS_ANGLE)])
        rel = np.stack([x, y, z - BIFURCATION_Z], axis=-1)
        t = np.clip(rel @ direction, 0, BRONCHUS_LENGTH)
        distance = np.linalg.norm(rel - t[..., None] * direction, axis=-1)
        hu[distance <= BRONCHUS_RADIUS] = -1000.0
    return hu


def add_box(hu: np.ndarray, mask: np.ndarray, low: tuple[int, int, int], high: tuple[int, int, int]) -> None:
    """A box lesion on voxels low..high (inclusive), soft-tissue HU, marked in ``mask``."""
    box = tuple(slice(a, b + 1) for a, b in zip(low, high, strict=True))
    hu[box] = LESION_HU
    mask[box] = True


def add_sphere(hu: np.ndarray, mask: np.ndarray, centre: tuple[float, float, float], radius: float) -> None:
    """A spherical lesion of ``radius`` mm around a world point."""
    x, y, z = world_grid()
    ball = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= radius**2
    hu[ball] = LESION_HU
    mask[ball] = True


def to_lps(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same anatomy stored with the first two voxel axes reversed (L,P,S voxel order)."""
    flip = np.eye(4)
    flip[0, 0] = flip[1, 1] = -1
    flip[0, 3], flip[1, 3] = array.shape[0] - 1, array.shape[1] - 1
    return np.ascontiguousarray(array[::-1, ::-1]), affine @ flip
