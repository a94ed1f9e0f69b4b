from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lung_tumor.cache import SliceCache, SliceDataset
from lung_tumor.errors import LungTumorError
from lung_tumor.training.data import (
    SeededDraws,
    build_sampler,
    expected_tumour_fraction,
    lesion_shares,
    lesion_slice_share,
    tumour_weights,
)
from tests.test_training import write_tiny_cache


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


def _nodule_and_mass(depth: int = 40) -> np.ndarray:
    """A slice-major label: a nodule on slices 3-4, a mass on slices 4-23 (sharing slice 4), nothing after."""
    label = np.zeros((depth, 16, 16), np.uint8)
    label[3:5, 2:4, 2:4] = 1
    label[4:24, 8:14, 8:14] = 1
    return label


def test_lesion_share_counts_each_lesion_once_spread_over_its_slices():
    share = lesion_slice_share(_nodule_and_mass())
    np.testing.assert_allclose(share[[2, 3, 4, 5, 23, 24]], [0, 1 / 2, 1 / 2 + 1 / 20, 1 / 20, 1 / 20, 0])
    assert share.sum() == pytest.approx(2.0)  # two lesions
    # lesions are 26-connected, as in scoring: a diagonal neighbour on the next slice is the same lesion
    diagonal = np.zeros((4, 4, 4), np.uint8)
    diagonal[1, 1, 1] = diagonal[2, 2, 2] = 1
    np.testing.assert_allclose(lesion_slice_share(diagonal), [0, 0.5, 0.5, 0])
    assert not lesion_slice_share(np.zeros((3, 4, 4), np.uint8)).any()


# the share of tumour draws that show the nodule (slices 3 and 4): 2 of 21 tumour slices, or half the draws
# plus the mass's share of slice 4 (each lesion half, the mass's half spread over its 20 slices)
@pytest.mark.parametrize("balance, nodule_share", [("slice", 2 / 21), ("lesion", 0.5 + 0.5 / 20)])
def test_lesion_balance_draws_a_nodule_as_often_as_a_mass(balance, nodule_share):
    label = _nodule_and_mass()
    flags = label.reshape(len(label), -1).any(axis=1)
    share = lesion_slice_share(label) if balance == "lesion" else None
    weights = tumour_weights(flags, tumour_fraction=0.5, lesion_share=share)
    assert expected_tumour_fraction(flags, weights) == pytest.approx(0.5)  # the tumour share is unchanged
    sampler = build_sampler(None, weights, num_samples=20_000, generator=torch.Generator().manual_seed(0))
    drawn = np.fromiter(iter(sampler), dtype=np.int64)
    tumour = drawn[flags[drawn]]
    observed = np.isin(tumour, [3, 4]).mean()
    assert abs(observed - nodule_share) < 4 * math.sqrt(nodule_share * (1 - nodule_share) / len(tumour)), observed


def test_lesion_shares_that_do_not_fit_the_slices_are_refused():
    with pytest.raises(LungTumorError, match="lesion shares do not match"):
        tumour_weights(_flags(2, 2), tumour_fraction=0.5, lesion_share=[1.0, 0.0, 0.0, 0.0])  # a tumour slice at 0
    with pytest.raises(LungTumorError, match="lesion shares do not match"):
        tumour_weights(_flags(2, 2), tumour_fraction=0.5, lesion_share=[1.0, 1.0])


def test_a_datasets_lesion_shares_follow_its_items(tmp_path):
    cache = SliceCache(write_tiny_cache(tmp_path, cases=3, depth=8))
    dataset = SliceDataset(cache, ["lung_003", "lung_001"])
    shares = lesion_shares(dataset)
    expected = [lesion_slice_share(np.asarray(cache.label(r.case)))[r.slice] for r in dataset.records]
    np.testing.assert_array_equal(shares, expected)
    np.testing.assert_array_equal(shares > 0, dataset.tumour_flags)
    assert shares.sum() == pytest.approx(2.0)  # one disk lesion in each of the two cases
