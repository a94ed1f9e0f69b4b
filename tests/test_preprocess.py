"""``lung-tumor preprocess``: the slice cache, its index, idempotence, resumption and bad input."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from lung_tumor import preprocess as preprocess_module
from lung_tumor.cache import SliceCache, SliceDataset
from lung_tumor.cli import main
from lung_tumor.config import PreprocessConfig
from lung_tumor.data.msd import write_dataset_json
from lung_tumor.errors import LungTumorError
from lung_tumor.preprocess import preprocess_dataset

AFFINE = np.array([[-2.5, 0, 0, 160.0], [0, -2.5, 0, 160.0], [0, 0, 5.0, -150.0], [0, 0, 0, 1]])
CFG = PreprocessConfig(crop_from_slice=10, pixel_mm=3.0, image_size=112, num_workers=0)


def write_case(root: Path, case: str, slices: int, tumour: tuple[slice, ...] | None, seed: int) -> None:
    """A phantom chest: body ellipse, two lungs, an optional soft-tissue tumour, noise."""
    rng = np.random.default_rng(seed)
    x, y = np.mgrid[:128, :128]
    body = ((x - 64) / 55) ** 2 + ((y - 64) / 40) ** 2 < 1
    lungs = (((x - 40) / 18) ** 2 + ((y - 64) / 28) ** 2 < 1) | (((x - 88) / 18) ** 2 + ((y - 64) / 28) ** 2 < 1)
    image = np.where(body, 40, -1000)[..., None].repeat(slices, axis=2)
    image[lungs, 8:] = -850
    label = np.zeros(image.shape, dtype=np.uint8)
    if tumour is not None:
        label[tumour] = 1
        image[tumour] = 30
    image = (image + rng.normal(0, 20, image.shape)).astype(np.int16)
    for folder, array in (("imagesTr", image), ("labelsTr", label)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(array, AFFINE), root / folder / f"{case}.nii.gz")


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    tumours = {
        "lung_001": (slice(30, 40), slice(50, 60), slice(20, 26)),
        "lung_002": (slice(80, 92), slice(60, 70), slice(30, 34)),
        "lung_003": None,
        "lung_004": (slice(35, 45), slice(70, 78), slice(12, 30)),
    }
    for index, (case, box) in enumerate(tumours.items()):
        write_case(root, case, 40 + 4 * index, box, seed=index)
    write_dataset_json(root, list(tumours), [])
    return root


def cache_files(cache_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(cache_dir)): p.read_bytes() for p in sorted(cache_dir.rglob("*")) if p.is_file()}


def write_config(path: Path, root: Path, cache_dir: Path, **preprocess: object) -> Path:
    section = {**CFG.to_dict(), **preprocess}
    path.write_text(yaml.safe_dump({"data": {"root": str(root), "cache_dir": str(cache_dir)}, "preprocess": section}))
    return path


def test_cache_holds_every_slice_with_its_tumour_count(dataset: Path, tmp_path: Path) -> None:
    cache_dir = preprocess_dataset(dataset, tmp_path / "cache", CFG, progress=False)
    cache = SliceCache(cache_dir)
    assert cache.cases == ["lung_001", "lung_002", "lung_003", "lung_004"]
    assert len(cache.records) == sum(40 + 4 * i - 10 for i in range(4))
    image, label = cache.image("lung_001"), cache.label("lung_001")
    assert image.dtype == np.float16 and label.dtype == np.uint8
    assert image.shape == label.shape == (30, 112, 112)
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    # the tumour of lung_001 spans source slices 20..25, i.e. cache slices 10..15 after the crop of 10
    tumour_slices = [r.source_slice for r in cache.records if r.case == "lung_001" and r.tumour_pixels > 0]
    assert tumour_slices == list(range(20, 26))
    assert not any(r.tumour_pixels for r in cache.records if r.case == "lung_003")
    # 10x10 voxels of 2.5 mm = 625 mm2 per slice; at 3 mm pixels that is about 69 pixels
    pixels = [r.tumour_pixels for r in cache.records if r.case == "lung_001" and r.tumour_pixels]
    assert np.mean(pixels) == pytest.approx(625 / 9, rel=0.2)
    meta = cache.meta("lung_001")
    assert meta["crop_start"] == 10 and meta["original_shape"] == [128, 128, 40]
    assert meta["spacing"] == pytest.approx([3.0, 3.0, 5.0], rel=0.02)
    np.testing.assert_allclose(meta["original_affine"], AFFINE)


def test_slice_dataset_serves_2_5d_stacks(dataset: Path, tmp_path: Path) -> None:
    cache = SliceCache(preprocess_dataset(dataset, tmp_path / "cache", CFG, progress=False))
    items = SliceDataset(cache, ["lung_002"], context=1)
    assert len(items) == 34 and items.tumour_flags.sum() == 4
    first = items[0]
    assert first["image"].shape == (3, 112, 112) and first["label"].shape == (1, 112, 112)
    np.testing.assert_array_equal(first["image"][0], first["image"][1])  # the edge slice repeats
    middle = items[5]
    np.testing.assert_array_equal(middle["image"][2], cache.image("lung_002")[6].astype(np.float32))


def test_rerun_skips_finished_cases_and_changes_nothing(dataset: Path, tmp_path: Path) -> None:
    cache_dir = preprocess_dataset(dataset, tmp_path / "cache", CFG, progress=False)
    before = cache_files(cache_dir)
    stamps = {p: p.stat().st_mtime_ns for p in cache_dir.rglob("*.npy")}
    preprocess_dataset(dataset, cache_dir, CFG, progress=False)
    assert cache_files(cache_dir) == before
    assert {p: p.stat().st_mtime_ns for p in cache_dir.rglob("*.npy")} == stamps
    # another config changes the key: every case is redone
    preprocess_dataset(dataset, cache_dir, PreprocessConfig(**{**CFG.to_dict(), "image_size": 96}), progress=False)
    assert SliceCache(cache_dir).image("lung_001").shape == (30, 96, 96)


def test_interrupted_run_resumes_to_identical_output(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = cache_files(preprocess_dataset(dataset, tmp_path / "reference", CFG, progress=False))
    done: list[str] = []
    original = preprocess_module.preprocess_case

    def interrupt_after_two(case, cfg, case_dir, key):  # noqa: ANN001, ANN202
        if len(done) == 2:
            # die in the middle of the third case: a half-written array and no meta.json
            (case_dir).mkdir(parents=True, exist_ok=True)
            (case_dir / "image.npy").write_bytes(b"\x93NUMPY truncated")
            raise KeyboardInterrupt
        done.append(case.case_id)
        return original(case, cfg, case_dir, key)

    monkeypatch.setattr(preprocess_module, "preprocess_case", interrupt_after_two)
    with pytest.raises(KeyboardInterrupt):
        preprocess_dataset(dataset, tmp_path / "cache", CFG, progress=False)
    assert not (tmp_path / "cache" / "cache.json").exists()
    monkeypatch.setattr(preprocess_module, "preprocess_case", original)
    assert cache_files(preprocess_dataset(dataset, tmp_path / "cache", CFG, progress=False)) == reference


@pytest.mark.slow
def test_killed_process_resumes_to_identical_output(dataset: Path, tmp_path: Path) -> None:
    reference = cache_files(preprocess_dataset(dataset, tmp_path / "reference", CFG, progress=False))
    config = write_config(tmp_path / "config.yaml", dataset, tmp_path / "cache")
    command = [sys.executable, "-m", "lung_tumor", "preprocess", "--config", str(config)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_meta = tmp_path / "cache" / "cases" / "lung_001" / "meta.json"
    deadline = time.monotonic() + 120
    while not first_meta.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert subprocess.run(command, capture_output=True).returncode == 0
    assert cache_files(tmp_path / "cache") == reference


def test_parallel_workers_give_the_same_cache(dataset: Path, tmp_path: Path) -> None:
    serial = cache_files(preprocess_dataset(dataset, tmp_path / "serial", CFG, progress=False))
    parallel_cfg = PreprocessConfig(**{**CFG.to_dict(), "num_workers": 2})
    parallel = cache_files(preprocess_dataset(dataset, tmp_path / "parallel", parallel_cfg, progress=False))
    assert serial == parallel


def break_label_value(root: Path) -> Path:
    path = root / "labelsTr" / "lung_002.nii.gz"
    label = np.asarray(nib.load(path).dataobj).copy()
    label[0, 0, 0] = 2
    nib.save(nib.Nifti1Image(label, AFFINE), path)
    return path


def break_shape(root: Path) -> Path:
    path = root / "labelsTr" / "lung_002.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((128, 128, 7), np.uint8), AFFINE), path)
    return path


def break_gzip(root: Path) -> Path:
    path = root / "imagesTr" / "lung_002.nii.gz"
    path.write_bytes(path.read_bytes()[:2000])
    return path


def break_4d(root: Path) -> Path:
    path = root / "imagesTr" / "lung_002.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 8, 2), np.int16), AFFINE), path)
    return path


def break_missing(root: Path) -> Path:
    path = root / "imagesTr" / "lung_002.nii.gz"
    path.unlink()
    return path


def break_not_gzip(root: Path) -> Path:
    path = root / "labelsTr" / "lung_002.nii.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(b"not a nifti header")
    return path


@pytest.mark.parametrize(
    ("breaker", "message"),
    [
        (break_label_value, "label values must be 0 or 1, found [2.0]"),
        (break_shape, "label shape (128, 128, 7) differs from image shape (128, 128, 44)"),
        (break_gzip, "cannot read image"),
        (break_4d, "image must be a single 3D volume"),
        (break_missing, "file listed in dataset.json not found"),
        (break_not_gzip, "cannot read label"),
    ],
)
def test_bad_input_is_one_line_error_naming_the_file(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture, breaker, message: str
) -> None:
    path = breaker(dataset)
    config = write_config(tmp_path / "config.yaml", dataset, tmp_path / "cache")
    assert main(["preprocess", "--config", str(config)]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1  # one line, no traceback
    error = errors[0]
    assert error.startswith(f"lung-tumor: error: {path}: ") and message in error
    # nothing half-written: the bad case has no meta.json, no temporary file anywhere, no index
    assert not (tmp_path / "cache" / "cases" / "lung_002" / "meta.json").exists()
    assert not list((tmp_path / "cache").rglob("*.tmp*"))
    assert not (tmp_path / "cache" / "slices.csv").exists()


def test_thin_volume_policy_error_names_the_file(dataset: Path, tmp_path: Path) -> None:
    write_case(dataset, "lung_003", 8, None, seed=9)
    cfg = PreprocessConfig(**{**CFG.to_dict(), "thin_volume": "error"})
    with pytest.raises(LungTumorError, match=r"lung_003.nii.gz: volume has 8 axial slices, not more than"):
        preprocess_dataset(dataset, tmp_path / "cache", cfg, progress=False)
    kept = preprocess_dataset(dataset, tmp_path / "kept", CFG, progress=False)
    assert SliceCache(kept).meta("lung_003")["num_slices"] == 8


def test_missing_config_and_bad_value_are_one_line_errors(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["preprocess", "--config", str(tmp_path / "nope.yaml")]) == 1
    assert "nope.yaml: config file not found" in capsys.readouterr().err
    config = write_config(tmp_path / "config.yaml", dataset, tmp_path / "cache")
    assert main(["preprocess", "--config", str(config), "--set", "preprocess.pixel_mm=0"]) == 1
    assert "preprocess.pixel_mm must be a number in [0.1, 10], got 0" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()
