"""``lung-tumor tune``: choose a run's post-processing on its validation cases, not by taste.

Each validation case is segmented once without and once with test-time mirror images (``flip_tta``); every
combination of threshold, minimum lesion volume, minimum depth ratio and lung mask is then applied to the stored
probabilities and scored in 3D. The objective is the mean per-case Dice in which a tumour-free case scores 1 when
nothing is predicted and 0 otherwise, so that false lesions in healthy scans cost as much as a missed tumour; ties
go to fewer false lesions per scan, then to the simpler setting. The choice and the score of every combination go to
``RUN/postprocess.json``, which ``predict`` and ``evaluate`` then use (:mod:`lung_tumor.postprocessing`).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from lung_tumor.evaluation.evaluate import _load_truth, run_cases
from lung_tumor.evaluation.lesions import label_lesions, lesion_detection
from lung_tumor.heap import freed_memory_kept
from lung_tumor.io import write_json
from lung_tumor.measurements import voxel_spacing
from lung_tumor.outputs import OutputPlan, marker
from lung_tumor.postprocessing import DEFAULT, FILENAME, PostProcessing
from lung_tumor.thorax import thorax_masks

log = logging.getLogger(__name__)

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
# no larger minimum: one of 3000 mm3 (18 mm across) would hide every T1a-b nodule, whatever Dice it buys (the
# objective, scored on a handful of scans, barely tells them apart: 0.762 against 0.761 for the small-lesion stage)
MIN_LESION_MM3 = (0.0, 30.0, 100.0, 300.0, 1000.0)
# up to 0.8: true lesions score 0.65-1.2 (a ball about 1), so the grid reaches past where it starts to cost them
MIN_DEPTH_RATIOS = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


@dataclass
class _Case:
    case_id: str
    probability: dict[bool, np.ndarray]  # by flip_tta, uint8 in 1/255 steps (a quarter of float32's memory)
    truth: np.ndarray
    spacing: tuple[float, ...]
    affine: np.ndarray
    thorax: Any


def _dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """3D Dice; a tumour-free case scores 1 when nothing is predicted."""
    total = int(prediction.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(prediction, truth).sum()) / total


def score_settings(cases: Sequence[_Case], settings: PostProcessing) -> dict[str, Any]:
    """Mean per-case Dice (tumour-free cases count), lesion sensitivity and false lesions per scan.

    The definition, setting by setting, through ``predict``'s own post-processing; :func:`score_grid` scores the
    whole grid faster and must give the same figures (the tests compare them)."""
    from lung_tumor.inference import clean_mask

    dices, detected, true, false = [], 0, 0, 0
    for case in cases:
        mask = (case.probability[settings.flip_tta] > round(settings.threshold * 255)).astype(np.uint8)
        mask = clean_mask(mask, settings, case.affine, case.thorax)  # the lungs found once per case
        dices.append(_dice(mask != 0, case.truth))
        lesions = lesion_detection(mask, case.truth)
        detected += int(lesions["lesions_detected"])
        true += int(lesions["lesions_true"])
        false += int(lesions["lesions_false_positive"])
    return {
        "settings": settings.as_dict(),
        "dice_per_case_mean": round(float(np.mean(dices)), 4),
        "lesion_sensitivity": round(detected / true, 4) if true else None,
        "false_lesions_per_scan": round(false / len(cases), 3),
    }


class _ShiftedThorax:
    """A case's thorax masks seen from a box of the volume: boxes are given in the box's own coordinates."""

    def __init__(self, thorax: Any, origin: tuple[int, ...]) -> None:
        self.thorax, self.origin = thorax, origin

    def lungs(self, box: tuple[slice, ...]) -> np.ndarray:
        return self.thorax.lungs(tuple(slice(b.start + o, b.stop + o) for b, o in zip(box, self.origin, strict=True)))


def crop_to_findings(case: _Case) -> _Case:
    """The case cut to the box of its truth and of every voxel any setting could call tumour, grown by the lung
    mask's margin: every score of the grid is the same as on the whole volume (no lesion, truth or lung voxel
    within reach lies outside), and a full-size scan costs a fraction as much to score 800 times. The margin is
    at least one voxel, so a lesion reaches the cut's first or last axial slice only where it reaches the scan's
    (the depth ratio spares exactly those lesions).
    """
    from lung_tumor.inference import lung_margin_voxels

    lowest = round(min(THRESHOLDS) * 255)
    found = case.truth.astype(bool)
    for probability in case.probability.values():
        found |= probability > lowest
    box = ndimage.find_objects(found.astype(np.uint8))
    if not box:  # nothing anywhere: one voxel scores the same
        box = [tuple(slice(0, 1) for _ in found.shape)]
    margin = lung_margin_voxels(case.affine)  # the reach of the lung mask's per-lesion search
    crop = tuple(
        slice(max(b.start - m, 0), min(b.stop + m, n)) for b, m, n in zip(box[0], margin, found.shape, strict=True)
    )
    origin = tuple(c.start for c in crop)
    affine = case.affine.copy()
    affine[:3, 3] = case.affine[:3, :3] @ np.asarray(origin, dtype=float) + case.affine[:3, 3]
    return _Case(
        case.case_id,
        {tta: np.ascontiguousarray(p[crop]) for tta, p in case.probability.items()},
        np.ascontiguousarray(case.truth[crop]),
        case.spacing,
        affine,
        _ShiftedThorax(case.thorax, origin),
    )


def score_grid(cases: Sequence[_Case], min_slice_mm: float = 0.0) -> list[dict[str, Any]]:
    """:func:`score_settings` of every combination of the grid, in its order, at the cost of one labelling per case,
    mirror setting and threshold: a minimum volume and the lung mask keep or drop whole lesions, each judged alone,
    so their effect follows from per-lesion figures (volume, voxels on the truth, true lesions touched, near lung).
    ``min_slice_mm`` is the slice spacing the cases' probabilities were computed at, recorded in every setting.
    """
    from lung_tumor.inference import lesion_depth_ratios, near_lung_flags

    grid = list(itertools.product(THRESHOLDS, MIN_LESION_MM3, (False, True), (False, True), MIN_DEPTH_RATIOS))
    dices: dict[tuple, list[float]] = {setting: [] for setting in grid}
    counts = {setting: np.zeros(3, dtype=np.int64) for setting in grid}  # detected, true, false
    for case in cases:
        true_labels, true_count = label_lesions(case.truth)
        truth_voxels = int(np.count_nonzero(case.truth))
        voxel_mm3 = float(np.prod(case.spacing))
        for threshold, tta in itertools.product(THRESHOLDS, (False, True)):
            labels, count = label_lesions(case.probability[tta] > round(threshold * 255))
            voxels = np.bincount(labels.ravel(), minlength=count + 1)
            on_truth = (labels > 0) & (true_labels > 0)
            hits = np.bincount(labels[on_truth], minlength=count + 1)  # truth voxels under each lesion
            pairs = np.unique(np.stack([labels[on_truth], true_labels[on_truth]]), axis=1)  # (lesion, true lesion)
            near = near_lung_flags(labels, count, case.affine, case.thorax)
            # a case cut to its findings keeps a margin round them: a lesion reaches the cut's first or last axial
            # slice only where it reaches the scan's (crop_to_findings)
            depth = lesion_depth_ratios(labels, count, case.affine)
            for minimum, lung, ratio in itertools.product(MIN_LESION_MM3, (False, True), MIN_DEPTH_RATIOS):
                kept = voxels * voxel_mm3 >= minimum
                kept[0] = False
                if lung:
                    kept &= near
                if ratio > 0:
                    kept &= depth >= ratio
                predicted = int(voxels[kept].sum())
                total = predicted + truth_voxels
                setting = (threshold, minimum, lung, tta, ratio)
                dices[setting].append(1.0 if total == 0 else 2.0 * int(hits[kept].sum()) / total)
                touching = pairs[:, kept[pairs[0]]]
                hit_lesions = np.unique(touching[0]).size
                counts[setting] += (np.unique(touching[1]).size, true_count, int(kept.sum()) - hit_lesions)
    results = []
    for setting in grid:
        detected, true, false = (int(v) for v in counts[setting])
        threshold, minimum, lung, tta, ratio = setting
        settings = PostProcessing(
            threshold=threshold,
            min_lesion_mm3=minimum,
            lung_mask=lung,
            flip_tta=tta,
            min_depth_ratio=ratio,
            min_slice_mm=min_slice_mm,
        )
        results.append(
            {
                "settings": settings.as_dict(),
                "dice_per_case_mean": round(float(np.mean(dices[setting])), 4),
                "lesion_sensitivity": round(detected / true, 4) if true else None,
                "false_lesions_per_scan": round(false / len(cases), 3),
            }
        )
    return results


def _simplicity(settings: dict[str, Any]) -> tuple[int, float, float, float]:
    """Fewer active steps first, then the default threshold, then the smallest size cut, then the smallest depth
    ratio."""
    active = (
        int(settings["flip_tta"])
        + int(settings["lung_mask"])
        + int(settings["min_lesion_mm3"] > 0)
        + int(settings["min_depth_ratio"] > 0)
    )
    threshold_step = abs(settings["threshold"] - DEFAULT.threshold)
    return active, threshold_step, settings["min_lesion_mm3"], settings["min_depth_ratio"]


def choose(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The best result: highest Dice, then fewest false lesions per scan, then the simplest settings."""
    return min(
        results,
        key=lambda r: (-r["dice_per_case_mean"], r["false_lesions_per_scan"], _simplicity(r["settings"])),
    )


def tune_run(
    run: str | Path,
    data: str | Path | None = None,
    fold: int | None = None,
    cases: Sequence[str] | None = None,
    overwrite: bool = False,
    all_cases: bool = False,
    min_slice_mm: float | None = None,
) -> dict[str, Any]:
    """Choose the run's post-processing on validation cases and write ``RUN/postprocess.json``.

    Args:
        run: the run folder.
        data: MSD-layout dataset folder (default: the run config's ``data.root``).
        fold: score this fold's validation cases (default: the run's fold).
        cases: score these case ids instead.
        overwrite: replace a ``postprocess.json`` that lung-tumor did not write.
        all_cases: score every labelled case of ``data`` (a validation set of its own, not a training fold).
        min_slice_mm: the slice spacing the network sees (:class:`~lung_tumor.postprocessing.PostProcessing`),
            kept in the choice; ``None``: the run's stored one, else 0 (the scans' own slices).

    Returns:
        The content written: ``settings`` (the choice), ``chosen`` and ``baseline`` (the default settings)
        with their scores, and ``results`` for every combination.

    Raises:
        LungTumorError: the run, its data or a case is missing, or the run has no validation cases.
    """
    from lung_tumor.inference import Predictor

    run = Path(run)
    data, chosen_cases, description = run_cases(run, data, fold=fold, cases=cases, all_cases=all_cases)
    output = run / FILENAME
    plan = OutputPlan(inputs=[c.image for c in chosen_cases], overwrite=overwrite)
    plan.add_file(output)
    plan.check()
    log.info("tuning post-processing of %s on %s from %s", run, description, data)

    predictor = Predictor(run, threshold=0.5, min_lesion_mm3=0.0, lung_mask=False, min_slice_mm=min_slice_mm)
    slice_mm = predictor.postprocessing.min_slice_mm
    if predictor.postprocessing.second_look_mm:
        log.warning(
            "tune scores the first pass alone: the stored second look (%g mm) is not in the choice it writes; "
            "put it back with predict --second-look-mm or in the file's settings",
            predictor.postprocessing.second_look_mm,
        )
    scored: list[_Case] = []
    with freed_memory_kept(len(chosen_cases)):  # each case reuses what the last one freed
        for case in tqdm(chosen_cases, desc="tune", unit="case"):
            prepared = predictor.prepare(case.image)
            # without and with flip_tta from one pass over the scan and its mirror images
            # (the scan's own pass serves both)
            both = predictor.probabilities_with_and_without_flips(prepared.volume)
            image_hu, affine = prepared.image[0].numpy(), prepared.image.affine.numpy()
            whole = _Case(
                case.case_id,
                {
                    tta: np.round(predictor.restore(prepared, p) * 255).astype(np.uint8)
                    for tta, p in zip((False, True), both, strict=True)
                },
                _load_truth(case, image_hu.shape, affine),
                voxel_spacing(affine),
                affine,
                thorax_masks(image_hu, affine),
            )
            scored.append(crop_to_findings(whole))
            del both, prepared, image_hu
    results = score_grid(scored, min_slice_mm=slice_mm)
    best = choose(results)
    default = replace(DEFAULT, min_slice_mm=slice_mm).as_dict()  # the defaults, at the slice spacing scored
    baseline = next(r for r in results if r["settings"] == default)  # they are in the grid
    content = {
        "generator": marker("tune"),
        "settings": best["settings"],
        "chosen_on": {"data": str(data), "cases": [c.case_id for c in chosen_cases], "description": description},
        "objective": "mean per-case 3D Dice, a tumour-free case scoring 1 when empty and 0 otherwise; ties: fewer "
        "false lesions per scan, then the simpler setting",
        "chosen": best,
        "baseline": baseline,
        "results": results,
    }
    write_json(output, content)
    log.info(
        "chose %s: Dice %.3f, sensitivity %s, %.2f false lesions per scan (default settings: Dice %.3f, %.2f); "
        "wrote %s",
        best["settings"],
        best["dice_per_case_mean"],
        best["lesion_sensitivity"],
        best["false_lesions_per_scan"],
        baseline["dice_per_case_mean"],
        baseline["false_lesions_per_scan"],
        output,
    )
    return content
