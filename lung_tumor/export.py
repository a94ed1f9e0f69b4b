"""``lung-tumor export``: a training run cut down to what prediction needs, as the shipped model is stored.

The folder keeps the run layout (:mod:`lung_tumor.training.run`), so ``predict --run FOLDER`` and
:func:`~lung_tumor.training.run.load_trained_model` read it unchanged: ``config.yaml`` (byte for byte, so its
hash still matches), ``metadata.json`` (with where it came from), the chosen checkpoint with the network weights
alone (no optimizer or scheduler state), and ``postprocess.json`` when the run has one. ``lung_tumor/models/
default/`` is made this way (:mod:`lung_tumor.models`); its ``MODEL_CARD.md`` is written by hand.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser

from lung_tumor.errors import LungTumorError
from lung_tumor.io import write_atomic, write_json
from lung_tumor.outputs import OutputPlan, marker
from lung_tumor.postprocessing import FILENAME as POSTPROCESS_FILENAME
from lung_tumor.training.run import checkpoint_file, load_trained_model

log = logging.getLogger(__name__)


@dataclass
class ExportPlan:
    """What :func:`export_model` will write for one run: checked, not yet written."""

    run: Path
    out: Path
    network: torch.nn.Module
    config: ConfigParser
    source: Path
    weights: Path
    postprocess: Path | None
    metadata: dict[str, Any]
    outputs: list[Path]


def plan_export(plan: OutputPlan, run: Path, out: Path, checkpoint: str = "best") -> ExportPlan:
    """Load and check ``run``'s model and add the files of its model folder ``out`` to ``plan``.

    Raises:
        LungTumorError: the run or its checkpoint is missing, unreadable or does not fit its config.
    """
    network, config = load_trained_model(run, checkpoint)  # every check prediction will make, before writing
    source = checkpoint_file(run, checkpoint, config)
    weights = out / "checkpoints" / checkpoint_file(out, "best", config).name
    metadata_path = run / "metadata.json"
    try:
        metadata: dict[str, Any] = json.loads(metadata_path.read_text()) if metadata_path.is_file() else {}
    except (OSError, ValueError) as err:
        raise LungTumorError(f"unreadable ({type(err).__name__})", metadata_path) from None
    postprocess = run / POSTPROCESS_FILENAME
    plan.inputs.extend(path for path in (run / "config.yaml", source, postprocess) if path.exists())
    outputs = [out / "config.yaml", out / "metadata.json", weights]
    if postprocess.is_file():
        outputs.append(out / POSTPROCESS_FILENAME)
    for path in outputs:
        plan.add_file(path, vouched_by=out / "metadata.json" if path != out / "metadata.json" else None)
    return ExportPlan(
        run, out, network, config, source, weights, postprocess if postprocess.is_file() else None, metadata, outputs
    )


def export_model(run: str | Path, out: str | Path, checkpoint: str = "best", overwrite: bool = False) -> Path:
    """Write the run's network weights, config and post-processing into ``out``.

    Args:
        run: the training run folder.
        out: the model folder to write (created).
        checkpoint: ``best``, ``last`` or a checkpoint path of the run.
        overwrite: replace files in ``out`` that lung-tumor did not write.

    Returns:
        The weights file written.

    Raises:
        LungTumorError: the run or its checkpoint is missing, unreadable or does not fit its config, or an
            output is unsafe (checked before anything is written).
    """
    plan = OutputPlan(overwrite=overwrite)
    export = plan_export(plan, Path(run), Path(out), checkpoint)
    plan.check()
    write_export(export)
    return export.weights


def write_export(export: ExportPlan) -> None:
    """Write the model folder that :func:`plan_export` planned (each file atomically, readable by all)."""
    run, out = export.run, export.out
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in export.network.state_dict().items()}
    write_atomic(export.weights, lambda stream: torch.save({"network": state}, stream), mode="wb")
    shutil.copyfile(run / "config.yaml", out / "config.yaml")
    if export.postprocess is not None:
        shutil.copyfile(export.postprocess, out / POSTPROCESS_FILENAME)
    metadata = {
        **export.metadata,
        "generator": marker("export"),
        "exported_from": {"run": str(run), "checkpoint": str(export.source)},
    }
    write_json(out / "metadata.json", metadata)
    for path in export.outputs:  # readable by every user of an installed package (atomic writes make 0600 files)
        path.chmod(0o644)
    size_mb = export.weights.stat().st_size / 2**20
    log.info("exported %s (%s) to %s: weights %.1f MB", run, export.source.name, out, size_mb)
