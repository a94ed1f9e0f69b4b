from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lung_tumor.errors import LungTumorError
from lung_tumor.training.data import SeededDraws, build_sampler, expected_tumour_fraction, tumour_weights


def _flags(n_tumour: int, n_other: int) -> np.ndarray:
    return np.array([True] * n_tumour + [False] * n_other)


def _drawn_fraction(sampler, flags: np.ndarray) -> tuple[float, int]:
    drawn = np.fromiter(iter(sampler), dtype=np.int64)
    return float(flags[drawn].mean()), len(drawn)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"tumour_weight": 8.2}, 8.2 * 30 / (8.2 * 30 + 270)),
        ({"tumour_fraction": 0.5}, 0.5),
        ({"tumour_weight": 1.0}, 0.1),
    ],
)
def test_tumour_slices_are_drawn_at_the_configured_rate(kwargs, expected):
    flags = _flags(30, 270)
    weights = tumour_weights(flags, **kwargs)
    assert expected_tumour_fraction(flags, weights) == pytest.approx(expected)
    sampler = build_sampler(None, weights, num_samples=20_000, generator=torch.Generator().manual_seed(0))
    observed, n = _drawn_fraction(sampler, flags)
    assert n == 20_000
    sd = math.sqrt(expected * (1 - expected) / n)
    assert abs(observed - expected) < 4 * sd


def test_distributed_ranks_draw_from_disjoint_slices_at_the_configured_rate():
    flags = _flags(40, 360)
    weights = tumour_weights(flags, tumour_fraction=0.5)
    dataset = list(range(len(flags)))
    seen = []
    for rank in range(2):
        sampler = build_sampler(
            dataset, weights, num_samples=8_000, world_size=2, rank=rank, generator=torch.Generator().manual_seed(rank)
        )
        drawn = np.fromiter(iter(sampler), dtype=np.int64)
        assert len(drawn) == 4_000
        seen.append(set(drawn.tolist()))
        # each rank holds half the slices, so its own tumour share sets the rate; it stays near 0.5
        assert abs(flags[drawn].mean() - 0.5) < 0.1
    assert not seen[0] & seen[1]


@pytest.mark.parametrize(
    "kwargs", [{}, {"tumour_weight": 2.0, "tumour_fraction": 0.5}, {"tumour_fraction": 1.0}, {"tumour_weight": 0.0}]
)
def test_bad_sampler_settings_are_user_errors(kwargs):
    with pytest.raises(LungTumorError):
        tumour_weights(_flags(3, 7), **kwargs)


def test_seeded_draws_depend_on_seed_rank_and_epoch_only():
    weights = tumour_weights(_flags(30, 270), tumour_fraction=0.5)

    def draws(seed: int = 0, rank: int = 0, epoch: int = 1, skip: int = 0) -> list[tuple[int, int]]:
        sampler = SeededDraws(build_sampler(None, weights, num_samples=64), seed=seed, rank=rank)
        sampler.set_epoch(epoch, skip=skip)
        return list(sampler)

    first = draws()
    assert len(first) == 64 and first == draws()  # a new sampler for the same epoch draws the same pairs
    assert len({seed for _, seed in first}) == 64  # every draw is augmented from its own seed
    assert draws(skip=40) == first[40:]  # a resumed epoch continues where the stop fell
    for other in (draws(epoch=2), draws(rank=1), draws(seed=1)):
        assert [i for i, _ in other] != [i for i, _ in first]
        assert not {s for _, s in other} & {s for _, s in first}
