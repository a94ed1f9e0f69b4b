"""The input checks shared by every command that reads a CT or a mask: predict, evaluate, preprocess, data verify.

A volume that would give a silently wrong answer is refused with one line naming the file:

- **Geometry.** The voxel-to-world affine must be finite, non-singular, without shear, with positive
  voxel sizes. A NIfTI header must place the volume the same way for every reader: a qform or an sform
  (both codes 0 leaves orientation and spacing unknown: nibabel then guesses from ``pixdim``), positive
  ``pixdim`` (nibabel silently turns a zero into 1 mm), ``pixdim`` equal to the sform's voxel size (ITK
  takes the spacing from ``pixdim``, nibabel from the sform), and, when both forms are set, qform and
  sform within :data:`AFFINE_TOLERANCE_MM` of each other at every corner of the volume. Readers differ
  on which form wins (nibabel always takes the sform; ITK 5.4 takes the sform when its code is 1 or there
  is no qform, the qform otherwise, as measured with the ``itk`` package; FSL, MRtrix and older ITK prefer
  the qform), so a mask written in either frame would sit shifted in some viewer: such a file is refused
  rather than guessed. A DICOM series must state its spacing: ITK
  reads a missing or zero Pixel Spacing as 1 mm, so a 1 mm in-plane spacing is confirmed from the tag.
- **Intensities** (CT images only): no NaN or infinite voxel, not constant, within the 16-bit range a
  scanner stores, and at least :data:`MIN_AIR_FRACTION` of the voxels in the air and lung range
  :data:`AIR_LUNG_HU` (every chest CT holds air around the body and in the lungs; a [0, 1]-normalised,
  unrescaled 0..4095, HU-shifted or MR volume holds none).

The intensity test counts air on about :data:`AIR_SAMPLE_SLICES` slices of the slowest axis; a float
volume is also read once for its minimum and maximum (NaN and infinity show there), an int16 one, which
can hold neither, is not. On a 512x512x300 int16 scan the checks take about 1% of the time needed to
decode the file (``scripts/bench_input_checks.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.openers import ImageOpener

from lung_tumor.errors import LungTumorError

AFFINE_TOLERANCE_MM = 0.1  # qform and sform may differ by float32 rounding, never by a fraction of a voxel
SPACING_RTOL = 1e-3  # pixdim against the sform's voxel size; cosine between the affine's axes (shear)
HU_LOWEST, HU_HIGHEST = -32768.0, 32767.0  # the int16 range; extended-scale CT reaches about 30 700 HU with metal
AIR_LUNG_HU = (-1100.0, -500.0)
MIN_AIR_FRACTION = 0.01  # measured: 0.37 to 0.76 on the real and synthetic chest CT of the tests
AIR_SAMPLE_SLICES = 16  # air is counted on about this many slices along the slowest axis


@dataclass(frozen=True)
class IntensitySummary:
    """What the intensity rule needs from a volume.

    Attributes:
        minimum: smallest value (NaN when the volume holds a NaN).
        maximum: largest value.
        nonfinite: number of NaN or infinite voxels.
        air_fraction: fraction of the sampled voxels within :data:`AIR_LUNG_HU` (NaN when not finite).
    """

    minimum: float
    maximum: float
    nonfinite: int
    air_fraction: float


def _within_hu_range(dtype: np.dtype) -> bool:
    """Whether every value of an integer ``dtype`` lies in [HU_LOWEST, HU_HIGHEST] (int16, int8, uint8)."""
    if dtype.kind not in "iub":
        return False
    info = np.iinfo(dtype) if dtype.kind != "b" else np.iinfo(np.uint8)
    return HU_LOWEST <= info.min and info.max <= HU_HIGHEST


def summarize_intensities(array: np.ndarray, exact: bool = True) -> IntensitySummary:
    """Minimum, maximum, count of non-finite voxels and air fraction of a volume, in any memory order.

    Args:
        array: the volume.
        exact: minimum and maximum of every voxel. Without it, an int16 (or narrower) volume, which
            can hold neither NaN nor values out of range, gets those of the air sample only: enough
            for the rule except a constant sample, which :func:`check_ct_intensities` confirms exactly.
    """
    array = np.asarray(array)
    slow_axis = int(np.argmax(np.abs(array.strides))) if array.ndim else 0
    step = max(1, array.shape[slow_axis] // AIR_SAMPLE_SLICES) if array.ndim else 1
    sample = array[(slice(None),) * slow_axis + (slice(None, None, step),)]  # a view of whole rows
    whole = array if exact or not _within_hu_range(array.dtype) else sample
    minimum, maximum = float(whole.min()), float(whole.max())
    if not (np.isfinite(minimum) and np.isfinite(maximum)):
        return IntensitySummary(minimum, maximum, int(array.size - np.count_nonzero(np.isfinite(array))), np.nan)
    low, high = AIR_LUNG_HU
    air = np.count_nonzero((sample >= low) & (sample <= high)) / max(sample.size, 1)
    return IntensitySummary(minimum, maximum, 0, float(air))


def intensity_problems(summary: IntensitySummary) -> list[str]:
    """Why a volume with these intensities cannot be CT in Hounsfield units (empty when it can)."""
    found = f"intensities {summary.minimum:g}..{summary.maximum:g}"
    if summary.nonfinite:
        return [f"{summary.nonfinite} voxel(s) are NaN or infinite; a CT holds finite Hounsfield units"]
    if summary.minimum == summary.maximum:
        return [f"constant volume (every voxel {summary.minimum:g}): not a CT"]
    if summary.minimum < HU_LOWEST or summary.maximum > HU_HIGHEST:
        return [f"{found} outside [{HU_LOWEST:g}, {HU_HIGHEST:g}]: not CT in HU"]
    low, high = AIR_LUNG_HU
    if summary.air_fraction < MIN_AIR_FRACTION:
        return [
            f"{found} with {summary.air_fraction:.1%} of voxels in air/lung [{low:g}, {high:g}] HU, expected at "
            f"least {MIN_AIR_FRACTION:.0%}: not CT in HU (normalised, unrescaled or not CT?)"
        ]
    return []


def check_ct_intensities(array: np.ndarray, path: str | Path) -> None:
    """Refuse a volume whose intensities cannot be CT in Hounsfield units.

    Raises:
        LungTumorError: NaN or infinite voxels, a constant volume, values out of range or no air.
    """
    if intensity_problems(summarize_intensities(array, exact=False)):
        problems = intensity_problems(summarize_intensities(array))  # confirmed, with the exact range to report
        if problems:
            raise LungTumorError(problems[0], path)


def _mm(values: Any) -> str:
    return " x ".join(f"{float(v):g}" for v in values)


def affine_problems(affine: np.ndarray, what: str = "affine") -> list[str]:
    """Why a 4x4 voxel-to-world matrix cannot place a volume (empty when it can)."""
    matrix = np.asarray(affine, dtype=float)[:3, :3]
    if not np.all(np.isfinite(np.asarray(affine, dtype=float))):
        return [f"{what} holds NaN or infinite values: voxel positions unknown"]
    spacing = np.linalg.norm(matrix, axis=0)
    if np.any(spacing <= 0):
        return [f"{what} gives voxel spacing {_mm(spacing)} mm: a zero spacing has no volume"]
    axes = matrix / spacing
    if abs(np.linalg.det(axes)) < 1e-6:
        return [f"{what} is singular (its voxel axes are parallel): voxel positions unknown"]
    cosines = np.abs(axes.T @ axes - np.eye(3))
    if cosines.max() > SPACING_RTOL:
        return [f"{what} is sheared (voxel axes not perpendicular): ITK cannot represent it, readers would differ"]
    return []


def _corners(shape: tuple[int, ...]) -> np.ndarray:
    """The 8 corner voxels of a 3D grid as homogeneous columns (4, 8)."""
    extent = [max(int(n) - 1, 0) for n in shape[:3]]
    grid = np.array(np.meshgrid(*([0, e] for e in extent), indexing="ij")).reshape(3, -1)
    return np.vstack([grid, np.ones((1, grid.shape[1]))])


def nifti_header_problems(header: nib.Nifti1Header) -> list[str]:
    """Why a NIfTI header, as stored (not as nibabel repairs it on loading), places its volume ambiguously."""
    qcode, scode = int(header["qform_code"]), int(header["sform_code"])
    shape = tuple(int(n) for n in header["dim"][1:4])
    pixdim = np.asarray(header["pixdim"][1:4], dtype=float)
    if qcode <= 0 and scode <= 0:
        return ["header has no qform and no sform (both codes 0): orientation and voxel spacing unknown"]
    if not np.all(np.isfinite(pixdim)) or np.any(pixdim <= 0):
        return [f"header voxel spacing (pixdim) {_mm(pixdim)} mm: must be positive"]
    forms = {}
    if scode > 0:
        sform = header.get_sform()
        problems = affine_problems(sform, "sform")
        if problems:
            return problems
        voxel = np.linalg.norm(sform[:3, :3], axis=0)
        if not np.allclose(voxel, pixdim, rtol=SPACING_RTOL):
            return [
                f"sform voxel size {_mm(voxel)} mm differs from pixdim {_mm(pixdim)} mm "
                "(nibabel takes the sform's, ITK the pixdim): voxel spacing ambiguous"
            ]
        forms["sform"] = sform
    if qcode > 0:
        try:
            forms["qform"] = header.get_qform()
        except Exception as err:  # nibabel rejects impossible quaternions with several types
            return [f"qform cannot be read ({err})"]
        problems = affine_problems(forms["qform"], "qform")
        if problems:
            return problems
    if len(forms) == 2:
        corners = _corners(shape)
        distance = float(np.linalg.norm((forms["qform"] - forms["sform"]) @ corners, axis=0).max())
        if distance > AFFINE_TOLERANCE_MM:
            return [
                f"qform and sform disagree by up to {distance:.3g} mm at the volume corners (tolerance "
                f"{AFFINE_TOLERANCE_MM:g} mm): readers differ on which to use; make them equal or set one code to 0"
            ]
    return []


def read_nifti_header(path: str | Path, header_class: type = nib.Nifti1Header) -> nib.Nifti1Header:
    """The header of a NIfTI file exactly as stored (nibabel's loading repairs zero ``pixdim`` and bad codes)."""
    with ImageOpener(str(path)) as handle:
        return header_class.from_fileobj(handle, check=False)


def check_nifti_geometry(path: str | Path, header_class: type = nib.Nifti1Header) -> None:
    """Refuse a NIfTI file whose header places its voxels ambiguously (see the module docstring).

    Raises:
        LungTumorError: the first problem found.
    """
    problems = nifti_header_problems(read_nifti_header(path, header_class))
    if problems:
        raise LungTumorError(problems[0], path)


def check_affine(affine: np.ndarray, path: str | Path) -> None:
    """Refuse a volume (NIfTI or DICOM) whose affine cannot place its voxels.

    Raises:
        LungTumorError: non-finite, zero-spacing, singular or sheared affine.
    """
    problems = affine_problems(affine)
    if problems:
        raise LungTumorError(problems[0], path)


def dicom_pixel_spacing(folder: str | Path) -> str | None:
    """The Pixel Spacing tag (0028,0030) of the first file of the folder's first series, as stored (None: absent)."""
    import itk

    names = itk.GDCMSeriesFileNames.New()
    names.SetDirectory(str(folder))
    uids = names.GetSeriesUIDs()
    if not uids:
        return None
    reader = itk.GDCMImageIO.New()
    reader.SetFileName(names.GetFileNames(uids[0])[0])
    reader.ReadImageInformation()
    tags = reader.GetMetaDataDictionary()
    return str(tags["0028|0030"]) if tags.HasKey("0028|0030") else None


def check_dicom_spacing(folder: str | Path, spacing: Any) -> None:
    """Refuse a DICOM series whose in-plane spacing ITK made up.

    ITK reads a missing or zero Pixel Spacing as 1 mm without a word; an in-plane spacing of exactly
    1 mm is therefore confirmed from the tag itself (other spacings cannot be made up, so cost nothing).

    Raises:
        LungTumorError: zero, negative or not finite spacing, or a 1 mm spacing the files do not state.
    """
    spacing = np.asarray(spacing, dtype=float)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise LungTumorError(f"DICOM voxel spacing {_mm(spacing)} mm: must be positive", folder)
    if not np.any(spacing[:2] == 1.0):
        return
    stored = dicom_pixel_spacing(folder)
    try:
        values = [float(v) for v in (stored or "").strip().split("\\")]
    except ValueError:
        values = []
    if len(values) != 2 or not all(np.isfinite(v) and v > 0 for v in values):
        shown = "missing" if stored is None else f"'{stored.strip()}'"
        raise LungTumorError(
            f"DICOM Pixel Spacing (0028,0030) is {shown}: in-plane voxel size unknown (ITK would assume 1 mm)",
            folder,
        )


def check_label_values(label: np.ndarray, path: str | Path) -> None:
    """Refuse a mask with NaN or infinite values (the 0/1 rule itself is in ``check_label``).

    Raises:
        LungTumorError: how many voxels are not finite.
    """
    label = np.asarray(label)
    if label.dtype.kind == "f" and not (np.isfinite(label.min()) and np.isfinite(label.max())):
        count = int(label.size - np.count_nonzero(np.isfinite(label)))
        raise LungTumorError(f"label has {count} NaN or infinite voxel(s); expected 0 and 1", path)


__all__ = [
    "AFFINE_TOLERANCE_MM",
    "IntensitySummary",
    "affine_problems",
    "check_affine",
    "check_ct_intensities",
    "check_dicom_spacing",
    "check_label_values",
    "check_nifti_geometry",
    "intensity_problems",
    "nifti_header_problems",
    "read_nifti_header",
    "summarize_intensities",
]
