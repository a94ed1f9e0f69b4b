"""Unlimited training data: slices of fresh synthetic cases made in the loader workers, beside the slice cache.

The ``stream`` config section (:class:`lung_tumor.config.StreamConfig`) turns it on. Each epoch, a share
``fraction`` of the draws (spread evenly over the epoch, so over each batch too) comes from
:class:`SyntheticSliceStream`, the rest from the slice cache as before; :class:`MixedDraws` makes the draws
and :class:`MixedSliceDataset` serves them.

Seed space. Stream case number ``n`` (counted from 0) is ``synthesize_case(STREAM_CASE_OFFSET + n,
seed=stream.seed, ...)``. ``lung-tumor synth`` numbers its cases from 1 up to the dataset's size, far below
``STREAM_CASE_OFFSET``, so no stream case is a case of a fixed dataset, whatever their seeds. Rank ``r`` of
``W`` processes draws, in epoch ``e`` (from 1), the cases ``((e - 1) * W + r) * C + j`` for ``j < C``, with
``C`` the cases per epoch and rank: no case is drawn twice in a run, across epochs and ranks.

Determinism. As with :class:`lung_tumor.training.data.SeededDraws`, every draw is an ``(index, seed)`` pair
that depends only on ``(seed, rank, epoch)`` and its position, and an item depends only on its pair: the case
from the index, the slice and the augmentation from the seed. Workers only cache the last cases they made,
which changes the time an item takes, never its content; so the loader's worker count, ``--resume`` (mid-epoch
too) and DDP behave as without the stream.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from torch.utils.data import Dataset, Sampler

from lung_tumor.config import PreprocessConfig, StreamConfig, check_balance
from lung_tumor.data.synth import draw_case_acquisition, synthesize_case
from lung_tumor.preprocess import slice_major
from lung_tumor.training.data import SeededDraws, lesion_slice_share
from lung_tumor.transforms.pipeline import apply_transforms, preprocess_transforms

STREAM_CASE_OFFSET = 1_000_000
_STREAM_TAG = 0x5354  # separates the stream's per-epoch draws from the cache sampler's
_CASES_KEPT = 2  # per worker: a case's draws may straddle two batches


def stream_case_arrays(number: int, cfg: StreamConfig, preprocess: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """Stream case ``number`` made and preprocessed like a cached case: float16 image and uint8 label, (Z, H, W).

    The preprocessing is the cache's chain (:func:`lung_tumor.transforms.pipeline.preprocess_transforms`, then
    :func:`lung_tumor.preprocess.slice_major`), on the volume in memory instead of NIfTI files; a case with no
    more slices than ``preprocess.crop_from_slice`` (a thin slab) keeps them all, whatever ``thin_volume`` says.
    """
    index = STREAM_CASE_OFFSET + int(number)
    acquisition = draw_case_acquisition(index, cfg.seed, cfg.size, cfg.acquisition)
    case = synthesize_case(index, cfg.seed, cfg.size, acquisition=acquisition, variety=cfg.variety)
    hu = case.image.astype(np.float32)
    if case.rescale is not None:
        slope, intercept = case.rescale
        hu = hu * np.float32(slope) + np.float32(intercept)
    affine = torch.as_tensor(case.affine, dtype=torch.float64)
    data = {
        "image": MetaTensor(torch.from_numpy(hu)[None], affine=affine),
        "label": MetaTensor(torch.from_numpy(np.ascontiguousarray(case.label, dtype=np.uint8))[None], affine=affine),
    }
    # a thin slab (varied acquisition) keeps all its slices, without the cache's thin-volume warning or error
    slice_axis = int(np.argmax(np.abs(case.affine[2, :3])))
    crop = case.image.shape[slice_axis] > preprocess.crop_from_slice
    out = apply_transforms(preprocess_transforms(preprocess, keys=("image", "label"), crop=crop), data)
    return slice_major(out["image"], torch.float16), slice_major(out["label"], torch.uint8)


class SyntheticSliceStream(Dataset):
    """Slices of fresh synthetic cases, served like :class:`lung_tumor.cache.SliceDataset` items.

    Item ``(number, seed)`` is a slice of stream case ``number`` (see the module docstring): a tumour slice with
    probability ``tumour_fraction`` where the case has tumour, else a slice without, chosen from ``seed``; with
    ``context`` neighbours on each side (beyond the first or last slice, the edge slice repeats, as in
    :meth:`lung_tumor.cache.SliceCache.slice_stack`); then ``transform`` with its random state set from ``seed``.

    Args:
        cfg: the ``stream`` section.
        preprocess: the slice cache's preprocessing (same grid and intensities as the cached slices).
        context: neighbouring slices on each side given as extra channels (2.5D).
        transform: callable applied to each item (the training augmentation).
        tumour_fraction: share of a tumour case's draws that show tumour.
        balance: ``slice`` draws a case's tumour slices alike; ``lesion`` draws its lesions alike, then a slice
            of the lesion (:func:`lung_tumor.training.data.lesion_slice_share`).
    """

    def __init__(
        self,
        cfg: StreamConfig,
        preprocess: PreprocessConfig,
        context: int = 0,
        transform: Any = None,
        tumour_fraction: float = 0.5,
        balance: str = "slice",
    ) -> None:
        self.cfg, self.preprocess, self.context, self.transform = cfg, preprocess, int(context), transform
        self.tumour_fraction = float(tumour_fraction)
        self.balance = check_balance(balance)
        # image, label and (balancing by lesion) each slice's lesion share of this process's last cases
        self._cases: OrderedDict[int, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = OrderedDict()

    def _case_and_share(self, number: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        if number in self._cases:
            self._cases.move_to_end(number)
        else:
            image, label = stream_case_arrays(number, self.cfg, self.preprocess)
            share = lesion_slice_share(label) if self.balance == "lesion" else None
            self._cases[number] = (image, label, share)
            while len(self._cases) > _CASES_KEPT:
                self._cases.popitem(last=False)
        return self._cases[number]

    def case(self, number: int) -> tuple[np.ndarray, np.ndarray]:
        """Stream case ``number`` as (image, label) arrays (Z, H, W), from this process's last cases if there."""
        image, label, _ = self._case_and_share(number)
        return image, label

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        number, seed = int(item[0]), int(item[1])
        image, label, lesion_share = self._case_and_share(number)
        tumour = label.reshape(label.shape[0], -1).any(axis=1)
        rng = np.random.default_rng([seed, _STREAM_TAG])
        want_tumour = rng.random() < self.tumour_fraction
        pool = np.flatnonzero(tumour if want_tumour else ~tumour)
        if pool.size == 0:  # a tumour-free case, or tumour on every slice
            pool = np.arange(label.shape[0])
        if want_tumour and lesion_share is not None and tumour.any():
            share = lesion_share[pool]
            z = int(rng.choice(pool, p=share / share.sum()))
        else:
            z = int(rng.choice(pool))
        index = np.clip(np.arange(z - self.context, z + self.context + 1), 0, image.shape[0] - 1)
        sample = {
            "image": image[index].astype(np.float32),
            "label": label[z][None].astype(np.float32),
            "case": f"stream_{number}",
            "slice": z,
        }
        if self.transform is None:
            return sample
        if hasattr(self.transform, "set_random_state"):
            self.transform.set_random_state(seed=seed)
        return self.transform(sample)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cases"] = OrderedDict()  # each loader worker makes its own
        return state


class MixedSliceDataset(Dataset):
    """The slice cache's items and the stream's behind one index: ``index < len(cached)`` is a cached slice,
    ``len(cached) + n`` a slice of stream case ``n``. Items are ``(index, seed)`` pairs (:class:`MixedDraws`).

    Args:
        cached: a :class:`lung_tumor.cache.SliceDataset`.
        stream: a :class:`SyntheticSliceStream`.
    """

    def __init__(self, cached: Dataset, stream: SyntheticSliceStream) -> None:
        self.cached, self.stream = cached, stream

    def __len__(self) -> int:
        return len(self.cached)  # the cached part; the stream has no end

    @property
    def tumour_flags(self) -> np.ndarray:
        """Whether each cached slice holds tumour."""
        return self.cached.tumour_flags

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        index, seed = int(item[0]), int(item[1])
        if index < len(self.cached):
            return self.cached[(index, seed)]
        return self.stream[(index - len(self.cached), seed)]


def split_draws(per_rank: int, fraction: float) -> tuple[int, int]:
    """``(cached, streamed)`` draws of an epoch of ``per_rank`` draws with ``fraction`` from the stream."""
    streamed = round(per_rank * fraction)
    return per_rank - streamed, streamed


class MixedDraws(Sampler[tuple[int, int]]):
    """Each epoch's draws from the slice cache and the stream, interleaved, each with its augmentation seed.

    Draw ``i`` of ``N`` comes from the stream where ``floor((i + 1) * S / N) > floor(i * S / N)`` (``S`` stream draws),
    so every stretch of draws (every batch) holds the fraction, to within one draw. Cached draws are those of
    ``cached`` (a :class:`SeededDraws` over ``len(dataset.cached)`` slices); the stream's ``k``-th draw is a
    slice of the epoch's case ``k // slices_per_case``, so consecutive stream draws share a case. Everything
    follows from ``(seed, rank, epoch)``; ``set_epoch(epoch, skip)`` resumes an epoch after ``skip`` draws.

    Args:
        cached: the cache's draws, ``len(cached)`` of them per epoch; ``None`` with the stream alone.
        streamed: stream draws per epoch and rank.
        offset: index of the first stream item in the dataset (``len`` of the cached dataset).
        cfg: the ``stream`` section.
        seed: the run's seed.
        rank: this process's rank.
        world_size: number of processes (ranks draw different cases).
    """

    def __init__(
        self,
        cached: SeededDraws | None,
        streamed: int,
        offset: int,
        cfg: StreamConfig,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.cached, self.streamed, self.offset, self.cfg = cached, int(streamed), int(offset), cfg
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.epoch, self.skip = 1, 0

    @property
    def cases_per_epoch(self) -> int:
        return math.ceil(self.streamed / self.cfg.slices_per_case)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Draw the slices of ``epoch`` next, leaving out its first ``skip`` draws (already trained on)."""
        self.epoch, self.skip = int(epoch), int(skip)
        if self.cached is not None:
            self.cached.set_epoch(epoch)

    def __len__(self) -> int:
        return (0 if self.cached is None else len(self.cached)) + self.streamed

    def __iter__(self) -> Iterator[tuple[int, int]]:
        cached = iter(self.cached if self.cached is not None else ())
        entropy = np.random.SeedSequence([self.seed, self.rank, self.epoch, _STREAM_TAG]).generate_state(1)[0]
        generator = torch.Generator().manual_seed(int(entropy))
        seeds = torch.randint(0, 2**31 - 1, (self.streamed,), generator=generator).tolist()
        first_case = ((self.epoch - 1) * self.world_size + self.rank) * self.cases_per_epoch
        total = len(self)
        draws: list[tuple[int, int]] = []
        k = 0
        for i in range(total):
            if (i + 1) * self.streamed // total > i * self.streamed // total:  # exactly ``streamed`` positions
                draws.append((self.offset + first_case + k // self.cfg.slices_per_case, seeds[k]))
                k += 1
            else:
                draws.append(next(cached))
        yield from draws[self.skip :]
