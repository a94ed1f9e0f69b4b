"""Run folders: layout, atomic writes, checkpoint contents, and loading a trained network for inference.

A run of fold ``K`` (or ``all``: every case, no validation) lives in ``<output_dir>/<run_name>/fold_K/``::

    config.yaml          the config as trained (overrides applied, ``fold`` filled in); ``load_config`` reads it
    metadata.json        versions, config hash, fold and case lists, best metric and epoch, parameter count
    checkpoints/best.pt  state dicts at the best validation Dice
    checkpoints/last.pt  state dicts at the end of the latest epoch (or where the run stopped)
    tensorboard/         event files
    .lung_tumor.lock     while a ``train`` runs: its lock (:mod:`lung_tumor.lock`), removed when it ends

``load_trained_model`` recomputes the hash of ``config.yaml`` and refuses a run whose ``config.yaml`` no longer
matches ``metadata.json``'s ``config_hash``: its checkpoints were trained with the original. A folder without
``metadata.json`` (made by hand) is used with a warning. ``train --resume`` loads ``last.pt`` into the config's
network and optimizer before any process starts, and the run writes nothing until its checkpoint is loaded, so a
resume that fails at its start leaves the folder byte for byte as it was.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from monai.bundle import ConfigParser
from monai.inferers import Inferer

from lung_tumor.config import config_hash, load_config
from lung_tumor.data.manifest import ALL_FOLD
from lung_tumor.errors import LungTumorError
from lung_tumor.io import write_atomic

log = logging.getLogger(__name__)

CHECKPOINT_NAMES = ("best", "last")


def context_slices(config: ConfigParser) -> int:
    """The config's ``context_slices`` k: the network sees 2k+1 neighbouring slices as channels (0 = plain 2D)."""
    value = config.get("context_slices", 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise LungTumorError(f"context_slices must be an integer >= 0, got {value!r}")
    return value


def run_folder(config: ConfigParser, fold: int | str) -> Path:
    """``<output_dir>/<run_name>/fold_<fold>`` for this config."""
    output_dir = config.get("output_dir")
    if not output_dir:
        raise LungTumorError("config has no output_dir (where training runs are written)")
    return Path(output_dir) / str(config.get("run_name", "unet2d")) / f"fold_{fold}"


def config_text(content: dict[str, Any]) -> str:
    """A config's content as the plain YAML of ``config.yaml``."""
    return yaml.safe_dump(content, sort_keys=False, allow_unicode=True)


def saved_config_hash(content: dict[str, Any]) -> str:
    """The hash of ``content`` as ``config.yaml`` holds it: what :func:`load_trained_model` recomputes and checks.

    It is taken after the YAML round trip, so that whatever YAML changes in writing and reading back (a tuple
    becoming a list) cannot make an untouched ``config.yaml`` look edited.
    """
    return config_hash(yaml.safe_load(config_text(content)))


def save_config(config: ConfigParser, path: Path) -> None:
    """Save the config content (overrides applied) as plain YAML that ``load_config`` reads back."""
    text = config_text(config.get())
    write_atomic(path, lambda stream: stream.write(text))


def save_checkpoint(path: Path, objects: dict[str, Any]) -> None:
    """Save ``{name: obj.state_dict()}`` atomically; the file loads with ``torch.load(weights_only=True)``."""
    content = {name: obj.state_dict() for name, obj in objects.items() if obj is not None}
    write_atomic(path, lambda stream: torch.save(content, stream), mode="wb")


class RandomState:
    """The Python, NumPy and torch random generators as a checkpointable object (tensors and numbers only)."""

    def state_dict(self) -> dict[str, Any]:
        # the legacy global generator is the one set_determinism seeds and libraries draw from
        _, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
        version, internal, _ = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "numpy_pos": int(pos),
            "numpy_has_gauss": int(has_gauss),
            "numpy_cached_gaussian": float(cached),
            "python": torch.tensor(internal, dtype=torch.int64),
            "python_version": int(version),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        keys = state["numpy_keys"].numpy().astype(np.uint32)
        np.random.set_state(  # noqa: NPY002
            ("MT19937", keys, state["numpy_pos"], state["numpy_has_gauss"], state["numpy_cached_gaussian"])
        )
        random.setstate((state["python_version"], tuple(int(v) for v in state["python"].tolist()), None))


def cpu_bf16_supported() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); elsewhere autocast to it is slower."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


class AutocastInferer(Inferer):
    """Run another inferer (or the plain network) under ``torch.autocast`` and return float32 outputs.

    MONAI's engines autocast on CUDA only (``amp=True``); this brings bfloat16 mixed precision to CPUs
    that compute it natively, where it is about 1.7x faster for the demo network.

    Args:
        device_type: ``"cpu"`` or ``"cuda"``.
        dtype: the autocast type (``torch.bfloat16`` on a CPU).
        inner: the inferer to wrap; ``None`` calls the network on the inputs.
    """

    def __init__(self, device_type: str = "cpu", dtype: torch.dtype = torch.bfloat16, inner: Inferer | None = None):
        super().__init__()
        self.device_type, self.dtype, self.inner = device_type, dtype, inner

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        with torch.autocast(self.device_type, dtype=self.dtype):
            if self.inner is None:
                outputs = network(inputs, *args, **kwargs)
            else:
                outputs = self.inner(inputs, network, *args, **kwargs)
        return outputs.float()


class SliceStackInferer(Inferer):
    """Infer a volume slice by slice with a 2D network, each slice with ``context`` neighbours as channels.

    Input (B, 1, Z, H, W) -> logits (B, out_channels, Z, H, W). Neighbours beyond the volume repeat
    the edge slice, as ``SliceCache.slice_stack`` does for training.

    Args:
        context: neighbouring slices on each side (the config's ``context_slices``).
        slices_per_batch: slices sent to the network at once.
    """

    def __init__(self, context: int = 0, slices_per_batch: int = 32) -> None:
        super().__init__()
        self.context = context
        self.slices_per_batch = slices_per_batch

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        if inputs.ndim != 5 or inputs.shape[1] != 1:
            raise ValueError(f"expected a (B, 1, Z, H, W) volume, got shape {tuple(inputs.shape)}")
        outputs = []
        for volume in torch.as_tensor(inputs):
            depth = volume.shape[1]
            offsets = torch.arange(-self.context, self.context + 1, device=volume.device)
            chunks = []
            for start in range(0, depth, self.slices_per_batch):
                centres = torch.arange(start, min(start + self.slices_per_batch, depth), device=volume.device)
                index = (centres[:, None] + offsets[None]).clamp(0, depth - 1)  # (n, 2k+1)
                chunks.append(network(volume[0][index], *args, **kwargs))  # (n, C, H, W)
            outputs.append(torch.cat(chunks).permute(1, 0, 2, 3))  # (C, Z, H, W)
        return torch.stack(outputs)


def load_trained_model(
    run_dir: str | Path, checkpoint: str = "best", device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, ConfigParser]:
    """The network of a training run, in eval mode, with the weights of one of its checkpoints.

    Args:
        run_dir: the run folder (``<output_dir>/<run_name>/fold_K``).
        checkpoint: ``best``, ``last``, or a path to a checkpoint file; a run of fold ``all`` (no validation)
            gives its last checkpoint for ``best``.
        device: where to put the network.

    Returns:
        The network and the run's config (``network_def``, ``context_slices``, ``preprocess``...).

    Raises:
        LungTumorError: the folder, its ``config.yaml`` or the checkpoint is missing or unreadable, ``config.yaml``
            was edited after training, or the checkpoint does not fit the network of ``config.yaml``.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise LungTumorError("run folder not found", run_dir)
    config = load_config(run_dir / "config.yaml")
    check_config_unchanged(run_dir, config)
    path = checkpoint_file(run_dir, checkpoint, config)
    if not path.is_file():
        name = path.stem if checkpoint in CHECKPOINT_NAMES else checkpoint
        raise LungTumorError(f"no {name} checkpoint (has this run finished an epoch?)", path)
    state = read_network_state(path, device)
    try:
        network = config.get_parsed_content("network_def", instantiate=True)
    except Exception as err:
        raise LungTumorError(
            f"network_def: cannot build it ({str(err).splitlines()[0]})", run_dir / "config.yaml"
        ) from None
    load_network_state(network, state, path, "checkpoint does not fit the network_def {} of config.yaml")
    return network.to(device).eval(), config


def read_network_state(path: Path, device: str | torch.device = "cpu", what: str = "") -> dict[str, Any]:
    """The network state of a lung-tumor checkpoint file; ``what`` prefixes the error (``training.init_from: ``).

    Raises:
        LungTumorError: the file is unreadable (truncated, foreign) or holds no network state.
    """
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # a truncated or foreign file: one line for the user
        raise LungTumorError(f"{what}cannot read checkpoint ({type(err).__name__})", path) from None
    if not isinstance(state, dict) or not isinstance(state.get("network"), dict):
        raise LungTumorError(f"{what}not a lung-tumor checkpoint (it holds no network state)", path)
    return state["network"]


def load_network_state(network: torch.nn.Module, state: dict[str, Any], path: Path, mismatch: str) -> None:
    """``network.load_state_dict(state)``; a misfit is one line, ``mismatch`` formatted with the network's class.

    Raises:
        LungTumorError: missing or unexpected keys, or a size mismatch.
    """
    try:
        network.load_state_dict(state)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]
        raise LungTumorError(f"{mismatch.format(type(network).__name__)} ({detail})", path) from None


def load_initial_weights(network: torch.nn.Module, source: str | Path) -> Path:
    """Load the network weights of a checkpoint into ``network`` (``training.init_from``: fine-tuning).

    Args:
        network: the freshly built network of the new run.
        source: a checkpoint file, or a run or model folder (its ``checkpoints/best.pt``, else ``last.pt``).

    Returns:
        The checkpoint file read.

    Raises:
        LungTumorError: the source is missing or unreadable, holds no network state, or does not fit ``network``.
    """
    path = Path(source)
    if path.is_dir():
        folder = path / "checkpoints"
        path = next((folder / f"{name}.pt" for name in CHECKPOINT_NAMES if (folder / f"{name}.pt").is_file()), path)
        if path.is_dir():
            raise LungTumorError("training.init_from: the folder has no checkpoints/best.pt or last.pt", source)
    if not path.is_file():
        raise LungTumorError("training.init_from: no such checkpoint file or folder", path)
    state = read_network_state(path, what="training.init_from: ")
    load_network_state(network, state, path, "training.init_from: the weights do not fit the config's network_def {}")
    return path


def checkpoint_file(run_dir: str | Path, checkpoint: str, config: ConfigParser) -> Path:
    """The file of checkpoint ``best``, ``last`` or a path (``best`` of a run without validation is ``last``)."""
    if checkpoint == "best" and config.get("fold") == ALL_FOLD:  # trained without validation: its model is the last
        checkpoint = "last"
    return Path(run_dir) / "checkpoints" / f"{checkpoint}.pt" if checkpoint in CHECKPOINT_NAMES else Path(checkpoint)


def check_config_unchanged(run_dir: Path, config: ConfigParser) -> None:
    """Refuse a run whose ``config.yaml`` no longer hashes to the ``config_hash`` its ``metadata.json`` recorded.

    The checkpoints were trained with the recorded config: an edited pixel size, window or network would give a
    different, wrong result with them. A folder without ``metadata.json`` (made by hand) is used with a warning.

    Raises:
        LungTumorError: ``config.yaml`` was edited after training, or ``metadata.json`` is unreadable.
    """
    metadata_path = run_dir / "metadata.json"
    if not metadata_path.is_file():
        log.warning("%s: no metadata.json, so config.yaml cannot be checked against the trained one", run_dir)
        return
    try:
        recorded = json.loads(metadata_path.read_text()).get("config_hash")
    except (OSError, ValueError, AttributeError) as err:
        raise LungTumorError(f"unreadable ({type(err).__name__})", metadata_path) from None
    if recorded is None:
        log.warning("%s records no config_hash: config.yaml cannot be checked against the trained one", metadata_path)
    elif config_hash(config.get()) != recorded:
        raise LungTumorError(
            "edited after training: it no longer matches the config_hash in metadata.json, and the checkpoints "
            "were trained with the original; restore it, or train a new run with the new settings",
            run_dir / "config.yaml",
        )
