"""Overlay, montage and training-curve PNGs: size, contour colours, radiological orientation, errors."""

from __future__ import annotations

from pathlib import Path

import matplotlib.colors
import matplotlib.image
import nibabel as nib
import numpy as np
import pytest

from lung_tumor.errors import LungTumorError
from lung_tumor.visualize import (
    DPI,
    PREDICTION_COLOUR,
    TRUTH_COLOUR,
    montage_figure,
    overlay_figure,
    visualize_command,
)

RAS = np.diag([0.8, 0.8, 2.0, 1.0])


def phantom(shape: tuple[int, int, int] = (96, 80, 16)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CT (body with lungs), a ground-truth ball on the patient's left (small i in RAS) and a shifted prediction."""
    grid = np.indices(shape, dtype=float)
    body = ((grid[0] - 48) / 44) ** 2 + ((grid[1] - 40) / 34) ** 2 < 1
    image = np.where(body, 40.0, -1000.0)
    image[body & (((grid[0] - 48) / 36) ** 2 + ((grid[1] - 40) / 26) ** 2 < 1)] = -850.0
    truth = ((grid[0] - 24) ** 2 + (grid[1] - 40) ** 2 + ((grid[2] - 8) * 2.5) ** 2) <= 64
    image[truth] = 30.0
    prediction = np.roll(truth, 2, axis=1)
    return image, truth, prediction


def colour_pixels(png: Path, colour: str, tolerance: float = 0.08) -> np.ndarray:
    """(row, column) of the pixels within ``tolerance`` of ``colour`` in every RGB channel."""
    pixels = matplotlib.image.imread(png)[..., :3]
    target = np.array(matplotlib.colors.to_rgb(colour))
    return np.argwhere(np.all(np.abs(pixels - target) <= tolerance, axis=-1))


def test_overlay_has_expected_size_and_both_contours(tmp_path: Path) -> None:
    image, truth, prediction = phantom()
    path = overlay_figure(image, RAS, truth, prediction, tmp_path / "case_overlay.png", title="case")
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[:2] == (600, 1500)
    assert len(colour_pixels(path, TRUTH_COLOUR)) > 50
    assert len(colour_pixels(path, PREDICTION_COLOUR)) > 50
    assert pixels[..., :3].std() > 0.1


def test_radiological_convention_is_independent_of_storage_order(tmp_path: Path) -> None:
    image, truth, prediction = phantom()
    ras = overlay_figure(image, RAS, truth, None, tmp_path / "ras.png")
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = image.shape[0] - 1, image.shape[1] - 1
    lps_affine = RAS @ flip
    lps = overlay_figure(image[::-1, ::-1], lps_affine, truth[::-1, ::-1], None, tmp_path / "lps.png")
    assert np.array_equal(matplotlib.image.imread(ras), matplotlib.image.imread(lps))
    # the ball is on the patient's left: in radiological view, the right half of the first panel (x 0..500)
    columns = colour_pixels(ras, TRUTH_COLOUR)[:, 1]
    first_panel = columns[columns < 500]
    assert first_panel.size and first_panel.mean() > 250


def test_montage_size_and_empty_case(tmp_path: Path) -> None:
    image, truth, prediction = phantom()
    path = montage_figure(image, RAS, truth, prediction, tmp_path / "montage.png")
    slices = np.flatnonzero(truth.any(axis=(0, 1))).size  # the montage follows the ground truth
    rows = -(-min(slices, 12) // 4)
    assert matplotlib.image.imread(path).shape[:2] == (round((4.2 * rows + 0.9) * DPI), 1600)
    assert len(colour_pixels(path, TRUTH_COLOUR)) > 50 and len(colour_pixels(path, PREDICTION_COLOUR)) > 50
    empty = np.zeros_like(truth)
    assert montage_figure(image, RAS, empty, empty, tmp_path / "none.png") is None
    assert overlay_figure(image, RAS, empty, empty, tmp_path / "none_overlay.png").stat().st_size > 0


def write_tensorboard(run: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run / "tensorboard"))
    for epoch in range(5):
        writer.add_scalar("train/loss", 1.0 / (epoch + 1), epoch)
        writer.add_scalar("val/dice", 0.1 * epoch, epoch)
        writer.add_scalar("lr", 1e-3 * 0.5**epoch, epoch)
    writer.close()


def test_visualize_command_writes_overlay_montage_and_curves(tmp_path: Path) -> None:
    image, truth, prediction = phantom()
    for name, array in (("ct", image.astype(np.int16)), ("label", truth), ("prediction", prediction)):
        nib.save(nib.Nifti1Image(array.astype(np.int16), RAS), tmp_path / f"{name}.nii.gz")
    run = tmp_path / "run"
    write_tensorboard(run)
    written = visualize_command(
        image=tmp_path / "ct.nii.gz",
        label=tmp_path / "label.nii.gz",
        prediction=tmp_path / "prediction.nii.gz",
        run=run,
        output=tmp_path / "out",
    )
    assert [p.name for p in written] == ["ct_overlay.png", "ct_montage.png", "training_curves.png"]
    assert all(p.stat().st_size > 10_000 for p in written)
    curves = matplotlib.image.imread(written[-1])
    assert curves.shape[:2] == (400, 1500)  # three tags: one row of three panels
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in written)


def test_visualize_command_errors(tmp_path: Path) -> None:
    with pytest.raises(LungTumorError, match="nothing to draw"):
        visualize_command(output=tmp_path)
    with pytest.raises(LungTumorError, match="--image"):
        visualize_command(label=tmp_path / "label.nii.gz", output=tmp_path)
    with pytest.raises(LungTumorError, match="not found"):
        visualize_command(image=tmp_path / "missing.nii.gz", output=tmp_path)
    with pytest.raises(LungTumorError, match="tensorboard"):
        visualize_command(run=tmp_path, output=tmp_path)
    image, truth, _ = phantom()
    nib.save(nib.Nifti1Image(image.astype(np.int16), RAS), tmp_path / "ct.nii.gz")
    nib.save(nib.Nifti1Image(truth[..., :-1].astype(np.uint8), RAS), tmp_path / "label.nii.gz")
    with pytest.raises(LungTumorError, match="label shape .* differs"):
        visualize_command(image=tmp_path / "ct.nii.gz", label=tmp_path / "label.nii.gz", output=tmp_path / "o")
    shifted = RAS.copy()
    shifted[0, 3] = 2.0
    nib.save(nib.Nifti1Image(truth.astype(np.uint8), shifted), tmp_path / "label.nii.gz")
    with pytest.raises(LungTumorError, match="affine differs"):
        visualize_command(image=tmp_path / "ct.nii.gz", label=tmp_path / "label.nii.gz", output=tmp_path / "o")
    nib.save(nib.Nifti1Image(truth.astype(np.uint8) * 2, RAS), tmp_path / "label.nii.gz")
    with pytest.raises(LungTumorError, match=r"values must be 0 or 1, found \[2.0\]"):
        visualize_command(image=tmp_path / "ct.nii.gz", label=tmp_path / "label.nii.gz", output=tmp_path / "o")
    nib.save(nib.Nifti1Image(np.clip(image, 0, 1).astype(np.float32), RAS), tmp_path / "ct01.nii.gz")
    with pytest.raises(LungTumorError, match="not CT"):
        visualize_command(image=tmp_path / "ct01.nii.gz", output=tmp_path / "o")
    assert not (tmp_path / "o").exists()
