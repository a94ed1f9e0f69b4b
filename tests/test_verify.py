"""``lung-tumor data verify``: a clean dataset passes; each kind of damage is one line naming the file."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lung_tumor.cli import main
from lung_tumor.data.msd import write_dataset_json
from lung_tumor.data.verify import image_problems, read_volume, verify_dataset

IMAGE = "imagesTr/lung_001.nii.gz"
LABEL = "labelsTr/lung_001.nii.gz"


@pytest.fixture
def dataset(synthetic_dataset: Path, tmp_path: Path) -> Path:
    """A private copy of the small synthetic dataset, free to damage."""
    return Path(shutil.copytree(synthetic_dataset, tmp_path / "Task06_Lung"))


@pytest.fixture
def run_verify(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """``run_verify(root, *options)`` through the command line: (exit status, stdout, stderr)."""

    def run(root: Path, *options: str) -> tuple[int, str, str]:
        capsys.readouterr()
        status = main(["data", "verify", "--root", str(root), *options])
        out, err = capsys.readouterr()
        return status, out, err

    return run


def load(root: Path, relative: str) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(root / relative)
    return np.asarray(image.dataobj), image.affine


def test_clean_dataset_passes(run_verify: Callable, dataset: Path) -> None:
    status, out, err = run_verify(dataset)
    assert status == 0, err
    rows = [line.split() for line in out.splitlines() if line.startswith("lung_")]
    assert [r[0] for r in rows] == ["lung_001", "lung_002", "lung_003"]
    assert [r[-1] for r in rows] == ["ok", "ok", "ok"]
    truth = json.loads((dataset / "synth_truth.json").read_text())["cases"]
    assert int(rows[0][5]) == sum(t["voxels"] for t in truth["lung_001"]["tumours"])
    assert rows[2][5] == "-"  # test case: no label
    assert "3 case(s) checked, 0 problems" in out


def damage_truncate(root: Path, write: Callable) -> str:
    data = (root / IMAGE).read_bytes()
    (root / IMAGE).write_bytes(data[: len(data) // 2])
    return IMAGE


def damage_corrupt(root: Path, write: Callable) -> str:
    data = bytearray((root / LABEL).read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    (root / LABEL).write_bytes(bytes(data))
    return LABEL


def damage_label_values(root: Path, write: Callable) -> str:
    label, affine = load(root, LABEL)
    label = label.copy()
    label[0, 0, 0] = 2
    write(root / LABEL, label, affine)
    return LABEL


def damage_label_float(root: Path, write: Callable) -> str:
    label, affine = load(root, LABEL)
    write(root / LABEL, label.astype(np.float32), affine)
    return LABEL


def damage_shape(root: Path, write: Callable) -> str:
    label, affine = load(root, LABEL)
    write(root / LABEL, np.ascontiguousarray(label[:, :, :-1]), affine)
    return LABEL


def damage_affine(root: Path, write: Callable) -> str:
    label, affine = load(root, LABEL)
    shifted = affine.copy()
    shifted[0, 3] += 5.0
    write(root / LABEL, label, shifted)
    return LABEL


def damage_normalised(root: Path, write: Callable) -> str:
    image, affine = load(root, IMAGE)
    write(root / IMAGE, ((image + 1024.0) / 4095.0).astype(np.float32), affine)
    return IMAGE


def damage_nan(root: Path, write: Callable) -> str:
    image, affine = load(root, IMAGE)
    image = image.astype(np.float32)
    image[5, 5, 5] = np.nan
    write(root / IMAGE, image, affine)
    return IMAGE


def damage_2d(root: Path, write: Callable) -> str:
    image, affine = load(root, IMAGE)
    write(root / IMAGE, np.ascontiguousarray(image[:, :, 10]), affine)
    return IMAGE


def damage_4d(root: Path, write: Callable) -> str:
    image, affine = load(root, IMAGE)
    write(root / IMAGE, np.stack([image, image], axis=-1), affine)
    return IMAGE


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (damage_truncate, "cannot be read"),
        (damage_corrupt, "cannot be read"),
        (damage_label_values, "label values 0..2, expected only 0 and 1"),
        (damage_label_float, "stored as float32, expected an integer type"),
        (damage_shape, "label shape"),
        (damage_affine, "label affine differs"),
        (damage_normalised, "not CT in HU"),
        (damage_nan, "NaN"),
        (damage_2d, "image is 2D"),
        (damage_4d, "image is 4D"),
    ],
    ids=lambda v: v.__name__.removeprefix("damage_") if callable(v) else None,
)
def test_damaged_file_is_one_line_naming_it(
    run_verify: Callable, dataset: Path, write_nifti: Callable, damage: Callable, message: str
) -> None:
    relative = damage(dataset, write_nifti)
    status, out, err = run_verify(dataset)
    assert status == 1
    matching = [line for line in err.splitlines() if message in line]
    assert len(matching) == 1, err
    assert matching[0].startswith(f"{dataset / relative}: ")
    assert "Traceback" not in err
    assert "problem" in out.splitlines()[-1] and " 0 problems" not in out


@pytest.mark.parametrize("relative", [IMAGE, LABEL])
def test_missing_file(run_verify: Callable, dataset: Path, relative: str) -> None:
    (dataset / relative).unlink()
    status, _, err = run_verify(dataset)
    assert status == 1
    assert err.strip() == f"{dataset / relative}: file not found"


def edit_dataset_json(root: Path, edit: Callable[[dict], None]) -> None:
    content = json.loads((root / "dataset.json").read_text())
    edit(content)
    (root / "dataset.json").write_text(json.dumps(content))


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda root: edit_dataset_json(root, lambda c: c["test"].append("../outside.nii.gz")), "outside"),
        (lambda root: (root / "dataset.json").unlink(), "dataset.json not found"),
        (lambda root: (root / "dataset.json").write_text('{"training": ['), "not valid JSON"),
    ],
    ids=["outside", "missing", "bad-json"],
)
def test_bad_dataset_json(run_verify: Callable, dataset: Path, breakage: Callable[[Path], None], message: str) -> None:
    (dataset.parent / "outside.nii.gz").write_bytes((dataset / IMAGE).read_bytes())
    breakage(dataset)
    status, _, err = run_verify(dataset)
    assert status == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(str(dataset / "dataset.json")) and message in lines[0]


def write_manifest(path: Path, root: Path, cases: dict[str, str | None]) -> Path:
    """A manifest listing ``case -> sha256 override (None: the true one)`` for the image of each case."""
    training = []
    for case, sha in cases.items():
        file = root / "imagesTr" / f"{case}.nii.gz"
        true_sha = hashlib.sha256(file.read_bytes()).hexdigest() if file.is_file() else "0" * 64
        size = file.stat().st_size if file.is_file() else 1
        training.append(
            {"case": case, "image": {"path": f"./imagesTr/{case}.nii.gz", "size": size, "sha256": sha or true_sha}}
        )
    path.write_text(json.dumps({"name": "test manifest", "training": training, "test": [], "folds": []}))
    return path


def test_checksum_mismatch_caught(
    run_verify: Callable, dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = write_manifest(tmp_path / "good.json", dataset, {"lung_001": None})
    with caplog.at_level(logging.INFO, logger="lung_tumor"):
        assert verify_dataset(dataset, checksums=True, manifest_path=good) == 0
    assert f"{dataset / LABEL}: not in manifest" in caplog.text
    assert f"{dataset / IMAGE}: not in manifest" not in caplog.text

    bad = write_manifest(tmp_path / "bad.json", dataset, {"lung_001": "ab" * 32})
    status, _, err = run_verify(dataset, "--checksums", "--manifest", str(bad))
    assert status == 1
    assert err.strip().startswith(f"{dataset / IMAGE}: sha256 ") and "manifest says abababab" in err
    assert run_verify(dataset, "--manifest", str(bad))[0] == 0  # without --checksums nothing is hashed


def test_synthetic_data_is_not_compared_with_release_manifest(run_verify: Callable, dataset: Path) -> None:
    status, _, err = run_verify(dataset, "--checksums")
    assert status == 0, err


def test_release_copy_lacking_official_cases(run_verify: Callable, dataset: Path, tmp_path: Path) -> None:
    edit_dataset_json(dataset, lambda c: (c.pop("synthetic"), c.update(training=c["training"][:1], test=[])))
    manifest = write_manifest(tmp_path / "release.json", dataset, {"lung_001": None, "lung_005": None})
    status, _, err = run_verify(dataset, "--manifest", str(manifest))
    assert status == 1
    assert err.strip() == f"{dataset / 'dataset.json'}: official training case lung_005 is missing from the folder"


def test_real_ct_reads_as_hu(run_verify: Callable, real_ct_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "real"
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (root / folder).mkdir(parents=True)
    lidc = real_ct_dir / "lidc-idri-0001"
    shutil.copy(lidc / "ct.nii.gz", root / "imagesTr" / "lidc_0001.nii.gz")
    shutil.copy(lidc / "nodule_mask_2readers.nii.gz", root / "labelsTr" / "lidc_0001.nii.gz")
    shutil.copy(real_ct_dir / "thorax-no-tumour" / "ct.nii.gz", root / "imagesTs" / "thorax.nii.gz")
    write_dataset_json(root, ["lidc_0001"], ["thorax"])

    for path in (root / "imagesTr" / "lidc_0001.nii.gz", root / "imagesTs" / "thorax.nii.gz"):
        info = read_volume(path)
        assert image_problems(info) == [] and info.dtype == np.int16 and info.minimum < -1000
    status, out, err = run_verify(root)
    assert status == 0, err
    assert " 6281 " in out  # the nodule mask's voxels
    assert "512x512x16" in out and "122x102x112" in out


def test_gzip_of_garbage_is_reported(run_verify: Callable, dataset: Path) -> None:
    (dataset / IMAGE).write_bytes(gzip.compress(b"not a nifti header" * 40))
    status, _, err = run_verify(dataset)
    assert status == 1 and f"{dataset / IMAGE}: cannot be read" in err


def test_unreadable_manifest_is_a_one_line_error(run_verify: Callable, dataset: Path, tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("{")
    status, _, err = run_verify(dataset, "--manifest", str(tmp_path / "manifest.json"))
    assert status == 1 and err.startswith(
        f"lung-tumor: error: {tmp_path / 'manifest.json'}: manifest is not valid JSON"
    )
