"""Lesions as 26-connected components, and lesion-level detection counts."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

LESION_CONNECTIVITY = 26
_STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)


def label_lesions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Label the 26-connected components of a binary 3D mask.

    Args:
        mask: (X, Y, Z) array; any non-zero voxel is tumour.

    Returns:
        The label array (0 background, 1..n lesions) and the number of lesions n.
    """
    labels, count = ndimage.label(np.asarray(mask) != 0, structure=_STRUCTURE_26)
    return labels, int(count)


def lesion_detection(prediction: np.ndarray, truth: np.ndarray) -> dict[str, int | float | None]:
    """Count detected, missed and false lesions.

    A predicted lesion is a true positive when it shares at least one voxel with a true lesion; a true
    lesion is detected when at least one predicted lesion overlaps it. Lesions are 26-connected components.

    Args:
        prediction: (X, Y, Z) binary mask.
        truth: ground truth of the same shape.

    Returns:
        ``lesions_true``, ``lesions_predicted``, ``lesions_detected`` (true lesions hit), ``lesions_missed``,
        ``lesions_true_positive`` (predicted lesions that overlap the truth), ``lesions_false_positive``
        (predicted lesions that do not) and ``lesion_sensitivity`` (detected / true; ``None`` without true lesions).
    """
    pred_labels, n_pred = label_lesions(prediction)
    true_labels, n_true = label_lesions(truth)
    overlap = (pred_labels > 0) & (true_labels > 0)
    detected = np.unique(true_labels[overlap]).size
    hit_predictions = np.unique(pred_labels[overlap]).size
    return {
        "lesions_true": n_true,
        "lesions_predicted": n_pred,
        "lesions_detected": int(detected),
        "lesions_missed": n_true - int(detected),
        "lesions_true_positive": int(hit_predictions),
        "lesions_false_positive": n_pred - int(hit_predictions),
        "lesion_sensitivity": detected / n_true if n_true else None,
    }
