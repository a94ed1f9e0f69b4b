"""The input checks shared by predict, evaluate, preprocess and data verify: each fault is one line, nothing written.

Also: real and synthetic CT pass, and a mask written by predict sits where its CT sits for ITK and nibabel alike.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from test_inference import ORIENTATIONS, chest, make_run

from lung_tumor.cli import main
from lung_tumor.data.checks import (
    check_ct_intensities,
    check_nifti_geometry,
    intensity_problems,
    summarize_intensities,
)
from lung_tumor.data.msd import list_cases, write_dataset_json
from lung_tumor.errors import LungTumorError
from lung_tumor.transforms.pipeline import load_volume

SHAPE = (40, 36, 6)
AFFINE = np.array([[-2.0, 0, 0, 40.0], [0, -2.0, 0, 36.0], [0, 0, 3.0, -9.0], [0, 0, 0, 1]])


def nifti(
    path: Path,
    array: np.ndarray,
    qform: np.ndarray | None = AFFINE,
    sform: np.ndarray | None = AFFINE,
    pixdim: tuple[float, float, float] | None = None,
) -> Path:
    """Write ``array`` with exactly the given forms (code 1 each; None: code 0) and, optionally, raw pixdim."""
    image = nib.Nifti1Image(array, None)
    image.header.set_qform(AFFINE if qform is None else qform, code=0 if qform is None else 1)
    image.header.set_sform(AFFINE if sform is None else sform, code=0 if sform is None else 1)
    if pixdim is not None:
        image.header["pixdim"][1:4] = pixdim
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    return path


def ct(dtype: type = np.int16) -> np.ndarray:
    return chest(SHAPE, dtype)


def with_nan_patch(path: Path) -> Path:
    image = ct(np.float32)
    image[20:23, 10:13, 2:5] = np.nan  # 27 voxels
    return nifti(path, image)


def with_inf(path: Path) -> Path:
    image = ct(np.float32)
    image[3, 4, 5] = np.inf
    return nifti(path, image)


def all_nan(path: Path) -> Path:
    return nifti(path, np.full(SHAPE, np.nan, np.float32))


def zero_pixdim(path: Path) -> Path:
    return nifti(path, ct(), sform=None, pixdim=(0.0, 2.0, 3.0))


def nan_pixdim(path: Path) -> Path:
    return nifti(path, ct(), sform=None, pixdim=(2.0, np.nan, 3.0))


def negative_pixdim(path: Path) -> Path:
    return nifti(path, ct(), pixdim=(2.0, 2.0, -3.0))


def no_forms(path: Path) -> Path:
    return nifti(path, ct(), qform=None, sform=None)


def zero_spacing_sform(path: Path) -> Path:
    sform = AFFINE.copy()
    sform[:3, 1] = 0.0
    return nifti(path, ct(), qform=None, sform=sform)


def singular_sform(path: Path) -> Path:
    sform = AFFINE.copy()
    sform[:3, 1] = [-2.0, 0.0, 0.0]  # second voxel axis along the first
    return nifti(path, ct(), qform=None, sform=sform)


def sheared_sform(path: Path) -> Path:
    sform = AFFINE.copy()
    sform[0, 2] = 1.0
    return nifti(path, ct(), qform=None, sform=sform, pixdim=(2.0, 2.0, float(np.hypot(1.0, 3.0))))


def forms_disagree(path: Path) -> Path:
    shifted = AFFINE.copy()
    shifted[0, 3] += 5.0
    return nifti(path, ct(), qform=AFFINE, sform=shifted)


def forms_mirrored(path: Path) -> Path:
    mirrored = AFFINE.copy()
    mirrored[0, 0] = 2.0
    return nifti(path, ct(), qform=AFFINE, sform=mirrored)


def pixdim_differs_from_sform(path: Path) -> Path:
    return nifti(path, ct(), qform=None, pixdim=(1.0, 1.0, 1.0))


def normalised(path: Path) -> Path:
    return nifti(path, (ct(np.float32) + 1000) / 1500)


def unrescaled(path: Path) -> Path:
    return nifti(path, ct() + 1024)  # stored values 0..4095 without the rescale intercept


def mr_like(path: Path) -> Path:
    rng = np.random.default_rng(0)
    return nifti(path, rng.uniform(0, 1800, SHAPE).astype(np.int16))


def constant(path: Path) -> Path:
    return nifti(path, np.full(SHAPE, -1000, np.int16))


def huge_values(path: Path) -> Path:
    image = ct(np.float32)
    image[0, 0, 0] = 1e9
    return nifti(path, image)


FAULTS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "nan_patch": (with_nan_patch, "27 voxel(s) are NaN or infinite"),
    "inf_voxel": (with_inf, "1 voxel(s) are NaN or infinite"),
    "all_nan": (all_nan, f"{int(np.prod(SHAPE))} voxel(s) are NaN or infinite"),
    "zero_pixdim": (zero_pixdim, "voxel spacing (pixdim) 0 x 2 x 3 mm: must be positive"),
    "nan_pixdim": (nan_pixdim, "voxel spacing (pixdim) 2 x nan x 3 mm: must be positive"),
    "negative_pixdim": (negative_pixdim, "voxel spacing (pixdim) 2 x 2 x -3 mm: must be positive"),
    "no_qform_no_sform": (no_forms, "no qform and no sform (both codes 0)"),
    "zero_spacing_sform": (zero_spacing_sform, "sform gives voxel spacing 2 x 0 x 3 mm"),
    "singular_sform": (singular_sform, "sform is singular"),
    "sheared_sform": (sheared_sform, "sform is sheared"),
    "forms_disagree": (forms_disagree, "qform and sform disagree by up to 5 mm"),
    "forms_mirrored": (forms_mirrored, "qform and sform disagree by up to 156 mm"),
    "pixdim_vs_sform": (pixdim_differs_from_sform, "sform voxel size 2 x 2 x 3 mm differs from pixdim 1 x 1 x 1 mm"),
    "normalised_0_1": (normalised, "with 0.0% of voxels in air/lung [-1100, -500] HU"),
    "unrescaled_0_4095": (unrescaled, "intensities 24..1054 with 0.0% of voxels in air/lung"),
    "mr_like": (mr_like, "not CT in HU"),
    "constant": (constant, "constant volume (every voxel -1000)"),
    "huge_values": (huge_values, "intensities -1000..1e+09 outside [-32768, 32767]: not CT in HU"),
}


def checksums(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def one_error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("lung-tumor:")]
    assert len(errors) == 1, err
    return errors[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("run") / "run")


def test_the_clean_volume_is_accepted(run: Path, tmp_path: Path) -> None:
    """Every fault below is this volume with one thing broken."""
    for name, source in {
        "both": nifti(tmp_path / "in" / "both.nii.gz", ct()),
        "float": nifti(tmp_path / "in" / "float.nii.gz", ct(np.float32)),
    }.items():
        assert main(["predict", "--run", str(run), "--input", str(source), "--output", str(tmp_path / name)]) == 0
        assert nib.load(tmp_path / name / source.name).shape == SHAPE


@pytest.mark.parametrize("fault", list(FAULTS))
def test_predict_refuses_in_one_line(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture, fault: str) -> None:
    write, message = FAULTS[fault]
    source = write(tmp_path / "in" / "ct.nii.gz")
    before = checksums(tmp_path / "in")
    status = main(["predict", "--run", str(run), "--input", str(source), "--output", str(tmp_path / "out")])
    assert status == 1
    error = one_error_line(capsys)
    assert error.startswith(f"lung-tumor: error: {source}: ") and message in error, error
    assert not (tmp_path / "out").exists()
    assert checksums(tmp_path / "in") == before


def write_dataset(root: Path, image: Path | None = None, label: np.ndarray | None = None) -> Path:
    """A one-case MSD folder: the clean chest (or the file ``image``) and a 0/1 label (or ``label``)."""
    (root / "imagesTr").mkdir(parents=True)
    target = root / "imagesTr" / "lung_001.nii.gz"
    if image is None:
        nifti(target, ct())
    else:
        shutil.move(image, target)
    truth = (ct() > 0).astype(np.uint8) if label is None else label
    nifti(root / "labelsTr" / "lung_001.nii.gz", truth)
    write_dataset_json(root, ["lung_001"], [])
    return root


def evaluate(run: Path, data: Path, out: Path) -> int:
    return main(["evaluate", "--run", str(run), "--data", str(data), "--cases", "lung_001", "--output", str(out)])


def test_evaluate_refuses_a_bad_image(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = write_dataset(tmp_path / "data", image=with_nan_patch(tmp_path / "ct.nii.gz"))
    before = checksums(data)
    assert evaluate(run, data, tmp_path / "out") == 1
    image = data / "imagesTr" / "lung_001.nii.gz"
    assert one_error_line(capsys).startswith(f"lung-tumor: error: {image}: 27 voxel(s) are NaN or infinite")
    assert not (tmp_path / "out").exists() and checksums(data) == before


@pytest.mark.parametrize(
    ("label", "message"),
    [
        (
            np.where(ct() > 0, np.nan, 0).astype(np.float32),
            f"label has {int((ct() > 0).sum())} NaN or infinite voxel(s); expected 0 and 1",
        ),
        ((ct() > 0).astype(np.uint8) * 2, "label values must be 0 or 1, found [2.0]"),
        ((ct() > 0)[:, :, :5].astype(np.uint8), "label shape (40, 36, 5) differs from image shape (40, 36, 6)"),
    ],
)
def test_evaluate_checks_the_truth_like_preprocess(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture, label: np.ndarray, message: str
) -> None:
    data = write_dataset(tmp_path / "data", label=label)
    before = checksums(data)
    assert evaluate(run, data, tmp_path / "out") == 1
    assert one_error_line(capsys) == f"lung-tumor: error: {data / 'labelsTr' / 'lung_001.nii.gz'}: {message}"
    assert not (tmp_path / "out").exists() and checksums(data) == before


def test_evaluate_checks_the_truth_affine(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = write_dataset(tmp_path / "data")
    moved = AFFINE.copy()
    moved[2, 3] += 3.0
    label = data / "labelsTr" / "lung_001.nii.gz"
    nifti(label, (ct() > 0).astype(np.uint8), qform=moved, sform=moved)
    assert evaluate(run, data, tmp_path / "out") == 1
    assert one_error_line(capsys) == f"lung-tumor: error: {label}: label affine differs from the image affine"


@pytest.mark.parametrize("fault", ["forms_disagree", "unrescaled_0_4095"])
def test_preprocess_refuses_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, fault: str) -> None:
    write, message = FAULTS[fault]
    data = write_dataset(tmp_path / "data", image=write(tmp_path / "ct.nii.gz"))
    config = tmp_path / "config.yaml"
    sections = {"data": {"root": str(data), "cache_dir": str(tmp_path / "cache")}, "preprocess": {"num_workers": 0}}
    config.write_text(yaml.safe_dump(sections))
    before = checksums(data)
    assert main(["preprocess", "--config", str(config)]) == 1
    error = one_error_line(capsys)
    assert error.startswith(f"lung-tumor: error: {data / 'imagesTr' / 'lung_001.nii.gz'}: ") and message in error
    assert not (tmp_path / "cache").exists() and checksums(data) == before


def test_dicom_series_with_zero_pixel_spacing_is_refused(
    real_ct_dir: Path, run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """ITK reads Pixel Spacing 0\\0 as 1 mm; the check reads the tag."""
    series = tmp_path / "dicom"
    series.mkdir()
    for source in (real_ct_dir / "lidc-idri-0001" / "dicom").iterdir():
        raw = source.read_bytes()
        assert b"0.703125\\0.703125" in raw
        (series / source.name).write_bytes(raw.replace(b"0.703125\\0.703125", b"0.000000\\0.000000"))
    assert main(["predict", "--run", str(run), "--input", str(series), "--output", str(tmp_path / "out")]) == 1
    assert one_error_line(capsys) == (
        f"lung-tumor: error: {series}: DICOM Pixel Spacing (0028,0030) is '0.000000\\0.000000': "
        "in-plane voxel size unknown (ITK would assume 1 mm)"
    )
    assert not (tmp_path / "out").exists()


def test_real_and_synthetic_ct_pass(real_ct_dir: Path, synthetic_dataset: Path) -> None:
    volumes = [
        real_ct_dir / "lidc-idri-0001" / "ct.nii.gz",
        real_ct_dir / "lidc-idri-0001" / "dicom",
        real_ct_dir / "thorax-no-tumour" / "ct.nii.gz",
        *(case.image for case in list_cases(synthetic_dataset, "training")),
        *(case.image for case in list_cases(synthetic_dataset, "test")),
    ]
    for path in volumes:
        image = load_volume(path)  # raises on any refusal
        summary = summarize_intensities(image[0].numpy())
        assert summary.air_fraction > 0.3 and intensity_problems(summary) == []
    scaled = (load_volume(volumes[2])[0].numpy().astype(np.float32) + 1024) / 4096  # the same CT in [0, 1]
    assert "not CT in HU" in intensity_problems(summarize_intensities(scaled))[0]


def itk_world(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """ITK's voxel-to-world matrix (converted from LPS to RAS) and the voxels in nibabel's (x, y, z) order."""
    import itk

    image = itk.imread(str(path))
    affine = np.eye(4)
    affine[:3, :3] = itk.array_from_matrix(image.GetDirection()) * np.asarray(image.GetSpacing())
    affine[:3, 3] = np.asarray(image.GetOrigin())
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine, itk.array_from_image(image).transpose(2, 1, 0)


def world_of_voxels(affine: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return (affine @ np.vstack([np.argwhere(mask).T, np.ones(int(mask.sum()))]))[:3].T


PLACEMENTS = {
    "qform_only": dict(qform=ORIENTATIONS["LPS"], sform=None),
    "sform_only": dict(qform=None, sform=ORIENTATIONS["LPS"], pixdim=(0.8, 0.8, 2.5)),
    "LPS": dict(qform=ORIENTATIONS["LPS"], sform=ORIENTATIONS["LPS"]),
    "RAS": dict(qform=ORIENTATIONS["RAS"], sform=ORIENTATIONS["RAS"]),
    "tilted_sform_only": dict(qform=None, sform=ORIENTATIONS["tilted"], pixdim=(0.7, 0.9, 3.0)),
    "tilted": dict(qform=ORIENTATIONS["tilted"], sform=ORIENTATIONS["tilted"]),
}


@pytest.mark.parametrize("name", list(PLACEMENTS))
def test_itk_and_nibabel_place_the_mask_on_its_ct(run: Path, tmp_path: Path, name: str) -> None:
    image = chest((48, 44, 8))
    source = nifti(tmp_path / "ct.nii.gz", image, **PLACEMENTS[name])
    check_nifti_geometry(source)
    assert main(["predict", "--run", str(run), "--input", str(source), "--output", str(tmp_path / "out")]) == 0
    mask_path = tmp_path / "out" / "ct.nii.gz"
    ct_nib, mask_nib = nib.load(source), nib.load(mask_path)
    ct_itk, ct_itk_voxels = itk_world(source)
    mask_itk, mask_itk_voxels = itk_world(mask_path)
    mask = np.asarray(mask_nib.dataobj) > 0
    assert mask.sum() > 20 and np.array_equal(mask_itk_voxels > 0, mask)
    np.testing.assert_array_equal(ct_itk_voxels, np.asarray(ct_nib.dataobj))
    # every tumour voxel at one world position for both readers, and the CT voxel there is the one the mask marks
    expected = world_of_voxels(ct_nib.affine, mask)
    for affine in (mask_nib.affine, ct_itk, mask_itk):
        np.testing.assert_allclose(world_of_voxels(affine, mask), expected, atol=1e-3)


def test_int16_fast_path_confirms_before_refusing() -> None:
    """int16 skips the full min/max pass; a sample that looks constant is checked on every voxel."""
    volume = np.full((32, 40, 36), -1000, np.int16)  # C order: axis 0 is sampled every 2nd slice
    volume[1] = chest((40, 36, 1))[..., 0]
    check_ct_intensities(volume, "ct.nii.gz")  # not refused: only slice 1 varies and it is not sampled
    volume[1] = -1000
    with pytest.raises(LungTumorError, match=r"ct.nii.gz: constant volume \(every voxel -1000\)"):
        check_ct_intensities(volume, "ct.nii.gz")
    wide = np.full((8, 8, 8), -1000, np.int32)
    wide[0, 0, 0] = 40000  # int32 can exceed the range: read exactly
    with pytest.raises(LungTumorError, match=r"intensities -1000..40000 outside \[-32768, 32767\]"):
        check_ct_intensities(wide, "ct.nii.gz")
