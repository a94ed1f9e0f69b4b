"""The synthetic training stream: determinism by seed with any worker count, fresh cases, resume, config checks."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import DataLoader
from torch.utils.data import WeightedRandomSampler

from lung_tumor import cores
from lung_tumor.cache import SliceCache, SliceDataset
from lung_tumor.cli import main
from lung_tumor.config import PreprocessConfig, StreamConfig, load_config
from lung_tumor.errors import LungTumorError
from lung_tumor.training.data import SeededDraws, build_augmentation, init_loader_worker
from lung_tumor.training.stream import (
    STREAM_CASE_OFFSET,
    MixedDraws,
    MixedSliceDataset,
    SyntheticSliceStream,
    split_draws,
)
from lung_tumor.training.trainer import train_from_config
from tests.test_training import CONFIGS, SIZE, tiny_overrides, write_tiny_cache

# 32 px at 10 mm: a small synthetic case preprocesses in well under a second
PREPROCESS = {"image_size": SIZE, "pixel_mm": 10.0, "crop_from_slice": 8}
STREAM = StreamConfig(enabled=True, fraction=0.5, slices_per_case=4, seed=1000)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    root = write_tiny_cache(tmp_path_factory.mktemp("cache"))
    summary = json.loads((root / "cache.json").read_text())
    (root / "cache.json").write_text(json.dumps({**summary, "preprocess": PREPROCESS}))
    return root


def _mixed(cache_dir: Path, epoch: int, draws: int = 16, rank: int = 0, world_size: int = 1):
    cache = SliceCache(cache_dir)
    augmentation = build_augmentation({"crop_size": 24}, SIZE)
    cached = SliceDataset(cache, context=1, transform=augmentation)
    stream = SyntheticSliceStream(STREAM, cache.preprocess, context=1, transform=augmentation, tumour_fraction=0.5)
    n_cached, n_streamed = split_draws(draws, STREAM.fraction)
    weights = torch.ones(len(cached), dtype=torch.double)
    sampler = MixedDraws(
        SeededDraws(WeightedRandomSampler(weights, n_cached, replacement=True), seed=3, rank=rank),
        n_streamed,
        len(cached),
        STREAM,
        seed=3,
        rank=rank,
        world_size=world_size,
    )
    sampler.set_epoch(epoch)
    return MixedSliceDataset(cached, stream), sampler


def _batches(dataset, sampler, workers: int) -> list[dict]:
    loader = DataLoader(dataset, batch_size=4, sampler=sampler, num_workers=workers)
    return list(loader)


def test_same_seed_same_samples_in_the_same_order_with_0_and_2_workers(cache_dir):
    dataset, sampler = _mixed(cache_dir, epoch=1)
    draws = list(sampler)
    assert len(draws) == 16
    streamed = [index - len(dataset.cached) for index, _ in draws if index >= len(dataset.cached)]
    # half of every batch of 4 from the stream, 4 consecutive stream draws per case: cases 0 and 1
    assert streamed == [0] * 4 + [1] * 4 and [i >= len(dataset.cached) for i, _ in draws[:4]].count(True) == 2
    serial = _batches(dataset, sampler, workers=0)
    parallel = _batches(dataset, sampler, workers=2)
    assert len(serial) == len(parallel) == 4
    for one, two in zip(serial, parallel, strict=True):
        assert one["case"] == two["case"] and torch.equal(one["slice"], two["slice"])
        torch.testing.assert_close(one["image"], two["image"], rtol=0, atol=0)
        torch.testing.assert_close(one["label"], two["label"], rtol=0, atol=0)
    assert sum(case.startswith("stream_") for batch in serial for case in batch["case"]) == 8
    # the image of a stream item depends on its (case, seed) alone, not on what the worker made before
    fresh = SyntheticSliceStream(STREAM, dataset.stream.preprocess, 1, dataset.stream.transform, 0.5)
    index, seed = draws[-1]
    item = fresh[(index - len(dataset.cached), seed)]
    torch.testing.assert_close(torch.as_tensor(item["image"]), serial[-1]["image"][-1], rtol=0, atol=0)


def test_epochs_and_ranks_draw_different_cases_and_resume_skips_what_was_drawn(cache_dir):
    _, first = _mixed(cache_dir, epoch=1)
    _, second = _mixed(cache_dir, epoch=2)
    _, other_rank = _mixed(cache_dir, epoch=1, rank=1, world_size=2)
    offset = len(SliceCache(cache_dir).records)

    def cases(sampler: MixedDraws) -> set[int]:
        return {index - offset for index, _ in sampler if index >= offset}

    assert cases(first) == {0, 1} and cases(second) == {2, 3}
    assert cases(other_rank) == {2, 3} and not cases(other_rank) & cases(_mixed(cache_dir, epoch=1, world_size=2)[1])
    whole = list(first)
    first.set_epoch(1, skip=5)
    assert list(first) == whole[5:]


def test_items_have_the_cache_shapes_binary_labels_and_the_tumour_fraction(cache_dir):
    preprocess = PreprocessConfig.from_dict(PREPROCESS)
    stream = SyntheticSliceStream(STREAM, preprocess, context=2, tumour_fraction=0.75)
    image, label = stream.case(0)
    assert image.shape == label.shape and image.shape[1:] == (SIZE, SIZE) and image.dtype == np.float16
    assert set(np.unique(label)) == {0, 1}  # case 0 of seed 1000 has tumour
    items = [stream[(0, seed)] for seed in range(200)]
    for item in items[:5]:
        assert item["image"].shape == (5, SIZE, SIZE) and item["label"].shape == (1, SIZE, SIZE)
        z = item["slice"]
        np.testing.assert_array_equal(item["image"][2], image[z].astype(np.float32))
        np.testing.assert_array_equal(item["label"][0], label[z])
    share = np.mean([item["label"].any() for item in items])
    assert 0.65 <= share <= 0.85, share
    # stream cases are synthesize_case numbers from STREAM_CASE_OFFSET on
    assert STREAM_CASE_OFFSET > 10_000 and items[0]["case"] == "stream_0"


@pytest.mark.parametrize("balance, nodule_share", [("slice", 2 / 21), ("lesion", 0.5 + 0.5 / 20)])
def test_a_lesion_balanced_stream_shows_a_nodule_as_often_as_a_mass(balance, nodule_share, monkeypatch):
    stream = SyntheticSliceStream(STREAM, PreprocessConfig.from_dict(PREPROCESS), tumour_fraction=1.0, balance=balance)
    label = np.zeros((40, SIZE, SIZE), np.uint8)
    label[3:5, 2:4, 2:4] = 1  # a nodule on slices 3-4
    label[4:24, 10:20, 10:20] = 1  # a mass on slices 4-23
    made = (np.zeros(label.shape, np.float16), label)  # stands in for a generated case
    monkeypatch.setattr("lung_tumor.training.stream.stream_case_arrays", lambda number, cfg, preprocess: made)
    slices = np.array([stream[(0, seed)]["slice"] for seed in range(1500)])
    assert ((slices >= 3) & (slices <= 23)).all()
    observed = np.isin(slices, [3, 4]).mean()
    assert abs(observed - nodule_share) < 4 * np.sqrt(nodule_share * (1 - nodule_share) / len(slices)), observed


def test_a_bad_sampler_balance_is_refused():
    with pytest.raises(LungTumorError, match="sampler.balance must be one of slice, lesion, got 'even'"):
        SyntheticSliceStream(STREAM, PreprocessConfig.from_dict(PREPROCESS), balance="even")


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("stream.fraction=0", "stream.fraction must be a number in (0, 1]"),
        ("stream.fraction=1.5", "stream.fraction must be a number in (0, 1]"),
        ("stream.size=huge", "stream.size must be one of"),
        ("stream.variety=wild", "stream.variety must be one of"),
        ("stream.acquisition=odd", "stream.acquisition must be one of"),
        ("stream.slices_per_case=0", "stream.slices_per_case must be an integer >= 1"),
        ("stream.seed=-1", "stream.seed must be an integer >= 0"),
        ("stream.enabled=maybe", "stream.enabled must be true or false"),
        ("stream.tumour_fraction=2", "stream.tumour_fraction must be a number in [0, 1]"),
        ("stream.per_case=3", "stream: unknown key(s) ['per_case']"),
    ],
)
def test_bad_stream_values_are_refused_in_one_line(setting, message, capsys):
    with pytest.raises(LungTumorError, match=re.escape(message)):
        load_config(CONFIGS / "demo.yaml", ["stream={}", setting])
    assert main(["train", "--config", str(CONFIGS / "demo.yaml"), "--set", "stream={}", "--set", setting]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("lung-tumor: error:") and message in err and "\n" not in err


def test_stream_training_stopped_and_resumed_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, cache_dir):
    # one epoch of 4 steps, stopped after 2: the resumed run draws the rest of the epoch (streamed cases included)
    stream = {"stream": {"enabled": True, "slices_per_case": 8}, "training.epochs": 1}
    overrides = tiny_overrides(tmp_path, cache_dir, run_name="resumed", **stream)
    first = train_from_config(CONFIGS / "demo.yaml", fold=1, overrides=[*overrides, "training.max_iterations=2"])
    assert first["iterations"] == 2 and first["stream"]["draws_per_epoch_and_rank"] == 16
    resumed = train_from_config(CONFIGS / "demo.yaml", fold=1, resume=True, overrides=overrides)
    assert resumed["iterations"] == 4
    state = torch.load(tmp_path / "runs" / "resumed" / "fold_1" / "checkpoints" / "last.pt", weights_only=True)

    straight = tiny_overrides(tmp_path, cache_dir, run_name="straight", **stream)
    train_from_config(CONFIGS / "demo.yaml", fold=1, overrides=straight)
    uninterrupted = torch.load(tmp_path / "runs" / "straight" / "fold_1" / "checkpoints" / "last.pt", weights_only=True)
    for name, tensor in uninterrupted["network"].items():
        torch.testing.assert_close(state["network"][name], tensor, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize(
    ("requested", "processes", "busy", "threads"),
    [(None, 1, 0, 4), (None, 1, 1, 3), (None, 2, 1, 1), (None, 1, 6, 1), (2, 1, 1, 2)],
)
def test_network_threads_leave_a_core_to_each_busy_worker(requested, processes, busy, threads, monkeypatch):
    monkeypatch.setattr(cores, "available_cores", lambda: 4)
    assert cores.network_threads(requested, processes, busy) == threads


def test_stream_training_steps_leave_the_worker_a_core_and_validation_takes_them_all(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setattr(cores, "available_cores", lambda: 4)
    calls: list[int] = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append(n), real(n))[1])
    former = torch.get_num_threads()
    stream = {"stream": {"enabled": True, "slices_per_case": 8}, "training.epochs": 1, "training.num_workers": 1}
    metadata = train_from_config(CONFIGS / "demo.yaml", fold=1, overrides=tiny_overrides(tmp_path, cache_dir, **stream))
    # the step's threads, the validation's (all 4 cores) and back, then the caller's own setting restored
    assert metadata["cpu_threads"] == 3 and calls == [3, 4, 3, former] and torch.get_num_threads() == former


@pytest.mark.slow
def test_two_process_training_with_the_stream(tmp_path, cache_dir):
    stream = {"stream": {"enabled": True, "slices_per_case": 4}, "training.epochs": 1}
    overrides = tiny_overrides(tmp_path, cache_dir, **stream)
    metadata = train_from_config(CONFIGS / "demo.yaml", fold=0, overrides=overrides, nproc_per_node=2, backend="gloo")
    # 16 draws over 2 ranks of batch 4: 8 per rank, half of them streamed, one case per rank
    assert metadata["world_size"] == 2 and metadata["status"] == "finished" and metadata["iterations"] == 2
    assert metadata["stream"]["draws_per_epoch_and_rank"] == 8
    assert np.isfinite(metadata["best_metric"])


class _BlasThreads(torch.utils.data.Dataset):
    """Reports, from inside a loader worker, the most threads any BLAS/OpenMP library there would use."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> int:
        from threadpoolctl import threadpool_info

        return max(pool["num_threads"] for pool in threadpool_info())


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: every library already runs one thread")
def test_training_loader_workers_run_one_blas_thread_each():
    def counts(**kwargs: object) -> list[int]:
        loader = torch.utils.data.DataLoader(_BlasThreads(), batch_size=None, num_workers=2, **kwargs)
        return [int(count) for count in loader]

    assert max(counts()) > 1  # a plain worker: one BLAS thread per core
    assert counts(worker_init_fn=init_loader_worker) == [1, 1]
