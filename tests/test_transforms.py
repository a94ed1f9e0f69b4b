"""The preprocessing transforms keep image and label aligned in world coordinates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from lung_tumor.config import PreprocessConfig
from lung_tumor.errors import LungTumorError
from lung_tumor.transforms import CropFromSlice, CropFromSliced, ResampleInPlane, preprocess_transforms
from lung_tumor.transforms.pipeline import apply_transforms

LPS_AFFINE = np.array([[-0.7, 0, 0, 170.0], [0, -0.7, 0, 180.0], [0, 0, 2.5, -300.0], [0, 0, 0, 1]])
RAS_AFFINE = np.array([[0.8, 0, 0, -100.0], [0, 0.9, 0, -120.0], [0, 0, 1.25, 50.0], [0, 0, 0, 1]])


def world_centroid(mask: torch.Tensor, affine: np.ndarray) -> np.ndarray:
    voxels = np.argwhere(np.asarray(mask)[0] > 0.5).mean(axis=0)
    return (np.asarray(affine, dtype=float) @ np.r_[voxels, 1.0])[:3]


def phantom(shape: tuple[int, int, int], affine: np.ndarray, box: tuple[slice, ...]) -> dict[str, MetaTensor]:
    image = np.full(shape, -1000, dtype=np.int16)
    image[box] = 40
    label = np.zeros(shape, dtype=np.uint8)
    label[box] = 1
    meta_affine = torch.as_tensor(affine, dtype=torch.float64)
    return {
        "image": MetaTensor(torch.from_numpy(image)[None], affine=meta_affine.clone()),
        "label": MetaTensor(torch.from_numpy(label)[None], affine=meta_affine.clone()),
    }


@pytest.mark.parametrize("affine", [LPS_AFFINE, RAS_AFFINE], ids=["LPS", "RAS"])
def test_chain_keeps_tumour_centroid_in_world_mm(affine: np.ndarray) -> None:
    data = phantom((120, 110, 60), affine, (slice(40, 60), slice(50, 66), slice(35, 44)))
    truth = world_centroid(data["label"], affine)
    cfg = PreprocessConfig(crop_from_slice=30, pixel_mm=1.5, image_size=64, num_workers=0)
    out = apply_transforms(preprocess_transforms(cfg), data)
    assert out["image"].shape == (1, 64, 64, 30)
    assert out["label"].shape == out["image"].shape
    spacing = np.linalg.norm(out["label"].affine.numpy()[:3, :3], axis=0)
    assert spacing[0] == pytest.approx(1.5, rel=0.02) and spacing[2] == pytest.approx(affine[2, 2])
    moved = world_centroid(out["label"], out["label"].affine.numpy())
    assert np.all(np.abs(moved - truth) <= spacing)  # within one voxel
    # the image follows the label: tumour HU (40) maps inside the lung window
    image, label = out["image"][0].numpy(), out["label"][0].numpy()
    assert set(np.unique(label)) == {0.0, 1.0}
    assert image[label == 1].mean() == pytest.approx((40 + 1350) / 1500, abs=0.05)
    assert image[label == 0].min() == pytest.approx(350 / 1500)  # air (-1000 HU) and the padding
    # RAS: the last axis runs inferior -> superior
    assert out["image"].affine[2, 2] > 0


def test_chain_is_invertible_to_the_original_grid() -> None:
    data = phantom((120, 110, 40), LPS_AFFINE, (slice(40, 70), slice(50, 80), slice(10, 20)))
    cfg = PreprocessConfig(crop_from_slice=0, pixel_mm=1.4, image_size=96, num_workers=0)
    transforms = preprocess_transforms(cfg, keys=("image",), crop=False)
    out = apply_transforms(transforms, {"image": data["image"]})
    restored = transforms.inverse(out)["image"]
    assert restored.shape == data["image"].shape
    np.testing.assert_allclose(restored.affine.numpy(), LPS_AFFINE, atol=1e-4)
    original = (data["label"][0].numpy() > 0).astype(bool)
    recovered = restored[0].numpy() > 0.5  # the tumour (window value 0.93) survives the round trip
    dice = 2 * (original & recovered).sum() / (original.sum() + recovered.sum())
    assert dice > 0.9


def test_crop_from_slice_drops_the_lowest_slices_and_inverts() -> None:
    volume = MetaTensor(torch.arange(50, dtype=torch.float32).repeat(1, 4, 4, 1), affine=torch.eye(4))
    crop = CropFromSlice(30)
    cropped = crop(volume)
    assert cropped.shape == (1, 4, 4, 20)
    assert float(cropped[0, 0, 0, 0]) == 30.0
    assert cropped.affine[2, 3] == pytest.approx(30.0)  # the world position of the first kept slice
    assert crop.inverse(cropped).shape == (1, 4, 4, 50)


def test_thin_volume_is_kept_or_refused_as_configured(caplog: pytest.LogCaptureFixture) -> None:
    thin = MetaTensor(torch.zeros(1, 4, 4, 16), affine=torch.eye(4), meta={"filename_or_obj": "slab.nii.gz"})
    assert CropFromSlice(30, thin_volume="keep")(thin).shape == (1, 4, 4, 16)
    assert "slab.nii.gz: 16 axial slices" in caplog.text
    with pytest.raises(LungTumorError, match=r"slab.nii.gz: volume has 16 axial slices"):
        apply_transforms(CropFromSliced("image", 30, thin_volume="error"), {"image": thin})


def test_resample_in_plane_uses_physical_spacing() -> None:
    affine = torch.diag(torch.tensor([0.7, 0.9, 2.0, 1.0], dtype=torch.float64))
    volume = MetaTensor(torch.zeros(1, 300, 200, 7), affine=affine)
    out = ResampleInPlane(1.5)(volume)
    assert out.shape == (1, 140, 120, 7)  # 300 * 0.7 / 1.5, 200 * 0.9 / 1.5
    assert out.affine[2, 2] == pytest.approx(2.0)


def test_divide_mode_reproduces_the_recipe_scaling() -> None:
    data = phantom((32, 32, 4), RAS_AFFINE, (slice(10, 20), slice(10, 20), slice(0, 4)))
    cfg = PreprocessConfig(
        intensity={"mode": "divide", "divisor": 3071}, crop_from_slice=0, pixel_mm=0.8, image_size=40
    )
    out = apply_transforms(preprocess_transforms(cfg, keys=("image",)), {"image": data["image"]})
    assert float(out["image"].min()) == pytest.approx(-1000 / 3071, abs=1e-4)  # air, also the padding


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"pixel_mm": -1}, "pixel_mm"),
        ({"image_size": 7}, "image_size"),
        ({"crop_from_slice": -3}, "crop_from_slice"),
        ({"intensity": {"mode": "window", "window": [100, -100]}}, "window"),
        ({"intensity": {"mode": "gamma"}}, "intensity.mode"),
        ({"orientation": "SAR"}, "orientation"),
        ({"pixel_size": 1.0}, "unknown key"),
    ],
)
def test_bad_preprocess_values_are_refused(section: dict, message: str) -> None:
    with pytest.raises(LungTumorError, match=message):
        PreprocessConfig.from_dict(section)
