"""Ensembles: several trained runs (folds, seeds) that predict together by averaging their probabilities.

An ensemble folder holds one model folder per member (the run layout that ``lung-tumor export`` writes:
``config.yaml``, ``metadata.json``, ``checkpoints/best.pt``) and ``ensemble.json``, which names them::

    MODEL/
      ensemble.json      {"generator": "lung-tumor export ensemble", "members": ["member_1", "member_2"], ...}
      postprocess.json   the ensemble's own post-processing (``lung-tumor tune --run MODEL``), when tuned
      member_1/          a model folder (a member's own postprocess.json, if any, is not used)
      member_2/

``predict``, ``evaluate`` and ``tune`` take such a folder wherever they take a run: each member segments the
scan and the sigmoid probabilities are averaged (with ``flip_tta``, over members and mirror images alike), as
nnU-Net averages its folds. Every member must be fed alike (pixel size, image size, orientation and intensity
scaling of ``preprocess``, and ``context_slices``); the networks and their training may differ.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lung_tumor.errors import LungTumorError
from lung_tumor.io import write_json
from lung_tumor.outputs import OutputPlan, marker
from lung_tumor.postprocessing import FILENAME as POSTPROCESS_FILENAME

log = logging.getLogger(__name__)

FILENAME = "ensemble.json"
#: the ``preprocess`` fields that prediction applies, which members must share (with ``context_slices``)
INPUT_FIELDS = ("pixel_mm", "image_size", "orientation", "intensity")


def is_ensemble(folder: str | Path) -> bool:
    """Whether ``folder`` is an ensemble folder (it holds ``ensemble.json``)."""
    return (Path(folder) / FILENAME).is_file()


def ensemble_members(folder: str | Path) -> list[Path]:
    """The member folders named by ``folder/ensemble.json``, in order.

    Raises:
        LungTumorError: the file is unreadable, names no members, names one twice, or names a member that is not
            a folder inside ``folder``.
    """
    folder = Path(folder)
    path = folder / FILENAME
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise LungTumorError(f"unreadable ({type(err).__name__})", path) from None
    members = content.get("members") if isinstance(content, dict) else None
    if not isinstance(members, list) or not members or not all(isinstance(m, str) and m for m in members):
        raise LungTumorError("'members' must be a non-empty list of member folder names", path)
    if len(set(members)) != len(members):
        raise LungTumorError(f"a member is named twice in {members}", path)
    folders = []
    for name in members:
        member = folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts or not member.is_dir():
            raise LungTumorError(f"member {name!r} is not a folder inside the ensemble folder", path)
        folders.append(member)
    return folders


def member_input(config: Any) -> dict[str, Any]:
    """What a member's network is fed: the preprocessing that prediction applies, and ``context_slices``."""
    from lung_tumor.config import PreprocessConfig
    from lung_tumor.training.run import context_slices

    preprocess = PreprocessConfig.from_dict(config.get("preprocess", {}))
    return {
        **{f"preprocess.{name}": getattr(preprocess, name) for name in INPUT_FIELDS},
        "context_slices": context_slices(config),
    }


def check_members_compatible(configs: Sequence[Any], folders: Sequence[Path]) -> None:
    """Refuse members fed differently: their probabilities would not be on the same grid or mean the same.

    Args:
        configs: each member's config (``monai.bundle.ConfigParser``).
        folders: each member's folder, for the message.

    Raises:
        LungTumorError: a member's pixel size, image size, orientation, intensity scaling or ``context_slices``
            differs from the first member's (worker counts and training settings may differ).
    """
    first = member_input(configs[0])
    for config, folder in zip(configs[1:], folders[1:], strict=True):
        for key, value in member_input(config).items():
            if value != first[key]:
                raise LungTumorError(
                    f"ensemble member differs from {folders[0].name} in {key} ({value!r} against {first[key]!r}); "
                    "members must be preprocessed alike",
                    folder / "config.yaml",
                )


def export_ensemble(runs: Sequence[str | Path], out: str | Path, overwrite: bool = False) -> Path:
    """Write an ensemble folder from training runs (or model folders): each one's best weights as a member.

    Args:
        runs: two or more run or model folders, preprocessed alike.
        out: the ensemble folder to write (created). It may not hold a single model (``config.yaml``).
        overwrite: replace files in ``out`` that lung-tumor did not write.

    Returns:
        The ``ensemble.json`` written.

    Raises:
        LungTumorError: fewer than two runs, a run missing, unreadable or unlike the others, ``out`` holding a
            single model, or an unsafe output (all checked before anything is written).
    """
    from lung_tumor.export import plan_export, write_export

    runs, out = [Path(run) for run in runs], Path(out)
    if len(runs) < 2:
        raise LungTumorError("an ensemble needs at least two runs", out)
    resolved = [run.resolve() for run in runs]
    for index, run in enumerate(runs):
        if resolved[index] in resolved[:index]:
            raise LungTumorError("given twice: each member must be another run", run)
    if (out / "config.yaml").exists():
        raise LungTumorError("holds a single model (config.yaml): write the ensemble into another folder", out)
    names = [f"member_{index}" for index in range(1, len(runs) + 1)]
    plan = OutputPlan(inputs=runs, overwrite=overwrite)
    plan.add_file(out / FILENAME)
    stale = plan.add_file(out / POSTPROCESS_FILENAME)  # chosen for former members, if there: removed
    # every check prediction will make, before anything is written
    exports = [plan_export(plan, run, out / name) for run, name in zip(runs, names, strict=True)]
    check_members_compatible([export.config for export in exports], runs)
    plan.check()
    # an interrupted export leaves no ensemble.json naming half-replaced members
    (out / FILENAME).unlink(missing_ok=True)
    if stale.is_file():
        stale.unlink()
        log.warning("removed %s: it was chosen for the former members; run lung-tumor tune on the ensemble", stale)
    for export in exports:
        write_export(export)
    content = {
        "generator": marker("export", "ensemble"),
        "members": names,
        "combine": "mean of the members' sigmoid probabilities",
        "sources": {name: str(run) for name, run in zip(names, runs, strict=True)},
    }
    path = write_json(out / FILENAME, content)
    path.chmod(0o644)
    log.info("exported an ensemble of %d members to %s", len(runs), out)
    return path
