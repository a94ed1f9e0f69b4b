"""Where a report comes from: package version, model run, settings, input checksum and date."""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lung_tumor

DISCLAIMER = "Unverified output of a research model; not for diagnosis."
CHUNK_BYTES = 1 << 20


def input_sha256(path: str | Path) -> str:
    """SHA-256 of a file; of a folder (a DICOM series), of its visible files' names and contents in name order."""
    path = Path(path)
    digest = hashlib.sha256()
    files = (
        [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    )
    for file in files:
        if path.is_dir():
            digest.update(file.name.encode() + b"\0")
        with file.open("rb") as stream:
            while chunk := stream.read(CHUNK_BYTES):
                digest.update(chunk)
    return digest.hexdigest()


def dicom_series_uid(folder: str | Path) -> str | None:
    """The SeriesInstanceUID (0020,000E) of a DICOM folder's first file in name order, read from its header alone.

    None when the folder holds no readable DICOM file or the tag is missing.
    """
    import itk

    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        return None
    reader = itk.GDCMImageIO.New()
    reader.SetFileName(str(files[0]))
    try:
        reader.ReadImageInformation()
    except RuntimeError:  # not DICOM: ITK raises RuntimeError for a file it cannot parse
        return None
    found, value = reader.GetValueFromTag("0020|000e", "")
    return value.strip().rstrip("\0") or None if found else None


def prediction_provenance(
    source: str | Path,
    run_dir: str | Path,
    checkpoint: str | Path,
    threshold: float,
    min_lesion_mm3: float,
    lung_mask: bool,
    series_instance_uid: str | None = None,
    precision: str = "float32",
    flip_tta: bool = False,
    ensemble_members: Sequence[str | Path] = (),
    min_depth_ratio: float = 0.0,
    min_slice_mm: float = 0.0,
    second_look: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The provenance block of a prediction's report.

    Args:
        source: the input file or DICOM folder.
        run_dir: the training run folder.
        checkpoint: the checkpoint file whose weights were used.
        threshold: the probability threshold.
        min_lesion_mm3: the small-lesion removal setting.
        lung_mask: whether lesions far from the lungs were removed.
        series_instance_uid: the DICOM SeriesInstanceUID (read from the folder's first file when not given).
        precision: the network's arithmetic: ``float32``, or ``bfloat16`` autocast.
        flip_tta: whether the probabilities average the scan and its in-plane mirror images.
        ensemble_members: for an ensemble (``checkpoint`` is then its ``ensemble.json``), each member's checkpoint.
        min_depth_ratio: the flat-lesion removal setting (0: off).
        min_slice_mm: the closest slice spacing the network saw (0: the scan's own slices).
        second_look: the second pass's ``second_look_mm``, ``second_look_threshold`` and ``second_look_support``
            (recorded where ``second_look_mm`` is not 0; none: no second pass).
    """
    if series_instance_uid is None and Path(source).is_dir():
        series_instance_uid = dicom_series_uid(source)
    provenance = {
        "package": "lung_tumor",
        "package_version": lung_tumor.__version__,
        "run_dir": str(Path(run_dir).resolve()),
        "checkpoint": str(Path(checkpoint).resolve()),
        "threshold": float(threshold),
        "precision": precision,
        "post_processing": {
            "min_lesion_mm3": float(min_lesion_mm3),
            "lung_mask": bool(lung_mask),
            "flip_tta": bool(flip_tta),
            "min_depth_ratio": float(min_depth_ratio),
            "min_slice_mm": float(min_slice_mm),
            "second_look_mm": 0.0,
        },
        "input": str(source),
        "input_sha256": input_sha256(source),
        "series_instance_uid": series_instance_uid,
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "disclaimer": DISCLAIMER,
    }
    if second_look and second_look.get("second_look_mm"):
        provenance["post_processing"].update({name: float(value) for name, value in second_look.items()})
    if ensemble_members:
        provenance["ensemble_members"] = [str(Path(path).resolve()) for path in ensemble_members]
    return provenance
