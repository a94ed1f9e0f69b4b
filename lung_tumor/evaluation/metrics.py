"""Per-case 3D segmentation metrics in millimetres, and their summary over cases.

Every function works on numpy arrays in the original image grid. Overlap and distance metrics come from
``monai.metrics``; this module decides what is *defined* for a case and says why when it is not.
A metric that is undefined for a case is ``None`` (never a silent NaN or 0) and its reason is kept in the
case's ``undefined`` mapping; summaries average each metric over the cases where it is defined.

Conventions (also written into ``summary.json``):

- Both masks empty: Dice, IoU and surface Dice are undefined (``None``) by default and left out of
  the means, as nnU-Net does (it reports NaN and excludes the case). ``both_empty_dice=1.0`` selects the
  other common convention (a correct "no tumour" scores 1.0 and enters the means).
- Empty ground truth with a non-empty prediction: Dice, IoU, precision and surface Dice are 0
  (every predicted voxel is false); recall, HD95 and relative volume error are undefined.
- Non-empty ground truth with an empty prediction: Dice, IoU, recall and surface Dice are 0;
  precision and HD95 are undefined.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import (
    compute_confusion_matrix_metric,
    compute_dice,
    compute_hausdorff_distance,
    compute_iou,
    compute_surface_dice,
    get_confusion_matrix,
)

from lung_tumor.errors import LungTumorError
from lung_tumor.evaluation.lesions import LESION_CONNECTIVITY, lesion_detection

CASE_TYPES = ("tumour", "empty_truth", "empty_prediction", "both_empty")

# Metrics averaged over cases in the summary, in the order of the CSV columns.
SUMMARY_METRICS = (
    "dice",
    "iou",
    "precision",
    "recall",
    "specificity",
    "hd95_mm",
    "surface_dice",
    "volume_error_ml",
    "volume_abs_error_ml",
    "volume_rel_error",
    "lesion_sensitivity",
    "lesions_false_positive",
    "soft_dice_slice_averaged_naive",
)

NAIVE_SOFT_DICE_EPS = 1e-6


def both_empty_convention(both_empty_dice: float | None) -> str:
    """The sentence that states how a case with empty truth and empty prediction is scored."""
    if both_empty_dice is None:
        return (
            "both masks empty: Dice, IoU and surface Dice undefined (None) and excluded from per-case means "
            "and medians (nnU-Net convention); the case still counts in pooled figures and lesion counts"
        )
    return f"both masks empty: Dice, IoU and surface Dice set to {both_empty_dice} and included in per-case means"


def _case_type(pred_voxels: int, true_voxels: int) -> str:
    if true_voxels and pred_voxels:
        return "tumour"
    if pred_voxels:
        return "empty_truth"
    if true_voxels:
        return "empty_prediction"
    return "both_empty"


def _crop_to_union(prediction: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of their union plus one voxel, so metrics stay cheap on big CTs.

    Two empty masks are cropped to a single voxel.
    """
    union = prediction | truth
    box = []
    for axis in range(union.ndim):
        present = np.flatnonzero(union.any(axis=tuple(a for a in range(union.ndim) if a != axis)))
        lo, hi = (present[0], present[-1] + 1) if present.size else (0, 1)
        box.append(slice(max(lo - 1, 0), min(hi + 1, union.shape[axis])))
    return prediction[tuple(box)], truth[tuple(box)]


def _as_batch(mask: np.ndarray) -> torch.Tensor:
    """(X, Y, Z) bool -> (1, 1, X, Y, Z) float tensor, MONAI's one-hot batch-first layout for one class."""
    return torch.from_numpy(mask.astype(np.float32))[None, None]


def case_metrics(
    prediction: np.ndarray,
    truth: np.ndarray,
    spacing: Sequence[float],
    tolerance_mm: float = 2.0,
    both_empty_dice: float | None = None,
) -> dict[str, Any]:
    """Score one case in 3D on binarised masks (any non-zero voxel is tumour).

    Args:
        prediction: (X, Y, Z) predicted mask (bool or integer).
        truth: (X, Y, Z) ground-truth mask on the same grid.
        spacing: voxel size in mm along the three array axes.
        tolerance_mm: boundary tolerance of the surface Dice, in mm.
        both_empty_dice: ``None`` (default) leaves Dice, IoU and surface Dice undefined when both masks
            are empty; a number (usually 1.0) is used for them instead. See the module docstring.

    Returns:
        A flat mapping: ``case_type`` (one of :data:`CASE_TYPES`), ``dice``, ``iou``, ``precision``, ``recall``,
        ``specificity``, ``hd95_mm``, ``surface_dice`` (at ``tolerance_mm``), voxel counts ``tp``, ``fp``,
        ``fn``, ``tn``, ``volume_truth_ml``, ``volume_pred_ml``, ``volume_error_ml`` (prediction minus truth),
        ``volume_abs_error_ml``, ``volume_rel_error`` (signed, relative to the truth), the lesion counts of
        :func:`~lung_tumor.evaluation.lesions.lesion_detection`, and ``undefined``: metric name -> reason
        for every metric that is ``None``.

    Raises:
        LungTumorError: the masks differ in shape, are not 3D, or the spacing is not three positive numbers.

    Examples::

        >>> cube = np.zeros((8, 8, 8), bool); cube[2:6, 2:6, 2:6] = True
        >>> case_metrics(cube, cube, (1.0, 1.0, 1.0))["dice"]
        1.0
    """
    pred = np.asarray(prediction) != 0
    true = np.asarray(truth) != 0
    if pred.shape != true.shape or pred.ndim != 3:
        raise LungTumorError(f"prediction {pred.shape} and ground truth {true.shape} must be 3D of the same shape")
    spacing_mm = tuple(float(s) for s in spacing)
    if len(spacing_mm) != 3 or not all(s > 0 and math.isfinite(s) for s in spacing_mm):
        raise LungTumorError(f"spacing must be three positive numbers in mm, got {tuple(spacing)}")

    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    pred_voxels, true_voxels = int(pred.sum()), int(true.sum())
    case_type = _case_type(pred_voxels, true_voxels)
    undefined: dict[str, str] = {}
    result: dict[str, Any] = {"case_type": case_type}
    pred_crop, true_crop = _crop_to_union(pred, true)  # every voxel outside is a true negative

    if case_type == "both_empty":
        tp = fp = fn = 0
        tn = pred.size
        for name in ("dice", "iou", "surface_dice"):
            result[name] = both_empty_dice
            if both_empty_dice is None:
                undefined[name] = "both masks empty (nnU-Net convention: excluded)"
        result["precision"] = result["recall"] = result["hd95_mm"] = None
        undefined["precision"] = "empty prediction"
        undefined["recall"] = "empty ground truth"
        undefined["hd95_mm"] = "both masks empty"
        result["specificity"] = 1.0
    else:
        y_pred, y = _as_batch(pred_crop), _as_batch(true_crop)
        confusion = get_confusion_matrix(y_pred, y, include_background=True)
        tp, fp, _, fn = (int(v) for v in confusion[0, 0])
        tn = pred.size - tp - fp - fn
        confusion[0, 0, 2] = tn  # the voxels outside the crop are all true negatives

        result["dice"] = float(compute_dice(y_pred, y, include_background=True, ignore_empty=False)[0, 0])
        result["iou"] = float(compute_iou(y_pred, y, include_background=True, ignore_empty=False)[0, 0])
        for name, denominator, reason in (
            ("precision", tp + fp, "empty prediction"),
            ("recall", tp + fn, "empty ground truth"),
            ("specificity", tn + fp, "no background voxel in the ground truth"),
        ):
            if denominator:
                result[name] = float(compute_confusion_matrix_metric(name, confusion)[0, 0])
            else:
                result[name] = None
                undefined[name] = reason
        if case_type == "tumour":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # MONAI's own deprecated argument, internally
                hd95 = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95, spacing=spacing_mm)
                nsd = compute_surface_dice(
                    y_pred, y, class_thresholds=[float(tolerance_mm)], include_background=True, spacing=spacing_mm
                )
            result["hd95_mm"] = float(hd95[0, 0])
            result["surface_dice"] = float(nsd[0, 0])
        else:
            result["hd95_mm"] = None
            undefined["hd95_mm"] = "empty ground truth" if case_type == "empty_truth" else "empty prediction"
            result["surface_dice"] = 0.0  # one surface is empty: no boundary element is within tolerance

    volume_truth = true_voxels * voxel_ml
    volume_pred = pred_voxels * voxel_ml
    result.update(
        tp=tp,
        fp=fp,
        fn=fn,
        tn=tn,
        volume_truth_ml=volume_truth,
        volume_pred_ml=volume_pred,
        volume_error_ml=volume_pred - volume_truth,
        volume_abs_error_ml=abs(volume_pred - volume_truth),
        volume_rel_error=(volume_pred - volume_truth) / volume_truth if true_voxels else None,
    )
    if not true_voxels:
        undefined["volume_rel_error"] = "empty ground truth"
    result.update(lesion_detection(pred_crop, true_crop))
    if result["lesion_sensitivity"] is None:
        undefined["lesion_sensitivity"] = "no true lesion"
    result["undefined"] = undefined
    return result


def per_slice_soft_dice(probabilities: np.ndarray, truth: np.ndarray, axis: int = -1) -> np.ndarray:
    """Soft Dice ``2 sum(p t) / (sum(p) + sum(t) + eps)`` of every slice along ``axis``.

    A slice without tumour scores (about) 0 however good the prediction is: this is the flaw of the
    naive recipe, kept here only to reproduce its number.
    """
    p = np.moveaxis(np.asarray(probabilities, dtype=np.float32), axis, 0).reshape(np.shape(probabilities)[axis], -1)
    t = np.moveaxis(np.asarray(truth) != 0, axis, 0).reshape(p.shape)
    overlap = np.where(t, p, 0.0).sum(axis=1, dtype=np.float64)
    return 2.0 * overlap / (p.sum(axis=1, dtype=np.float64) + t.sum(axis=1) + NAIVE_SOFT_DICE_EPS)


def slice_averaged_soft_dice(probabilities: np.ndarray, truth: np.ndarray, axis: int = -1) -> float:
    """The naive figure: soft Dice per 2D slice, averaged over all slices (empty slices included).

    This is what the original slice-by-slice recipe reported. Most axial slices of a chest CT contain no
    tumour and score about 0, so the average says more about the tumour's slice count than about the
    segmentation (the recipe's 0.0247 was such a number). Use the per-case 3D Dice instead.

    Args:
        probabilities: (X, Y, Z) tumour probabilities in [0, 1].
        truth: ground-truth mask on the same grid.
        axis: the slice axis (the axial one for this project).
    """
    return float(per_slice_soft_dice(probabilities, truth, axis).mean())


def _describe(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return float(np.mean(values)), float(np.median(values))


def summarize_cases(
    cases: Sequence[dict[str, Any]], both_empty_dice: float | None = None, tolerance_mm: float = 2.0
) -> dict[str, Any]:
    """Summarise per-case results of :func:`case_metrics` over a set of cases.

    For each metric ``m`` of :data:`SUMMARY_METRICS`: ``m_per_case_mean``, ``m_per_case_median`` and
    ``m_per_case_n`` (the number of cases where ``m`` is defined). Pooled figures sum voxels over all
    cases: ``dice_pooled = 2 sum(TP) / sum(2 TP + FP + FN)`` and ``iou_pooled``. Lesion figures:
    ``lesion_sensitivity_pooled`` (detected / true lesions over all cases) and
    ``lesion_false_positives_per_case``. ``soft_dice_slice_averaged_naive`` averages the naive per-slice
    soft Dice over every slice of every case that has one (``soft_dice_naive_slices`` per case).

    Args:
        cases: per-case mappings as returned by :func:`case_metrics`, optionally with
            ``soft_dice_slice_averaged_naive`` and ``soft_dice_naive_slices``.
        both_empty_dice: the convention the cases were scored with (recorded in the summary).
        tolerance_mm: the surface-Dice tolerance the cases were scored with (recorded in the summary).
    """
    summary: dict[str, Any] = {
        "cases": len(cases),
        "case_types": {name: Counter(c["case_type"] for c in cases).get(name, 0) for name in CASE_TYPES},
    }
    for name in SUMMARY_METRICS:
        values = [float(c[name]) for c in cases if c.get(name) is not None]
        mean, median = _describe(values)
        summary[f"{name}_per_case_mean"] = mean
        summary[f"{name}_per_case_median"] = median
        summary[f"{name}_per_case_n"] = len(values)

    tp, fp, fn = (sum(int(c[k]) for c in cases) for k in ("tp", "fp", "fn"))
    summary["dice_pooled"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
    summary["iou_pooled"] = tp / (tp + fp + fn) if tp + fp + fn else None
    lesions_true = sum(int(c["lesions_true"]) for c in cases)
    lesions_detected = sum(int(c["lesions_detected"]) for c in cases)
    lesions_false = sum(int(c["lesions_false_positive"]) for c in cases)
    summary.update(
        lesions_true_total=lesions_true,
        lesions_detected_total=lesions_detected,
        lesions_false_positive_total=lesions_false,
        lesion_sensitivity_pooled=lesions_detected / lesions_true if lesions_true else None,
        lesion_false_positives_per_case=lesions_false / len(cases) if cases else None,
    )
    naive = [c for c in cases if c.get("soft_dice_slice_averaged_naive") is not None]
    slices = sum(int(c.get("soft_dice_naive_slices", 0)) for c in naive)
    summary["soft_dice_slice_averaged_naive"] = (
        sum(c["soft_dice_slice_averaged_naive"] * int(c["soft_dice_naive_slices"]) for c in naive) / slices
        if slices
        else None
    )
    summary["both_empty_dice"] = both_empty_dice
    summary["surface_dice_tolerance_mm"] = tolerance_mm
    summary["conventions"] = {
        "both_empty": both_empty_convention(both_empty_dice),
        "undefined_metrics": "None with a reason per case; per-case means and medians use only defined cases (_n)",
        "dice_pooled": "2*sum(TP) / sum(2*TP + FP + FN) over all voxels of all cases",
        "hd95_mm": "95th percentile symmetric Hausdorff distance between mask surfaces, in mm (MONAI)",
        "surface_dice": f"normalised surface Dice at a tolerance of {tolerance_mm} mm (MONAI)",
        "lesions": f"{LESION_CONNECTIVITY}-connected components; a predicted lesion is a true positive when it "
        "overlaps a true lesion; a true lesion is detected when any predicted lesion overlaps it (so one "
        "predicted blob covering several true lesions detects them all: read with dice and volume error)",
        "soft_dice_slice_averaged_naive": "the original recipe's figure: per-axial-slice soft Dice averaged "
        "over all slices, empty slices scoring about 0; NOT comparable with the 3D per-case Dice",
    }
    return summary
