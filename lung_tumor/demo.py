"""``lung-tumor demo``: the whole job on embedded synthetic data, from nothing to scores, masks and reports.

Steps: ``synth`` (16 small labelled cases and 2 unlabelled ones, and a separate labelled test set of
16 cases drawn with another seed), ``preprocess``, ``train`` (the demo config on fold 0), ``evaluate``
(the fold's validation cases, per case in 3D, with pictures; then the separate test set, which neither
training nor the choice of the best checkpoint ever saw), and ``predict`` with the tumour report on the
unlabelled cases. The model shipped in the package (:mod:`lung_tumor.models`) is scored on the same held-out
set and segments the same unlabelled cases, beside the freshly trained one. Every step reuses what an earlier
run finished, and an interrupted training run resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from lung_tumor.config import PreprocessConfig, load_config
from lung_tumor.data.msd import list_cases
from lung_tumor.errors import LungTumorError
from lung_tumor.models import default_model_dir

log = logging.getLogger(__name__)

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
DEMO_CASES, DEMO_TEST_CASES, DEMO_SEED = 16, 2, 0
# the held-out test set: labelled cases from another seed, in their own MSD-layout folder
HELD_OUT_CASES, HELD_OUT_SEED = 16, 1


def demo_overrides(out: Path, minutes: float | None) -> list[str]:
    """Point the demo config's folders into ``out`` (and set the training time budget)."""
    overrides = [f"data.root={out / 'data'}", f"data.cache_dir={out / 'cache'}", f"output_dir={out / 'runs'}"]
    if minutes is not None:
        if minutes <= 0:
            raise LungTumorError(f"--minutes must be positive, got {minutes}")
        overrides.append(f"training.max_minutes={minutes}")
    return overrides


def ensure_synthetic_data(root: Path, cases: int = DEMO_CASES, seed: int = DEMO_SEED, test_cases: int = 0) -> None:
    """Write ``cases`` labelled synthetic cases (and ``test_cases`` unlabelled) unless they are already there."""
    try:
        listed = list_cases(root, "training")
        complete = len(listed) == cases and all(
            c.image.is_file() and c.label is not None and c.label.is_file() for c in listed
        )
    except LungTumorError:
        complete = False
    if complete:
        log.info("demo: synthetic data already in %s", root)
        return
    from lung_tumor.data.synth import synthesize_dataset

    synthesize_dataset(root, cases=cases, size="small", seed=seed, test_cases=test_cases)


def ensure_trained(parser: Any) -> Path:
    """Train fold 0, resume an interrupted run, or reuse a finished one; returns the run folder."""
    from lung_tumor.training.run import run_folder
    from lung_tumor.training.trainer import train_from_config

    run_dir = run_folder(parser, int(parser.get("fold", 0)))
    metadata = run_dir / "metadata.json"
    if metadata.is_file() and json.loads(metadata.read_text()).get("status") == "finished":
        log.info("demo: reusing the finished training run %s", run_dir)
        return run_dir
    resume = (run_dir / "checkpoints" / "last.pt").is_file()
    train_from_config(parser, resume=resume)
    return run_dir


def run_demo(out: str | Path = "runs/demo", minutes: float | None = None) -> dict[str, Any]:
    """Run the whole job on synthetic data in ``out`` and print the scores and the paths written.

    Returns:
        The evaluation summary of the fold's validation cases, with the held-out test set's summary under
        ``"held_out"`` and the prediction paths under ``"predictions"``.
    """
    from lung_tumor.evaluation.evaluate import evaluate_run
    from lung_tumor.inference import predict
    from lung_tumor.preprocess import data_section, preprocess_dataset

    out = Path(out)
    started = time.monotonic()
    parser = load_config(DEMO_CONFIG, demo_overrides(out, minutes))
    root, cache_dir = data_section(parser)
    ensure_synthetic_data(root, test_cases=DEMO_TEST_CASES)
    held_out_root = out / "held_out"
    ensure_synthetic_data(held_out_root, cases=HELD_OUT_CASES, seed=HELD_OUT_SEED)
    preprocess_dataset(root, cache_dir, PreprocessConfig.from_dict(parser.get_parsed_content("preprocess")))
    run_dir = ensure_trained(parser)
    summary = evaluate_run(run_dir, root)
    held_out = evaluate_run(
        run_dir, held_out_root, all_cases=True, output=run_dir / "evaluation_held_out", pictures=False
    )
    summary["held_out"] = held_out
    predictions = predict(run_dir, root / "imagesTs", output=out / "predictions", lung_mask=True)
    summary["predictions"] = predictions
    shipped = default_model_dir()
    shipped_held_out = evaluate_run(
        shipped, held_out_root, all_cases=True, output=out / "pretrained_held_out", pictures=False
    )
    summary["pretrained_held_out"] = shipped_held_out
    summary["pretrained_predictions"] = predict(None, root / "imagesTs", output=out / "predictions_pretrained")
    minutes_taken = (time.monotonic() - started) / 60
    evaluation = run_dir / "evaluation"
    lines = [
        "",
        f"lung-tumor demo finished in {minutes_taken:.1f} min",
        f"  validation cases of fold {parser.get('fold', 0)} (chose the best checkpoint): "
        f"{', '.join(summary['case_ids'])}",
        *_score_lines(summary),
        f"  held-out test set ({held_out['cases']} cases of seed {HELD_OUT_SEED}, never seen in training): "
        f"{held_out_root}",
        *_score_lines(held_out),
        f"  the model shipped in the package ({shipped}), on the same held-out set; trained on other synthetic "
        "data only:",
        *_score_lines(shipped_held_out),
        f"  scores: {evaluation / 'summary.json'}, {evaluation / 'per_case.csv'} and {run_dir / 'evaluation_held_out'}",
        f"  pictures: {evaluation / 'pictures'}",
        f"  training curves (TensorBoard): tensorboard --logdir {run_dir / 'tensorboard'}",
    ]
    for paths in predictions:
        lines.append(f"  prediction: {paths['mask']}  report: {paths['report_text']}")
    for paths in summary["pretrained_predictions"]:
        lines.append(f"  shipped model's prediction: {paths['mask']}  report: {paths['report_text']}")
    print("\n".join(lines))
    return summary


def _score_lines(summary: dict[str, Any]) -> list[str]:
    """The headline scores of an evaluation summary, as printed by the demo."""
    return [
        f"    Dice per case, mean: {_figure(summary.get('dice_per_case_mean'))}"
        f"  median: {_figure(summary.get('dice_per_case_median'))}  pooled: {_figure(summary.get('dice_pooled'))}",
        f"    HD95 per case, mean: {_figure(summary.get('hd95_mm_per_case_mean'), ' mm')}"
        f"  lesion sensitivity: {_figure(summary.get('lesion_sensitivity_pooled'))}"
        f"  false positives per case: {_figure(summary.get('lesion_false_positives_per_case'))}",
        f"    naive slice-averaged soft Dice (what the old recipe reported): "
        f"{_figure(summary.get('soft_dice_slice_averaged_naive'))}",
    ]


def _figure(value: float | None, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:.3f}{unit}"
