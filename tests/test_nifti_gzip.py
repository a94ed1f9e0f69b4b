"""Compressed NIfTI through ISA-L: the same voxels as nibabel reads, files every reader takes, equal bytes."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lung_tumor.errors import LungTumorError
from lung_tumor.io import save_nifti
from lung_tumor.nifti_gzip import read_voxels, write_nifti_image
from lung_tumor.transforms.pipeline import load_volume

AFFINE = np.diag([0.7, 0.8, 2.5, 1.0])


def stored_volume(dtype: type) -> np.ndarray:
    values = np.random.default_rng(3).integers(-1000, 1000, (33, 21, 9))
    return (values if np.dtype(dtype).kind != "u" else np.abs(values) % 2).astype(dtype)


@pytest.mark.parametrize(
    ("dtype", "rescale", "name"),
    [
        (np.int16, None, "ct.nii.gz"),
        (np.int16, (0.5, -10.0), "scaled.nii.gz"),  # nibabel moves the scaling from the header into its proxy
        (np.uint8, None, "mask.nii.gz"),
        (np.float32, None, "probability.nii.gz"),
        (np.int16, (2.0, 0.0), "plain.nii"),
    ],
)
def test_voxels_read_through_isal_equal_nibabels(tmp_path: Path, dtype: type, rescale: tuple | None, name: str) -> None:
    path = save_nifti(stored_volume(dtype), AFFINE, tmp_path / name, rescale=rescale)
    image = nib.load(path)
    expected = np.asanyarray(image.dataobj)
    voxels = read_voxels(image, path)
    assert voxels.dtype == expected.dtype and voxels.shape == expected.shape
    assert np.array_equal(voxels, expected)
    assert voxels.flags.f_contiguous  # the file's memory order, as nibabel gives it
    if rescale is not None:
        assert voxels.dtype.kind == "f" and not np.array_equal(voxels, stored_volume(dtype))
    loaded = load_volume(path, "label" if dtype == np.uint8 else "image")  # the shared loader takes this path
    assert np.array_equal(loaded.numpy()[0], expected.astype(loaded.numpy().dtype))


def test_a_written_mask_is_plain_gzip_with_equal_bytes_for_equal_images(tmp_path: Path) -> None:
    mask = stored_volume(np.uint8)
    first = save_nifti(mask, AFFINE, tmp_path / "a.nii.gz", description="lung_tumor test")
    second = save_nifti(mask, AFFINE, tmp_path / "b.nii.gz", description="lung_tumor test")
    raw = first.read_bytes()
    assert raw == second.read_bytes()
    assert raw[3] == 0 and raw[4:8] == b"\0\0\0\0"  # no file name (flag FNAME unset), modification time 0
    decoded = nib.Nifti1Image.from_bytes(gzip.decompress(raw))  # zlib reads it
    assert np.array_equal(np.asanyarray(decoded.dataobj), mask)
    assert np.allclose(decoded.affine, AFFINE)
    assert decoded.header["descrip"].item() == b"lung_tumor test"


def test_an_uncompressed_name_is_written_uncompressed(tmp_path: Path) -> None:
    image = nib.Nifti1Image(stored_volume(np.int16), AFFINE)
    write_nifti_image(image, tmp_path / "x.nii")
    assert (tmp_path / "x.nii").read_bytes()[:2] != b"\x1f\x8b"
    assert np.array_equal(np.asanyarray(nib.load(tmp_path / "x.nii").dataobj), stored_volume(np.int16))


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_a_damaged_gzip_is_one_error_naming_the_file(tmp_path: Path, damage: str) -> None:
    path = save_nifti(stored_volume(np.int16), AFFINE, tmp_path / "scan.nii.gz")
    raw = bytearray(path.read_bytes())
    if damage == "truncated":
        raw = raw[: len(raw) // 2]
    else:
        raw[len(raw) // 2 : len(raw) // 2 + 64] = bytes(64)
    path.write_bytes(bytes(raw))
    with pytest.raises(LungTumorError, match="cannot read image") as caught:
        load_volume(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
