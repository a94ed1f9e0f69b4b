"""``data_manifest.json``: the Task06_Lung release as data, and fixed patient-level folds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from lung_tumor.errors import LungTumorError

MANIFEST_PATH = Path(__file__).resolve().parents[2] / "data_manifest.json"
NUM_FOLDS = 5
FOLD_SEED = 20180504  # the MSD release date, so the folds are reproducible by anyone
ALL_FOLD = "all"  # train on every labelled case, without validation (nnU-Net's ``fold all``)


def parse_fold(value: Any) -> int | str:
    """A fold as given in a config or on the command line: an integer, or ``"all"``."""
    if isinstance(value, str):
        if value.strip().lower() == ALL_FOLD:
            return ALL_FOLD
        if value.strip().lstrip("-").isdigit():
            return int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        return value
    raise LungTumorError(f"fold must be an integer or '{ALL_FOLD}', got {value!r}")


def make_folds(case_ids: list[str], num_folds: int = NUM_FOLDS, seed: int = FOLD_SEED) -> list[list[str]]:
    """Split patients into ``num_folds`` disjoint validation folds (sorted ids, seeded shuffle, round robin)."""
    if num_folds < 2:
        raise LungTumorError(f"need at least 2 folds, got {num_folds}")
    if len(case_ids) < num_folds:
        raise LungTumorError(f"cannot split {len(case_ids)} cases into {num_folds} folds")
    order = sorted(case_ids)
    np.random.default_rng(seed).shuffle(order)
    return [sorted(order[k::num_folds]) for k in range(num_folds)]


def load_manifest(path: str | Path = MANIFEST_PATH) -> dict[str, Any]:
    """Read the manifest (the repository's ``data_manifest.json`` by default)."""
    path = Path(path)
    if not path.is_file():
        raise LungTumorError("data manifest not found", path)
    return json.loads(path.read_text())


def fold_split(
    case_ids: list[str], fold: int | str, manifest: dict[str, Any] | None = None
) -> tuple[list[str], list[str]]:
    """Training and validation case ids for ``fold``; fold ``"all"`` trains on every case and validates on none.

    The manifest's fixed folds are used when they cover every given case (the real Task06 data);
    otherwise (synthetic or other data) folds are made from the given ids with :func:`make_folds`.
    """
    if fold == ALL_FOLD:
        return sorted(case_ids), []
    folds = None
    if manifest is not None:
        fixed = [list(f["validation"]) for f in manifest["folds"]]
        if set(case_ids) <= {c for f in fixed for c in f}:
            present = set(case_ids)
            folds = [[c for c in f if c in present] for f in fixed]
    if folds is None:
        folds = make_folds(case_ids)
    if not isinstance(fold, int) or not 0 <= fold < len(folds):
        raise LungTumorError(f"fold must be an integer in [0, {len(folds) - 1}] or '{ALL_FOLD}', got {fold!r}")
    validation = folds[fold]
    training = sorted(c for c in case_ids if c not in set(validation))
    return training, sorted(validation)
