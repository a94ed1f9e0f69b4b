"""``lung-tumor followup``: compare two predictions of one patient (baseline and follow-up scan).

Steps:

1. **Read** each prediction: the mask NIfTI written by ``lung-tumor predict`` and its ``CASE_report.json``
   beside it (a prediction folder holding one mask and report is accepted too).
2. **Align** the scans when both CTs are given: a rigid registration (ITK ``ImageRegistrationMethodv4``,
   ``VersorRigid3DTransform``, Mattes mutual information) of the two CTs on a coarse grid (about 4 mm), started
   from their centres of mass. It gives the map from baseline to follow-up patient coordinates. Without
   the CTs the scans are "not aligned": world coordinates are compared as they are, which holds only when
   the patient lay alike in both scans (the output says so).
3. **Match** lesions by position: the baseline centroids, carried into the follow-up scan by the
   registration, are assigned to follow-up centroids one to one (Hungarian assignment,
   :func:`scipy.optimize.linear_sum_assignment`) on their distance; a pair farther apart than
   ``max(match_mm, half the larger longest axial diameter)`` is no match. Unmatched baseline lesions have
   vanished, unmatched follow-up lesions are new.
4. **RECIST 1.1 response** of the baseline target lesions (from the baseline report): the sum of their
   longest axial diameters at follow-up (a vanished target counts 0 mm) against baseline (the nadir when
   there are two scans): CR all targets gone; PR a decrease of at least 30 %; PD an increase of at least
   20 % and at least 5 mm, or an unequivocal new lesion (one not flagged ``small``); SD otherwise. Overall:
   CR only when no lesion is left at all (a remaining non-target makes it PR, "non-CR/non-PD"
   non-targets). Unequivocal progression of non-target lesions is not assessed.
5. **Volumes** per matched lesion: change in ml and % and the volume doubling time
   ``VDT = dt ln 2 / ln(V2 / V1)`` in days when both scan dates are known (given, or a ``study_date`` in
   the report's provenance); negative when the lesion shrinks (its halving time is ``-VDT``).

Outputs: ``followup.json`` (marked ``"generator": "lung-tumor followup"``) and ``followup.txt`` in the
output folder, checked first by the output policy (:class:`lung_tumor.outputs.OutputPlan`).
"""

from __future__ import annotations

import datetime
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from lung_tumor.errors import LungTumorError
from lung_tumor.io import write_atomic, write_json
from lung_tumor.outputs import OutputPlan, marker

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1.0"
MATCH_MM = 15.0
REGISTRATION_GRID_MM = 4.0
SAMPLING_FRACTION = 0.2
SAMPLING_SEED = 20251
PD_FRACTION = 0.20
PD_MIN_MM = 5.0
PR_FRACTION = 0.30
EPSILON_MM = 1e-6  # diameters are compared at the cut-offs without rounding noise
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


# ---------------------------------------------------------------------------------------------- inputs
def find_prediction(path: str | Path) -> tuple[Path, Path]:
    """The mask file and its report for a mask path or a prediction folder.

    Raises:
        LungTumorError: no such file, no report beside the mask, or a folder with none or several.
    """
    path = Path(path)
    if path.is_dir():
        reports = sorted(path.glob("*_report.json"))
        if len(reports) != 1:
            found = "no" if not reports else f"{len(reports)}"
            raise LungTumorError(f"{found} prediction reports (*_report.json) here; give the mask file instead", path)
        case = reports[0].name[: -len("_report.json")]
        masks = [p for p in (path / f"{case}.nii.gz", path / f"{case}.nii") if p.is_file()]
        if not masks:
            raise LungTumorError(f"no mask {case}.nii.gz beside its report", path)
        return masks[0], reports[0]
    if not path.is_file():
        raise LungTumorError("no such file or folder", path)
    name = path.name
    case = (
        name[: -len(".nii.gz")] if name.endswith(".nii.gz") else name[: -len(".nii")] if name.endswith(".nii") else None
    )
    if case is None:
        raise LungTumorError("not a mask NIfTI (.nii or .nii.gz) or a prediction folder", path)
    report = path.with_name(f"{case}_report.json")
    if not report.is_file():
        raise LungTumorError(
            f"no report {report.name} beside the mask; run lung-tumor predict without --no-report", path
        )
    return path, report


def read_report(path: Path) -> dict[str, Any]:
    """A prediction report, checked for the fields the follow-up uses."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise LungTumorError(f"cannot read the report: {err}", path) from None
    if not isinstance(report, dict) or not isinstance(report.get("lesions"), list) or "recist" not in report:
        raise LungTumorError("not a lung-tumor report (schema 2.x, with lesions and recist)", path)
    for lesion in report["lesions"]:
        missing = {"lesion", "volume_ml", "longest_axial_diameter_mm", "centroid_world_mm"} - set(lesion)
        if missing:
            raise LungTumorError(f"lesion without {', '.join(sorted(missing))}: not a report of schema 2.x", path)
    return report


def _load_nifti(path: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    try:
        image = nib.load(path)
        return np.asarray(image.dataobj, dtype=np.float32), np.asarray(image.affine, dtype=float)
    except Exception as err:  # nibabel raises many kinds for a damaged file
        raise LungTumorError(f"cannot read the {what}: {err}", path) from None


def _nifti_grid(path: Path, what: str) -> tuple[tuple[int, ...], np.ndarray]:
    """The shape and affine of a NIfTI, from its header only."""
    import nibabel as nib

    try:
        image = nib.load(path)
        return tuple(image.shape), np.asarray(image.affine, dtype=float)
    except Exception as err:  # nibabel raises many kinds for a damaged file
        raise LungTumorError(f"cannot read the {what}: {err}", path) from None


def parse_date(value: str | None, where: str) -> datetime.date | None:
    """``YYYY-MM-DD`` (or DICOM ``YYYYMMDD``) as a date; ``None`` for ``None``."""
    if value is None:
        return None
    for form in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return datetime.datetime.strptime(str(value), form).date()
        except ValueError:
            pass
    raise LungTumorError(f"not a date (YYYY-MM-DD): {value!r}", where)


# ----------------------------------------------------------------------------------------- registration
def _coarse(image: np.ndarray, affine: np.ndarray, grid_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Block means of about ``grid_mm`` and the affine of the coarse grid (block centres)."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    factors = [max(1, int(round(grid_mm / s))) for s in spacing]
    crop = image[tuple(slice(0, (n // f) * f) for n, f in zip(image.shape, factors, strict=True))]
    shape = [n // f for n, f in zip(crop.shape, factors, strict=True)]
    blocks = crop.reshape(shape[0], factors[0], shape[1], factors[1], shape[2], factors[2]).mean(axis=(1, 3, 5))
    coarse_affine = affine.copy()
    coarse_affine[:3, :3] = affine[:3, :3] * factors
    coarse_affine[:3, 3] = affine[:3, :3] @ ((np.array(factors) - 1) / 2.0) + affine[:3, 3]
    return blocks.astype(np.float32), coarse_affine


def _itk_image(array: np.ndarray, affine: np.ndarray) -> Any:
    """An ITK image (LPS physical space) of a nibabel-ordered array with its RAS affine."""
    import itk

    image = itk.image_from_array(np.ascontiguousarray(array.transpose(2, 1, 0)))
    lps = RAS_TO_LPS @ affine[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(v) for v in RAS_TO_LPS @ affine[:3, 3]])
    image.SetDirection(itk.matrix_from_array(np.ascontiguousarray(lps / spacing)))
    return image


def register_rigid(
    fixed_hu: np.ndarray,
    fixed_affine: np.ndarray,
    moving_hu: np.ndarray,
    moving_affine: np.ndarray,
    grid_mm: float = REGISTRATION_GRID_MM,
) -> dict[str, Any]:
    """Rigid registration of two CTs with ITK: the map from fixed (baseline) to moving (follow-up) RAS mm.

    Args:
        fixed_hu: the baseline CT in HU, nibabel array order; ``fixed_affine`` its RAS affine.
        moving_hu: the follow-up CT; ``moving_affine`` its affine.
        grid_mm: the coarse grid the CTs are registered on.

    Returns:
        ``matrix`` (3x3 rotation) and ``offset`` (mm) such that ``x_followup = matrix @ x_baseline + offset``
        in RAS mm, the rotation angle in degrees, the translation's length in mm and the final metric value.
    """
    import itk

    images = []
    for hu, affine in ((fixed_hu, fixed_affine), (moving_hu, moving_affine)):
        # HU + 1000 clipped: air 0, so the centres of mass are the body's; bone saturates
        clipped = np.clip(np.asarray(hu, dtype=np.float32) + 1000.0, 0.0, 1400.0)
        images.append(_itk_image(*_coarse(clipped, np.asarray(affine, dtype=float), grid_mm)))
    fixed, moving = images
    image_type = type(fixed)
    transform_type = itk.VersorRigid3DTransform[itk.D]
    transform = transform_type.New()
    initializer = itk.CenteredTransformInitializer[transform_type, image_type, image_type].New(
        Transform=transform, FixedImage=fixed, MovingImage=moving
    )
    initializer.MomentsOn()
    initializer.InitializeTransform()

    metric = itk.MattesMutualInformationImageToImageMetricv4[image_type, image_type].New()
    metric.SetNumberOfHistogramBins(32)
    scales = itk.RegistrationParameterScalesFromPhysicalShift[type(metric)].New()
    scales.SetMetric(metric)
    optimizer = itk.RegularStepGradientDescentOptimizerv4[itk.D].New(
        LearningRate=2.0, MinimumStepLength=0.01, NumberOfIterations=200, RelaxationFactor=0.5
    )
    optimizer.SetScalesEstimator(scales)
    registration = itk.ImageRegistrationMethodv4[image_type, image_type].New(
        FixedImage=fixed, MovingImage=moving, Metric=metric, Optimizer=optimizer
    )
    registration.SetInitialTransform(transform)
    registration.InPlaceOn()
    registration.SetNumberOfLevels(2)
    registration.SetShrinkFactorsPerLevel([2, 1])
    registration.SetSmoothingSigmasPerLevel([1.0, 0.0])
    # a fixed random fifth of the voxels per level: fast, and the same answer on every run
    registration.SetMetricSamplingStrategy(itk.ImageRegistrationMethodv4Enums.MetricSamplingStrategy_RANDOM)
    registration.SetMetricSamplingPercentage(SAMPLING_FRACTION)
    registration.MetricSamplingReinitializeSeed(SAMPLING_SEED)
    registration.Update()

    # ITK maps fixed physical points (LPS) to moving ones: y = M x + t; in RAS, F M F and F t (F = diag(-1,-1,1))
    matrix_lps = itk.array_from_matrix(transform.GetMatrix())
    offset_lps = np.asarray(transform.GetOffset(), dtype=float)
    matrix = RAS_TO_LPS @ matrix_lps @ RAS_TO_LPS
    offset = RAS_TO_LPS @ offset_lps
    angle = math.degrees(math.acos(float(np.clip((np.trace(matrix) - 1.0) / 2.0, -1.0, 1.0))))
    return {
        "method": "rigid (ITK ImageRegistrationMethodv4, VersorRigid3DTransform, Mattes mutual information) "
        f"of the CTs on a {grid_mm:g} mm grid",
        "matrix": matrix.tolist(),
        "offset_mm": offset.tolist(),
        "rotation_deg": angle,
        "metric_value": float(optimizer.GetValue()),
        "iterations": int(optimizer.GetCurrentIteration()),
    }


# ------------------------------------------------------------------------------------------- matching
def match_lesions(
    baseline: list[dict[str, Any]],
    followup: list[dict[str, Any]],
    to_followup: tuple[np.ndarray, np.ndarray],
    match_mm: float = MATCH_MM,
) -> list[tuple[int, int, float]]:
    """One-to-one matches ``(baseline index, follow-up index, distance mm)`` of lesions by position.

    Args:
        baseline: baseline report lesions; follow-up: follow-up report lesions.
        to_followup: ``(matrix, offset)`` carrying baseline RAS mm into the follow-up scan.
        match_mm: the largest distance of a match (raised to half the larger longest axial diameter of the
            two lesions for big ones).
    """
    from scipy.optimize import linear_sum_assignment

    if not baseline or not followup:
        return []
    matrix, offset = to_followup
    a = np.array([lesion["centroid_world_mm"] for lesion in baseline], dtype=float) @ np.asarray(matrix).T + offset
    b = np.array([lesion["centroid_world_mm"] for lesion in followup], dtype=float)
    distance = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)
    size_a = np.array([lesion["longest_axial_diameter_mm"] for lesion in baseline], dtype=float)
    size_b = np.array([lesion["longest_axial_diameter_mm"] for lesion in followup], dtype=float)
    limit = np.maximum(match_mm, 0.5 * np.maximum(size_a[:, None], size_b[None, :]))
    cost = np.where(distance <= limit, distance, 1e9)
    rows, cols = linear_sum_assignment(cost)
    return [(int(r), int(c), float(distance[r, c])) for r, c in zip(rows, cols, strict=True) if cost[r, c] < 1e9]


# -------------------------------------------------------------------------------------------- response
def target_response(baseline_sum_mm: float, followup_sum_mm: float) -> str:
    """RECIST 1.1 response of the target lesions from the sums of diameters (baseline as the nadir)."""
    if followup_sum_mm <= EPSILON_MM:
        return "CR"
    change = followup_sum_mm - baseline_sum_mm
    if change >= PD_FRACTION * baseline_sum_mm - EPSILON_MM and change >= PD_MIN_MM - EPSILON_MM:
        return "PD"
    if -change >= PR_FRACTION * baseline_sum_mm - EPSILON_MM:
        return "PR"
    return "SD"


def overall_response(target: str | None, new_lesion: bool, lesions_left: bool) -> str:
    """Overall RECIST 1.1 response: a new lesion is PD; CR needs every lesion gone."""
    if new_lesion:
        return "PD"
    if target is None:
        return "NE"
    if target == "CR" and lesions_left:
        return "PR"
    return target


def volume_doubling_time(volume1_ml: float, volume2_ml: float, days: float) -> float | None:
    """``dt ln 2 / ln(V2 / V1)`` in days; ``None`` when a volume is zero or the volume did not change."""
    if volume1_ml <= 0 or volume2_ml <= 0 or volume1_ml == volume2_ml:
        return None
    return days * math.log(2.0) / math.log(volume2_ml / volume1_ml)


def _scan_date(report: dict[str, Any], given: str | None, where: Path) -> tuple[datetime.date | None, str]:
    if given is not None:
        return parse_date(given, "--baseline-date/--followup-date"), "given"
    study = (report.get("provenance") or {}).get("study_date")
    if study:
        return parse_date(study, str(where)), "report (DICOM study date)"
    return None, "unknown"


# -------------------------------------------------------------------------------------------- compare
def compare_reports(
    baseline: dict[str, Any],
    followup: dict[str, Any],
    to_followup: tuple[np.ndarray, np.ndarray],
    days: float | None,
    match_mm: float = MATCH_MM,
) -> dict[str, Any]:
    """Matches, new and vanished lesions, RECIST response and volume changes of two reports.

    Args:
        baseline: the baseline report; followup: the follow-up report.
        to_followup: ``(matrix, offset)`` carrying baseline RAS mm into the follow-up scan.
        days: days from baseline to follow-up, or ``None`` when a date is unknown.
        match_mm: see :func:`match_lesions`.
    """
    lesions_a, lesions_b = baseline["lesions"], followup["lesions"]
    matches = match_lesions(lesions_a, lesions_b, to_followup, match_mm)
    matched_a = {r: (c, d) for r, c, d in matches}
    matched_b = {c for _, c, _ in matches}
    pairs = []
    for r, c, d in matches:
        a, b = lesions_a[r], lesions_b[c]
        v1, v2 = float(a["volume_ml"]), float(b["volume_ml"])
        vdt = None if days is None else volume_doubling_time(v1, v2, days)
        pairs.append(
            {
                "baseline_lesion": a["lesion"],
                "followup_lesion": b["lesion"],
                "distance_after_alignment_mm": round(d, 2),
                "baseline_volume_ml": v1,
                "followup_volume_ml": v2,
                "volume_change_ml": round(v2 - v1, 4),
                "volume_change_percent": round(100.0 * (v2 - v1) / v1, 2) if v1 > 0 else None,
                "baseline_longest_axial_diameter_mm": a["longest_axial_diameter_mm"],
                "followup_longest_axial_diameter_mm": b["longest_axial_diameter_mm"],
                "volume_doubling_time_days": None if vdt is None else round(vdt, 1),
                "volume_doubling_time_note": (
                    "dates unknown" if days is None else "volume unchanged" if vdt is None else None
                ),
            }
        )
    vanished = [lesions_a[i]["lesion"] for i in range(len(lesions_a)) if i not in matched_a]
    new = [b for j, b in enumerate(lesions_b) if j not in matched_b]
    unequivocal_new = [b["lesion"] for b in new if not (b.get("flags") or {}).get("small", False)]

    targets = list(baseline["recist"].get("target_lesions") or [])
    index_of = {lesion["lesion"]: i for i, lesion in enumerate(lesions_a)}
    target_rows = []
    for number in targets:
        i = index_of[number]
        a = lesions_a[i]
        follow = matched_a.get(i)
        after = float(lesions_b[follow[0]]["longest_axial_diameter_mm"]) if follow else 0.0
        target_rows.append(
            {
                "baseline_lesion": number,
                "followup_lesion": lesions_b[follow[0]]["lesion"] if follow else None,
                "baseline_diameter_mm": float(a["longest_axial_diameter_mm"]),
                "followup_diameter_mm": after,
            }
        )
    baseline_sum = sum(row["baseline_diameter_mm"] for row in target_rows)
    followup_sum = sum(row["followup_diameter_mm"] for row in target_rows)
    target = target_response(baseline_sum, followup_sum) if target_rows else None
    overall = overall_response(target, bool(unequivocal_new), bool(lesions_b))
    reasons = []
    if unequivocal_new:
        reasons.append(f"new lesion(s) {', '.join(map(str, unequivocal_new))}")
    if target is None:
        reasons.append("no measurable target lesion at baseline")
    else:
        change = followup_sum - baseline_sum
        percent = 100.0 * change / baseline_sum
        reasons.append(f"target sum {baseline_sum:.1f} -> {followup_sum:.1f} mm ({change:+.1f} mm, {percent:+.1f} %)")
        if target == "CR" and lesions_b:
            reasons.append("targets gone but lesions remain (non-CR/non-PD)")
    return {
        "matches": pairs,
        "vanished_lesions": vanished,
        "new_lesions": [b["lesion"] for b in new],
        "new_lesions_unequivocal": unequivocal_new,
        "recist": {
            "target_lesions": target_rows,
            "baseline_sum_mm": round(baseline_sum, 2),
            "followup_sum_mm": round(followup_sum, 2),
            "change_mm": round(followup_sum - baseline_sum, 2),
            "change_percent": round(100.0 * (followup_sum - baseline_sum) / baseline_sum, 2) if baseline_sum else None,
            "target_response": target,
            "overall_response": overall,
            "reason": "; ".join(reasons),
            "not_assessed": "unequivocal progression of non-target lesions; lymph nodes; the nadir before baseline",
        },
    }


def format_followup(result: dict[str, Any]) -> str:
    """The follow-up as text."""
    recist = result["recist"]
    lines = [
        "Follow-up (lung-tumor followup) - " + result["disclaimer"],
        f"baseline:  {result['baseline']['mask']} ({result['baseline']['date'] or 'date unknown'})",
        f"follow-up: {result['followup']['mask']} ({result['followup']['date'] or 'date unknown'})",
        f"interval: {result['interval_days']} days"
        if result["interval_days"] is not None
        else "interval: dates unknown",
        f"alignment: {result['alignment']['method']}",
        f"RECIST 1.1 overall response: {recist['overall_response']} ({recist['reason']})",
        f"target response: {recist['target_response'] or 'not evaluable'}",
    ]
    for row in recist["target_lesions"]:
        after = "gone" if row["followup_lesion"] is None else f"lesion {row['followup_lesion']}"
        lines.append(
            f"  target {row['baseline_lesion']}: {row['baseline_diameter_mm']:.1f} mm -> "
            f"{row['followup_diameter_mm']:.1f} mm ({after})"
        )
    for pair in result["matches"]:
        vdt = pair["volume_doubling_time_days"]
        lines.append(
            f"lesion {pair['baseline_lesion']} -> {pair['followup_lesion']}: "
            f"{pair['baseline_volume_ml']:.3f} -> {pair['followup_volume_ml']:.3f} ml "
            f"({pair['volume_change_percent']:+.1f} %), doubling time "
            + (f"{vdt:.0f} days" if vdt is not None else pair["volume_doubling_time_note"])
            + f", {pair['distance_after_alignment_mm']:.1f} mm apart after alignment"
        )
    lines.append(f"new lesions: {', '.join(map(str, result['new_lesions'])) or 'none'}")
    lines.append(f"vanished lesions: {', '.join(map(str, result['vanished_lesions'])) or 'none'}")
    return "\n".join(lines) + "\n"


def followup(
    baseline: str | Path,
    followup_scan: str | Path,
    output: str | Path,
    baseline_image: str | Path | None = None,
    followup_image: str | Path | None = None,
    baseline_date: str | None = None,
    followup_date: str | None = None,
    match_mm: float = MATCH_MM,
    overwrite: bool = False,
) -> dict[str, Any]:
    """``lung-tumor followup``: compare a baseline and a follow-up prediction (see the module docstring).

    Args:
        baseline: the baseline mask NIfTI (its ``_report.json`` beside it) or prediction folder.
        followup_scan: the follow-up mask or prediction folder.
        output: the folder for ``followup.json`` and ``followup.txt``.
        baseline_image: the baseline CT (aligns the scans, with ``followup_image``).
        followup_image: the follow-up CT.
        baseline_date: ``YYYY-MM-DD`` of the baseline scan (default: the report's study date, if any).
        followup_date: likewise for the follow-up.
        match_mm: the largest distance of a lesion match after alignment.
        overwrite: replace output files that lung-tumor did not write (never an input).

    Returns:
        The content of ``followup.json``.

    Raises:
        LungTumorError: a missing or unreadable input, a CT not on its mask's grid, only one CT, a bad date,
            or an unsafe output.
    """
    mask_a, report_a = find_prediction(baseline)
    mask_b, report_b = find_prediction(followup_scan)
    if (baseline_image is None) != (followup_image is None):
        raise LungTumorError("give both --baseline-image and --followup-image, or neither")
    output = Path(output)
    inputs = [mask_a, report_a, mask_b, report_b, *(Path(p) for p in (baseline_image, followup_image) if p)]
    plan = OutputPlan(inputs=inputs, overwrite=overwrite)
    json_path = plan.add_file(output / "followup.json")
    text_path = plan.add_file(output / "followup.txt", vouched_by=json_path)
    plan.check()

    reports = read_report(report_a), read_report(report_b)
    date_a, source_a = _scan_date(reports[0], baseline_date, report_a)
    date_b, source_b = _scan_date(reports[1], followup_date, report_b)
    days = None if date_a is None or date_b is None else float((date_b - date_a).days)
    if days is not None and days <= 0:
        raise LungTumorError(f"the follow-up date {date_b} is not after the baseline date {date_a}")

    if baseline_image is not None and followup_image is not None:
        cts = []
        for mask_path, image_path in ((mask_a, Path(baseline_image)), (mask_b, Path(followup_image))):
            mask_shape, mask_affine = _nifti_grid(mask_path, "mask")
            hu, affine = _load_nifti(image_path, "CT")
            if hu.shape != mask_shape or not np.allclose(affine, mask_affine, atol=1e-3):
                raise LungTumorError(f"the CT is not on the grid of its mask {mask_path}", image_path)
            cts.append((hu, affine))
        alignment = register_rigid(cts[0][0], cts[0][1], cts[1][0], cts[1][1])
        alignment["aligned"] = True
        to_followup = (np.array(alignment["matrix"]), np.array(alignment["offset_mm"]))
        log.info(
            "aligned: rotation %.1f deg, translation %.1f mm",
            alignment["rotation_deg"],
            float(np.linalg.norm(to_followup[1])),
        )
    else:
        alignment = {
            "aligned": False,
            "method": "not aligned (no CTs given): world coordinates compared as they are",
        }
        to_followup = (np.eye(3), np.zeros(3))

    result: dict[str, Any] = {
        "generator": marker("followup"),
        "schema_version": SCHEMA_VERSION,
        "disclaimer": "Unverified output of a research model; not for diagnosis.",
        "baseline": {
            "mask": str(mask_a),
            "report": str(report_a),
            "date": date_a and date_a.isoformat(),
            "date_source": source_a,
        },
        "followup": {
            "mask": str(mask_b),
            "report": str(report_b),
            "date": date_b and date_b.isoformat(),
            "date_source": source_b,
        },
        "interval_days": days,
        "alignment": alignment,
        "match_mm": match_mm,
    }
    result.update(compare_reports(reports[0], reports[1], to_followup, days, match_mm))
    output.mkdir(parents=True, exist_ok=True)
    write_json(json_path, result)
    text = format_followup(result)
    write_atomic(text_path, lambda f: f.write(text))
    return result


__all__ = [
    "compare_reports",
    "find_prediction",
    "followup",
    "match_lesions",
    "overall_response",
    "register_rigid",
    "target_response",
    "volume_doubling_time",
]
