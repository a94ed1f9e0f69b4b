"""``lung-tumor compare``: train and validate several networks on the same fold and data, then tabulate them."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser

from lung_tumor.config import load_config
from lung_tumor.data.manifest import ALL_FOLD, parse_fold
from lung_tumor.errors import LungTumorError
from lung_tumor.io import write_atomic, write_json
from lung_tumor.lock import folder_lock
from lung_tumor.training.run import run_folder, saved_config_hash
from lung_tumor.training.trainer import train_from_config

log = logging.getLogger(__name__)

OWN_NETWORK = "unet2d"
REPOSITORY_OVERLAYS = Path(__file__).resolve().parents[2] / "configs" / "networks"
COLUMNS = ("network", "parameters", "dice_mean", "best_epoch", "epochs", "seconds_per_epoch", "run_dir")


def overlay_path(name: str, config_path: Path) -> Path:
    """The overlay for ``name``: a YAML path, else ``networks/<name>.yaml`` beside the config or in the repository."""
    candidates = [Path(name)] if name.endswith((".yaml", ".yml")) else []
    candidates += [config_path.parent / "networks" / f"{name}.yaml", REPOSITORY_OVERLAYS / f"{name}.yaml"]
    for path in candidates:
        if path.is_file():
            return path
    known = sorted(
        {p.stem for folder in (config_path.parent / "networks", REPOSITORY_OVERLAYS) for p in folder.glob("*.yaml")}
    )
    raise LungTumorError(f"no network overlay {name!r}; known: {[OWN_NETWORK, *known]}")


def network_config(config_path: Path, name: str, overrides: Sequence[str] = ()) -> ConfigParser:
    """The config with overlay ``name``'s ``network_def`` (``unet2d``: the config's own) and a run folder of its own."""
    parser = load_config(config_path, overrides)
    if name != OWN_NETWORK:
        overlay = load_config(overlay_path(name, config_path))
        if overlay.get("network_def") is None:
            raise LungTumorError("overlay has no network_def", overlay_path(name, config_path))
        parser["network_def"] = overlay.get("network_def")
    parser["run_name"] = f"compare/{Path(name).stem}"
    return parser


def compare_networks(
    config: str | Path,
    fold: int | None = None,
    networks: Sequence[str] = (OWN_NETWORK,),
    overrides: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Train each network on the same fold and data and write the comparison table.

    Runs go to ``<output_dir>/compare/<network>/fold_K``; a finished run is reused, an interrupted one
    resumed. The table is logged and written to ``<output_dir>/compare/fold_K.csv`` and ``.json``.

    Args:
        config: the base config file.
        fold: the fold (default: the config's).
        networks: overlay names (``configs/networks/<name>.yaml``), YAML paths, or ``unet2d`` for the config's own.
        overrides: ``key=value`` strings applied to the base config (and so to every network).

    Returns:
        One row per network: parameters, mean per-case 3D Dice on the validation cases, best epoch,
        epochs run, seconds per epoch and run folder.

    Raises:
        LungTumorError: an unknown overlay or any training error.
    """
    config = Path(config)
    if not networks:
        raise LungTumorError("name at least one network to compare")
    parsers = {name: network_config(config, name, overrides) for name in networks}  # fail early on a bad name
    for name, parser in parsers.items():
        try:
            parser.get_parsed_content("network_def", instantiate=True)
        except Exception as err:
            raise LungTumorError(f"network {name!r} cannot be built: {str(err).splitlines()[0]}") from None
    fold = parse_fold(fold if fold is not None else load_config(config, overrides).get("fold", 0))
    if fold == ALL_FOLD:
        raise LungTumorError("compare scores the networks on a fold's validation cases; fold all has none")
    output_dir = Path(load_config(config, overrides)["output_dir"]) / "compare"
    # one compare per fold at a time: it decides from each run's metadata whether to train, resume or reuse it,
    # and writes the fold's table (each run folder has its own lock as well)
    with folder_lock(output_dir, name=f".fold_{fold}.lock", what=f"comparison of fold {fold}"):
        rows = []
        for name, parser in parsers.items():
            run_dir = run_folder(parser, fold)
            metadata_path = run_dir / "metadata.json"
            metadata = _read_metadata(metadata_path)
            if metadata.get("status") == "finished":
                parser["fold"] = fold
                if metadata.get("config_hash") not in (None, saved_config_hash(parser.get())):
                    raise LungTumorError(
                        "this finished run was trained with another config than the comparison's (network, "
                        "overrides); move it away to retrain it, or compare into another output_dir",
                        run_dir,
                    )
                log.info("compare: reusing the finished run of %s in %s", name, run_dir)
            else:
                resume = (run_dir / "checkpoints" / "last.pt").is_file()
                log.info("compare: %s %s", "resuming" if resume else "training", name)
                metadata = train_from_config(parser, fold=fold, resume=resume)
            rows.append(
                {
                    "network": name,
                    "parameters": metadata["parameters"],
                    "dice_mean": round(float(metadata["best_metric"]), 4),
                    "best_epoch": metadata["best_metric_epoch"],
                    "epochs": metadata["epochs"],
                    "seconds_per_epoch": metadata.get("seconds_per_epoch"),
                    "run_dir": str(run_dir),
                }
            )
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(output_dir / f"fold_{fold}.csv", lambda stream: stream.write(buffer.getvalue()))
        write_json(output_dir / f"fold_{fold}.json", {"fold": fold, "networks": rows})
    log.info("comparison on fold %d (written to %s):\n%s", fold, output_dir / f"fold_{fold}.csv", format_table(rows))
    return rows


def _read_metadata(path: Path) -> dict[str, Any]:
    """A run's ``metadata.json``, or ``{}`` when there is none yet."""
    if not path.is_file():
        return {}
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise LungTumorError(f"unreadable ({type(err).__name__})", path) from None
    if not isinstance(content, dict):
        raise LungTumorError("not a run's metadata (a JSON object)", path)
    return content


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of the comparison rows."""
    header = ("network", "parameters", "Dice (mean per case)", "best epoch", "s / epoch")
    lines = [
        (
            r["network"],
            f"{r['parameters']:,}",
            f"{r['dice_mean']:.4f}",
            str(r["best_epoch"]),
            str(r["seconds_per_epoch"]),
        )
        for r in rows
    ]
    widths = [max(len(str(c)) for c in column) for column in zip(header, *lines, strict=True)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)) for line in [header, *lines])
