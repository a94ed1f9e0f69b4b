"""DDP on CPU: two gloo processes spawned through ``ignite.distributed``, as ``torchrun`` would start them."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import ignite.distributed as idist
import numpy as np
import pytest
import torch
from test_training import CONFIGS, tiny_overrides, write_tiny_cache

from lung_tumor.cache import SliceCache, SliceDataset
from lung_tumor.training import trainer
from lung_tumor.training.data import build_sampler, tumour_weights
from lung_tumor.training.trainer import train_from_config

pytestmark = pytest.mark.slow

AUDIT_DIR = "LUNG_TUMOR_TEST_AUDIT_DIR"
WRITE_EVENTS = ("os.rename", "os.mkdir", "os.remove", "os.rmdir", "os.truncate", "os.link", "os.symlink")


def _audited_train_process(local_rank: int, content: dict, resume: bool) -> None:
    """The training process with a Python audit hook that records every file it writes, renames, creates or
    removes under the test's folder, saved to ``$LUNG_TUMOR_TEST_AUDIT_DIR/rank<N>.json`` when it ends."""
    audit = Path(os.environ[AUDIT_DIR])
    watched = str(audit.parent) + os.sep
    touched: list[list[str]] = []

    def record(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            if not (any(c in mode for c in "wax+") if isinstance(mode, str) else flags & (os.O_WRONLY | os.O_RDWR)):
                return
        elif event in WRITE_EVENTS:
            path = args[1] if event == "os.rename" else args[0]
        else:
            return
        if isinstance(path, str | bytes | os.PathLike):  # not a file descriptor
            path = os.path.abspath(os.fsdecode(path))
            if path.startswith(watched) and not path.startswith(str(audit)):
                touched.append([event, path])

    sys.addaudithook(record)
    try:
        trainer._train_process(local_rank, content, resume)
    finally:
        (audit / f"rank{local_rank}.json").write_text(json.dumps(touched))


def _slices_seen_per_rank(local_rank: int, cache_dir: str, out: str) -> None:
    """One epoch of the training sampler on this rank; rank 0 writes what every rank drew."""
    dataset = SliceDataset(SliceCache(cache_dir), context=0)
    weights = tumour_weights(dataset.tumour_flags, tumour_fraction=0.5)
    sampler = build_sampler(dataset, weights, num_samples=64, world_size=idist.get_world_size(), rank=idist.get_rank())
    sampler.set_epoch(0)
    drawn = torch.tensor(list(sampler), dtype=torch.int64)
    gathered = idist.all_gather(drawn).view(idist.get_world_size(), -1)
    if idist.get_rank() == 0:
        Path(out).write_text(json.dumps({"world_size": idist.get_world_size(), "indices": gathered.tolist()}))


def test_each_rank_draws_different_slices(tmp_path):
    cache = write_tiny_cache(tmp_path / "cache")
    out = tmp_path / "seen.json"
    with idist.Parallel(backend="gloo", nproc_per_node=2) as parallel:
        parallel.run(_slices_seen_per_rank, str(cache), str(out))
    seen = json.loads(out.read_text())
    assert seen["world_size"] == 2
    rank0, rank1 = (set(indices) for indices in seen["indices"])
    assert len(seen["indices"][0]) == len(seen["indices"][1]) == 32
    assert rank0 and rank1 and not rank0 & rank1


def test_two_process_training_writes_once_from_rank_0(tmp_path, monkeypatch):
    cache = write_tiny_cache(tmp_path / "cache")
    overrides = tiny_overrides(tmp_path, cache, **{"training.epochs": 1})
    # each spawned rank runs the real training process under an audit hook (the module attribute is what
    # train_from_config hands to the processes; the environment tells them where to report)
    audit = tmp_path / "audit"
    audit.mkdir()
    monkeypatch.setenv(AUDIT_DIR, str(audit))
    monkeypatch.setattr(trainer, "_train_process", _audited_train_process)
    metadata = train_from_config(CONFIGS / "demo.yaml", fold=0, overrides=overrides, nproc_per_node=2, backend="gloo")
    run_dir = tmp_path / "runs" / "unet2d" / "fold_0"
    rank0, rank1 = (json.loads((audit / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank1 == []  # rank 1 wrote, renamed, created and removed nothing
    written = {Path(path).relative_to(run_dir).as_posix() for event, path in rank0 if event == "os.rename"}
    assert {"checkpoints/best.pt", "checkpoints/last.pt", "metadata.json", "config.yaml"} <= written
    assert any("tfevents" in path for _, path in rank0)  # the hook sees the TensorBoard writer too
    assert metadata["world_size"] == 2 and metadata["status"] == "finished"
    # 16 samples per epoch over 2 ranks of batch 4: 2 steps per rank
    assert metadata["iterations"] == 2
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit", "cache", "runs"]
    # validation was sharded over the ranks and gathered: every validation case has a Dice
    assert sorted(metadata["best_per_case_dice"]) == metadata["validation_cases"]
    assert np.isfinite(metadata["best_metric"])
