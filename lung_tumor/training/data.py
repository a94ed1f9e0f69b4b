"""Training data: slice datasets from the cache, augmentation, tumour-weighted sampling, validation volumes."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import DistributedWeightedRandomSampler
from monai.data.utils import worker_init_fn as monai_worker_init_fn
from monai.transforms import (
    Compose,
    EnsureTyped,
    Rand2DElasticd,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
)
from threadpoolctl import threadpool_limits
from torch.utils.data import Dataset, Sampler, WeightedRandomSampler

from lung_tumor.errors import LungTumorError
from lung_tumor.evaluation.lesions import label_lesions

KEYS = ("image", "label")

AUGMENTATION_DEFAULTS: dict[str, Any] = {
    "enabled": True,
    "affine_prob": 0.8,
    "rotate_deg": 45.0,
    "scale": [0.85, 1.15],
    "translate_fraction": 0.1,
    "flip_prob": 0.0,
    "flip_axis": 1,
    "elastic_prob": 0.3,
    "elastic_spacing": 32,
    "elastic_magnitude": [1.0, 3.0],
    "intensity_prob": 0.0,
    "crop_size": None,
    "crop_tumour_prob": 0.5,
}


class RandTumourCropd(RandCropByPosNegLabeld):
    """One square patch per slice, centred on a tumour pixel with probability ``pos / (pos + neg)``.

    MONAI's ``RandCropByPosNegLabeld`` returns a list of ``num_samples`` patches; the slice datasets
    give one item per index, so this returns the single patch itself.
    """

    def __call__(self, data: Any, lazy: bool | None = None) -> dict[str, Any]:  # type: ignore[override]
        with warnings.catch_warnings():  # a slice without tumour gives a random patch: expected, not a warning
            warnings.filterwarnings("ignore", message="Num foregrounds 0")
            return super().__call__(data, lazy=lazy)[0]


def _check_range(name: str, value: Any, low: float, high: float) -> tuple[float, float]:
    if not (isinstance(value, list | tuple) and len(value) == 2 and low <= float(value[0]) <= float(value[1]) <= high):
        raise LungTumorError(
            f"augmentation.{name} must be [min, max] with {low} <= min <= max <= {high}, got {value!r}"
        )
    return float(value[0]), float(value[1])


def _check_prob(name: str, value: Any) -> float:
    if not isinstance(value, int | float) or not 0 <= value <= 1:
        raise LungTumorError(f"augmentation.{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def build_augmentation(section: dict[str, Any] | None, image_size: int, seed: int | None = None) -> Compose:
    """MONAI dictionary transforms that augment ``image`` and ``label`` with one draw per sample.

    With ``crop_size`` set, each slice first gives one square patch (:class:`RandTumourCropd`), centred on a
    tumour pixel with probability ``crop_tumour_prob`` where the slice has tumour: training on patches is
    faster per slice, and the fully convolutional network still segments whole slices.
    Geometry (``RandAffined``: rotation, scale, translation; ``RandFlipd``: left-right; ``Rand2DElasticd``)
    moves image and label together, bilinear for the image and nearest for the label, so the label stays
    binary. Intensity augmentation (scale, shift, noise) touches the image only.

    Args:
        section: the config's ``augmentation`` mapping (keys of ``AUGMENTATION_DEFAULTS``); ``None`` for defaults.
        image_size: slice size in pixels (translations and elastic grid spacing are relative to it).
        seed: seed of the transforms' random state.

    Raises:
        LungTumorError: an unknown key or a value out of range.
    """
    unknown = sorted(set(section or {}) - set(AUGMENTATION_DEFAULTS))
    if unknown:
        raise LungTumorError(f"augmentation: unknown key(s) {unknown}; known keys are {sorted(AUGMENTATION_DEFAULTS)}")
    cfg = {**AUGMENTATION_DEFAULTS, **(section or {})}
    transforms: list = [EnsureTyped(keys=KEYS, dtype=torch.float32, track_meta=False)]
    if cfg["crop_size"] is not None:
        crop = cfg["crop_size"]
        if not isinstance(crop, int) or isinstance(crop, bool) or not 8 <= crop <= image_size:
            raise LungTumorError(
                f"augmentation.crop_size must be an integer in [8, {image_size}] or null, got {crop!r}"
            )
        tumour_prob = _check_prob("crop_tumour_prob", cfg["crop_tumour_prob"])
        transforms.append(
            RandTumourCropd(
                keys=KEYS,
                label_key="label",
                spatial_size=(crop, crop),
                pos=tumour_prob,
                neg=1.0 - tumour_prob,
                num_samples=1,
                allow_smaller=False,
            )
        )
    if cfg["enabled"]:
        affine_prob = _check_prob("affine_prob", cfg["affine_prob"])
        flip_prob = _check_prob("flip_prob", cfg["flip_prob"])
        elastic_prob = _check_prob("elastic_prob", cfg["elastic_prob"])
        intensity_prob = _check_prob("intensity_prob", cfg["intensity_prob"])
        scale_lo, scale_hi = _check_range("scale", cfg["scale"], 0.1, 10.0)
        rotate_deg = cfg["rotate_deg"]
        if not isinstance(rotate_deg, int | float) or not 0 <= rotate_deg <= 180:
            raise LungTumorError(f"augmentation.rotate_deg must be in [0, 180] degrees, got {rotate_deg!r}")
        rotate = math.radians(rotate_deg)
        translate = _check_prob("translate_fraction", cfg["translate_fraction"]) * image_size
        magnitude = _check_range("elastic_magnitude", cfg["elastic_magnitude"], 0.0, 100.0)
        spacing = int(cfg["elastic_spacing"])
        if spacing < 2:
            raise LungTumorError(f"augmentation.elastic_spacing must be >= 2 pixels, got {spacing}")
        transforms.append(
            RandAffined(
                keys=KEYS,
                prob=affine_prob,
                rotate_range=(rotate,),
                # MONAI draws the scale factor as 1 + U(lo, hi)
                scale_range=((scale_lo - 1.0, scale_hi - 1.0),),
                translate_range=(translate, translate),
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            )
        )
        if flip_prob > 0:
            # cached slices are (Y, X) (docs/slice_cache.md): axis 0 is anterior-posterior, 1 left-right
            if cfg["flip_axis"] not in (0, 1):
                raise LungTumorError(f"augmentation.flip_axis must be 0 or 1, got {cfg['flip_axis']!r}")
            transforms.append(RandFlipd(keys=KEYS, prob=flip_prob, spatial_axis=cfg["flip_axis"]))
        if elastic_prob > 0:
            transforms.append(
                Rand2DElasticd(
                    keys=KEYS,
                    spacing=(spacing, spacing),
                    magnitude_range=magnitude,
                    prob=elastic_prob,
                    mode=("bilinear", "nearest"),
                    padding_mode="zeros",
                )
            )
        if intensity_prob > 0:
            transforms += [
                RandScaleIntensityd(keys="image", factors=0.1, prob=intensity_prob),
                RandShiftIntensityd(keys="image", offsets=0.05, prob=intensity_prob),
                RandGaussianNoised(keys="image", std=0.01, prob=intensity_prob),
            ]
    compose = Compose(transforms)
    if seed is not None:
        compose.set_random_state(seed=seed)
    return compose


def lesion_slice_share(label: np.ndarray) -> np.ndarray:
    """Per axial slice of a slice-major (Z, H, W) label, the sum over the lesions it shows of one over the number
    of slices each lesion spans (a lesion is a 26-connected component, as in scoring).

    Drawing tumour slices in proportion to it draws every lesion equally often: a nodule on two slices as often
    as a mass on thirty, which uniform slice draws show fifteen times as often.
    """
    labels, count = label_lesions(label)
    share = np.zeros(labels.shape[0])
    if count == 0:
        return share
    slices = np.nonzero(labels)[0]
    pairs = np.unique(slices * (count + 1) + labels[labels > 0])  # each (slice, lesion) once
    slice_of, lesion_of = np.divmod(pairs, count + 1)
    spans = np.bincount(lesion_of, minlength=count + 1)
    np.add.at(share, slice_of, 1.0 / spans[lesion_of])
    return share


def tumour_weights(
    tumour_flags: Sequence[bool] | np.ndarray,
    tumour_weight: float | None = None,
    tumour_fraction: float | None = None,
    lesion_share: Sequence[float] | np.ndarray | None = None,
) -> np.ndarray:
    """Per-slice sampling weights: tumour slices ``tumour_weight`` times as likely as the others.

    Give either ``tumour_weight`` (the original recipe's 8.2:1) or ``tumour_fraction``, the expected
    share of tumour slices among the draws (0.5 means balanced batches), from which the weight follows.
    With ``lesion_share`` (:func:`lesion_slice_share` of every slice), the tumour slices' total weight is
    shared out in proportion to it instead of evenly, so that every lesion is drawn equally often.
    """
    flags = np.asarray(tumour_flags, dtype=bool)
    n_tumour, n_other = int(flags.sum()), int((~flags).sum())
    if (tumour_weight is None) == (tumour_fraction is None):
        raise LungTumorError("sampler: give exactly one of tumour_weight or tumour_fraction")
    if tumour_fraction is not None:
        if not 0 < tumour_fraction < 1:
            raise LungTumorError(f"sampler.tumour_fraction must be in (0, 1), got {tumour_fraction!r}")
        tumour_weight = (
            1.0 if n_tumour == 0 or n_other == 0 else tumour_fraction * n_other / ((1 - tumour_fraction) * n_tumour)
        )
    if not tumour_weight > 0:
        raise LungTumorError(f"sampler.tumour_weight must be positive, got {tumour_weight!r}")
    weights = np.where(flags, float(tumour_weight), 1.0)
    if lesion_share is not None and n_tumour:
        share = np.asarray(lesion_share, dtype=float)
        if share.shape != flags.shape or np.any(share[flags] <= 0):
            raise LungTumorError("sampler: the lesion shares do not match the tumour slices")
        weights[flags] = float(tumour_weight) * n_tumour * share[flags] / share[flags].sum()
    return weights


def lesion_shares(dataset: Any) -> np.ndarray:
    """:func:`lesion_slice_share` of every item of a :class:`lung_tumor.cache.SliceDataset`, in item order."""
    by_case: dict[str, np.ndarray] = {}
    shares = np.zeros(len(dataset.records))
    for index, record in enumerate(dataset.records):
        if record.case not in by_case:
            by_case[record.case] = lesion_slice_share(np.asarray(dataset.cache.label(record.case)))
        shares[index] = by_case[record.case][record.slice]
    return shares


def expected_tumour_fraction(tumour_flags: Sequence[bool] | np.ndarray, weights: np.ndarray) -> float:
    """The share of tumour slices a sampler with these ``weights`` draws on average."""
    flags = np.asarray(tumour_flags, dtype=bool)
    return float(weights[flags].sum() / weights.sum())


def build_sampler(
    dataset: Dataset,
    weights: np.ndarray,
    num_samples: int,
    world_size: int = 1,
    rank: int = 0,
    generator: torch.Generator | None = None,
) -> Sampler:
    """Weighted sampling with replacement, ``num_samples`` per epoch in all.

    With several processes, MONAI's ``DistributedWeightedRandomSampler`` gives each rank a disjoint
    share of the slices (reshuffled every epoch) and draws ``num_samples / world_size`` from it.
    """
    if num_samples < 1:
        raise LungTumorError(f"training.samples_per_epoch must be >= 1, got {num_samples}")
    if world_size > 1:
        return DistributedWeightedRandomSampler(
            dataset,
            weights.tolist(),
            num_samples_per_rank=math.ceil(num_samples / world_size),
            generator=generator,
            num_replicas=world_size,
            rank=rank,
            shuffle=True,
        )
    return WeightedRandomSampler(
        torch.as_tensor(weights, dtype=torch.double), num_samples, replacement=True, generator=generator
    )


def init_loader_worker(worker_id: int) -> None:
    """A training loader worker's start: one BLAS/OpenMP thread, then MONAI's per-worker seeding.

    PyTorch gives each worker one thread of its own, but NumPy's BLAS (the synthetic engine interpolates by matrix
    products) still starts a thread per core in every worker: 15 workers on a 16-core machine would run 240 BLAS
    threads, which spin against each other and starve the GPU.
    """
    threadpool_limits(1)
    monai_worker_init_fn(worker_id)


class SeededDraws(Sampler[tuple[int, int]]):
    """Each epoch's draws of a weighted sampler, paired with a seed for their augmentation; both fixed by the epoch.

    The draws and the augmentation of every drawn slice depend only on ``(seed, rank, epoch)`` and the draw's
    position: not on the number of loader workers or whether they persist, and not on where a run was
    interrupted, so ``--resume`` (mid-epoch too, with ``skip``) continues exactly as an uninterrupted run would.
    :class:`lung_tumor.cache.SliceDataset` takes the ``(index, seed)`` pairs and seeds its transform with them.

    Args:
        sampler: the sampler from :func:`build_sampler` (it draws from the ``generator`` set here).
        seed: the run's seed.
        rank: this process's rank (ranks augment differently).
    """

    def __init__(self, sampler: WeightedRandomSampler | DistributedWeightedRandomSampler, seed: int, rank: int = 0):
        self.sampler, self.seed, self.rank = sampler, int(seed), int(rank)
        self.epoch, self.skip = 1, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Draw the slices of ``epoch`` next, leaving out its first ``skip`` draws (already trained on)."""
        self.epoch, self.skip = int(epoch), int(skip)
        if isinstance(self.sampler, DistributedWeightedRandomSampler):
            self.sampler.set_epoch(epoch)  # reshuffles the ranks' shares

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        entropy = np.random.SeedSequence([self.seed, self.rank, self.epoch]).generate_state(1)[0]
        generator = torch.Generator().manual_seed(int(entropy))
        self.sampler.generator = generator
        indices = [int(i) for i in self.sampler]
        seeds = torch.randint(0, 2**31 - 1, (len(indices),), generator=generator).tolist()
        yield from zip(indices[self.skip :], seeds[self.skip :], strict=True)


class VolumeDataset(Dataset):
    """Whole cached volumes for validation: ``{"image": (1, Z, H, W), "label": (1, Z, H, W), "case": str}``.

    Args:
        cache: a ``lung_tumor.cache.SliceCache``.
        cases: labelled case ids.
    """

    def __init__(self, cache: Any, cases: Sequence[str]) -> None:
        self.cache = cache
        self.cases = list(cases)
        for case in self.cases:
            if cache.label(case) is None:
                raise LungTumorError(f"validation case {case} has no label in the slice cache")

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict[str, Any]:
        case = self.cases[index]
        image = torch.from_numpy(np.asarray(self.cache.image(case), dtype=np.float32))[None]
        label = torch.from_numpy(np.asarray(self.cache.label(case), dtype=np.float32))[None]
        return {"image": image, "label": label, "case": case}
