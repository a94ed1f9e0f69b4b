"""Dictionary versions of :mod:`lung_tumor.transforms.array`, applying one transform to several keys."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import Cropd, MapTransform, RandomizableTransform
from monai.transforms.inverse import InvertibleTransform
from monai.utils import ensure_tuple_rep

from lung_tumor.transforms.array import (
    CropFromSlice,
    InsertTumour,
    RandInsertTumour,
    ResampleInPlane,
    WindowIntensity,
    empty_label_like,
)
from lung_tumor.transforms.tumour_insertion import GROUND_GLASS_HU, SOLID_HU, TumourSpec


class CropFromSliced(Cropd):
    """Dictionary version of :class:`~lung_tumor.transforms.array.CropFromSlice`.

    The number of slices is read from the first key, so image and label are cropped alike.

    Args:
        keys: keys of the items to crop.
        first_slice: index of the first slice kept.
        thin_volume: ``keep`` or ``error`` for a volume with no more than ``first_slice`` slices.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        first_slice: int,
        thin_volume: str = "keep",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, cropper=CropFromSlice(first_slice, thin_volume), allow_missing_keys=allow_missing_keys)


class ResampleInPlaned(MapTransform, InvertibleTransform):
    """Dictionary version of :class:`~lung_tumor.transforms.array.ResampleInPlane`.

    Args:
        keys: keys of the items to resample.
        pixel_mm: target in-plane pixel size in millimetres.
        mode: interpolation mode per key, e.g. ``("bilinear", "nearest-exact")`` for image and label.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        pixel_mm: float,
        mode: Sequence[str] | str = "bilinear",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        modes = ensure_tuple_rep(mode, len(self.keys))
        self.resamplers = {key: ResampleInPlane(pixel_mm, mode=m) for key, m in zip(self.keys, modes, strict=True)}

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.resamplers[key](d[key])
        return d

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.resamplers[key].inverse(d[key])
        return d


class WindowIntensityd(MapTransform):
    """Dictionary version of :class:`~lung_tumor.transforms.array.WindowIntensity`.

    Args:
        keys: keys of the images to scale.
        low: intensity mapped to 0.
        high: intensity mapped to 1.
        clip: clip the result to [0, 1].
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    def __init__(
        self, keys: KeysCollection, low: float, high: float, clip: bool = True, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.window = WindowIntensity(low, high, clip)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.window(d[key])
        return d


class InsertTumourd(MapTransform):
    """Dictionary version of :class:`~lung_tumor.transforms.array.InsertTumour`.

    Args:
        keys: the CT image(s) to paint (HU, channel-first); the same tumours go into each.
        tumours: one tumour or several (``TumourSpec`` or a mapping of its fields).
        label_key: the label the tumour voxels are ORed into (created as uint8 when absent).
        lung_key: an optional lung mask on the image grid; the lung is found from the HU without it.
        location: ``inside``, ``pleural`` or ``any`` (see ``InsertTumour``).
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        tumours: TumourSpec | Mapping | Sequence[TumourSpec | Mapping],
        label_key: str = "label",
        lung_key: str | None = None,
        location: str = "any",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.inserter = InsertTumour(tumours, location)
        self.label_key, self.lung_key = label_key, lung_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        label, lung = d.get(self.label_key), d.get(self.lung_key) if self.lung_key else None
        for key in self.key_iterator(d):
            d[key], d[self.label_key] = self.inserter(d[key], label, lung)
        return d


class RandInsertTumourd(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`~lung_tumor.transforms.array.RandInsertTumour`.

    The tumours are drawn once per call on the first image key and inserted into every image key;
    their voxels are ORed into ``label_key`` (created as uint8 when absent, empty when nothing is
    inserted).

    Args:
        keys: the CT image(s) to paint (HU, channel-first).
        label_key: the label the tumour voxels are ORed into.
        lung_key: an optional lung mask on the image grid; the lung is found from the HU without it.
        prob: probability of inserting anything.
        count: number of tumours, or an inclusive (min, max) range.
        diameter_mm: (min, max) equivalent diameter in mm.
        location: ``inside``, ``pleural`` or ``any``.
        hu_range: (min, max) mean HU of solid tumours.
        ground_glass_prob: probability that a tumour is ground glass.
        ground_glass_hu: (min, max) mean HU of ground-glass tumours.
        max_tries: placements tried per tumour before giving up.
        allow_missing_keys: don't raise an exception if a key is missing.

    Examples::

        train = Compose([
            LoadImaged(["image", "label"], ensure_channel_first=True, dtype=None),
            RandInsertTumourd("image", label_key="label", prob=0.5, diameter_mm=(5, 30)),
            Orientationd(["image", "label"], axcodes="RAS"),
        ])
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str = "label",
        lung_key: str | None = None,
        prob: float = 1.0,
        count: int | Sequence[int] = 1,
        diameter_mm: Sequence[float] = (5.0, 30.0),
        location: str = "any",
        hu_range: Sequence[float] = SOLID_HU,
        ground_glass_prob: float = 0.0,
        ground_glass_hu: Sequence[float] = GROUND_GLASS_HU,
        max_tries: int = 50,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.inserter = RandInsertTumour(
            1.0, count, diameter_mm, location, hu_range, ground_glass_prob, ground_glass_hu, max_tries
        )
        self.label_key, self.lung_key = label_key, lung_key

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandInsertTumourd:
        super().set_random_state(seed, state)
        self.inserter.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        self.randomize(None)
        label, lung = d.get(self.label_key), d.get(self.lung_key) if self.lung_key else None
        if not self._do_transform:
            self.inserter.tumours = []
            if label is None:
                d[self.label_key] = empty_label_like(d[keys[0]])
            return d
        self.inserter.randomize()  # its prob is 1: it draws the count, then places and paints
        d[keys[0]], d[self.label_key] = self.inserter(d[keys[0]], label, lung, randomize=False)
        if len(keys) > 1 and self.inserter.tumours:
            insert = InsertTumour(self.inserter.tumours, self.inserter.location)
            for key in keys[1:]:
                d[key], _ = insert(d[key], label, lung)
        return d
