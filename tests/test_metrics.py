"""Per-case 3D metrics against independent numpy computations and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from lung_tumor.errors import LungTumorError
from lung_tumor.evaluation import case_metrics, label_lesions, lesion_detection, slice_averaged_soft_dice
from lung_tumor.evaluation.metrics import per_slice_soft_dice, summarize_cases

SPACING = (0.8, 0.8, 2.0)


def cube(shape: tuple[int, int, int], start: tuple[int, int, int], size: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    mask[tuple(slice(s, s + size) for s in start)] = 1
    return mask


def numpy_scores(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    pred, true = pred.astype(bool), true.astype(bool)
    tp = np.sum(pred & true)
    fp = np.sum(pred & ~true)
    fn = np.sum(~pred & true)
    tn = np.sum(~pred & ~true)
    return {
        "dice": 2 * tp / (2 * tp + fp + fn),
        "iou": tp / (tp + fp + fn),
        "precision": tp / (tp + fp),
        "recall": tp / (tp + fn),
        "specificity": tn / (tn + fp),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_overlap_metrics_match_numpy_on_random_masks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pred = rng.random((20, 24, 12)) < 0.3
    true = rng.random((20, 24, 12)) < 0.2
    result = case_metrics(pred, true, SPACING)
    assert result["case_type"] == "tumour"
    for name, expected in numpy_scores(pred, true).items():
        assert result[name] == pytest.approx(expected, rel=1e-5), name
    assert result["tp"] + result["fp"] + result["fn"] + result["tn"] == pred.size
    assert result["volume_pred_ml"] == pytest.approx(pred.sum() * 0.8 * 0.8 * 2.0 / 1000)


def test_random_masks_with_small_union_crop_keep_true_negatives() -> None:
    pred = cube((40, 40, 40), (5, 5, 5), 4)
    true = cube((40, 40, 40), (6, 5, 5), 4)
    result = case_metrics(pred, true, SPACING)
    expected = numpy_scores(pred, true)
    assert result["specificity"] == pytest.approx(expected["specificity"], rel=1e-6)
    assert result["tn"] == 40**3 - 5 * 16


def test_perfect_prediction() -> None:
    true = cube((16, 16, 16), (4, 4, 4), 6)
    result = case_metrics(true, true, SPACING)
    assert result["dice"] == pytest.approx(1.0)
    assert result["iou"] == pytest.approx(1.0)
    assert result["hd95_mm"] == pytest.approx(0.0)
    assert result["surface_dice"] == pytest.approx(1.0)
    assert result["volume_error_ml"] == 0.0
    assert result["undefined"] == {}


def test_shifted_cube_dice_by_hand() -> None:
    # 10^3 cube shifted by 2 along x: overlap 8 x 10 x 10 = 800, Dice = 2*800 / 2000 = 0.8, IoU = 800/1200
    true = cube((30, 30, 30), (5, 5, 5), 10)
    pred = cube((30, 30, 30), (7, 5, 5), 10)
    result = case_metrics(pred, true, SPACING)
    assert result["dice"] == pytest.approx(0.8)
    assert result["iou"] == pytest.approx(800 / 1200)
    assert result["precision"] == pytest.approx(0.8)
    assert result["volume_error_ml"] == pytest.approx(0.0)


@pytest.mark.parametrize(("axis", "k"), [(0, 2), (2, 3), (1, 1)])
def test_hd95_of_shifted_cube_in_mm(axis: int, k: int) -> None:
    # every boundary voxel of the far face (1/6 of the surface, > 5 %) is exactly k voxels away: HD95 = k * spacing
    true = cube((32, 32, 32), (6, 6, 6), 16)
    pred = np.roll(true, k, axis=axis)
    result = case_metrics(pred, true, SPACING)
    assert result["hd95_mm"] == pytest.approx(k * SPACING[axis])


def test_surface_dice_tolerance() -> None:
    true = cube((32, 32, 32), (6, 6, 6), 16)
    pred = np.roll(true, 1, axis=2)  # 2 mm along z
    assert case_metrics(pred, true, SPACING, tolerance_mm=2.0)["surface_dice"] == pytest.approx(1.0)
    assert case_metrics(pred, true, SPACING, tolerance_mm=1.0)["surface_dice"] < 1.0


def test_empty_truth_is_reported_not_silent() -> None:
    pred = cube((16, 16, 16), (2, 2, 2), 3)
    result = case_metrics(pred, np.zeros_like(pred), SPACING)
    assert result["case_type"] == "empty_truth"
    assert result["dice"] == 0.0 and result["precision"] == 0.0
    assert result["recall"] is None and result["hd95_mm"] is None and result["volume_rel_error"] is None
    assert set(result["undefined"]) >= {"recall", "hd95_mm", "volume_rel_error", "lesion_sensitivity"}
    assert result["lesions_false_positive"] == 1
    assert result["specificity"] == pytest.approx((16**3 - 27) / 16**3)


def test_empty_prediction_is_reported_not_silent() -> None:
    true = cube((16, 16, 16), (2, 2, 2), 3)
    result = case_metrics(np.zeros_like(true), true, SPACING)
    assert result["case_type"] == "empty_prediction"
    assert result["dice"] == 0.0 and result["recall"] == 0.0 and result["surface_dice"] == 0.0
    assert result["precision"] is None and result["hd95_mm"] is None
    assert result["volume_rel_error"] == -1.0
    assert result["lesions_missed"] == 1 and result["lesion_sensitivity"] == 0.0


def test_both_empty_conventions() -> None:
    empty = np.zeros((8, 8, 8), dtype=bool)
    excluded = case_metrics(empty, empty, SPACING)
    assert excluded["case_type"] == "both_empty"
    assert excluded["dice"] is None and excluded["iou"] is None and excluded["surface_dice"] is None
    assert "both masks empty" in excluded["undefined"]["dice"]
    assert excluded["specificity"] == 1.0

    counted = case_metrics(empty, empty, SPACING, both_empty_dice=1.0)
    assert counted["dice"] == 1.0 and "dice" not in counted["undefined"]

    perfect = case_metrics(cube((8, 8, 8), (2, 2, 2), 3), cube((8, 8, 8), (2, 2, 2), 3), SPACING)
    half = case_metrics(cube((8, 8, 8), (2, 2, 2), 2), cube((8, 8, 8), (2, 2, 2), 4), SPACING)  # Dice 16/72
    summary = summarize_cases([excluded, perfect, half])
    assert summary["dice_per_case_n"] == 2
    assert summary["dice_per_case_mean"] == pytest.approx((1.0 + 16 / 72) / 2)
    assert "nnU-Net" in summary["conventions"]["both_empty"]
    summary_one = summarize_cases([counted, perfect, half], both_empty_dice=1.0)
    assert summary_one["dice_per_case_n"] == 3
    assert summary_one["dice_per_case_mean"] == pytest.approx((2.0 + 16 / 72) / 3)


def test_pooled_dice_and_lesion_summary() -> None:
    a = case_metrics(cube((12, 12, 12), (0, 0, 0), 2), cube((12, 12, 12), (0, 0, 0), 4), SPACING)  # tp 8, fn 56
    b = case_metrics(cube((12, 12, 12), (5, 5, 5), 3), np.zeros((12, 12, 12)), SPACING)  # fp 27
    summary = summarize_cases([a, b])
    assert summary["dice_pooled"] == pytest.approx(2 * 8 / (2 * 8 + 27 + 56))
    assert summary["case_types"] == {"tumour": 1, "empty_truth": 1, "empty_prediction": 0, "both_empty": 0}
    assert summary["lesion_sensitivity_pooled"] == 1.0
    assert summary["lesion_false_positives_per_case"] == 0.5
    assert summary["hd95_mm_per_case_n"] == 1


def test_lesion_counts_on_constructed_masks() -> None:
    true = np.zeros((30, 30, 30), dtype=np.uint8)
    true[2:6, 2:6, 2:6] = 1  # lesion A
    true[20:25, 20:25, 20:25] = 1  # lesion B
    pred = np.zeros_like(true)
    pred[3:7, 3:7, 3:7] = 1  # overlaps A
    pred[12:14, 2:4, 25:27] = 1  # false positive
    counts = lesion_detection(pred, true)
    assert counts["lesions_true"] == 2 and counts["lesions_predicted"] == 2
    assert counts["lesions_detected"] == 1 and counts["lesions_missed"] == 1
    assert counts["lesions_true_positive"] == 1 and counts["lesions_false_positive"] == 1
    assert counts["lesion_sensitivity"] == 0.5


def test_lesions_are_26_connected() -> None:
    mask = np.zeros((5, 5, 5), dtype=bool)
    mask[1, 1, 1] = mask[2, 2, 2] = True  # corner neighbours: one lesion
    mask[4, 4, 4] = True
    _, count = label_lesions(mask)
    assert count == 2


def test_naive_slice_averaged_soft_dice() -> None:
    truth = np.zeros((4, 4, 10))
    truth[:2, :2, 0] = 1
    probabilities = truth * 0.5
    per_slice = per_slice_soft_dice(probabilities, truth, axis=2)
    # slice 0: 2 * 2 / (2 + 4) = 2/3; the nine empty slices score 0
    assert per_slice[0] == pytest.approx(2 / 3, rel=1e-5)
    assert np.all(per_slice[1:] == 0)
    assert slice_averaged_soft_dice(probabilities, truth, axis=2) == pytest.approx(2 / 30, rel=1e-5)


def test_bad_input_is_a_user_error() -> None:
    with pytest.raises(LungTumorError, match="same shape"):
        case_metrics(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), SPACING)
    with pytest.raises(LungTumorError, match="spacing"):
        case_metrics(np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), (1.0, 0.0, 1.0))
