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


def nonzero_voxels(mask: np.ndarray) -> np.ndarray:
    """``np.argwhere(mask)`` (the non-zero voxels' indices in C order), read in the array's own memory order.

    ``argwhere`` walks the array in C order, which strides through a Fortran-ordered CT's mask (as nibabel reads
    it) several times slower than one flat pass in memory order and a sort of the (few) indices found.
    """
    found = np.asarray(mask) != 0
    order = "F" if found.flags.f_contiguous and not found.flags.c_contiguous else "C"
    points = np.stack(np.unravel_index(np.flatnonzero(found.ravel(order=order)), found.shape, order=order), axis=1)
    return points if order == "C" else points[np.lexsort(points.T[::-1])]


def lesion_components(mask: np.ndarray) -> list[tuple[tuple[slice, ...], np.ndarray]]:
    """The lesions of :func:`label_lesions`, in its order, each as its bounding box and its own mask in that box.

    A sparse mask is labelled without an array of its size: its voxels are split into groups wherever a whole
    plane between them along some axis holds none (no 26-connected component crosses an empty plane), and each
    group is labelled in its own bounding box. The lesions are then ordered by their first voxel in C order, as
    :func:`scipy.ndimage.label` numbers them.

    Args:
        mask: a 3D array; any non-zero voxel is tumour.

    Returns:
        ``(box, lesion)`` per lesion: ``box`` the voxel slices of its bounding box in ``mask``, ``lesion`` a boolean
        array of the box's shape, true on the lesion's voxels.
    """
    points = nonzero_voxels(mask)
    found: list[tuple[tuple[int, ...], tuple[slice, ...], np.ndarray]] = []
    groups = [points] if len(points) else []
    while groups:
        group = groups.pop()
        for axis in range(group.shape[1]):
            order = np.argsort(group[:, axis], kind="stable")  # stable: each part stays in C order
            gaps = np.flatnonzero(np.diff(group[order, axis]) > 1)
            if gaps.size:
                groups += [group[part] for part in np.split(order, gaps + 1)]
                break
        else:
            low = group.min(axis=0)
            inside = np.zeros(group.max(axis=0) - low + 1, dtype=bool)
            inside[tuple((group - low).T)] = True
            labels, _ = ndimage.label(inside, structure=_STRUCTURE_26)
            for index, local in enumerate(ndimage.find_objects(labels), start=1):
                lesion = labels[local] == index
                start = low + [s.start for s in local]
                first = tuple(int(v) for v in np.argwhere(lesion)[0] + start)
                box = tuple(slice(int(a), int(a) + n) for a, n in zip(start, lesion.shape, strict=True))
                found.append((first, box, lesion))
    found.sort(key=lambda item: item[0])
    return [(box, lesion) for _, box, lesion in found]


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
