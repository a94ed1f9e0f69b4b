"""``lung-tumor predict``: masks on the input's grid for any orientation, reports, and bad input."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from lung_tumor.cli import main
from lung_tumor.inference import Predictor, keep_near_lungs, remove_small_lesions

REAL_CT = Path(__file__).resolve().parents[1].parent / "shared" / "real_ct"
SOFT_TISSUE_HU = -75.0  # the test network marks every voxel brighter than this
WINDOW = (-1350.0, 150.0)


def make_run(folder: Path, pixel_mm: float = 2.0, image_size: int = 128, context: int = 0) -> Path:
    """A run whose 'network' is a 1x1 convolution thresholding intensity at SOFT_TISSUE_HU: its output is known."""
    threshold = (SOFT_TISSUE_HU - WINDOW[0]) / (WINDOW[1] - WINDOW[0])
    channels = 2 * context + 1
    network = torch.nn.Conv2d(channels, 1, kernel_size=1)
    with torch.no_grad():
        network.weight.zero_()
        network.weight[0, context] = 200.0
        network.bias.fill_(-200.0 * threshold)
    (folder / "checkpoints").mkdir(parents=True)
    torch.save({"network": network.state_dict()}, folder / "checkpoints" / "best.pt")
    config = {
        "preprocess": {"crop_from_slice": 30, "pixel_mm": pixel_mm, "image_size": image_size},
        "context_slices": context,
        "network_def": {"_target_": "torch.nn.Conv2d", "in_channels": channels, "out_channels": 1, "kernel_size": 1},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def chest(shape: tuple[int, int, int], dtype: type = np.int16) -> np.ndarray:
    """Air, a body ellipse of fat with two lungs, and a soft-tissue nodule in the left lung."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    image = np.full(shape, -1000.0)
    image[(x / 0.9) ** 2 + (y / 0.7) ** 2 < 1] = -100.0
    lungs = ((np.abs(x) - 0.45) / 0.3) ** 2 + (y / 0.5) ** 2 < 1
    image[lungs] = -850.0
    image[(x - 0.45) ** 2 / 0.04 + y**2 / 0.04 + z**2 / 0.2 < 1] = 30.0
    return image.astype(dtype)


def rotation_z(degrees: float) -> np.ndarray:
    angle = np.deg2rad(degrees)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    return rotation


ORIENTATIONS = {
    "LPS": np.array([[-0.8, 0, 0, 100.0], [0, -0.8, 0, 90.0], [0, 0, 2.5, -60.0], [0, 0, 0, 1]]),
    "RAS": np.array([[0.8, 0, 0, -100.0], [0, 0.8, 0, -90.0], [0, 0, 2.5, -60.0], [0, 0, 0, 1]]),
    "tilted": rotation_z(12) @ np.array([[0.7, 0, 0, -90.0], [0, 0.9, 0, -90.0], [0, 0, 3.0, 0], [0, 0, 0, 1]]),
    "PIR": np.array([[0, 0, 2.5, -60.0], [-0.8, 0, 0, 100.0], [0, -0.8, 0, 90.0], [0, 0, 0, 1]]),
}


def save(array: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.mark.parametrize("name", list(ORIENTATIONS))
def test_mask_has_the_input_grid_for_every_orientation(tmp_path: Path, name: str) -> None:
    run = make_run(tmp_path / "run")
    affine = ORIENTATIONS[name]
    image = chest((160, 140, 24))
    if name == "PIR":  # the same anatomy stored with axes permuted
        image = np.ascontiguousarray(image.transpose(2, 0, 1))  # 2.5 mm along R: anisotropic in-plane
    source = save(image, affine, tmp_path / "ct.nii.gz")
    written = main_predict(run, source, tmp_path / "out")
    mask_image = nib.load(written)
    assert mask_image.shape == image.shape and mask_image.get_data_dtype() == np.uint8
    np.testing.assert_allclose(mask_image.affine, affine, atol=1e-4)
    predicted = np.asarray(mask_image.dataobj) > 0
    assert dice(predicted, image > SOFT_TISSUE_HU) > 0.85  # 0.90 to 0.95 measured; resampling blurs the edge


def main_predict(run: Path, source: Path, out: Path, *extra: str) -> Path:
    assert main(["predict", "--run", str(run), "--input", str(source), "--output", str(out), *extra]) == 0
    return out / source.name


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_anisotropic_float_and_padded_input(tmp_path: Path, dtype: type) -> None:
    run = make_run(tmp_path / "run", pixel_mm=1.5, image_size=96)
    image = chest((150, 120, 20), dtype)
    image[:8] = -2048  # padding outside the scan circle
    affine = np.diag([0.6, 1.1, 4.0, 1.0])
    source = save(image, affine, tmp_path / "ct.nii.gz")
    predicted = np.asarray(nib.load(main_predict(run, source, tmp_path / "out")).dataobj) > 0
    assert dice(predicted, image > SOFT_TISSUE_HU) > 0.9


def test_thin_volume_is_predicted_on_every_slice(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    image = chest((120, 120, 6))
    image[50:60, 50:60, :] = 40  # soft tissue on every slice
    source = save(image, ORIENTATIONS["RAS"], tmp_path / "ct.nii.gz")
    predicted = np.asarray(nib.load(main_predict(run, source, tmp_path / "out")).dataobj) > 0
    assert all(predicted[..., k].any() for k in range(6))  # crop_from_slice=30 does not apply to prediction
    assert dice(predicted, image > SOFT_TISSUE_HU) > 0.85


def test_report_and_probabilities_are_written(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    image = chest((160, 140, 24))
    source = save(image, ORIENTATIONS["LPS"], tmp_path / "lung_007.nii.gz")
    main_predict(run, source, tmp_path / "out", "--probabilities")
    probability = nib.load(tmp_path / "out" / "lung_007_probability.nii.gz")
    assert probability.get_data_dtype() == np.float32 and probability.shape == image.shape
    assert (tmp_path / "out" / "lung_007_report.json").is_file()
    text = (tmp_path / "out" / "lung_007_report.txt").read_text()
    assert "total tumour volume" in text


def test_small_lesions_are_removed_by_volume() -> None:
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[2:4, 2:4, 2:4] = 1  # 8 voxels of 2 mm3 = 16 mm3
    mask[10:15, 10:15, 10:15] = 1  # 250 mm3
    kept = remove_small_lesions(mask, (1.0, 1.0, 2.0), min_mm3=20.0)
    assert kept.sum() == 125 and kept[2, 2, 2] == 0


def test_lung_filter_drops_lesions_far_from_the_lungs() -> None:
    image = chest((160, 140, 24))
    affine = ORIENTATIONS["RAS"]
    mask = np.zeros(image.shape, np.uint8)
    mask[image == 30] = 1  # the nodule in the left lung
    mask[75:85, 2:6, 10:14] = 1  # something at the back of the body wall, far from the lungs
    kept = keep_near_lungs(mask, image, affine)
    assert kept[image == 30].all() and kept[75:85, 2:6, 10:14].sum() == 0


@pytest.mark.skipif(not REAL_CT.is_dir(), reason="../shared/real_ct not present")
def test_real_dicom_and_nifti_give_the_same_mask_on_the_input_grid(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", pixel_mm=1.4, image_size=256)
    predictor = Predictor(run)
    from_nifti = predictor.predict_file(REAL_CT / "lidc-idri-0001" / "ct.nii.gz")
    from_dicom = predictor.predict_file(REAL_CT / "lidc-idri-0001" / "dicom")
    np.testing.assert_array_equal(from_nifti.mask, from_dicom.mask)
    np.testing.assert_allclose(from_nifti.affine, nib.load(REAL_CT / "lidc-idri-0001" / "ct.nii.gz").affine, atol=1e-4)
    assert from_nifti.mask.shape == (512, 512, 16)


@pytest.mark.skipif(not REAL_CT.is_dir(), reason="../shared/real_ct not present")
def test_real_thorax_nothing_far_outside_the_lungs(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", pixel_mm=1.5, image_size=128)
    result = Predictor(run, lung_mask=True).predict_file(REAL_CT / "thorax-no-tumour" / "ct.nii.gz")
    from scipy import ndimage

    from lung_tumor.report import lung_mask

    lungs = lung_mask(result.image_hu, result.affine)
    assert lungs.sum() > 0.05 * lungs.size
    outside_mm = ndimage.distance_transform_edt(~lungs, sampling=result.spacing)
    assert result.mask.sum() > 0  # the soft-tissue detector marks vessels and the mediastinum near the lungs
    # every kept lesion touches the 10 mm margin; nothing lies in the far body wall or outside the body
    assert float(np.percentile(outside_mm[result.mask > 0], 50)) < 20.0


def write_bad(kind: str, tmp_path: Path) -> Path:
    path = tmp_path / "bad.nii.gz"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        save(chest((64, 64, 8)), ORIENTATIONS["RAS"], path)
        path.write_bytes(path.read_bytes()[:3000])
    elif kind == "corrupt":
        with gzip.open(path, "wb") as handle:
            handle.write(b"\x00" * 400)
    elif kind == "2d":
        save(np.zeros((64, 64), np.int16), np.eye(4), path)
    elif kind == "4d":
        save(np.zeros((32, 32, 8, 3), np.int16), np.eye(4), path)
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("empty", "cannot read image"),
        ("truncated", "cannot read image"),
        ("corrupt", "cannot read image"),
        ("2d", "image must be a single 3D volume"),
        ("4d", "image must be a single 3D volume, got shape (32, 32, 8, 3)"),
    ],
)
def test_bad_input_is_one_line_error_and_no_file(
    tmp_path: Path, capsys: pytest.CaptureFixture, kind: str, message: str
) -> None:
    run = make_run(tmp_path / "run")
    source = write_bad(kind, tmp_path)
    out = tmp_path / "out"
    assert main(["predict", "--run", str(run), "--input", str(source), "--output", str(out)]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith(f"lung-tumor: error: {source}: {message}")
    assert not out.exists() or not any(out.iterdir())


def test_run_without_checkpoint_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = make_run(tmp_path / "run")
    (run / "checkpoints" / "best.pt").unlink()
    source = save(chest((64, 64, 8)), ORIENTATIONS["RAS"], tmp_path / "ct.nii.gz")
    assert main(["predict", "--run", str(run), "--input", str(source), "--output", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "best.pt: no best checkpoint" in error
    assert not (tmp_path / "out").exists()
