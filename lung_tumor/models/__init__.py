"""The model shipped in the package: ``predict`` uses it when no ``--run`` is given.

A model folder is a run folder (:mod:`lung_tumor.training.run`) cut down to what prediction needs: ``config.yaml``,
``metadata.json``, ``checkpoints/best.pt`` (network weights only), ``postprocess.json`` (the post-processing chosen
on validation data). ``lung-tumor export`` (:mod:`lung_tumor.export`) writes such a folder from any training run;
given several runs it writes an ensemble folder instead (``ensemble.json`` and one such folder per member,
:mod:`lung_tumor.ensemble`). ``lung_tumor/models/default/`` is an ensemble folder of two members, with its own
``postprocess.json`` and ``MODEL_CARD.md`` (training data, scores, limits)."""

from __future__ import annotations

from pathlib import Path

from lung_tumor.ensemble import ensemble_members, is_ensemble
from lung_tumor.errors import LungTumorError

DEFAULT_MODEL = Path(__file__).resolve().parent / "default"


def default_model_dir() -> Path:
    """The shipped model's folder: one model, or an ensemble of several (:mod:`lung_tumor.ensemble`).

    Raises:
        LungTumorError: the package was installed without it (its weights are missing).
    """
    folders = ensemble_members(DEFAULT_MODEL) if is_ensemble(DEFAULT_MODEL) else [DEFAULT_MODEL]
    for folder in folders:
        weights = folder / "checkpoints" / "best.pt"
        if not weights.is_file():
            raise LungTumorError(
                "the shipped model's weights are missing (was the package installed without its data files?); "
                "give a trained run with --run",
                weights,
            )
    return DEFAULT_MODEL
