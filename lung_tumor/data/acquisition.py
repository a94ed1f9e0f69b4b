"""How a CT scanner would have acquired a synthetic phantom: the acquisition as data, and the acquiring.

A phantom (HU and tumour label on a fine grid, as :mod:`lung_tumor.data.synth` paints them) becomes
the scan a reader would get from one particular scanner and protocol:

- **in-plane grid**: pixel spacing and matrix (512 x 512, 384, 768 or a rectangular crop), with the
  field of view centred on the body or shifted so that it cuts through an arm or the side of the chest;
- **slices**: thickness (the width of the slice profile) and spacing; each slice is the average of the
  phantom over its profile (partial volume), not a point sample; the whole chest or a thin slab of a
  few slices;
- **reconstruction kernel** from soft to very sharp: the image is filtered by the kernel (a sharp
  kernel overshoots and undershoots at edges) and the noise is shaped by it (ramp-filtered noise whose
  texture is blotchy with a soft kernel and grainy with a sharp one), at a given standard deviation;
- **scan circle**: voxels outside the reconstruction circle hold a padding value (-1024, -2048 or 0)
  or, with ``padding_hu=None``, the air continues to the corners;
- **storage**: the voxel axes in any of the usual flips (``LPS`` like DICOM, ``RAS`` like many NIfTI
  converters, or slices stored top to bottom), HU stored as int16, or with a rescale
  (``scl_slope``/``scl_inter``) as int16 or uint16 with an intercept of -1024 (or -2048) as many
  scanners write.

The label is acquired with the image: the tumour fraction of each acquired voxel (the same slice
profile and in-plane interpolation as the HU) thresholded at 0.5, so that label and image agree on
the acquired grid.

Phantom coordinates are "grid mm": voxel index times spacing, x towards the patient's left, y posterior,
z superior. World coordinates are the NIfTI RAS millimetres of the written file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import nibabel as nib
import numpy as np
from scipy import fft, sparse

HU_MIN, HU_MAX = -1024, 3071
AIR_HU = -1000.0
_BLOCK = 16  # acquired slices per block: bounds the float32 temporaries of a 512 x 512 x 300 scan


@dataclass(frozen=True)
class Kernel:
    """A reconstruction kernel as a modulation transfer function of two Gaussians.

    The response is ``(1 + boost) * G(blur_mm) - boost * G(boost_mm)``: ``blur_mm`` sets the
    resolution; ``boost > 0`` lifts middle frequencies (edge enhancement), which over- and undershoots
    at edges, as sharp (lung, bone) kernels do.
    """

    blur_mm: float
    boost: float
    boost_mm: float


KERNELS = {
    "soft": Kernel(1.1, 0.0, 2.0),
    "standard": Kernel(0.75, 0.25, 1.6),
    "sharp": Kernel(0.5, 0.8, 1.2),
    "very_sharp": Kernel(0.35, 1.5, 1.0),
}
PADDINGS = (None, -1024, -2048, 0)
ORIENTATIONS = ("LPS", "RAS", "LAS", "RPS", "LPI", "RAI")
STORAGES = ("int16", "int16_rescale", "uint16_rescale")
PRESETS = ("default", "varied")


@dataclass(frozen=True)
class Acquisition:
    """One scanner and protocol (every length in mm).

    Attributes:
        pixel_mm: in-plane pixel spacing.
        matrix: in-plane size (x, y) of the acquired image.
        slice_thickness_mm: width of the (rectangular) slice profile each slice averages over.
        slice_spacing_mm: distance between slice centres (less than the thickness: overlapping slices).
        kernel: one of :data:`KERNELS`.
        noise_hu: standard deviation of the noise in a uniform region of the final image.
        padding_hu: value outside the reconstruction circle, or ``None`` for no circle.
        fov_shift_mm: offset (x, y) of the field-of-view centre from the body centre; a large one, or a
            small field of view, cuts through the body.
        slab_slices: acquire only this many slices (a thin slab), or ``None`` for the whole phantom.
        slab_centre: where the slab lies, as a fraction of the phantom's height (0 bottom, 1 top).
        orientation: axis codes of the stored array (``LPS``, ``RAS``, ``LPI`` ...).
        storage: ``int16`` (HU as they are), ``int16_rescale`` (int16 HU + 1024 with intercept -1024),
            ``uint16_rescale`` (uint16 with intercept -1024, or -2048 when the padding needs it).
        isocentre_mm: offset of the world origin (table position), added to the world coordinates.

    Raises:
        ValueError: a value out of its range or an unknown name.

    Examples::

        acquisition = Acquisition(pixel_mm=0.7, slice_thickness_mm=5.0, slice_spacing_mm=5.0, kernel="sharp")
        acquisition.to_dict()["kernel"]
    """

    pixel_mm: float = 0.8
    matrix: tuple[int, int] = (512, 512)
    slice_thickness_mm: float = 2.5
    slice_spacing_mm: float = 2.5
    kernel: str = "standard"
    noise_hu: float = 20.0
    padding_hu: int | None = -1024
    fov_shift_mm: tuple[float, float] = (0.0, 0.0)
    slab_slices: int | None = None
    slab_centre: float = 0.5
    orientation: str = "LPS"
    storage: str = "int16"
    isocentre_mm: tuple[float, float, float] = field(default=(0.0, 0.0, 0.0))

    def __post_init__(self) -> None:
        if not 0.1 <= self.pixel_mm <= 10:
            raise ValueError(f"pixel_mm must be in [0.1, 10], got {self.pixel_mm}")
        if len(self.matrix) != 2 or min(self.matrix) < 8:
            raise ValueError(f"matrix must be two sizes of at least 8, got {self.matrix}")
        if not 0.1 <= self.slice_thickness_mm <= 20 or not 0.1 <= self.slice_spacing_mm <= 20:
            raise ValueError(
                f"slice thickness and spacing must be in [0.1, 20] mm, got "
                f"{self.slice_thickness_mm} and {self.slice_spacing_mm}"
            )
        if self.kernel not in KERNELS:
            raise ValueError(f"unknown kernel {self.kernel!r}; use one of {sorted(KERNELS)}")
        if self.noise_hu < 0:
            raise ValueError(f"noise_hu must be >= 0, got {self.noise_hu}")
        if self.padding_hu is not None and not HU_MIN * 2 <= self.padding_hu <= HU_MAX:
            raise ValueError(f"padding_hu must be in [-2048, 3071] or None, got {self.padding_hu}")
        if self.slab_slices is not None and self.slab_slices < 1:
            raise ValueError(f"slab_slices must be at least 1 or None, got {self.slab_slices}")
        if not 0 <= self.slab_centre <= 1:
            raise ValueError(f"slab_centre must be in [0, 1], got {self.slab_centre}")
        codes = set(self.orientation)
        if len(self.orientation) != 3 or not all(
            len(codes & pair) == 1 for pair in ({"L", "R"}, {"P", "A"}, {"S", "I"})
        ):
            raise ValueError(f"orientation must be three axis codes such as 'LPS' or 'RAS', got {self.orientation!r}")
        if self.storage not in STORAGES:
            raise ValueError(f"unknown storage {self.storage!r}; use one of {STORAGES}")

    @property
    def rescale(self) -> tuple[float, float] | None:
        """``(slope, intercept)`` from stored values to HU, or ``None`` when HU are stored as they are."""
        if self.storage == "int16":
            return None
        low = -2048.0 if self.storage == "uint16_rescale" and (self.padding_hu or 0) < HU_MIN else -1024.0
        return 1.0, low

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (lists for tuples), as ``synth_truth.json`` records them."""
        values = asdict(self)
        for key, value in values.items():
            if isinstance(value, tuple):
                values[key] = [round(float(v), 3) if isinstance(v, float) else v for v in value]
            elif isinstance(value, float):
                values[key] = round(value, 4)
        return values


def draw_acquisition(rng: np.random.Generator, size: str = "full") -> Acquisition:
    """Draw a scanner and protocol: every option of :class:`Acquisition` has a fair chance.

    Args:
        rng: the generator that fixes the draw.
        size: ``full`` (0.5-1.0 mm pixels, 512 x 512 and other matrices, slices 0.6-5 mm) or ``small``
            (the same in coarser units for tests and the demo: pixels 2-4 mm, matrices a quarter the size,
            slices 2-6 mm).

    Returns:
        The acquisition.

    Examples::

        acquisition = draw_acquisition(np.random.default_rng([0, 1]), "small")
    """
    scale = 4 if size == "small" else 1
    matrices = [(512, 512), (512, 512), (384, 384), (768, 768), (512, 384), (448, 512)]
    mx, my = matrices[int(rng.integers(len(matrices)))]
    # 768 x 768 serves high-resolution reconstructions: fine pixels, a field no wider than a chest
    pixel = float(rng.uniform(0.5, 0.65 if mx == 768 else 1.0)) * scale
    matrix = (mx // scale, my // scale)
    if size == "small":
        thickness = float(rng.choice([2.0, 3.0, 4.0, 5.0, 6.0]))
    else:
        thickness = float(rng.choice([0.625, 1.0, 1.25, 2.0, 2.5, 3.0, 5.0]))
    overlap = float(rng.choice([1.0, 1.0, 0.8, 0.5]))
    spacing = thickness * overlap if 1.25 <= thickness <= 2.5 else thickness  # overlapping slices, not under 0.625
    kernel = str(rng.choice(list(KERNELS)))
    kernel_noise = {"soft": 0.6, "standard": 1.0, "sharp": 2.0, "very_sharp": 3.0}[kernel]
    noise = float(np.clip(rng.uniform(8, 20) * kernel_noise * math.sqrt(2.0 / thickness), 4, 90))
    padding = PADDINGS[int(rng.integers(len(PADDINGS)))]
    if rng.random() < 0.3:  # cut through the body: an arm or one side of the chest outside the field of view
        shift = (float(rng.choice([-1, 1]) * rng.uniform(40, 90)), float(rng.uniform(-30, 30)))
    else:
        shift = (float(rng.uniform(-10, 10)), float(rng.uniform(-10, 10)))
    slab = int(rng.integers(3, 13)) if rng.random() < 0.2 else None
    return Acquisition(
        pixel_mm=round(pixel, 4),
        matrix=matrix,
        slice_thickness_mm=thickness,
        slice_spacing_mm=round(spacing, 4),
        kernel=kernel,
        noise_hu=round(noise, 2),
        padding_hu=padding,
        fov_shift_mm=(round(shift[0], 2), round(shift[1], 2)),
        slab_slices=slab,
        slab_centre=round(float(rng.uniform(0.35, 0.8)), 3),
        orientation=ORIENTATIONS[int(rng.integers(len(ORIENTATIONS)))],
        storage=STORAGES[int(rng.integers(len(STORAGES)))],
        isocentre_mm=tuple(round(float(v), 2) for v in rng.uniform(-30, 30, 3)),
    )


@dataclass
class AcquiredScan:
    """A phantom as the scanner stored it.

    Attributes:
        image: stored voxel values (int16 or uint16) in the acquisition's orientation.
        label: uint8 tumour mask on the same grid.
        affine: voxel-to-world (RAS mm) matrix of both.
        rescale: ``(slope, intercept)`` from stored values to HU, or ``None``.
        grid_to_world: 4x4 map from phantom grid mm to world mm (to place painted truth in the scan).
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    rescale: tuple[float, float] | None
    grid_to_world: np.ndarray

    @property
    def hu(self) -> np.ndarray:
        """The image in Hounsfield units."""
        if self.rescale is None:
            return self.image
        slope, intercept = self.rescale
        return self.image * np.float32(slope) + np.float32(intercept)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the stored axes."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))


def slice_profile_weights(n_phantom: int, phantom_mm: float, centres_mm: np.ndarray, thickness_mm: float) -> np.ndarray:
    """Weights (acquired slices x phantom slices) that average the linearly interpolated phantom over each profile.

    Args:
        n_phantom: phantom slices.
        phantom_mm: phantom slice spacing.
        centres_mm: acquired slice centres (grid mm).
        thickness_mm: width of the rectangular slice profile.

    Returns:
        float32 weights; each row sums to 1.
    """
    samples = max(8, math.ceil(8 * thickness_mm / phantom_mm))
    offsets = ((np.arange(samples) + 0.5) / samples - 0.5) * thickness_mm
    position = np.clip((centres_mm[:, None] + offsets[None, :]) / phantom_mm, 0, n_phantom - 1)
    lower = np.minimum(np.floor(position).astype(int), n_phantom - 2) if n_phantom > 1 else np.zeros_like(position, int)
    upper_weight = position - lower if n_phantom > 1 else np.zeros_like(position)
    weights = np.zeros((len(centres_mm), n_phantom), np.float64)
    rows = np.repeat(np.arange(len(centres_mm)), samples)
    np.add.at(weights, (rows, lower.ravel()), (1 - upper_weight).ravel() / samples)
    if n_phantom > 1:
        np.add.at(weights, (rows, lower.ravel() + 1), upper_weight.ravel() / samples)
    return weights.astype(np.float32)


def kernel_response(shape: tuple[int, int], pixel_mm: float, kernel: Kernel) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's transfer function on the rfft2 grid of ``shape``, and the noise amplitude filter.

    Filtered back projection gives noise whose power spectrum is the ramp ``|f|`` times the kernel's
    squared response: low-frequency blotches with a soft kernel, fine grain with a sharp one. The noise
    filter is scaled so that white noise of unit variance comes out with unit standard deviation.

    Returns:
        ``(transfer, noise_amplitude)``, float32 arrays of shape ``(shape[0], shape[1] // 2 + 1)``.
    """
    fx = np.fft.fftfreq(shape[0], d=pixel_mm)[:, None]
    fy = np.fft.rfftfreq(shape[1], d=pixel_mm)[None, :]
    f2 = fx**2 + fy**2
    transfer = (1 + kernel.boost) * np.exp(-2 * np.pi**2 * kernel.blur_mm**2 * f2)
    transfer -= kernel.boost * np.exp(-2 * np.pi**2 * kernel.boost_mm**2 * f2)
    amplitude = np.sqrt(np.sqrt(f2)) * np.abs(transfer)
    impulse = np.fft.irfft2(amplitude, s=shape)
    amplitude /= max(float(np.sqrt((impulse**2).sum())), 1e-12)
    return transfer.astype(np.float32), amplitude.astype(np.float32)


def _interpolation_matrix(n_out: int, n_in: int, start: float, step: float) -> sparse.csr_matrix:
    """Linear interpolation from ``n_in`` samples at output positions ``start + i * step`` (input index units).

    Rows of positions outside the input sum to less than 1 (to 0 far outside); the caller fills the rest.
    """
    position = start + np.arange(n_out) * step
    lower = np.floor(position).astype(int)
    upper_weight = position - lower
    rows = np.concatenate([np.arange(n_out)] * 2)
    cols = np.concatenate([lower, lower + 1])
    values = np.concatenate([1 - upper_weight, upper_weight]).astype(np.float32)
    keep = (cols >= 0) & (cols < n_in)
    return sparse.csr_matrix((values[keep], (rows[keep], cols[keep])), shape=(n_out, n_in))


def _resample_in_plane(
    slices: np.ndarray, along_x: sparse.csr_matrix, along_y: sparse.csr_matrix, outside: float
) -> np.ndarray:
    """Bilinear resampling of ``slices`` (K, X, Y) with two separable interpolation matrices; ``outside`` fills."""
    k, nx, ny = slices.shape
    mx, my = along_x.shape[0], along_y.shape[0]
    in_y = (along_y @ slices.reshape(k * nx, ny).T).T.reshape(k, nx, my)
    in_xy = (along_x @ in_y.transpose(1, 0, 2).reshape(nx, k * my)).reshape(mx, k, my).transpose(1, 0, 2)
    if outside:
        covered = np.asarray(along_x.sum(axis=1)).ravel()[:, None] * np.asarray(along_y.sum(axis=1)).ravel()[None, :]
        in_xy = in_xy + np.float32(outside) * (1 - covered.astype(np.float32))[None]
    return np.ascontiguousarray(in_xy, dtype=np.float32)


def scan_circle(matrix: tuple[int, int], pixel_mm: float) -> np.ndarray:
    """Pixels inside the reconstruction circle (the circle of the square field of the longer side, at most 500 mm)."""
    radius = min(0.5 * max(matrix) * pixel_mm, 250.0)
    x = (np.arange(matrix[0]) - (matrix[0] - 1) / 2) * pixel_mm
    y = (np.arange(matrix[1]) - (matrix[1] - 1) / 2) * pixel_mm
    return x[:, None] ** 2 + y[None, :] ** 2 <= radius**2


def acquire(
    hu: np.ndarray,
    label: np.ndarray,
    spacing: Sequence[float],
    acquisition: Acquisition,
    rng: np.random.Generator,
    body_centre_mm: Sequence[float] | None = None,
) -> AcquiredScan:
    """Acquire a phantom: resample, kernel, noise, scan circle, orientation and storage.

    Works block by block over the acquired slices, so a 512 x 512 x 300 scan needs little memory
    beyond the phantom and the result.

    Args:
        hu: phantom HU, shape (X, Y, Z), axes towards the patient's left, posterior, superior.
        label: phantom tumour mask (0/1), same shape.
        spacing: phantom voxel size in mm.
        acquisition: the scanner and protocol.
        rng: draws the noise.
        body_centre_mm: grid mm (x, y) of the body centre, where an unshifted field of view is centred;
            the middle of the phantom by default.

    Returns:
        The stored image, its label and affine.

    Examples::

        scan = acquire(phantom_hu, phantom_label, (0.8, 0.8, 1.0), Acquisition(orientation="RAS"), rng)
        nib.aff2axcodes(scan.affine)  # ('R', 'A', 'S')
    """
    px, py, pz = (float(s) for s in spacing)
    nx, ny, nz = hu.shape
    a = acquisition
    p = a.pixel_mm
    mx, my = a.matrix
    body = np.array([(nx - 1) * px / 2, (ny - 1) * py / 2] if body_centre_mm is None else body_centre_mm[:2], float)
    centre = body + np.asarray(a.fov_shift_mm, float)
    origin_xy = centre - np.array([(mx - 1) / 2, (my - 1) / 2]) * p

    # Slice centres: the whole phantom height (each profile inside it), or a slab around slab_centre.
    height = (nz - 1) * pz
    half = min(a.slice_thickness_mm / 2, height / 2)
    if a.slab_slices is None:
        count = int((height - 2 * half) // a.slice_spacing_mm) + 1
        first = half
    else:
        count = a.slab_slices
        first = a.slab_centre * height - (count - 1) / 2 * a.slice_spacing_mm
        first = float(np.clip(first, 0.0, max(height - (count - 1) * a.slice_spacing_mm, 0.0)))
    centres = first + np.arange(count) * a.slice_spacing_mm
    weights = slice_profile_weights(nz, pz, centres, a.slice_thickness_mm)

    # The kernel acts on a field padded by replicating its edges, so that where the field of view cuts
    # through the body the FFT's wrap-around does not ring.
    kernel = KERNELS[a.kernel]
    pad = math.ceil(4 * max(kernel.blur_mm, kernel.boost_mm) / p)
    padded_shape = (fft.next_fast_len(mx + 2 * pad, real=True), fft.next_fast_len(my + 2 * pad, real=True))
    transfer, noise_amplitude = kernel_response(padded_shape, p, kernel)
    noise_amplitude *= np.float32(a.noise_hu)
    circle = scan_circle((mx, my), p) if a.padding_hu is not None else None
    along_x = _interpolation_matrix(mx, nx, origin_xy[0] / px, p / px)
    along_y = _interpolation_matrix(my, ny, origin_xy[1] / py, p / py)
    # Stored values are written block by block into Fortran-ordered arrays (NIfTI's own order), so that
    # neither the rescale nor the reorientation below copies the whole scan.
    rescale = a.rescale
    slope, intercept = rescale if rescale is not None else (1.0, 0.0)
    image = np.empty((mx, my, count), np.uint16 if a.storage == "uint16_rescale" else np.int16, order="F")
    acquired_label = np.empty((mx, my, count), np.uint8, order="F")
    for k0 in range(0, count, _BLOCK):
        k1 = min(k0 + _BLOCK, count)
        w = weights[k0:k1]
        used = np.flatnonzero(w.any(axis=0))
        j0, j1 = int(used[0]), int(used[-1]) + 1
        w = w[:, j0:j1]
        # Blocks are (slices, X, Y): the in-plane FFTs then run over contiguous memory.
        averaged = np.tensordot(w, hu[:, :, j0:j1].astype(np.float32, copy=False), axes=([1], [2]))
        slab = _resample_in_plane(averaged, along_x, along_y, AIR_HU)
        tumour = label[:, :, j0:j1]
        if tumour.any():
            averaged = np.tensordot(w, tumour.astype(np.float32), axes=([1], [2]))
            fraction = _resample_in_plane(averaged, along_x, along_y, 0.0)
        else:
            fraction = np.zeros(slab.shape, np.float32)

        edges = ((0, 0), (pad, padded_shape[0] - mx - pad), (pad, padded_shape[1] - my - pad))
        spectrum = fft.rfft2(np.pad(slab, edges, mode="edge"))
        spectrum *= transfer
        if a.noise_hu:
            spectrum += fft.rfft2(rng.standard_normal((k1 - k0, *padded_shape), dtype=np.float32)) * noise_amplitude
        slab = fft.irfft2(spectrum, s=padded_shape)[:, pad : pad + mx, pad : pad + my]
        slab = np.clip(np.rint(slab), HU_MIN, HU_MAX)
        if circle is not None:
            slab[:, ~circle] = a.padding_hu
        image[:, :, k0:k1] = np.rint((slab - np.float32(intercept)) / np.float32(slope)).transpose(1, 2, 0)
        acquired_label[:, :, k0:k1] = (fraction >= 0.5).transpose(1, 2, 0)

    # World: patient-fixed millimetres with the body centre at the isocentre (plus the table offset).
    iso = np.asarray(a.isocentre_mm, float)
    grid_to_world = np.diag([-1.0, -1.0, 1.0, 1.0])
    grid_to_world[:3, 3] = [body[0], body[1], -height / 2]
    grid_to_world[:3, 3] += iso
    voxel_to_grid = np.diag([p, p, a.slice_spacing_mm, 1.0])
    voxel_to_grid[:3, 3] = [origin_xy[0], origin_xy[1], first]
    affine = grid_to_world @ voxel_to_grid

    transform = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt(("L", "P", "S")), nib.orientations.axcodes2ornt(tuple(a.orientation))
    )
    affine = affine @ nib.orientations.inv_ornt_aff(transform, image.shape)
    image = nib.orientations.apply_orientation(image, transform)  # flips: views, no copy
    acquired_label = nib.orientations.apply_orientation(acquired_label, transform)
    return AcquiredScan(image, acquired_label, affine, rescale, grid_to_world)


def lesion_records(
    lesions: Sequence[dict[str, Any]], scan: AcquiredScan, spacing: Sequence[float]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Ground truth of painted lesions in the acquired scan.

    Each acquired label voxel belongs to the nearest painted lesion centre. A lesion whose acquired
    label is empty (outside the field of view or the slab, or too small for the slices) is reported
    apart.

    Args:
        lesions: as painted: ``index`` (box slices), ``mask`` (in the box), ``radius``, ``location``.
        scan: the acquired scan.
        spacing: phantom voxel size in mm.

    Returns:
        ``(acquired, missing)``: records with ``centre_voxel``, ``centre_mm`` (centroid of the acquired
        label), ``painted_centre_mm``, ``diameter_mm``, ``voxels``, ``volume_ml``, ``painted_volume_ml``,
        ``location``; and records of the lesions not in the scan.
    """
    spacing = np.asarray(spacing, float)
    painted = []
    for lesion in lesions:
        offset = np.array([s.start for s in lesion["index"]])
        grid_mm = (np.argwhere(lesion["mask"]).mean(axis=0) + offset) * spacing
        painted.append((scan.grid_to_world @ np.append(grid_mm, 1))[:3])
    voxels = np.argwhere(scan.label)
    world = voxels @ scan.affine[:3, :3].T + scan.affine[:3, 3]
    owner = (
        np.argmin(((world[:, None, :] - np.array(painted)[None]) ** 2).sum(axis=2), axis=1)
        if len(painted) and len(voxels)
        else np.zeros(0, int)
    )
    voxel_ml = float(np.prod(scan.spacing)) / 1000
    acquired, missing = [], []
    for k, lesion in enumerate(lesions):
        mine = owner == k
        record: dict[str, Any] = {
            "painted_centre_mm": [round(float(c), 3) for c in painted[k]],
            "diameter_mm": round(2 * lesion["radius"], 2),
            "painted_volume_ml": round(float(lesion["mask"].sum()) * float(np.prod(spacing)) / 1000, 4),
            "location": lesion["location"],
            **({"kind": lesion["kind"]} if "kind" in lesion else {}),
        }
        if not mine.any():
            missing.append(record)
            continue
        centre_voxel = voxels[mine].mean(axis=0)
        acquired.append(
            {
                "centre_voxel": [round(float(c), 3) for c in centre_voxel],
                "centre_mm": [round(float(c), 3) for c in (scan.affine @ np.append(centre_voxel, 1))[:3]],
                "voxels": int(mine.sum()),
                "volume_ml": round(int(mine.sum()) * voxel_ml, 4),
                **record,
            }
        )
    return acquired, missing


def preset_acquisition(preset: str, rng: np.random.Generator, size: str) -> Acquisition | None:
    """The acquisition of a ``--acquisition`` preset: ``default`` (``None``: synth's own) or ``varied`` (drawn)."""
    if preset == "default":
        return None
    if preset == "varied":
        return draw_acquisition(rng, size)
    raise ValueError(f"unknown acquisition preset {preset!r}; use one of {PRESETS}")
