"""Synthetic chest CT in the MSD Task06_Lung layout, with exact tumour labels and a ground-truth file.

Each case is a CT volume in Hounsfield units (int16) with the anatomy a lung tumour model has to
tell tumours from: body wall (skin, fat, muscle), two textured lungs above a domed diaphragm,
abdomen (liver, stomach with gas, bowel fat and gas) in the lowest slices, heart, aorta,
trachea and bronchi, branching pulmonary vessels (tumour-sized near the hilum, the usual false
positives), spine, ribs, sternum and a scanner table; then 1-3 lobulated or spiculated tumours
inside the lung parenchyma (some touching the chest wall or the mediastinum), slight in-plane
blur and scanner noise. About one case in eight (every case whose number is a multiple of 8)
has no tumour. The label is exactly the voxels painted as tumour.

Two sizes:

- ``full``: like MSD, 512 x 512 in-plane at 0.6-1.0 mm, 100-300 slices of 1.0-2.5 mm;
  tumours 5-60 mm in diameter.
- ``small``: 128 x 128 in-plane at 2.5-3.0 mm, 48-64 slices of 4.5-5.5 mm, the same anatomy
  in millimetres; tumours 15-60 mm so that each still spans at least about three slices.

``variety="varied"`` (``lung-tumor synth --variety varied``) draws far more variety on the same grids:
see :mod:`lung_tumor.data.variety` (anatomy, vessel and bronchus trees, fissures, findings that are
not tumour, six tumour kinds from 3 mm to 10 cm, a fifth of the cases tumour-free). The default never
calls it and gives the same bytes for the same seed as before it existed.

Arrays are (X, Y, Z) with the voxel axes pointing to the patient's left, posterior and
superior (affine ``diag(-dx, -dy, dz)``, axis codes L, P, S like the MSD and LIDC files), so
slice 0 is the lowest (abdominal) slice. A case depends only on ``(seed, case number)``.

With an ``acquisition`` (:mod:`lung_tumor.data.acquisition`; ``synth --acquisition varied`` draws one
per case from the seed) the phantom is painted on 1 mm (``full``) or 1.5 mm (``small``) slices and then
acquired as a scanner would: other pixel spacings, matrices, slice profiles, kernels and noise, scan
circle padding, cropped fields of view, thin slabs, orientations and rescaled storage.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from lung_tumor.data import variety as _variety
from lung_tumor.data.acquisition import Acquisition, acquire, lesion_records, preset_acquisition
from lung_tumor.data.msd import write_dataset_json
from lung_tumor.data.tumour_model import tumour_shape, tumour_texture
from lung_tumor.errors import LungTumorError
from lung_tumor.io import save_nifti, write_json
from lung_tumor.outputs import OutputPlan, marker

log = logging.getLogger(__name__)

SIZES = ("small", "full")
ACQUISITIONS = ("default", "varied")
TRUTH_FILE = "synth_truth.json"
_DATASET_ENTRIES = {"dataset.json", TRUTH_FILE, "imagesTr", "labelsTr", "imagesTs"}
NO_TUMOUR_EVERY = 8  # lung_008, lung_016, ... have no tumour
HU_MIN, HU_MAX = -1024, 3071
_SLAB = 16  # slices per vectorised block: bounds the float32 temporaries of a full-size case


@dataclass(frozen=True)
class _Geometry:
    """Grid and sampling ranges of one size."""

    in_plane: int
    pixel_mm: tuple[float, float]
    slices: tuple[int, int]
    slice_mm: tuple[float, float]
    tumour_mm: tuple[float, float]
    min_vessel_radius_mm: float
    max_vessel_segments: int


_GEOMETRY = {
    "full": _Geometry(512, (0.6, 1.0), (100, 300), (1.0, 2.5), (5.0, 60.0), 0.8, 3000),
    "small": _Geometry(128, (2.5, 3.0), (48, 64), (4.5, 5.5), (15.0, 60.0), 1.4, 800),
}
# With an acquisition the phantom is painted on finer slices (the scanner's slice profile averages them)
# that do not depend on the acquisition, so one seed gives the same patient under every acquisition.
_PHANTOM_SLICE_MM = {"full": 1.0, "small": 1.5}
_ACQUISITION_STREAM, _NOISE_STREAM = 1, 2  # extra seed words of the acquisition's random draws


@dataclass
class SyntheticCase:
    """One synthetic CT scan with its tumour label and ground truth.

    Attributes:
        case_id: ``lung_XXX``.
        image: int16 HU, shape (X, Y, Z); with an acquisition its stored values (see ``rescale``) in
            its orientation.
        label: uint8 tumour mask (0/1), same shape.
        affine: 4x4 voxel-to-world (RAS mm) matrix.
        tumours: one dict per lesion: ``centre_voxel`` and ``centre_mm`` (centroid of the label
            voxels of the lesion), ``diameter_mm`` (nominal), ``voxels``, ``volume_ml``, ``location``
            (with an acquisition also ``painted_centre_mm`` and ``painted_volume_ml``).
        noise_hu: standard deviation of the scanner noise in the final image.
        acquisition: the acquisition, or ``None`` for synth's own (L, P, S int16, slight blur).
        rescale: ``(slope, intercept)`` from ``image`` to HU (NIfTI ``scl_slope``/``scl_inter``), or ``None``.
        tumours_not_acquired: painted lesions outside the acquired field, slab or resolution.
        variety: ``default`` or ``varied`` (see :func:`synthesize_case`).
        findings: ``varied`` only: one dict per finding that is not tumour (``kind``, size, voxels), never labelled.
        tissue: ``varied`` only: uint8 map of :data:`lung_tumor.data.variety.TISSUE_CODES` (vessels, airways,
            fissures, findings, tumour parts), for tests and HU comparisons; not written to disk.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    tumours: list[dict[str, Any]] = field(default_factory=list)
    noise_hu: float = 0.0
    acquisition: Acquisition | None = None
    rescale: tuple[float, float] | None = None
    tumours_not_acquired: list[dict[str, Any]] = field(default_factory=list)
    variety: str = "default"
    findings: list[dict[str, Any]] = field(default_factory=list)
    tissue: np.ndarray | None = None

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm (x, y, z)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))


class _SmoothField:
    """Gaussian-correlated noise with unit variance, evaluated slab by slab as a separable tensor product."""

    def __init__(self, rng: np.random.Generator, shape: tuple[int, int, int], spacing: np.ndarray, scale_mm: float):
        self.weights = [_interpolation_weights(n, s, scale_mm) for n, s in zip(shape, spacing, strict=True)]
        self.coarse = rng.standard_normal(tuple(w.shape[1] for w in self.weights), dtype=np.float32)

    def slab(self, k0: int, k1: int) -> np.ndarray:
        """The field on slices ``k0:k1``, shape (X, Y, k1 - k0)."""
        wx, wy, wz = self.weights
        abz = self.coarse @ wz[k0:k1].T
        ayz = np.matmul(wy[None], abz)
        return (wx @ ayz.reshape(len(abz), -1)).reshape(len(wx), len(wy), k1 - k0)


def _interpolation_weights(n: int, spacing: float, scale_mm: float) -> np.ndarray:
    positions = np.arange(n) * spacing
    nodes = np.arange(-2 * scale_mm, n * spacing + 2 * scale_mm, scale_mm)
    weights = np.exp(-0.5 * ((positions[:, None] - nodes[None, :]) / scale_mm) ** 2)
    return (weights / np.sqrt((weights**2).sum(axis=1, keepdims=True))).astype(np.float32)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)


def _rotate_random(rng: np.random.Generator, direction: np.ndarray, angle: float) -> np.ndarray:
    """Turn ``direction`` by ``angle`` radians towards a random perpendicular."""
    perpendicular = _unit(np.cross(direction, _unit(rng.standard_normal(3))))
    return _unit(math.cos(angle) * direction + math.sin(angle) * perpendicular)


class _Volume:
    """The HU volume being painted, its lung mask and tumour label, with grid-mm helpers."""

    def __init__(self, shape: tuple[int, int, int], spacing: np.ndarray) -> None:
        self.shape = shape
        self.spacing = spacing
        self.hu = np.empty(shape, np.float32)
        self.lung = np.zeros(shape, bool)
        self.label = np.zeros(shape, np.uint8)
        self.tissue = np.zeros(shape, np.uint8)  # finding and tumour-part codes of the varied engine

    def box(self, lo_mm: np.ndarray, hi_mm: np.ndarray) -> tuple[tuple[slice, ...], list[np.ndarray]] | None:
        """Index box covering ``[lo_mm, hi_mm]`` (grid mm) and the broadcastable mm coordinates in it."""
        lo = np.maximum(np.floor(lo_mm / self.spacing).astype(int), 0)
        hi = np.minimum(np.ceil(hi_mm / self.spacing).astype(int) + 1, self.shape)
        if np.any(hi <= lo):
            return None
        index = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        coords = [
            (np.arange(a, b, dtype=np.float32) * s).reshape([-1 if d == axis else 1 for d in range(3)])
            for axis, (a, b, s) in enumerate(zip(lo, hi, self.spacing, strict=True))
        ]
        return index, coords

    def tube(self, start: np.ndarray, end: np.ndarray, r0: float, r1: float) -> tuple[tuple[slice, ...], np.ndarray]:
        """Voxels within a tapered tube (radius ``r0`` at ``start`` to ``r1`` at ``end``, grid mm)."""
        reach = max(r0, r1)
        found = self.box(np.minimum(start, end) - reach, np.maximum(start, end) + reach)
        if found is None:
            return (slice(0, 0),) * 3, np.zeros((0, 0, 0), bool)
        index, (gx, gy, gz) = found
        axis = end - start
        length2 = max(float(axis @ axis), 1e-6)
        vx, vy, vz = gx - start[0], gy - start[1], gz - start[2]
        t = np.clip((vx * axis[0] + vy * axis[1] + vz * axis[2]) / length2, 0.0, 1.0)
        dist2 = (vx - t * axis[0]) ** 2 + (vy - t * axis[1]) ** 2 + (vz - t * axis[2]) ** 2
        return index, dist2 < (r0 + (r1 - r0) * t) ** 2

    def inside_lung(self, point_mm: np.ndarray) -> bool:
        index = np.round(point_mm / self.spacing).astype(int)
        if np.any(index < 0) or np.any(index >= self.shape):
            return False
        return bool(self.lung[tuple(index)])


@dataclass
class _Anatomy:
    """Per-case anatomical parameters in mm (centred in-plane frame: +X patient left, +Y posterior)."""

    geometry: _Geometry
    shape: tuple[int, int, int]
    spacing: np.ndarray
    centre: np.ndarray  # grid mm of the body centre in-plane (z unused)
    half_width: float
    half_depth: float
    z_diaphragm: float
    lung_height: float
    values: dict[str, float]

    @property
    def z_apex(self) -> float:
        return self.z_diaphragm + self.lung_height

    @property
    def z_hilum(self) -> float:
        return self.z_diaphragm + 0.45 * self.lung_height


def _draw_anatomy(rng: np.random.Generator, geometry: _Geometry) -> _Anatomy:
    # The field of view is fitted to the body, as a technologist does.
    half_width = rng.uniform(150.0, 190.0)
    pixel = float(np.clip(2 * half_width * rng.uniform(1.15, 1.35) / geometry.in_plane, *geometry.pixel_mm))
    slice_mm = rng.uniform(*geometry.slice_mm)
    n_slices = int(np.clip(round(rng.uniform(300.0, 360.0) / slice_mm), *geometry.slices))
    shape = (geometry.in_plane, geometry.in_plane, n_slices)
    spacing = np.array([pixel, pixel, slice_mm])
    fov = geometry.in_plane * pixel
    half_width = min(half_width, 0.45 * fov)
    half_depth = half_width * rng.uniform(0.62, 0.75)
    centre = np.array([fov / 2 + rng.uniform(-8, 8), fov / 2 - 0.08 * fov + rng.uniform(-5, 5), 0.0])
    extent = n_slices * slice_mm
    z_diaphragm = rng.uniform(0.10, 0.18) * extent
    lung_height = min(rng.uniform(220.0, 270.0), extent - z_diaphragm - 10.0)
    values = {
        "fat": rng.uniform(-115, -85),
        "muscle": rng.uniform(35, 55),
        "soft": rng.uniform(25, 45),
        "liver": rng.uniform(50, 70),
        "blood": rng.uniform(35, 180),  # from no contrast to arterial phase
        "lung": rng.uniform(-880, -820),
        "lung_texture": rng.uniform(12, 25),
        "bone": rng.uniform(450, 750),
        "marrow": rng.uniform(180, 280),
        "fat_thickness": rng.uniform(6, 25),
        "muscle_thickness": rng.uniform(7, 14),
        "noise": rng.uniform(10, 40),
        "blur": rng.uniform(0.5, 0.8),
    }
    return _Anatomy(geometry, shape, spacing, centre, half_width, half_depth, z_diaphragm, lung_height, values)


def _paint_slabs(vol: _Volume, anat: _Anatomy, rng: np.random.Generator) -> None:
    """Body, abdomen, lungs, heart, aorta and bones.

    Most structures have a fixed in-plane footprint; each is painted on the pixels of its 2D footprint
    times the slices of a block (arrays of shape (pixels, slices)), which keeps a full-size case fast.
    """
    nx, ny, nz = anat.shape
    px, py, dz = (float(s) for s in anat.spacing)
    v = {k: float(val) for k, val in anat.values.items()}
    a, b = anat.half_width, anat.half_depth
    x = np.repeat(np.arange(nx, dtype=np.float32) * px - float(anat.centre[0]), ny)  # flat (X, Y) pixel order
    y = np.tile(np.arange(ny, dtype=np.float32) * py - float(anat.centre[1]), nx)
    zs = np.arange(nz, dtype=np.float32) * dz

    # Body outline: an ellipse with a random low-order radial modulation; depth below the skin in mm.
    theta = np.arctan2(y * a, x * b)
    lobes = v.get("body_lobes", 0.04)
    modulation = 1 + sum(rng.uniform(-lobes, lobes) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4))
    radius = np.sqrt((x / a) ** 2 + (y / b) ** 2) / modulation
    depth = (1 - radius) * a * b / np.sqrt((b * np.cos(theta)) ** 2 + (a * np.sin(theta)) ** 2) * modulation
    fat_end = 2 + v["fat_thickness"]
    muscle_end = fat_end + v["muscle_thickness"]
    table_y = b + rng.uniform(8, 25) + 0.0006 * x**2
    table = (y > table_y) & (y < table_y + rng.uniform(3, 6)) & (np.abs(x) < 0.48 * nx * px)
    base = np.select(
        [depth > muscle_end, depth > fat_end, depth > 2, depth > 0, table],
        [v["soft"], v["muscle"], v["fat"], 15.0, rng.uniform(100, 350)],
        -1000.0,
    ).astype(np.float32)
    texture_gain = np.select([depth > muscle_end, depth > fat_end, depth > 2], [8.0, 6.0, 10.0], 0.0).astype(np.float32)
    inner = np.flatnonzero(depth > muscle_end)

    # Diaphragm: two domes (the right one higher) over the lowest lung point z_diaphragm.
    dome = np.zeros_like(x)
    for side, height in ((-1, rng.uniform(35, 55)), (1, rng.uniform(25, 45))):
        height = height * v.get("dome_right" if side < 0 else "dome_left", 1.0)
        r2 = ((x - side * 0.45 * a) / (v.get("dome_width", 0.5) * a)) ** 2 + ((y + 0.15 * b) / (0.75 * b)) ** 2
        dome = np.maximum(dome, height * np.clip(1 - r2, 0, 1))
    z_dome = anat.z_diaphragm + dome

    spine_y = 0.5 * b
    spine_r = rng.uniform(14, 19)
    canal_y = spine_y + spine_r + 8
    disc_period, disc_phase = rng.uniform(26, 32), rng.uniform(0, 30)
    vertebra = x**2 + (y - spine_y) ** 2
    canal = x**2 + (y - canal_y) ** 2
    arch = ((canal < 13**2) & (canal > 8**2)) | ((np.abs(x) < 4) & (y > canal_y + 8) & (y < canal_y + 35))
    paraspinal = ((x / (spine_r + 45)) ** 2 + ((y - canal_y) / 38) ** 2 < 1) & (y > spine_y) & (depth > fat_end)
    spine_zone = (x / (spine_r + 30)) ** 2 + ((y - spine_y - 10) / (spine_r + 26)) ** 2 < 1

    heart_c = (rng.uniform(15, 35), -0.2 * b, anat.z_diaphragm + 0.22 * anat.lung_height + 25)
    heart_r = (rng.uniform(50, 65), rng.uniform(0.45, 0.55) * b, rng.uniform(45, 60))
    if "heart_scale" in v:  # the varied engine: heart size and position
        heart_c = (heart_c[0] + v["heart_dx"], heart_c[1], heart_c[2] + v["heart_dz"])
        heart_r = tuple(r * v["heart_scale"] for r in heart_r)
    heart_xy = ((x - heart_c[0]) / heart_r[0]) ** 2 + ((y - heart_c[1]) / heart_r[1]) ** 2
    heart_z = ((zs - heart_c[2]) / heart_r[2]) ** 2

    aorta_r = rng.uniform(10, 14)
    z_arch = anat.z_apex - rng.uniform(55, 75)
    descending = (spine_r + aorta_r + 4, spine_y - 8)
    ascending = (-12.0, -0.3 * b)
    d_desc = (x - descending[0]) ** 2 + (y - descending[1]) ** 2
    d_asc = (x - ascending[0]) ** 2 + (y - ascending[1]) ** 2
    ax, ay = descending[0] - ascending[0], descending[1] - ascending[1]
    t = np.clip(((x - ascending[0]) * ax + (y - ascending[1]) * ay) / (ax**2 + ay**2), 0, 1)
    d_arch = (x - ascending[0] - t * ax) ** 2 + (y - ascending[1] - t * ay) ** 2

    # Lungs: two ellipses cut by the chest wall, mediastinum, heart, spine and aorta; rounded apex.
    lung_c, lung_w = v.get("lung_centre", 0.48) * a, v.get("lung_width", 0.52) * a
    lung_ellipse = np.minimum(
        ((x + lung_c) / lung_w) ** 2 + ((y - 0.05 * b) / b) ** 2,
        ((x - lung_c) / lung_w) ** 2 + ((y - 0.05 * b) / b) ** 2,
    )
    h = (zs - anat.z_diaphragm) / anat.lung_height
    lung_scale2 = np.where(h < 0.35, 1.0, np.clip(1 - ((h - 0.35) / 0.65) ** 2, 0, 1)).astype(np.float32)
    mediastinum = (rng.uniform(12, 18) + 10 * np.clip(1 - h, 0, 1)).astype(np.float32)
    wall = muscle_end + rng.uniform(9, 13)
    lung_px = np.flatnonzero(
        (lung_ellipse < 1) & (depth > wall) & ~spine_zone & ~paraspinal & (d_desc > (aorta_r + 3) ** 2)
    )
    lung_base = v["lung"] + 45 * (y[lung_px] / b)  # dependent (posterior) lung is denser

    rib_slope, rib_period, rib_phase = rng.uniform(90, 130), rng.uniform(24, 30), rng.uniform(0, 30)
    rib_half = rng.uniform(4, 6)
    rib_band = (depth > muscle_end - 1) & (depth < muscle_end + 6)
    rib_px = np.flatnonzero(rib_band & (np.abs(x) > np.where(y < 0, 0.22 * a, spine_r + 25)))
    rib_offset = rib_slope * (1 + np.sin(theta[rib_px])) / 2  # ribs run down from the spine to the front
    sternum = np.flatnonzero((np.abs(x) < 14) & (y < 0) & (depth > fat_end) & (depth < muscle_end + 4))

    stomach_c = (0.45 * a, -0.2 * b, anat.z_diaphragm + 10)
    stomach_xy = ((x - stomach_c[0]) / 45) ** 2 + ((y - stomach_c[1]) / 38) ** 2
    spleen = ((x - 0.6 * a) / (0.25 * a)) ** 2 + ((y - 0.45 * b) / (0.3 * b)) ** 2 < 1

    pixels = {
        "heart": np.flatnonzero((heart_xy < 1) & (depth > muscle_end)),
        "descending": np.flatnonzero(d_desc < aorta_r**2),
        "ascending": np.flatnonzero(d_asc < (aorta_r + 2) ** 2),
        "arch": np.flatnonzero(d_arch < aorta_r**2),
        "vertebra": np.flatnonzero(vertebra < spine_r**2),
        "arch_bone": np.flatnonzero(arch),
        "canal": np.flatnonzero(canal < 8**2),
        "paraspinal": np.flatnonzero(paraspinal & ~arch & (vertebra > spine_r**2) & (canal > 8**2)),
    }
    vertebra_hu = np.where(vertebra[pixels["vertebra"]] < (spine_r - 2) ** 2, v["marrow"], v["bone"])[:, None]
    tissue = _SmoothField(rng, anat.shape, anat.spacing, 20.0)
    texture = _SmoothField(rng, anat.shape, anat.spacing, 6.0)

    for k0 in range(0, nz, _SLAB):
        k1 = min(k0 + _SLAB, nz)
        z = zs[None, k0:k1]
        t_noise = tissue.slab(k0, k1).reshape(nx * ny, -1)
        l_noise = texture.slab(k0, k1).reshape(nx * ny, -1)
        hu = base[:, None] + texture_gain[:, None] * t_noise
        lung = np.zeros(hu.shape, bool)

        # Inside the wall: mediastinal tissue and fat above the diaphragm; bowel (soft tissue with fat and
        # gas), liver on the right, spleen and a stomach with a gas cap below it.
        tn, ln, xi, yi = t_noise[inner], l_noise[inner], x[inner, None], y[inner, None]
        value = np.where(tn > 0.4, v["fat"] + 20, v["soft"] + 8 * tn)
        if z[0, 0] <= z_dome.max():
            bowel = np.where(ln > 1.0, v["fat"], v["soft"] + 8 * tn)
            bowel = np.where((ln > 2.2) & (xi > 0), np.float32(-950), bowel)
            bowel = np.where(spleen[inner, None], v["soft"] + 10, bowel)
            stomach = stomach_xy[inner, None] + ((z - stomach_c[2]) / 40) ** 2 < 1
            bowel = np.where(stomach, np.where(yi < stomach_c[1] - 12, np.float32(-980), np.float32(15)), bowel)
            bowel = np.where(xi < 0.15 * a, v["liver"] + 6 * tn, bowel)
            value = np.where(z <= z_dome[inner, None], bowel, value)
        hu[inner] = value

        in_lung = (
            (lung_ellipse[lung_px, None] < lung_scale2[None, k0:k1])
            & (np.abs(x[lung_px, None]) > mediastinum[None, k0:k1])
            & (z > z_dome[lung_px, None])
            & (heart_xy[lung_px, None] + heart_z[None, k0:k1] > 1.15)
        )
        hu[lung_px] = np.where(in_lung, lung_base[:, None] + v["lung_texture"] * l_noise[lung_px], hu[lung_px])
        lung[lung_px] = in_lung

        p = pixels["heart"]
        ellipsoid = heart_xy[p, None] + heart_z[None, k0:k1]
        in_heart = (ellipsoid < 1) & (z > z_dome[p, None])
        hu[p] = np.where(in_heart, np.where(ellipsoid < 0.6, v["blood"], v["muscle"]), hu[p])
        p = pixels["descending"]
        hu[p] = np.where(z <= z_arch, v["blood"], hu[p])
        p = pixels["ascending"]
        hu[p] = np.where((z <= z_arch) & (z > heart_c[2]), v["blood"], hu[p])
        p = pixels["arch"]
        hu[p] = np.where(d_arch[p, None] + (z - z_arch) ** 2 < aorta_r**2, v["blood"], hu[p])

        # Bones: spine (cortex, marrow, discs, arch) with back muscles, ribs in the chest wall, sternum.
        disc = ((z - disc_phase) % disc_period) < 6
        hu[pixels["paraspinal"]] = v["muscle"] + 6 * t_noise[pixels["paraspinal"]]
        hu[pixels["vertebra"]] = np.where(disc, np.float32(85), vertebra_hu)
        hu[pixels["arch_bone"]] = np.where(disc, hu[pixels["arch_bone"]], 0.8 * v["bone"])
        hu[pixels["canal"]] = 20.0
        rib_z = z - rib_offset[:, None]
        ribs = (((rib_z - rib_phase) % rib_period) < 2 * rib_half) & (rib_z > anat.z_diaphragm - 60)
        hu[rib_px] = np.where(ribs & (rib_z < anat.z_apex + 10), 0.9 * v["bone"], hu[rib_px])
        in_sternum = (z > heart_c[2] - 40) & (z < anat.z_apex - 20)
        hu[sternum] = np.where(in_sternum, v["marrow"] + 100, hu[sternum])

        vol.hu[:, :, k0:k1] = hu.reshape(nx, ny, -1)
        vol.lung[:, :, k0:k1] = lung.reshape(nx, ny, -1)


def _paint_airways_and_vessels(
    vol: _Volume, anat: _Anatomy, rng: np.random.Generator, varied: bool = False
) -> list[tuple[int, np.ndarray]]:
    """Trachea, main and lobar bronchi, pulmonary arteries and branching vessel trees; returns the hila.

    ``varied`` grows the trees of :func:`lung_tumor.data.variety.paint_trees` instead of the default ones.
    """
    b = anat.half_depth
    v = anat.values

    def grid(x_mm: float, y_mm: float, z_mm: float) -> np.ndarray:
        return np.array([anat.centre[0] + x_mm, anat.centre[1] + y_mm, z_mm])

    def airway(start: np.ndarray, end: np.ndarray, r0: float, r1: float, only_lung: bool) -> None:
        wall = 0.5 + 0.25 * r0 if varied else 1.5  # varied: walls in proportion to the bronchus
        painted = []
        for radius_extra, value in ((wall, v["soft"]), (0.0, -990.0)):
            index, inside = vol.tube(start, end, r0 + radius_extra, r1 + radius_extra)
            if only_lung:
                inside = inside & vol.lung[index]
            elif radius_extra:
                vol.lung[index] &= ~inside
            vol.hu[index][inside] = value
            vol.tissue[index][inside] = _variety.TISSUE_CODES["airway"]
            painted.append((index, inside))
        if varied and only_lung:  # bronchi are not parenchyma: tumours abut them
            for index, inside in painted:
                vol.lung[index] &= ~inside

    carina = grid(0, 0.5 * b - rng.uniform(45, 55), anat.z_hilum + rng.uniform(15, 30))
    top = carina.copy()
    top[2] = anat.shape[2] * anat.spacing[2] + 10
    airway(top, carina, rng.uniform(8, 11), rng.uniform(8, 10), only_lung=False)
    hila = []
    for side in (-1, 1):
        hilum = grid(side * rng.uniform(30, 40), rng.uniform(-0.1, 0.05) * b, anat.z_hilum)
        hila.append((side, hilum))
        airway(carina, hilum, 6.5, 5.5, only_lung=False)
        trunk = grid(side * 5 + 10, -0.25 * b, anat.z_hilum + 10)
        index, inside = vol.tube(trunk, hilum, 12, 9)
        vol.lung[index] &= ~inside
        vol.hu[index][inside] = v["blood"]

    if varied:
        _variety.paint_trees(vol, anat, rng, hila, airway)
        return hila
    for side, hilum in hila:
        bronchi = _branching_tree(rng, vol, hilum, side, radius=4.0, min_radius=2.0, max_segments=12, roots=4)
        for start, end, r0, r1 in bronchi:
            airway(start, end, r0, r1, only_lung=True)
        vessels = _branching_tree(
            rng,
            vol,
            hilum,
            side,
            radius=rng.uniform(5.0, 7.0),
            min_radius=anat.geometry.min_vessel_radius_mm,
            max_segments=anat.geometry.max_vessel_segments,
            roots=16,
        )
        for start, end, r0, r1 in vessels:
            index, inside = vol.tube(start, end, r0, r1)
            inside &= vol.lung[index]
            vol.hu[index][inside] = v["blood"] + rng.uniform(-15, 15)
    return hila


def _branching_tree(
    rng: np.random.Generator,
    vol: _Volume,
    root: np.ndarray,
    side: int,
    radius: float,
    min_radius: float,
    max_segments: int,
    roots: int,
) -> list[tuple[np.ndarray, np.ndarray, float, float]]:
    """Tapered segments branching out from ``root`` into the lung on ``side`` (-1 right, +1 left)."""
    # Roots leave a hilum a few cm long, spread over the lateral half-space: up, down, forwards, backwards.
    stack = []
    for _ in range(roots):
        d = _unit(np.array([side * 0.8, 0.0, 0.0]) + rng.standard_normal(3) * (1, 1, 1.5))
        start = root + rng.uniform(-1, 1, 3) * (3, 12, 30)
        stack.append((start, np.array([side * abs(d[0]), d[1], d[2]]), radius * rng.uniform(0.6, 1.0)))
    segments: list[tuple[np.ndarray, np.ndarray, float, float]] = []
    while stack and len(segments) < max_segments:
        start, direction, r0 = stack.pop(0)  # breadth first: large vessels before the budget runs out
        length = rng.uniform(4, 8) * r0 + 6
        r1 = r0 * rng.uniform(0.85, 0.95)
        end = start + direction * length
        segments.append((start, end, r0, r1))
        if r1 * 0.8 < min_radius or not vol.inside_lung(end):
            continue
        outward = _unit(end - root)
        for _ in range(3 if rng.random() < 0.2 else 2):
            child = _rotate_random(rng, _unit(direction + 0.6 * outward), rng.uniform(0.25, 0.6))
            stack.append((end, child, r1 * rng.uniform(0.75, 0.9)))
    return segments


def _paint_tumours(vol: _Volume, anat: _Anatomy, rng: np.random.Generator, count: int) -> list[dict[str, Any]]:
    """Place ``count`` non-overlapping tumours in the lungs; paints HU and the label, returns raw lesion records."""
    lesions: list[dict[str, Any]] = []
    lo_d, hi_d = anat.geometry.tumour_mm
    shape = np.array(anat.shape)
    for _ in range(200):
        if len(lesions) == count:
            break
        diameter = float(np.exp(rng.uniform(np.log(lo_d), np.log(hi_d))))
        radius = diameter / 2
        point = rng.integers(0, shape) * anat.spacing
        if not vol.inside_lung(point):
            continue
        location = rng.choice(["central", "pleural", "mediastinal"], p=[0.5, 0.35, 0.15])
        if location != "central":
            side = 1.0 if point[0] > anat.centre[0] else -1.0
            step = np.array([side, 0.0, 0.0]) * (1 if location == "pleural" else -1)
            step = _unit(step + 0.4 * rng.standard_normal(3) * np.array([0, 1, 0.5]))
            while vol.inside_lung(point + step):
                point = point + step
            point = point - step * 0.6 * radius
        if any(np.linalg.norm(point - other["centre"]) < radius + other["radius"] + 10 for other in lesions):
            continue
        found = vol.box(point - 2.3 * radius, point + 2.3 * radius)
        if found is None:
            continue
        index, coords = found
        mask = tumour_shape(rng, coords, point, radius) & vol.lung[index]
        nominal_voxels = 4 / 3 * np.pi * radius**3 / float(np.prod(anat.spacing))
        if mask.sum() < max(0.4 * nominal_voxels, 4):
            continue
        hu = tumour_texture(rng, coords, point, radius)
        vol.hu[index][mask] = np.clip(hu, -50, 80)[mask]
        vol.label[index][mask] = 1
        vol.lung[index] &= ~mask
        lesions.append({"index": index, "mask": mask, "centre": point, "radius": radius, "location": str(location)})
    return lesions


def _finish(vol: _Volume, anat: _Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Slight in-plane blur, scanner noise (of the drawn final standard deviation), HU clip, int16."""
    sigma = anat.values["blur"]
    impulse = np.zeros((15, 15), np.float32)
    impulse[7, 7] = 1
    noise_gain = float(np.sqrt((ndimage.gaussian_filter(impulse, sigma, truncate=3.0) ** 2).sum()))
    noise_sd = anat.values["noise"] / noise_gain
    image = np.empty(anat.shape, np.int16)
    for k0 in range(0, anat.shape[2], _SLAB):
        k1 = min(k0 + _SLAB, anat.shape[2])
        slab = vol.hu[:, :, k0:k1] + noise_sd * rng.standard_normal(vol.hu[:, :, k0:k1].shape, dtype=np.float32)
        slab = ndimage.gaussian_filter(slab, (sigma, sigma, 0), truncate=3.0)
        image[:, :, k0:k1] = np.clip(np.rint(slab), HU_MIN, HU_MAX)
    return image


def _affine(anat: _Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Voxel -> RAS mm: x to the patient's left, y posterior, z superior (axis codes L, P, S)."""
    px, py, dz = anat.spacing
    nx, ny, nz = anat.shape
    affine = np.diag([-px, -py, dz, 1.0])
    affine[:3, 3] = [px * (nx - 1) / 2, py * (ny - 1) / 2 + rng.uniform(-20, 20), -rng.uniform(0.3, 0.7) * nz * dz]
    return affine


def draw_case_acquisition(case_index: int, seed: int, size: str, preset: str) -> Acquisition | None:
    """The acquisition of a case under a preset (``default``: ``None``; ``varied``: drawn from the seed)."""
    if preset not in ACQUISITIONS:
        raise LungTumorError(f"unknown acquisition {preset!r}; use one of {ACQUISITIONS}")
    return preset_acquisition(preset, np.random.default_rng([seed, case_index, _ACQUISITION_STREAM]), size)


def synthesize_case(
    case_index: int,
    seed: int,
    size: str,
    with_tumour: bool | None = None,
    acquisition: Acquisition | None = None,
    variety: str = "default",
) -> SyntheticCase:
    """Make one synthetic chest CT.

    Args:
        case_index: the case number (``lung_{case_index:03d}``); with ``seed`` it fixes every random draw.
        seed: dataset seed.
        size: ``small`` or ``full`` (see the module docstring).
        with_tumour: force tumours on or off; by default every 8th case has none (``varied``: a fifth, drawn).
        acquisition: acquire the phantom with this scanner and protocol
            (:mod:`lung_tumor.data.acquisition`); the phantom, painted on 1 mm (``full``) or 1.5 mm
            (``small``) slices, is then the same patient for every acquisition. ``None``: synth's own
            grid, blur, noise and L, P, S affine, exactly as before.
        variety: ``default`` (the engine as it always was: same seed, same bytes) or ``varied``
            (:mod:`lung_tumor.data.variety`: varied anatomy, findings that are not tumour, every tumour kind).

    Returns:
        The image, label, affine and ground-truth lesion list.

    Raises:
        LungTumorError: unknown size or variety, or a negative case index.

    Examples::

        case = synthesize_case(1, seed=0, size="small")
        varied = synthesize_case(1, seed=0, size="small", variety="varied")
        varied.tumours[0]["kind"], [f["kind"] for f in varied.findings]
        case.image.shape, case.tumours[0]["volume_ml"]
    """
    if size not in _GEOMETRY:
        raise LungTumorError(f"unknown size {size!r}; use one of {SIZES}")
    if case_index < 0:
        raise LungTumorError(f"case index must be >= 0, got {case_index}")
    if variety not in _variety.VARIETIES:
        raise LungTumorError(f"unknown variety {variety!r}; use one of {_variety.VARIETIES}")
    varied = variety == "varied"
    rng = np.random.default_rng([seed, case_index])
    geometry = _GEOMETRY[size]
    if acquisition is not None:
        phantom_mm = _PHANTOM_SLICE_MM[size]
        geometry = replace(geometry, slice_mm=(phantom_mm, phantom_mm), slices=(1, 1_000_000))
    anat = _draw_anatomy(rng, geometry)
    if varied:
        anat = _variety.vary_anatomy(anat, rng)
    vol = _Volume(anat.shape, anat.spacing)
    _paint_slabs(vol, anat, rng)
    hila = _paint_airways_and_vessels(vol, anat, rng, varied)
    findings: list[dict[str, Any]] = []
    if varied:
        findings = _variety.paint_lung_wide(vol, anat, rng) + _variety.paint_findings(vol, anat, rng)
        if with_tumour is None:
            with_tumour = _variety.has_tumour(seed, case_index)
        count = int(rng.choice([1, 2, 3, 4, 5], p=[0.4, 0.25, 0.15, 0.1, 0.1])) if with_tumour else 0
        lesions = _variety.paint_tumours(vol, anat, rng, hila, count, case_index)
    else:
        if with_tumour is None:
            with_tumour = case_index % NO_TUMOUR_EVERY != 0
        count = int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2])) if with_tumour else 0
        lesions = _paint_tumours(vol, anat, rng, count)
    if acquisition is not None:
        noise_rng = np.random.default_rng([seed, case_index, _NOISE_STREAM])
        scan = acquire(vol.hu, vol.label, anat.spacing, acquisition, noise_rng, body_centre_mm=anat.centre[:2])
        acquired, missing = lesion_records(lesions, scan, anat.spacing)
        case = SyntheticCase(
            synthetic_case_id(case_index),
            scan.image,
            scan.label,
            scan.affine,
            acquired,
            acquisition.noise_hu,
            acquisition,
            scan.rescale,
            missing,
        )
        if varied:  # the tissue map lies on the phantom's grid, not the acquired one
            case.variety, case.findings = variety, findings
        return case
    image = _finish(vol, anat, rng)
    affine = _affine(anat, rng)
    voxel_ml = float(np.prod(anat.spacing)) / 1000
    tumours = []
    for lesion in lesions:
        offset = np.array([s.start for s in lesion["index"]])
        centre_voxel = np.argwhere(lesion["mask"]).mean(axis=0) + offset
        voxels = int(lesion["mask"].sum())
        tumours.append(
            {
                "centre_voxel": [round(float(c), 3) for c in centre_voxel],
                "centre_mm": [round(float(c), 3) for c in (affine @ np.append(centre_voxel, 1))[:3]],
                "diameter_mm": round(2 * lesion["radius"], 2),
                "voxels": voxels,
                "volume_ml": round(voxels * voxel_ml, 4),
                "location": lesion["location"],
                **({"kind": lesion["kind"]} if "kind" in lesion else {}),
            }
        )
    case = SyntheticCase(synthetic_case_id(case_index), image, vol.label, affine, tumours, anat.values["noise"])
    if varied:
        case.variety, case.findings, case.tissue = variety, findings, vol.tissue
    return case


def synthetic_case_id(index: int) -> str:
    """The id of case number ``index``: ``lung_001`` ..."""
    return f"lung_{index:03d}"


def _check_output_folder(out: Path) -> None:
    """Refuse to write into a file or into a folder holding anything but an MSD dataset (or an interrupted one)."""
    if out.exists() and not out.is_dir():
        raise LungTumorError("exists and is not a folder", out)
    if out.is_dir() and not (out / "dataset.json").is_file():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in _DATASET_ENTRIES)
        if foreign:
            raise LungTumorError(
                f"folder holds {foreign[:3]} and no dataset.json: not a dataset; refusing to write", out
            )


def in_order(function: Callable[[Any], Any], items: Iterable[Any], workers: int) -> Iterator[Any]:
    """``function(item)`` of each item, yielded in the items' order; computed side by side in ``workers`` fresh
    (spawned) processes when ``workers > 1``. A failure, an interrupt or a caller that stops early (closing the
    generator) ends the workers at once: the items not finished are dropped."""
    if workers <= 1:
        yield from map(function, items)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:  # leaving it terminates the workers
        yield from pool.imap(function, items)


def _remove_cases(out: Path, indices: Iterable[int]) -> None:
    """Delete the files of the cases ``indices`` (those a time-boxed run did not keep: finished after a gap, or
    ended mid-write)."""
    for case_id in map(synthetic_case_id, indices):
        for folder in ("imagesTr", "labelsTr", "imagesTs"):
            (out / folder / f"{case_id}.nii.gz").unlink(missing_ok=True)
            for unfinished in (out / folder).glob(f".{case_id}.*.tmp.nii.gz"):  # a worker ended mid-write
                unfinished.unlink()


def _write_case(
    index: int, out: Path, cases: int, seed: int, size: str, acquisition: str, variety: str
) -> tuple[str, bool, dict[str, Any]]:
    """Make case ``index`` of a dataset, write its image (and label) and return its id, split and truth entry."""
    case = synthesize_case(
        index, seed, size, acquisition=draw_case_acquisition(index, seed, size, acquisition), variety=variety
    )
    training = index <= cases
    folder = "imagesTr" if training else "imagesTs"
    save_nifti(
        case.image,
        case.affine,
        out / folder / f"{case.case_id}.nii.gz",
        marker("synth", "image"),
        rescale=case.rescale,
    )
    if training:
        save_nifti(case.label, case.affine, out / "labelsTr" / f"{case.case_id}.nii.gz", marker("synth", "label"))
    entry: dict[str, Any] = {
        "split": "training" if training else "test",
        "shape": list(case.image.shape),
        "spacing": [round(s, 4) for s in case.spacing],
        "noise_hu": round(case.noise_hu, 2),
        "tumours": case.tumours,
    }
    if case.acquisition is not None:
        entry["acquisition"] = case.acquisition.to_dict()
        entry["tumours_not_acquired"] = case.tumours_not_acquired
    if variety != "default":
        entry["findings"] = case.findings
    return case.case_id, training, entry


def synthesize_dataset(
    out: str | Path,
    cases: int,
    size: str = "small",
    seed: int = 0,
    test_cases: int = 0,
    acquisition: str = "default",
    overwrite: bool = False,
    variety: str = "default",
    workers: int = 1,
    max_minutes: float | None = None,
) -> Path:
    """Write a synthetic MSD Task06_Lung-style dataset and its ground truth ``synth_truth.json``.

    Args:
        out: dataset folder; created, or overwritten case by case when it already holds a dataset.
        cases: labelled training cases (``lung_001`` ...).
        size: ``small`` or ``full``.
        seed: dataset seed; the same seed gives the same arrays.
        test_cases: unlabelled cases in ``imagesTs/``, numbered after the training cases.
        acquisition: ``default`` (synth's own L, P, S int16 grid) or ``varied`` (each case acquired with a
            scanner and protocol drawn from the seed; ``synth_truth.json`` records it).
        overwrite: replace files of ``out`` that lung-tumor did not write (a real dataset's scans).
        variety: ``default`` or ``varied`` (see :func:`synthesize_case`); ``varied`` records each tumour's
            kind and each case's findings in the truth file.
        workers: processes that make cases side by side (a full-size case takes 15-30 s on one core); the
            files are the same bytes whatever the number.
        max_minutes: stop starting cases after this long and keep the cases finished from ``lung_001`` on without
            a gap, so that the dataset equals ``cases=K`` for the K kept (a time-boxed run, e.g. on a lent machine);
            the files of cases after a gap are removed. ``None``: every case.

    Returns:
        The dataset folder.

    Raises:
        LungTumorError: bad counts, unknown size, acquisition or variety, ``out`` is a non-empty folder that is
            not a dataset, or an output is unsafe (:class:`lung_tumor.outputs.OutputPlan`: a real dataset is never
            overwritten without ``overwrite``).
    """
    out = Path(out)
    if not isinstance(cases, int) or cases < 1:
        raise LungTumorError(f"--cases must be at least 1, got {cases!r}")
    if not isinstance(test_cases, int) or test_cases < 0:
        raise LungTumorError(f"--test-cases must be 0 or more, got {test_cases!r}")
    if size not in _GEOMETRY:
        raise LungTumorError(f"unknown size {size!r}; use one of {SIZES}")
    if acquisition not in ACQUISITIONS:
        raise LungTumorError(f"unknown acquisition {acquisition!r}; use one of {ACQUISITIONS}")
    if variety not in _variety.VARIETIES:
        raise LungTumorError(f"unknown variety {variety!r}; use one of {_variety.VARIETIES}")
    if not isinstance(workers, int) or workers < 1:
        raise LungTumorError(f"--workers must be at least 1, got {workers!r}")
    if max_minutes is not None and not (isinstance(max_minutes, (int, float)) and max_minutes >= 0):
        raise LungTumorError(f"--max-minutes must be 0 or more, got {max_minutes!r}")
    _check_output_folder(out)
    plan = OutputPlan(overwrite=overwrite)
    plan.add_folder(out)
    plan.add_file(out / TRUTH_FILE)
    plan.add_file(out / "dataset.json", vouched_by=out / TRUTH_FILE)
    for index in range(1, cases + test_cases + 1):
        case_id = synthetic_case_id(index)
        plan.add_file(out / ("imagesTr" if index <= cases else "imagesTs") / f"{case_id}.nii.gz")
        if index <= cases:
            plan.add_file(out / "labelsTr" / f"{case_id}.nii.gz")
    plan.check()
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (out / sub).mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    truth: dict[str, Any] = {
        "generator": marker("synth"),
        "seed": seed,
        "size": size,
        "acquisition": acquisition,
        "cases": {},
    }
    if variety != "default":
        truth["variety"] = variety
    training_ids, test_ids = [], []
    lesions = 0
    indices = range(1, cases + test_cases + 1)
    write = partial(_write_case, out=out, cases=cases, seed=seed, size=size, acquisition=acquisition, variety=variety)
    written = in_order(write, indices, workers)
    deadline = None if max_minutes is None else time.monotonic() + 60.0 * max_minutes
    for case_id, training, entry in tqdm(written, total=len(indices), desc="synth", unit="case", disable=None):
        (training_ids if training else test_ids).append(case_id)
        lesions += len(entry["tumours"])
        truth["cases"][case_id] = entry
        if deadline is not None and time.monotonic() > deadline and len(truth["cases"]) < len(indices):
            written.close()  # ends the workers and drops the cases not finished
            _remove_cases(out, indices[len(truth["cases"]) :])  # the cases kept are the first ones, in order
            log.info(
                "stopped after %.1f minutes (max_minutes): %d of %d cases",
                max_minutes,
                len(truth["cases"]),
                len(indices),
            )
            cases, test_cases = len(training_ids), len(test_ids)
            break

    note = f"lung_tumor synth, size {size}, seed {seed}, acquisition {acquisition}; ground truth in {TRUTH_FILE}"
    if variety != "default":
        note = (
            f"lung_tumor synth, size {size}, variety {variety}, seed {seed}, acquisition {acquisition}; "
            f"ground truth in {TRUTH_FILE}"
        )
    write_dataset_json(out, training_ids, test_ids, synthetic=note)
    write_json(out / TRUTH_FILE, truth)
    log.info(
        "wrote %d training + %d test %s synthetic cases (%d tumours) to %s in %.1f s",
        cases,
        test_cases,
        size,
        lesions,
        out,
        time.perf_counter() - started,
    )
    return out
