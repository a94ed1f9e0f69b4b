"""``lung-tumor data verify``: check a dataset folder against its ``dataset.json`` and the release manifest.

Every file listed by ``dataset.json`` is read in full (a truncated gzip shows up only at its end) and
checked: a 3D image in Hounsfield units, a label on the same grid with integer values 0 and 1. With
``checksums`` the size and sha256 of each file the manifest knows are compared with it. The result is
a table per case on stdout, one line per problem (``path: problem``) on stderr and a summary line.

A ``dataset.json`` written by ``lung-tumor synth`` (it has a ``synthetic`` field) reuses the release's
file names but not its contents, so it is never compared with the Task06_Lung manifest.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from isal import igzip
from tqdm import tqdm

from lung_tumor.data.checks import (
    IntensitySummary,
    affine_problems,
    intensity_problems,
    nifti_header_problems,
    summarize_intensities,
)
from lung_tumor.data.manifest import MANIFEST_PATH, load_manifest
from lung_tumor.data.msd import Case, list_cases, read_dataset_json
from lung_tumor.errors import LungTumorError

log = logging.getLogger(__name__)

AFFINE_ATOL = 1e-3
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class VolumeInfo:
    """What verification needs from one NIfTI file, read in full (the voxels themselves are not kept).

    Attributes:
        shape: array shape.
        affine: 4x4 voxel-to-world matrix.
        dtype: data type of the voxel values (float when the header sets a scaling slope).
        minimum: smallest value.
        maximum: largest value.
        nonzero: number of non-zero voxels.
        size: file size in bytes.
        intensities: what the shared CT intensity rule needs (:mod:`lung_tumor.data.checks`).
        geometry: problems of the header and affine, by the shared rule.
        sha256: hex digest of the file, when asked for.
    """

    shape: tuple[int, ...]
    affine: np.ndarray
    dtype: np.dtype
    minimum: float
    maximum: float
    nonzero: int
    size: int
    intensities: IntensitySummary
    geometry: tuple[str, ...] = ()
    sha256: str | None = None

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along the three spatial axes."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))


def read_volume(path: str | Path, with_sha256: bool = False) -> VolumeInfo:
    """Read a NIfTI file (``.nii`` or ``.nii.gz``) completely and summarise it.

    The whole gzip stream is decompressed (by ISA-L, about twice as fast as zlib), so a truncated or damaged
    file fails its length and CRC check even where nibabel alone would stop reading before the damage.

    Raises:
        LungTumorError: the file is missing or cannot be read to its end (corrupt or truncated).
    """
    path = Path(path)
    if not path.is_file():
        raise LungTumorError("file not found", path)
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest() if with_sha256 else None
    try:
        content = igzip.decompress(raw) if raw[:2] == _GZIP_MAGIC else raw
        image = nib.Nifti1Image.from_bytes(content)
        stored_header = nib.Nifti1Header.from_fileobj(io.BytesIO(content), check=False)  # before nibabel's repairs
        data = np.asanyarray(image.dataobj)
    except Exception as err:  # gzip, ISA-L and nibabel raise many types for a damaged file; all mean the same
        raise LungTumorError(f"cannot be read ({type(err).__name__}: {err})", path) from None
    if data.size == 0:
        raise LungTumorError("holds no voxels", path)
    intensities = summarize_intensities(data)
    affine = np.asarray(image.affine, dtype=float)
    return VolumeInfo(
        shape=tuple(int(n) for n in data.shape),
        affine=affine,
        dtype=data.dtype,
        minimum=intensities.minimum,
        maximum=intensities.maximum,
        nonzero=int(np.count_nonzero(data)),
        size=len(raw),
        intensities=intensities,
        geometry=tuple(nifti_header_problems(stored_header) or affine_problems(affine)),
        sha256=digest,
    )


def image_problems(info: VolumeInfo) -> list[str]:
    """Problems of a CT image: not 3D, ambiguous geometry, or intensities that are not plausible Hounsfield units.

    The geometry and intensity rules are those every command applies when it reads a CT
    (:mod:`lung_tumor.data.checks`), so ``data verify`` accepts exactly what ``preprocess`` and ``predict`` accept.
    """
    problems = []
    if len(info.shape) != 3:
        problems.append(f"image is {len(info.shape)}D {info.shape}, expected a 3D volume")
    problems += info.geometry
    problems += intensity_problems(info.intensities)
    return problems


def label_problems(label: VolumeInfo, image: VolumeInfo | None) -> list[str]:
    """Problems of a tumour label: not integer-typed, values outside {0, 1}, or another grid than the image."""
    problems = list(label.geometry)
    if label.intensities.nonfinite:
        problems.append(f"label has {label.intensities.nonfinite} NaN or infinite voxel(s)")
    if label.dtype.kind not in "iub":
        problems.append(f"label is stored as {label.dtype}, expected an integer type")
    if label.minimum < 0 or label.maximum > 1:
        problems.append(f"label values {label.minimum:g}..{label.maximum:g}, expected only 0 and 1")
    if image is not None:
        if label.shape != image.shape:
            problems.append(f"label shape {label.shape} differs from image shape {image.shape}")
        elif not np.allclose(label.affine, image.affine, atol=AFFINE_ATOL):
            problems.append("label affine differs from the image affine (not on the same grid)")
    return problems


def _manifest_files(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Relative path (``imagesTr/lung_001.nii.gz``) -> ``{"size", "sha256"}`` for every file of the manifest."""
    files = {}
    for item in [*manifest.get("training", []), *manifest.get("test", [])]:
        for key in ("image", "label"):
            if isinstance(item.get(key), dict):
                files[item[key]["path"].removeprefix("./")] = item[key]
    return files


@dataclass
class _Row:
    """One line of the table."""

    case: Case
    split: str
    image: VolumeInfo | None = None
    label: VolumeInfo | None = None
    problems: int = 0


class _Report:
    """Collects problems as ``path: problem`` lines."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lines: list[str] = []

    def name(self, path: Path) -> str:
        try:
            return str(self.root / path.relative_to(self.root.resolve()))
        except ValueError:
            return str(path)

    def add(self, path: Path, problem: str) -> None:
        self.lines.append(f"{self.name(path)}: {problem}")


def _check_file(path: Path, known: dict[str, Any] | None, checksums: bool, report: _Report) -> VolumeInfo | None:
    """Read one file and, with ``checksums``, compare it with its manifest entry ``known``."""
    try:
        info = read_volume(path, with_sha256=checksums and known is not None)
    except LungTumorError as err:
        report.add(path, str(err).removeprefix(f"{path}: "))
        return None
    if checksums:
        if known is None:
            log.info("%s: not in manifest (checksum not checked)", report.name(path))
        elif info.size != known["size"]:
            report.add(path, f"size {info.size} bytes, manifest says {known['size']}")
        elif info.sha256 != known["sha256"]:
            report.add(path, f"sha256 {info.sha256[:16]}..., manifest says {known['sha256'][:16]}...")
    return info


def _print_table(rows: list[_Row]) -> None:
    header = ("case", "split", "shape", "spacing mm", "HU range", "tumour vox", "tumour ml", "status")
    lines = [header]
    for row in rows:
        image, label = row.image, row.label
        shape = "x".join(str(n) for n in image.shape) if image else "-"
        spacing = "x".join(f"{s:.2f}" for s in image.spacing) if image else "-"
        hu = f"{image.minimum:g}..{image.maximum:g}" if image else "-"
        voxels = str(label.nonzero) if label else "-"
        volume = f"{label.nonzero * float(np.prod(label.spacing)) / 1000:.2f}" if label else "-"
        status = "ok" if row.problems == 0 else f"{row.problems} problem{'s' if row.problems > 1 else ''}"
        lines.append((row.case.case_id, row.split, shape, spacing, hu, voxels, volume, status))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        sys.stdout.write("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() + "\n")


def verify_dataset(root: str | Path, checksums: bool = False, manifest_path: str | Path | None = None) -> int:
    """Check a dataset folder; print a table per case, one line per problem and a summary.

    Args:
        root: MSD-layout folder with ``dataset.json``.
        checksums: also compare size and sha256 of the files the manifest knows.
        manifest_path: manifest to compare with (default: the repository's ``data_manifest.json``).

    Returns:
        The number of problems found (0: the dataset is usable).

    Raises:
        LungTumorError: the manifest is missing or not JSON.
    """
    root = Path(root)
    manifest_path = Path(manifest_path if manifest_path is not None else MANIFEST_PATH)
    try:
        manifest = load_manifest(manifest_path)
    except json.JSONDecodeError as err:
        raise LungTumorError(f"manifest is not valid JSON ({err})", manifest_path) from None
    report = _Report(root)
    rows: list[_Row] = []
    try:
        content = read_dataset_json(root)
        cases = [(case, "training") for case in list_cases(root, "training")]
        cases += [(case, "test") for case in list_cases(root, "test")]
    except LungTumorError as err:
        report.lines.append(str(err))
        cases, content = [], {}

    describes_dataset = not (content.get("synthetic") and manifest.get("name") == "Task06_Lung")
    known_files = _manifest_files(manifest) if describes_dataset else {}
    resolved_root = root.resolve()
    for case, split in tqdm(cases, desc="verify", unit="case", disable=None):
        before = len(report.lines)
        row = _Row(case, split)
        row.image = _check_file(case.image, known_files.get(_relative(case.image, resolved_root)), checksums, report)
        if row.image is not None:
            for problem in image_problems(row.image):
                report.add(case.image, problem)
        if split == "training" and case.label is None:
            report.add(case.image, "training case has no label in dataset.json")
        elif case.label is not None:
            known = known_files.get(_relative(case.label, resolved_root))
            row.label = _check_file(case.label, known, checksums, report)
            if row.label is not None:
                for problem in label_problems(row.label, row.image):
                    report.add(case.label, problem)
        row.problems = len(report.lines) - before
        rows.append(row)

    _check_official_ids(root, rows, manifest, known_files, report)
    if rows:
        _print_table(rows)
    for line in report.lines:
        sys.stderr.write(line + "\n")
    count = len(report.lines)
    sys.stdout.write(
        f"{root}: {len(rows)} case(s) checked{' with checksums' if checksums else ''}, "
        f"{count} problem{'' if count == 1 else 's'}\n"
    )
    return count


def _relative(path: Path, resolved_root: Path) -> str:
    return path.relative_to(resolved_root).as_posix()


def _check_official_ids(
    root: Path, rows: list[_Row], manifest: dict[str, Any], known_files: dict[str, Any], report: _Report
) -> None:
    """For a copy of the release (official ids, files of the release's sizes), report official cases it lacks."""
    official = {split: {item["case"] for item in manifest.get(split, [])} for split in ("training", "test")}
    listed = {split: {row.case.case_id for row in rows if row.split == split} for split in official}
    if not rows or not all(listed[split] <= official[split] for split in official):
        return
    resolved_root = root.resolve()
    paths = [p for row in rows for p in (row.case.image, row.case.label) if p is not None and p.is_file()]
    sizes = [known_files.get(_relative(p, resolved_root), {}).get("size") for p in paths]
    if not any(p.stat().st_size == size for p, size in zip(paths, sizes, strict=True)):
        return  # same ids, other contents: not a copy of the release
    for split, ids in official.items():
        for case_id in sorted(ids - listed[split]):
            report.lines.append(f"{root / 'dataset.json'}: official {split} case {case_id} is missing from the folder")
