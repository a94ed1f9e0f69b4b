"""DDP on CPU: two gloo processes spawned through ``ignite.distributed``, as ``torchrun`` would start them."""

from __future__ import annotations

import json
from pathlib import Path

import ignite.distributed as idist
import numpy as np
import pytest
import torch
from test_training import CONFIGS, tiny_overrides, write_tiny_cache

from lung_tumor.cache import SliceCache, SliceDataset
from lung_tumor.training.data import build_sampler, tumour_weights
from lung_tumor.training.trainer import train_from_config

pytestmark = pytest.mark.slow


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


def test_two_process_training_writes_once_from_rank_0(tmp_path):
    cache = write_tiny_cache(tmp_path / "cache")
    overrides = tiny_overrides(tmp_path, cache, **{"training.epochs": 1})
    metadata = train_from_config(CONFIGS / "demo.yaml", fold=0, overrides=overrides, nproc_per_node=2, backend="gloo")
    run_dir = tmp_path / "runs" / "unet2d" / "fold_0"
    assert metadata["world_size"] == 2 and metadata["status"] == "finished"
    # 16 samples per epoch over 2 ranks of batch 4: 2 steps per rank
    assert metadata["iterations"] == 2
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "runs"]
    # validation was sharded over the ranks and gathered: every validation case has a Dice
    assert sorted(metadata["best_per_case_dice"]) == metadata["validation_cases"]
    assert np.isfinite(metadata["best_metric"])
