"""Acquisition of synthetic phantoms: header geometry, padding, rescale, partial volume, kernels, determinism."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_inference import main_predict, make_run

from lung_tumor.cache import SliceCache
from lung_tumor.cli import main
from lung_tumor.config import PreprocessConfig
from lung_tumor.data.acquisition import (
    KERNELS,
    ORIENTATIONS,
    PADDINGS,
    STORAGES,
    Acquisition,
    acquire,
    draw_acquisition,
)
from lung_tumor.data.msd import list_cases
from lung_tumor.data.synth import TRUTH_FILE, draw_case_acquisition, synthesize_case
from lung_tumor.data.verify import verify_dataset
from lung_tumor.io import save_nifti
from lung_tumor.preprocess import preprocess_dataset

SPACING = (1.0, 1.0, 1.0)
TUMOUR_CENTRE = np.array([33.3, 21.7, 23.4])  # grid mm, off-centre on every axis
TUMOUR_HU = 30.0
BASE = Acquisition(pixel_mm=0.8, matrix=(64, 56), slice_thickness_mm=2.0, slice_spacing_mm=2.0, noise_hu=10.0)


def phantom(shape: tuple[int, int, int] = (60, 50, 44), spacing: tuple[float, ...] = SPACING, radius: float = 6.0):
    """Air around a soft-tissue body holding a lung with one spherical tumour at TUMOUR_CENTRE."""
    x, y, z = (np.arange(n) * s for n, s in zip(shape, spacing, strict=True))
    gx, gy, gz = np.meshgrid(x, y, z, indexing="ij")
    cx, cy = x[-1] / 2, y[-1] / 2
    hu = np.full(shape, -1000.0, np.float32)
    hu[((gx - cx) / 28) ** 2 + ((gy - cy) / 23) ** 2 < 1] = 40.0
    hu[((gx - cx) / 22) ** 2 + ((gy - cy) / 17) ** 2 < 1] = -850.0
    tumour = (gx - TUMOUR_CENTRE[0]) ** 2 + (gy - TUMOUR_CENTRE[1]) ** 2 + (gz - TUMOUR_CENTRE[2]) ** 2 < radius**2
    hu[tumour] = TUMOUR_HU
    return hu, tumour.astype(np.uint8)


def acquired(acquisition: Acquisition, seed: int = 0, **phantom_args: object):
    hu, label = phantom(**phantom_args)
    spacing = phantom_args.get("spacing", SPACING)
    return acquire(hu, label, spacing, acquisition, np.random.default_rng(seed))


@pytest.mark.parametrize("orientation", ["LPS", "RAS", "LPI", "RAI"])
def test_header_has_the_requested_spacing_and_orientation(tmp_path: Path, orientation: str) -> None:
    scan = acquired(replace(BASE, slice_thickness_mm=3.0, slice_spacing_mm=1.5, orientation=orientation))
    path = save_nifti(scan.image, scan.affine, tmp_path / "ct.nii.gz", rescale=scan.rescale)
    image = nib.load(path)
    assert nib.aff2axcodes(image.affine) == tuple(orientation)
    np.testing.assert_allclose(image.header.get_zooms(), (0.8, 0.8, 1.5), rtol=1e-6)
    assert image.shape[:2] == (64, 56)


@pytest.mark.parametrize("padding", PADDINGS)
def test_padding_outside_the_scan_circle(padding: int | None) -> None:
    scan = acquired(replace(BASE, matrix=(64, 64), padding_hu=padding))
    hu = scan.hu
    corners = hu[[0, 0, -1, -1], [0, -1, 0, -1], :]
    centre = hu[32, 32, :]
    if padding is None:  # no circle: noisy air up to the corners
        assert corners.min() >= -1024 and corners.mean() == pytest.approx(-1000, abs=15) and corners.std() > 1
    else:
        assert (corners == padding).all()
        assert (centre != padding).all()
        assert (hu[1, 32, :] != padding).all()  # just inside the inscribed circle: air, not padding


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("padding", [-2048, 0])
def test_rescale_round_trips_to_the_same_hu(tmp_path: Path, storage: str, padding: int) -> None:
    reference = acquired(replace(BASE, storage="int16", padding_hu=padding), seed=3)
    scan = acquired(replace(BASE, storage=storage, padding_hu=padding), seed=3)
    path = save_nifti(scan.image, scan.affine, tmp_path / "ct.nii.gz", rescale=scan.rescale)
    image = nib.load(path)
    expected_dtype = {"int16": np.int16, "int16_rescale": np.int16, "uint16_rescale": np.uint16}[storage]
    assert image.get_data_dtype() == expected_dtype
    if storage == "int16":
        assert np.isnan(image.dataobj.slope) or image.dataobj.slope == 1
    else:
        intercept = -2048.0 if storage == "uint16_rescale" and padding < -1024 else -1024.0
        assert (image.dataobj.slope, image.dataobj.inter) == (1.0, intercept)
        assert not np.array_equal(np.asarray(image.dataobj.get_unscaled()), reference.image)
    np.testing.assert_array_equal(np.asarray(image.dataobj), reference.image)


def test_label_is_binary_and_on_the_painted_tumour() -> None:
    for orientation in ("LPS", "RAS", "LAI"):
        acquisition = replace(BASE, orientation=orientation, fov_shift_mm=(4.3, -3.1), isocentre_mm=(5.0, -7.0, 12.0))
        scan = acquired(acquisition)
        assert scan.label.dtype == np.uint8 and set(np.unique(scan.label)) == {0, 1}
        centroid_voxel = np.argwhere(scan.label).mean(axis=0)
        centroid_world = (scan.affine @ np.append(centroid_voxel, 1))[:3]
        painted_world = (scan.grid_to_world @ np.append(TUMOUR_CENTRE, 1))[:3]
        assert np.abs(centroid_world - painted_world).max() < 0.8  # within one voxel (0.8 x 0.8 x 2 mm)
        # the image agrees: tumour HU under the label, lung around it
        hu = scan.hu.astype(np.float32)
        assert np.median(hu[scan.label > 0]) == pytest.approx(TUMOUR_HU, abs=40)
        voxel_ml = 0.8 * 0.8 * 2.0 / 1000
        assert scan.label.sum() * voxel_ml == pytest.approx(4 / 3 * np.pi * 6**3 / 1000, rel=0.15)


def test_synthesized_case_lesions_match_their_painted_centres() -> None:
    acquisition = Acquisition(
        pixel_mm=3.2, matrix=(112, 96), slice_thickness_mm=5.0, slice_spacing_mm=4.0, orientation="RAS"
    )
    case = synthesize_case(1, seed=0, size="small", acquisition=acquisition)
    assert case.tumours and set(np.unique(case.label)) == {0, 1}
    assert case.label.sum() == sum(t["voxels"] for t in case.tumours)
    for tumour in case.tumours:
        offset = np.abs(np.array(tumour["centre_mm"]) - tumour["painted_centre_mm"])
        assert (offset < np.array(case.spacing)).all()
        assert tumour["volume_ml"] == pytest.approx(tumour["painted_volume_ml"], rel=0.3)


def test_same_seed_same_bytes_other_seed_differs() -> None:
    acquisition = draw_case_acquisition(2, seed=5, size="small", preset="varied")
    assert acquisition == draw_case_acquisition(2, seed=5, size="small", preset="varied")
    first = synthesize_case(2, seed=5, size="small", acquisition=acquisition)
    again = synthesize_case(2, seed=5, size="small", acquisition=acquisition)
    for a, b in ((first.image, again.image), (first.label, again.label), (first.affine, again.affine)):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    other = acquired(BASE, seed=1)
    assert not np.array_equal(other.image, acquired(BASE, seed=0).image)
    assert draw_case_acquisition(2, seed=6, size="small", preset="varied") != acquisition


@pytest.mark.parametrize("size", ["small", "full"])
def test_every_option_is_drawn(size: str) -> None:
    draws = [draw_acquisition(np.random.default_rng([11, k]), size) for k in range(60)]
    assert {d.kernel for d in draws} == set(KERNELS)
    assert {d.padding_hu for d in draws} == set(PADDINGS)
    assert {d.orientation for d in draws} == set(ORIENTATIONS)
    assert {d.storage for d in draws} == set(STORAGES)
    assert {d.slab_slices is None for d in draws} == {True, False}
    assert {abs(d.fov_shift_mm[0]) >= 40 for d in draws} == {True, False}  # cropped through the body, and not
    assert any(d.matrix[0] != d.matrix[1] for d in draws) and len({d.matrix for d in draws}) >= 4
    assert any(d.slice_spacing_mm < d.slice_thickness_mm for d in draws)  # overlapping slices
    pixels = [d.pixel_mm for d in draws]
    thickness = [d.slice_thickness_mm for d in draws]
    if size == "full":
        assert 0.5 <= min(pixels) < 0.6 and 0.9 < max(pixels) <= 1.0
        assert min(thickness) < 1 and max(thickness) == 5
        assert {(512, 512), (384, 384), (768, 768)} <= {d.matrix for d in draws}


def test_thick_slices_lower_the_contrast_of_a_small_object() -> None:
    peaks = {}
    for thickness in (1.0, 5.0):
        acquisition = replace(
            BASE,
            slice_thickness_mm=thickness,
            slice_spacing_mm=thickness,
            slab_slices=1,
            slab_centre=TUMOUR_CENTRE[2] / (59 * 0.5),  # the one slice through the nodule's centre
            noise_hu=0.0,
        )
        scan = acquired(acquisition, shape=(120, 100, 60), spacing=(0.5, 0.5, 0.5), radius=1.5)
        i, j = np.round((np.linalg.inv(scan.affine) @ scan.grid_to_world @ np.append(TUMOUR_CENTRE, 1))[:2]).astype(int)
        peaks[thickness] = float(scan.hu[i - 3 : i + 4, j - 3 : j + 4].max())
    assert peaks[1.0] > -200  # a 3 mm nodule (30 HU in -850 HU lung) in 1 mm slices: -30 HU measured
    assert peaks[5.0] < peaks[1.0] - 300  # averaged with the lung around it in 5 mm slices: -456 HU measured


def high_frequency_share(noise: np.ndarray) -> float:
    """Share of the 2D noise power above half the Nyquist frequency, over all slices."""
    power = np.abs(np.fft.fft2(noise - noise.mean(axis=(0, 1)), axes=(0, 1))) ** 2
    fx = np.fft.fftfreq(noise.shape[0])[:, None]
    fy = np.fft.fftfreq(noise.shape[1])[None, :]
    high = np.sqrt(fx**2 + fy**2) > 0.25
    return float(power[high].sum() / power.sum())


def test_sharp_kernel_has_more_high_frequency_noise_and_edge_overshoot() -> None:
    hu = np.zeros((60, 60, 12), np.float32)
    label = np.zeros(hu.shape, np.uint8)
    noise, edges = {}, {}
    for kernel in ("soft", "sharp"):
        acquisition = replace(BASE, matrix=(64, 64), kernel=kernel, noise_hu=20.0, padding_hu=None)
        water = acquire(hu, label, SPACING, acquisition, np.random.default_rng(0)).hu[16:48, 16:48].astype(float)
        noise[kernel] = high_frequency_share(water)
        assert water.std() == pytest.approx(20.0, rel=0.2)  # the drawn noise level is the image's
        step = np.where(np.arange(60)[:, None, None] < 30, -850.0, 40.0) * np.ones_like(hu)
        quiet = replace(acquisition, noise_hu=0.0)
        row = acquire(step.astype(np.float32), label, SPACING, quiet, np.random.default_rng(0)).hu
        edges[kernel] = float(row[:, 32, 2].max())
    assert noise["sharp"] > 2 * noise["soft"]
    assert edges["sharp"] > 40 + 30  # overshoot on the bright side of the edge
    assert edges["soft"] <= 40 + 1


def test_varied_dataset_passes_verify_preprocess_and_predict(tmp_path: Path) -> None:
    # seed 14: a LAS int16 chest, a 3-slice RAS uint16 slab with intercept, a 10-slice LAS rescaled int16 slab
    root = tmp_path / "data"
    arguments = ["--cases", "2", "--test-cases", "1", "--size", "small", "--seed", "14", "--acquisition", "varied"]
    assert main(["synth", "--out", str(root), *arguments]) == 0
    truth = json.loads((root / TRUTH_FILE).read_text())
    assert truth["acquisition"] == "varied"
    for number, (case_id, case) in enumerate(truth["cases"].items(), start=1):
        assert case["acquisition"] == draw_case_acquisition(number, 14, "small", "varied").to_dict()
        folder = "imagesTr" if case["split"] == "training" else "imagesTs"
        image = nib.load(root / folder / f"{case_id}.nii.gz")
        assert nib.aff2axcodes(image.affine) == tuple(case["acquisition"]["orientation"])
        assert list(image.shape) == case["shape"]
    assert [truth["cases"][c]["shape"][2] for c in ("lung_002", "lung_003")] == [3, 10]
    assert nib.load(root / "imagesTr" / "lung_002.nii.gz").get_data_dtype() == np.uint16
    assert verify_dataset(root) == 0

    config = PreprocessConfig(crop_from_slice=10, pixel_mm=3.0, image_size=112, num_workers=0)
    slices = SliceCache(preprocess_dataset(root, tmp_path / "cache", config, progress=False))
    assert slices.cases == ["lung_001", "lung_002"]
    assert slices.meta("lung_002")["num_slices"] == 3  # the slab is kept whole
    run = make_run(tmp_path / "run", pixel_mm=3.0, image_size=112)
    for case in list_cases(root, "training")[1:] + list_cases(root, "test"):
        written = nib.load(main_predict(run, case.image, tmp_path / "out"))
        source = nib.load(case.image)
        assert written.shape == source.shape
        np.testing.assert_allclose(written.affine, source.affine, atol=1e-4)
