"""The real chest CT scans in ``../shared/real_ct/`` load and preprocess (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lung_tumor.config import PreprocessConfig
from lung_tumor.transforms.pipeline import apply_transforms, load_volume, preprocess_transforms

REAL_CT = Path(__file__).resolve().parents[1].parent / "shared" / "real_ct"
LIDC = REAL_CT / "lidc-idri-0001"
pytestmark = pytest.mark.skipif(not REAL_CT.is_dir(), reason="../shared/real_ct not present")


def test_dicom_series_and_its_nifti_give_the_same_array_and_geometry() -> None:
    from_dicom = load_volume(LIDC / "dicom")
    from_nifti = load_volume(LIDC / "ct.nii.gz")
    assert from_dicom.shape == from_nifti.shape == (1, 512, 512, 16)
    np.testing.assert_allclose(from_dicom.affine.numpy(), from_nifti.affine.numpy(), atol=1e-3)
    np.testing.assert_array_equal(from_dicom.numpy().astype(np.int32), from_nifti.numpy().astype(np.int32))
    assert int(from_nifti.min()) == -2048  # padding outside the scan circle


def test_nodule_mask_survives_preprocessing_aligned() -> None:
    image, label = load_volume(LIDC / "ct.nii.gz"), load_volume(LIDC / "nodule_mask_2readers.nii.gz", "label")
    affine = image.affine.numpy()
    truth = affine @ np.r_[np.argwhere(label[0].numpy() > 0).mean(axis=0), 1.0]
    assert int(label.sum()) == 6281
    cfg = PreprocessConfig(crop_from_slice=30, pixel_mm=1.0, image_size=320)  # the 16-slice slab is kept whole
    out = apply_transforms(preprocess_transforms(cfg), {"image": image, "label": label})
    assert out["image"].shape == (1, 320, 320, 16)
    moved = out["label"].affine.numpy() @ np.r_[np.argwhere(out["label"][0].numpy() > 0.5).mean(axis=0), 1.0]
    assert np.all(np.abs(moved - truth)[:3] <= [1.0, 1.0, 2.5])
    # volume kept within 5 %: 6281 voxels of 0.703 x 0.703 x 2.5 mm
    voxel_ml = 0.703125**2 * 2.5 / 1000
    assert float(out["label"].sum()) * 1.0 * 2.5 / 1000 == pytest.approx(6281 * voxel_ml, rel=0.05)
    assert float(out["image"].min()) == 0.0 and float(out["image"].max()) == 1.0


def test_thorax_without_tumour_is_ct_in_hu() -> None:
    volume = load_volume(REAL_CT / "thorax-no-tumour" / "ct.nii.gz")
    assert volume.shape == (1, 122, 102, 112)
    assert nib.aff2axcodes(volume.affine.numpy()) == ("L", "P", "S")
    lung_fraction = float(((volume > -950) & (volume < -650)).float().mean())
    assert lung_fraction > 0.1
