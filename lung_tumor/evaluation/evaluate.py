"""``lung-tumor evaluate``: predict the chosen cases of a run and score them per case in 3D.

The scoring loop (:func:`score_cases`) takes any object with ``predict_file(path)`` returning a result
with ``mask``, ``probability``, ``affine``, ``spacing`` and ``image_hu`` in the original image grid
(:class:`lung_tumor.inference.Predictor`), so it can be tested without a trained network.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from lung_tumor.config import load_config
from lung_tumor.data.manifest import ALL_FOLD, fold_split, load_manifest
from lung_tumor.data.msd import Case, list_cases
from lung_tumor.ensemble import ensemble_members, is_ensemble
from lung_tumor.errors import LungTumorError
from lung_tumor.evaluation.metrics import (
    SUMMARY_METRICS,
    case_metrics,
    per_slice_soft_dice,
    summarize_cases,
)
from lung_tumor.heap import freed_memory_kept
from lung_tumor.io import write_atomic, write_json
from lung_tumor.outputs import OutputPlan, marker
from lung_tumor.report import axial_axis
from lung_tumor.transforms.pipeline import check_label_on_grid, load_volume
from lung_tumor.visualize import case_picture_paths, case_pictures

log = logging.getLogger(__name__)

CSV_COLUMNS = (
    "case_id",
    "case_type",
    *SUMMARY_METRICS,
    "tp",
    "fp",
    "fn",
    "tn",
    "volume_truth_ml",
    "volume_pred_ml",
    "lesions_true",
    "lesions_predicted",
    "lesions_detected",
    "lesions_missed",
    "lesions_true_positive",
    "soft_dice_naive_slices",
    "note",
)


class CasePredictor(Protocol):
    """What the scoring loop needs from a predictor."""

    def predict_file(self, image_path: Path) -> Any: ...


def select_cases(
    data: str | Path, fold: int | str | None = None, cases: Sequence[str] | None = None, all_cases: bool = False
) -> tuple[list[Case], str]:
    """The labelled cases to evaluate and a description of the choice.

    Args:
        data: MSD-layout dataset folder.
        fold: use the validation cases of this fold (``fold_split`` with the repository's manifest).
        cases: explicit case ids instead (take precedence over ``fold``).
        all_cases: every labelled case of the dataset (a separate test set; takes precedence over both).

    Raises:
        LungTumorError: neither is given, an id is unknown, or a case has no label.
    """
    available = {case.case_id: case for case in list_cases(data)}
    if all_cases:
        chosen = [case for case in available.values() if case.label is not None]
        description = f"all {len(chosen)} labelled case(s)"
    elif cases:
        unknown = [c for c in cases if c not in available]
        if unknown:
            raise LungTumorError(
                f"unknown case id(s) {unknown} (not in the training list)", Path(data) / "dataset.json"
            )
        chosen, description = [available[c] for c in cases], f"{len(cases)} chosen case(s)"
    elif fold == ALL_FOLD:
        raise LungTumorError(
            "fold all trained on every case and has no validation cases: score a separate test set with --all, "
            "or name --cases",
            data,
        )
    elif fold is not None:
        _, validation = fold_split(sorted(available), fold, load_manifest())
        chosen, description = [available[c] for c in validation], f"validation cases of fold {fold}"
    else:
        raise LungTumorError("no cases to evaluate: give --fold, --cases or --all (or a run whose config has a fold)")
    unlabelled = [c.case_id for c in chosen if c.label is None]
    if unlabelled:
        raise LungTumorError(f"case(s) {unlabelled} have no label to score against", Path(data) / "dataset.json")
    if not chosen:
        raise LungTumorError(f"no cases to evaluate ({description} is empty)", data)
    return chosen, description


def _load_truth(case: Case, shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """The case's label as a boolean array, through the same checks as every input (grid, values, NaN)."""
    label = load_volume(case.label, "label")
    check_label_on_grid(label, shape, affine, case.label)
    return label[0].numpy() != 0


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _csv_text(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        note = "; ".join(f"{name} undefined: {reason}" for name, reason in row["undefined"].items())
        writer.writerow({**{k: _cell(row.get(k)) for k in CSV_COLUMNS}, "note": note})
    return buffer.getvalue()


def _log_table(rows: Sequence[dict[str, Any]], summary: dict[str, Any]) -> None:
    def show(value: Any, digits: int = 3) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    log.info(
        "%-16s %-16s %6s %8s %6s %9s %8s %3s", "case", "type", "dice", "hd95_mm", "nsd", "vol_err", "lesions", "fp"
    )
    for row in rows:
        log.info(
            "%-16s %-16s %6s %8s %6s %9s %8s %3d",
            row["case_id"],
            row["case_type"],
            show(row["dice"]),
            show(row["hd95_mm"], 1),
            show(row["surface_dice"]),
            show(row["volume_error_ml"], 2),
            f"{row['lesions_detected']}/{row['lesions_true']}",
            row["lesions_false_positive"],
        )
    log.info(
        "Dice per case: mean %s, median %s (n=%d); Dice pooled %s; HD95 median %s mm; lesion sensitivity %s; "
        "false positive lesions per case %s; naive slice-averaged soft Dice %s (not comparable)",
        show(summary["dice_per_case_mean"]),
        show(summary["dice_per_case_median"]),
        summary["dice_per_case_n"],
        show(summary["dice_pooled"]),
        show(summary["hd95_mm_per_case_median"], 1),
        show(summary["lesion_sensitivity_pooled"]),
        show(summary["lesion_false_positives_per_case"], 2),
        show(summary["soft_dice_slice_averaged_naive"], 4),
    )


def check_outputs(cases: Sequence[Case], output: str | Path, pictures: bool = True, overwrite: bool = False) -> None:
    """Refuse, before any case is predicted, an evaluation whose outputs are unsafe.

    ``per_case.csv`` counts as lung-tumor's when the ``summary.json`` beside it does.

    Raises:
        LungTumorError: see :class:`lung_tumor.outputs.OutputPlan`.
    """
    output = Path(output)
    plan = OutputPlan(inputs=[p for c in cases for p in (c.image, c.label) if p is not None], overwrite=overwrite)
    plan.add_folder(output)
    plan.add_file(output / "summary.json")
    plan.add_file(output / "per_case.csv", vouched_by=output / "summary.json")
    for case in cases if pictures else ():
        for path in case_picture_paths(output / "pictures", case.case_id):
            plan.add_file(path, source=case.image)
    plan.check()


def _evaluate_case(
    predictor: CasePredictor,
    case: Case,
    output: Path,
    pictures: bool,
    tolerance_mm: float,
    both_empty_dice: float | None,
) -> dict[str, Any]:
    """One case's row: predicted, scored against its label, and drawn where ``pictures``."""
    result = predictor.predict_file(case.image)
    mask = np.asarray(result.mask)
    truth = _load_truth(case, mask.shape, np.asarray(result.affine))
    row = {
        "case_id": case.case_id,
        **case_metrics(mask, truth, tuple(result.spacing), tolerance_mm, both_empty_dice),
    }
    naive = per_slice_soft_dice(result.probability, truth, axis=axial_axis(result.affine))
    row["soft_dice_slice_averaged_naive"] = float(naive.mean())
    row["soft_dice_naive_slices"] = int(naive.size)
    if pictures:
        case_pictures(result.image_hu, result.affine, truth, mask, output / "pictures", case.case_id)
    return row


def score_cases(
    predictor: CasePredictor,
    cases: Sequence[Case],
    output: str | Path,
    pictures: bool = True,
    tolerance_mm: float = 2.0,
    both_empty_dice: float | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Predict and score each case; write ``per_case.csv``, ``summary.json`` and pictures into ``output``.

    Args:
        predictor: any object with ``predict_file(image_path)`` (see the module docstring).
        cases: labelled cases.
        output: folder for the results (created); pictures go to ``output/pictures/``.
        pictures: write an overlay and a montage per case.
        tolerance_mm: surface-Dice tolerance.
        both_empty_dice: convention for cases where truth and prediction are both empty
            (see :mod:`lung_tumor.evaluation.metrics`).
        overwrite: replace existing result files that lung-tumor did not write (never an input).

    Returns:
        The summary (as written to ``summary.json``).

    Raises:
        LungTumorError: an output is unsafe (:func:`check_outputs`, before any case is predicted), or a label
            is unreadable, not on its image's grid, or holds values other than 0 and 1.
    """
    output = Path(output)
    check_outputs(cases, output, pictures, overwrite)
    rows: list[dict[str, Any]] = []
    with freed_memory_kept(len(cases)):  # each case reuses what the last one freed
        for case in tqdm(cases, desc="evaluate", unit="case"):
            rows.append(_evaluate_case(predictor, case, output, pictures, tolerance_mm, both_empty_dice))

    summary = {
        "generator": marker("evaluate"),
        **summarize_cases(rows, both_empty_dice=both_empty_dice, tolerance_mm=tolerance_mm),
    }
    settings = getattr(predictor, "postprocessing", None)  # the run's stored choice (lung-tumor tune) or defaults
    if settings is not None:
        summary["post_processing"] = settings.as_dict()
    summary["case_ids"] = [row["case_id"] for row in rows]
    summary["per_case_csv"] = "per_case.csv"
    write_atomic(output / "per_case.csv", lambda f: f.write(_csv_text(rows)))
    write_json(output / "summary.json", summary)
    _log_table(rows, summary)
    log.info("wrote %s and %s", output / "per_case.csv", output / "summary.json")
    return summary


def run_cases(
    run: Path,
    data: str | Path | None = None,
    fold: int | str | None = None,
    cases: Sequence[str] | None = None,
    all_cases: bool = False,
) -> tuple[str | Path, list[Case], str]:
    """The dataset and labelled cases a run is scored on: ``data`` or the run config's ``data.root``, and
    :func:`select_cases` with the run's fold unless ``fold`` or ``cases`` is given. For an ensemble folder
    (:mod:`lung_tumor.ensemble`) the config is its first member's, and there is no fold of its own.

    Raises:
        LungTumorError: the run folder or its config is missing, or no dataset is known.
    """
    if not run.is_dir():
        raise LungTumorError("run folder not found", run)
    ensemble = is_ensemble(run)
    config_path = (ensemble_members(run)[0] if ensemble else run) / "config.yaml"
    config = load_config(config_path)
    if data is None:
        data = config.get("data::root")
        if not data:
            raise LungTumorError("no --data given and the run's config has no data.root", config_path)
    if fold is None and not cases:
        if ensemble and not all_cases:
            raise LungTumorError("an ensemble has no fold of its own: give --all, --fold or --cases", run)
        fold = config.get("fold")
    chosen, description = select_cases(data, fold=fold, cases=cases, all_cases=all_cases)
    return data, chosen, description


def evaluate_run(
    run: str | Path,
    data: str | Path | None = None,
    fold: int | str | None = None,
    cases: Sequence[str] | None = None,
    output: str | Path | None = None,
    pictures: bool = True,
    predictor: CasePredictor | None = None,
    all_cases: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Score a training run per case in 3D, MSD / nnU-Net style.

    Args:
        run: the run folder (its ``config.yaml`` gives the default ``fold`` and ``data.root``).
        data: MSD-layout dataset folder (default: the run config's ``data.root``).
        fold: evaluate this fold's validation cases (default: the run's fold).
        cases: evaluate these case ids instead.
        all_cases: evaluate every labelled case of ``data`` (a held-out test set the run never saw).
        output: result folder (default: ``RUN/evaluation/``).
        pictures: also write an overlay and a montage PNG per case.
        predictor: what predicts the cases (default: ``lung_tumor.inference.Predictor(run)``).
        overwrite: replace existing result files that lung-tumor did not write (never an input).

    Returns:
        The summary written to ``summary.json``.

    Raises:
        LungTumorError: the run, its config, the dataset or a case is missing or inconsistent.

    Examples::

        summary = evaluate_run("runs/unet/fold_0", "data/Task06_Lung")
        summary["dice_per_case_mean"], summary["dice_pooled"]
    """
    run = Path(run)
    data, chosen, description = run_cases(run, data, fold=fold, cases=cases, all_cases=all_cases)
    log.info("evaluating %s: %s from %s", run, description, data)
    output = run / "evaluation" if output is None else Path(output)
    if predictor is None:
        check_outputs(chosen, output, pictures, overwrite)  # before the model loads
        from lung_tumor.inference import Predictor

        predictor = Predictor(run)
    return score_cases(predictor, chosen, output, pictures=pictures, overwrite=overwrite)
