"""``lung-tumor predict`` through the command line: DICOM series, folders of NIfTI files, and every option.

Masks are checked where they land in world millimetres (see ``test_geometry``), and each option by its
effect on a phantom with four lesions: a bright one and a dim one in the lungs, a small one in the lungs,
and one in the posterior body wall, far from the lungs.
"""

from __future__ import annotations

import json
from pathlib import Path

import itk
import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from test_geometry import (
    ellipsoid,
    expected_offset,
    make_shift_run,
    phantom,
    predict_cli,
    read_mask,
    world_centroid,
)
from test_heap import batches_keeping_freed_memory
from test_inference import ORIENTATIONS

LESIONS = {  # centre (fraction of each array axis of a RAS volume), radius in mm, HU
    "bright": ((0.75, 0.6, 0.6), 8.0, 30.0),
    "dim": ((0.25, 0.45, 0.45), 7.0, -40.0),
    "small": ((0.22, 0.7, 0.55), 3.0, 30.0),
    "wall": ((0.5, 0.17, 0.5), 4.0, 30.0),
}
SHAPE = (160, 140, 24)


def four_lesions() -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """The RAS phantom of ``test_geometry`` with the lesions of :data:`LESIONS` instead of its own."""
    affine = ORIENTATIONS["RAS"]
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    image, own = phantom(SHAPE, affine)
    image[own] = -850  # back to lung
    masks = {}
    for name, (at, radius, hu) in LESIONS.items():
        masks[name] = ellipsoid(SHAPE, spacing, tuple(f * (n - 1) for f, n in zip(at, SHAPE, strict=True)), radius)
        image[masks[name]] = hu
    return image, masks, affine


@pytest.fixture(scope="module")
def lesion_case(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """A run whose probability rises gently with HU (0.72 at -40 HU, 0.94 at 30 HU) and the four-lesion CT."""
    folder = tmp_path_factory.mktemp("options")
    run = make_shift_run(folder / "run", shift=(0, 0), gain=40.0)
    image, masks, affine = four_lesions()
    source = folder / "ct.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), source)
    return run, source, masks


def found(mask: np.ndarray, lesions: dict[str, np.ndarray]) -> set[str]:
    """The lesions that the mask covers for at least half of their voxels."""
    return {name for name, lesion in lesions.items() if mask[lesion].mean() > 0.5}


def test_default_options_find_every_lesion_and_report_them(tmp_path: Path, lesion_case) -> None:
    run, source, lesions = lesion_case
    out = tmp_path / "out"
    predict_cli(run, source, out, "--probabilities")
    assert sorted(p.name for p in out.iterdir()) == [
        "ct.nii.gz",
        "ct_probability.nii.gz",
        "ct_report.html",
        "ct_report.json",
        "ct_report.txt",
    ]
    mask, _ = read_mask(out / "ct.nii.gz")
    assert (found(mask, lesions)) == set(LESIONS)
    assert ndimage.label(mask, np.ones((3, 3, 3)))[1] == 4
    probability = nib.load(out / "ct_probability.nii.gz")
    assert probability.get_data_dtype() == np.float32 and probability.shape == SHAPE
    values = np.asarray(probability.dataobj)
    assert 0.0 <= values.min() and values.max() <= 1.0
    np.testing.assert_array_equal(values > 0.5, mask)  # the mask is the probability map at the threshold
    assert values[lesions["dim"]].max() < 0.85 < values[lesions["bright"]].max()
    report = json.loads((out / "ct_report.json").read_text())
    assert report["lesion_count"] == 4 and report["source"] == str(source)
    voxel_ml = float(np.prod(np.linalg.norm(nib.load(source).affine[:3, :3], axis=0))) / 1000
    assert report["total_volume_ml"] == pytest.approx(mask.sum() * voxel_ml, rel=1e-3)
    page = (out / "ct_report.html").read_text()  # the page: every lesion's row, a picture per target lesion
    assert report["disclaimer"] in page and page.count("<tr><td class=num>") == 4
    assert page.count('src="data:image/png;base64,') == max(1, len(report["recist"]["target_lesions"]))


@pytest.mark.parametrize(
    ("options", "kept", "gone"),
    [
        # the small lesion is blurred below 0.85 by resampling to 2 mm pixels: neither kept nor gone
        (["--threshold", "0.85"], {"bright", "wall"}, {"dim"}),
        (["--min-lesion-mm3", "200"], {"bright", "dim", "wall"}, {"small"}),
        (["--lung-mask"], {"bright", "dim", "small"}, {"wall"}),
    ],
)
def test_each_option_removes_what_it_should(
    tmp_path: Path, lesion_case, options: list[str], kept: set[str], gone: set[str]
) -> None:
    run, source, lesions = lesion_case
    predict_cli(run, source, tmp_path / "out", *options)
    mask, _ = read_mask(tmp_path / "out" / "ct.nii.gz")
    assert kept <= found(mask, lesions)
    assert not any(mask[lesions[name]].any() for name in gone)  # gone entirely, not just thinned
    report = json.loads((tmp_path / "out" / "ct_report.json").read_text())
    assert report["lesion_count"] == ndimage.label(mask, np.ones((3, 3, 3)))[1] >= len(kept)


def test_no_report_writes_the_mask_alone(tmp_path: Path, lesion_case, monkeypatch: pytest.MonkeyPatch) -> None:
    run, source, lesions = lesion_case
    batches = batches_keeping_freed_memory(monkeypatch, "lung_tumor.inference")
    predict_cli(run, source, tmp_path / "out", "--no-report")
    assert batches == []  # one scan: nothing to reuse memory for
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["ct.nii.gz"]
    mask, _ = read_mask(tmp_path / "out" / "ct.nii.gz")
    assert (found(mask, lesions)) == set(LESIONS)


def test_a_folder_of_nifti_files_gives_one_mask_each_on_its_own_grid(
    tmp_path: Path, lesion_case, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same anatomy stored RAS and LPS in one folder: two masks, at the same world positions; freed memory is
    kept for the next scan while the folder runs."""
    run, _, lesions = lesion_case
    batches = batches_keeping_freed_memory(monkeypatch, "lung_tumor.inference")
    image, _, affine = four_lesions()
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    shift = np.eye(4)
    shift[:2, 3] = np.array(SHAPE[:2]) - 1  # index i of the flipped array is index n - 1 - i of the original
    lps_affine = affine @ shift @ flip
    folder = tmp_path / "scans"
    folder.mkdir()
    nib.save(nib.Nifti1Image(image, affine), folder / "first.nii.gz")
    nib.save(nib.Nifti1Image(np.ascontiguousarray(image[::-1, ::-1]), lps_affine), folder / "second.nii.gz")
    out = tmp_path / "out"
    predict_cli(run, folder, out)
    assert len(batches) == 1
    assert sorted(p.name for p in out.iterdir()) == [
        f"{case}{suffix}"
        for case in ("first", "second")
        for suffix in (".nii.gz", "_report.html", "_report.json", "_report.txt")
    ]
    first, first_affine = read_mask(out / "first.nii.gz")
    second, second_affine = read_mask(out / "second.nii.gz")
    np.testing.assert_allclose(first_affine, affine, atol=1e-4)
    np.testing.assert_allclose(second_affine, lps_affine, atol=1e-4)
    np.testing.assert_array_equal(second, first[::-1, ::-1])
    for name in ("bright", "dim"):  # each lesion at its world position in both masks
        lesion = lesions[name]
        in_first = world_centroid(first & lesion, first_affine)
        np.testing.assert_allclose(world_centroid(second & lesion[::-1, ::-1], second_affine), in_first, atol=0.8)
        np.testing.assert_allclose(in_first, world_centroid(lesion, affine), atol=0.8)
    reports = [json.loads((out / f"{case}_report.json").read_text()) for case in ("first", "second")]
    for report in reports:  # the largest lesion, "bright", lies at +x in the RAS array: the patient's right
        assert report["lesion_count"] == 4 and report["lesions"][0]["side"] == "right"
    for a, b in zip(reports[0]["lesions"], reports[1]["lesions"], strict=True):
        assert a["side"] == b["side"] and a["volume_ml"] == pytest.approx(b["volume_ml"])
        assert a["centroid_world_mm"] == pytest.approx(b["centroid_world_mm"], abs=1e-3)


def write_dicom_series(folder: Path, image: np.ndarray, affine: np.ndarray) -> Path:
    """Write a (X, Y, Z) volume with a NIfTI (RAS) affine as one DICOM file per axial slice, with ITK."""
    folder.mkdir(parents=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # ITK and DICOM place voxels in LPS millimetres
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    slices_zyx = np.ascontiguousarray(image.transpose(2, 1, 0))
    tags = {"0008|0060": "CT", "0020|000d": "1.2.826.0.1.3680043.9.7.1", "0020|000e": "1.2.826.0.1.3680043.9.7.2"}
    for k in range(slices_zyx.shape[0]):
        slab = itk.image_from_array(slices_zyx[k : k + 1])
        slab.SetSpacing(spacing.tolist())
        slab.SetDirection(itk.matrix_from_array(direction))
        slab.SetOrigin((lps[:3, 3] + lps[:3, 2] * k).tolist())
        meta = slab.GetMetaDataDictionary()
        for tag, value in {**tags, "0020|0013": str(k + 1), "0018|0050": f"{spacing[2]:g}"}.items():
            meta[tag] = value
        writer = itk.GDCMImageIO.New()
        writer.KeepOriginalUIDOn()
        itk.imwrite(slab, str(folder / f"slice_{k:03d}.dcm"), imageio=writer)
    return folder


@pytest.mark.parametrize("name", ["LPS", "tilted"])
def test_dicom_series_gives_the_mask_of_its_nifti_at_the_same_world_positions(tmp_path: Path, name: str) -> None:
    run = make_shift_run(tmp_path / "run")
    affine = ORIENTATIONS[name]
    image, lesion = phantom(SHAPE, affine)
    dicom = write_dicom_series(tmp_path / "series", image, affine)
    nifti = tmp_path / "series.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), nifti)
    predict_cli(run, dicom, tmp_path / "from_dicom")
    predict_cli(run, nifti, tmp_path / "from_nifti")
    from_dicom, dicom_affine = read_mask(tmp_path / "from_dicom" / "series.nii.gz")
    from_nifti, nifti_affine = read_mask(tmp_path / "from_nifti" / "series.nii.gz")
    np.testing.assert_allclose(dicom_affine, nifti_affine, atol=1e-3)
    np.testing.assert_array_equal(from_dicom, from_nifti)
    assert (tmp_path / "from_dicom" / "series_report.json").is_file()
    np.testing.assert_allclose(
        world_centroid(from_dicom, dicom_affine), world_centroid(from_nifti, nifti_affine), atol=1e-3
    )
    expected = world_centroid(lesion, affine) + expected_offset(affine, image.shape, 2.0)
    np.testing.assert_allclose(world_centroid(from_dicom, dicom_affine), expected, atol=0.7)


def test_real_dicom_series_and_its_nifti_through_the_cli(tmp_path: Path, real_ct_dir: Path) -> None:
    run = make_shift_run(tmp_path / "run", pixel_mm=1.5, image_size=256)
    lidc = real_ct_dir / "lidc-idri-0001"
    predict_cli(run, lidc / "dicom", tmp_path / "from_dicom", "--no-report")
    predict_cli(run, lidc / "ct.nii.gz", tmp_path / "from_nifti", "--no-report")
    from_dicom, dicom_affine = read_mask(tmp_path / "from_dicom" / "dicom.nii.gz")
    from_nifti, nifti_affine = read_mask(tmp_path / "from_nifti" / "ct.nii.gz")
    np.testing.assert_allclose(dicom_affine, nib.load(lidc / "ct.nii.gz").affine, atol=1e-3)
    np.testing.assert_allclose(nifti_affine, dicom_affine, atol=1e-3)
    assert from_dicom.shape == (512, 512, 16) and from_dicom.any()
    np.testing.assert_array_equal(from_dicom, from_nifti)


@pytest.mark.parametrize(("support", "kept"), [("0.5", {"bright", "wall", "small"}), ("0.99", {"bright", "wall"})])
def test_second_look_adds_the_small_lesion_a_finer_grid_finds_where_the_first_pass_vouches_for_it(
    tmp_path: Path, lesion_case, support: str, kept: set[str]
) -> None:
    run, source, lesions = lesion_case
    # at 2 mm pixels the small lesion's probability is blurred below 0.85 in most of it; at 0.5 mm it is not, and the
    # first pass's peak inside it (between 0.5 and 0.99) vouches for it or not; the dim one stays under 0.85 in both
    out = tmp_path / "out"
    cut = ["--threshold", "0.85", "--second-look-threshold", "0.85", "--second-look-support", support]
    predict_cli(run, source, out, *cut, "--second-look-mm", "0.5", "--probabilities")
    mask, _ = read_mask(out / "ct.nii.gz")
    assert found(mask, lesions) == kept
    first = np.asarray(nib.load(out / "ct_probability.nii.gz").dataobj)  # the first pass's map is the one written
    assert (first[lesions["small"]] > 0.85).mean() < 0.5 and 0.5 <= first[lesions["small"]].max() < 0.99
    np.testing.assert_array_equal(mask[first > 0.85], 1)  # the first pass's mask is kept whole
    settings = json.loads((out / "ct_report.json").read_text())["provenance"]["post_processing"]
    assert settings["second_look_mm"] == 0.5 and settings["second_look_support"] == float(support)
    text = (out / "ct_report.txt").read_text()
    assert f"second look at 0.5 mm (cut 0.85, first pass at least {float(support):g})" in text

    predict_cli(run, source, tmp_path / "off", *cut, "--second-look-mm", "0", "--overwrite")
    assert found(read_mask(tmp_path / "off" / "ct.nii.gz")[0], lesions) == {"bright", "wall"}
