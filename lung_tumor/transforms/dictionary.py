"""Dictionary versions of :mod:`lung_tumor.transforms.array`, applying one transform to several keys."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import Cropd, MapTransform
from monai.transforms.inverse import InvertibleTransform
from monai.utils import ensure_tuple_rep

from lung_tumor.transforms.array import CropFromSlice, ResampleInPlane, WindowIntensity


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
