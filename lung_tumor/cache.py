"""Reading the slice cache: memory-mapped per-case arrays and a torch ``Dataset`` of axial slices.

The format is described in ``docs/slice_cache.md``; :mod:`lung_tumor.preprocess` writes it.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from lung_tumor.config import PreprocessConfig
from lung_tumor.errors import LungTumorError


@dataclass(frozen=True)
class SliceRecord:
    """One cached axial slice: its case, index in the cache, index in the uncropped volume, tumour pixels."""

    case: str
    slice: int
    source_slice: int
    tumour_pixels: int


class SliceCache:
    """A slice cache folder.

    Args:
        cache_dir: folder written by ``lung-tumor preprocess``.

    Raises:
        LungTumorError: the folder is missing or incomplete (no ``cache.json`` / ``slices.csv``).

    Examples::

        cache = SliceCache("runs/demo/cache")
        stack = cache.slice_stack("lung_001", 10, context=1)  # (3, H, W) float32
    """

    def __init__(self, cache_dir: str | Path) -> None:
        self.cache_dir = Path(cache_dir)
        summary = self.cache_dir / "cache.json"
        if not summary.is_file() or not (self.cache_dir / "slices.csv").is_file():
            raise LungTumorError("no slice cache here (run `lung-tumor preprocess` first)", self.cache_dir)
        content = json.loads(summary.read_text())
        self.preprocess = PreprocessConfig.from_dict(content["preprocess"])
        self.cases: list[str] = list(content["cases"])
        self._images: dict[str, np.ndarray] = {}
        self._labels: dict[str, np.ndarray | None] = {}

    @cached_property
    def records(self) -> list[SliceRecord]:
        """Every cached slice, in case order then slice order."""
        with open(self.cache_dir / "slices.csv", newline="") as handle:
            return [
                SliceRecord(row["case"], int(row["slice"]), int(row["source_slice"]), int(row["tumour_pixels"]))
                for row in csv.DictReader(handle)
            ]

    def case_dir(self, case: str) -> Path:
        if case not in self.cases:
            raise LungTumorError(f"case {case!r} is not in the cache", self.cache_dir)
        return self.cache_dir / "cases" / case

    def image(self, case: str) -> np.ndarray:
        """The case's slices, memory-mapped float16 of shape (Z, H, W)."""
        if case not in self._images:
            self._images[case] = np.load(self.case_dir(case) / "image.npy", mmap_mode="r")
        return self._images[case]

    def label(self, case: str) -> np.ndarray | None:
        """The case's tumour mask, memory-mapped uint8 (Z, H, W), or None for an unlabelled case."""
        if case not in self._labels:
            path = self.case_dir(case) / "label.npy"
            self._labels[case] = np.load(path, mmap_mode="r") if path.is_file() else None
        return self._labels[case]

    def meta(self, case: str) -> dict[str, Any]:
        """Geometry and provenance of the case (see ``docs/slice_cache.md``)."""
        return json.loads((self.case_dir(case) / "meta.json").read_text())

    def slice_stack(self, case: str, z: int, context: int = 0) -> np.ndarray:
        """Slice ``z`` with ``context`` neighbours on each side as channels, float32 (2*context+1, H, W).

        Neighbours beyond the first or last slice repeat the edge slice.
        """
        volume = self.image(case)
        if context == 0:
            return volume[z][None].astype(np.float32)
        index = np.clip(np.arange(z - context, z + context + 1), 0, volume.shape[0] - 1)
        return volume[index].astype(np.float32)

    def __getstate__(self) -> dict[str, Any]:
        # memory maps are reopened in each data-loader worker
        state = dict(self.__dict__)
        state["_images"], state["_labels"] = {}, {}
        return state


class SliceDataset(Dataset):
    """Axial slices of some cases of a :class:`SliceCache` as dictionaries for MONAI transforms.

    Each item is ``{"image": float32 (2*context+1, H, W), "label": float32 (1, H, W), "case": str,
    "slice": int}``; ``transform`` (e.g. MONAI random dictionary transforms) is applied to it.

    Args:
        cache: the slice cache.
        cases: case ids to serve (all of the cache's by default).
        context: neighbouring slices on each side given as extra channels (2.5D).
        transform: callable applied to each item.
    """

    def __init__(
        self,
        cache: SliceCache,
        cases: list[str] | None = None,
        context: int = 0,
        transform: Any = None,
    ) -> None:
        if context < 0:
            raise LungTumorError(f"context slices must be >= 0, got {context}")
        wanted = set(cache.cases if cases is None else cases)
        missing = sorted(wanted - set(cache.cases))
        if missing:
            raise LungTumorError(f"case(s) {missing} are not in the cache", cache.cache_dir)
        self.cache = cache
        self.context = context
        self.transform = transform
        self.records = [r for r in cache.records if r.case in wanted]

    def __len__(self) -> int:
        return len(self.records)

    @property
    def tumour_flags(self) -> np.ndarray:
        """Whether each item's slice holds tumour (for weighted sampling)."""
        return np.array([r.tumour_pixels > 0 for r in self.records], dtype=bool)

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any]:
        """Item ``index``; given ``(index, seed)`` (``lung_tumor.training.data.SeededDraws``), the transform's
        random state is first set from ``seed``, so the item's augmentation depends on the seed alone."""
        seed = None
        if isinstance(index, tuple):
            index, seed = index
        record = self.records[index]
        label = self.cache.label(record.case)
        if label is None:
            raise LungTumorError(f"case {record.case!r} has no label in the cache", self.cache.cache_dir)
        item = {
            "image": self.cache.slice_stack(record.case, record.slice, self.context),
            "label": label[record.slice][None].astype(np.float32),
            "case": record.case,
            "slice": record.slice,
        }
        if self.transform is None:
            return item
        if seed is not None and hasattr(self.transform, "set_random_state"):
            self.transform.set_random_state(seed=seed)
        return self.transform(item)
