"""The synthetic dataset generator: MSD layout, geometry, labels against the truth file, determinism."""

from __future__ import annotations

import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lung_tumor.cli import main
from lung_tumor.data.msd import list_cases
from lung_tumor.data.synth import TRUTH_FILE, in_order, synthesize_case, synthesize_dataset
from lung_tumor.errors import LungTumorError


def lung_fraction(image: np.ndarray) -> float:
    """Fraction of voxels with lung parenchyma intensities."""
    return float(((image >= -950) & (image <= -650)).mean())


def test_layout_and_dataset_json(synthetic_dataset: Path) -> None:
    training = list_cases(synthetic_dataset, "training")
    test = list_cases(synthetic_dataset, "test")
    assert [c.case_id for c in training] == ["lung_001", "lung_002"]
    assert [c.case_id for c in test] == ["lung_003"]
    for case in training:
        assert case.image == (synthetic_dataset / "imagesTr" / f"{case.case_id}.nii.gz").resolve()
        assert case.image.is_file() and case.label is not None and case.label.is_file()
    assert test[0].image.is_file() and test[0].label is None
    truth = json.loads((synthetic_dataset / TRUTH_FILE).read_text())
    assert set(truth["cases"]) == {"lung_001", "lung_002", "lung_003"}
    assert truth["cases"]["lung_003"]["split"] == "test"
    assert not list(synthetic_dataset.rglob(".*"))  # no temporary files left behind


def test_files_have_msd_types_and_geometry(synthetic_dataset: Path) -> None:
    for case in list_cases(synthetic_dataset, "training"):
        image, label = nib.load(case.image), nib.load(case.label)
        assert image.get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8
        assert image.shape == label.shape and image.shape[:2] == (128, 128) and 48 <= image.shape[2] <= 64
        np.testing.assert_array_equal(image.affine, label.affine)
        px, py, pz = image.header.get_zooms()
        assert px == py and 2.5 <= px <= 3.0 and 4.5 <= pz <= 5.5
        assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
        assert int(image.header["qform_code"]) == 1 and int(image.header["sform_code"]) == 1
        data, mask = np.asarray(image.dataobj), np.asarray(label.dataobj)
        assert data.min() >= -1024 and data.max() <= 3071
        assert set(np.unique(mask)) <= {0, 1}


def test_labels_match_truth(synthetic_dataset: Path) -> None:
    truth = json.loads((synthetic_dataset / TRUTH_FILE).read_text())["cases"]
    for case in list_cases(synthetic_dataset, "training"):
        mask = np.asarray(nib.load(case.label).dataobj)
        lesions = truth[case.case_id]["tumours"]
        spacing = truth[case.case_id]["spacing"]
        assert (mask.sum() > 0) == bool(lesions)
        assert mask.sum() == sum(t["voxels"] for t in lesions)
        # Each label voxel belongs to the nearest truth centre; its lesion's centroid must match the truth.
        voxels = np.argwhere(mask)
        centres = np.array([t["centre_voxel"] for t in lesions])
        owner = np.argmin(((voxels[:, None, :] - centres[None]) ** 2).sum(axis=2), axis=1)
        for k, lesion in enumerate(lesions):
            mine = voxels[owner == k]
            assert len(mine) == lesion["voxels"]
            np.testing.assert_allclose(mine.mean(axis=0), lesion["centre_voxel"], atol=1.0)
            assert lesion["volume_ml"] == pytest.approx(len(mine) * np.prod(spacing) / 1000, rel=1e-3)
            assert 15 <= lesion["diameter_mm"] <= 60


def test_every_eighth_case_has_no_tumour() -> None:
    case = synthesize_case(8, seed=0, size="small")
    assert case.case_id == "lung_008" and case.tumours == [] and case.label.sum() == 0
    forced = synthesize_case(8, seed=0, size="small", with_tumour=True)
    assert 1 <= len(forced.tumours) <= 3 and forced.label.sum() == sum(t["voxels"] for t in forced.tumours)
    assert all(c.tumours for c in (synthesize_case(i, seed=0, size="small") for i in (1, 7, 9)))


def test_same_seed_same_arrays_other_seed_differs(synthetic_dataset: Path) -> None:
    first, again = synthesize_case(2, seed=0, size="small"), synthesize_case(2, seed=0, size="small")
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.label, again.label)
    np.testing.assert_array_equal(first.affine, again.affine)
    # A case does not depend on how many cases the dataset has, and the file holds exactly the array.
    np.testing.assert_array_equal(
        np.asarray(nib.load(synthetic_dataset / "imagesTr/lung_002.nii.gz").dataobj), first.image
    )
    other = synthesize_case(2, seed=1, size="small")
    assert other.image.shape != first.image.shape or not np.array_equal(other.image, first.image)


def test_anatomy_lungs_above_abdomen() -> None:
    case = synthesize_case(1, seed=0, size="small")
    image = case.image
    nz = image.shape[2]
    upper = lung_fraction(image[:, :, nz // 2 : int(0.8 * nz)])
    lowest = lung_fraction(image[:, :, : max(1, nz // 16)])
    assert upper > 0.1  # both lungs in the chest
    assert lowest < upper / 2  # abdomen in the first slices
    assert (image[:4, :4, :] < -900).all()  # air in the corners
    assert (image > 300).mean() > 0.002  # bones
    spacing = np.array(case.spacing)
    assert np.allclose(spacing, np.linalg.norm(case.affine[:3, :3], axis=0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cases": 0}, "at least 1"),
        ({"cases": 1, "size": "huge"}, "unknown size"),
        ({"cases": 1, "test_cases": -1}, "0 or more"),
        ({"cases": 1, "workers": 0}, "--workers must be at least 1"),
    ],
)
def test_bad_arguments_raise(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(LungTumorError, match=message):
        synthesize_dataset(tmp_path / "out", **kwargs)


def test_workers_write_the_same_files(synthetic_dataset: Path, tmp_path: Path) -> None:
    """Cases made side by side in processes: the same bytes, truth file and dataset.json as one process."""
    assert main(["synth", "--out", str(tmp_path / "two"), "--cases", "2", "--test-cases", "1", "--workers", "2"]) == 0
    written = sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*") if p.is_file())
    assert [str(p) for p in written] == [
        "dataset.json",
        "imagesTr/lung_001.nii.gz",
        "imagesTr/lung_002.nii.gz",
        "imagesTs/lung_003.nii.gz",
        "labelsTr/lung_001.nii.gz",
        "labelsTr/lung_002.nii.gz",
        TRUTH_FILE,
    ]
    for relative in written:
        assert (tmp_path / "two" / relative).read_bytes() == (synthetic_dataset / relative).read_bytes(), relative


def test_max_minutes_keeps_the_first_cases_finished(synthetic_dataset: Path, tmp_path: Path) -> None:
    """A time-boxed run (here: out of time at once) keeps lung_001 alone, as ``--cases 1`` would write it, and
    removes the files of the cases not kept: finished after it, or ended mid-write (planted beforehand here, since
    whether a worker gets that far in the race is not fixed)."""
    out = tmp_path / "boxed"
    for left in ("imagesTr/lung_004.nii.gz", "labelsTr/lung_004.nii.gz", "imagesTr/.lung_003.host-1.ab12.tmp.nii.gz"):
        (out / left).parent.mkdir(parents=True, exist_ok=True)
        (out / left).write_bytes(b"left by a worker")
    assert main(["synth", "--out", str(out), "--cases", "5", "--test-cases", "0", "--workers", "2",
                 "--max-minutes", "0", "--overwrite"]) == 0  # fmt: skip
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == ["dataset.json", "imagesTr/lung_001.nii.gz", "labelsTr/lung_001.nii.gz", TRUTH_FILE]
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 1
    assert list(json.loads((out / TRUTH_FILE).read_text())["cases"]) == ["lung_001"]
    for relative in ("imagesTr/lung_001.nii.gz", "labelsTr/lung_001.nii.gz"):
        assert (out / relative).read_bytes() == (synthetic_dataset / relative).read_bytes(), relative
    with pytest.raises(LungTumorError, match="--max-minutes must be 0 or more"):
        synthesize_dataset(tmp_path / "bad", cases=1, max_minutes=-1)


def _mark_then_fail_first(item: tuple[Path, int]) -> int:
    """In a worker process: item 0 fails at once; every other item waits 2 s, then leaves a marker file."""
    folder, number = item
    if number == 0:
        raise ValueError("case 0 failed")
    time.sleep(2.0)
    (folder / f"done_{number}").touch()
    return number


def test_a_failing_case_stops_the_workers(tmp_path: Path) -> None:
    """The failure reaches the caller and ends the workers at once: the case running beside it (2 s) and the 10
    not started never finish (11 would without that)."""
    with pytest.raises(ValueError, match="case 0 failed"):
        list(in_order(_mark_then_fail_first, [(tmp_path, n) for n in range(12)], workers=2))
    time.sleep(2.5)  # a worker left running would have left its marker by now
    assert list(tmp_path.glob("done_*")) == []
    assert list(in_order(abs, [-3, 2, -1], workers=2)) == [3, 2, 1]  # in the items' order


def test_refuses_foreign_folder_via_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["synth", "--out", str(tmp_path), "--cases", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("lung-tumor: error:") and "no dataset.json" in err and "\n" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.slow
def test_full_size_case(tmp_path: Path) -> None:
    """A 512 x 512 x 300 case (the largest): MSD geometry (how long it takes is a benchmark's business)."""
    case = synthesize_case(23, seed=0, size="full")
    assert case.image.shape == (512, 512, 300) and case.image.dtype == np.int16
    px, py, pz = case.spacing
    assert 0.6 <= px == py <= 1.0 and 1.0 <= pz <= 2.5
    assert all(5 <= t["diameter_mm"] <= 60 for t in case.tumours) and case.label.sum() > 0
    nz = case.image.shape[2]
    assert lung_fraction(case.image[:, :, nz // 2 : int(0.8 * nz)]) > 0.1
