"""``data_manifest.json``: the official Task06_Lung ids, file records and fixed patient-level folds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lung_tumor.data.manifest import MANIFEST_PATH, fold_split, load_manifest, make_folds, parse_fold
from lung_tumor.errors import LungTumorError

SHARED_MSD = Path(__file__).resolve().parents[1].parent / "shared" / "msd" / "Task06_Lung"


@pytest.fixture(scope="module")
def manifest() -> dict:
    return load_manifest()


def test_manifest_has_the_official_case_ids(manifest: dict) -> None:
    assert manifest["num_training"] == len(manifest["training"]) == 63
    assert manifest["num_test"] == len(manifest["test"]) == 32
    ids = [c["case"] for c in manifest["training"]]
    assert ids == sorted(ids) and len(set(ids)) == 63
    assert ids[:3] == ["lung_001", "lung_003", "lung_004"] and ids[-1] == "lung_096"
    assert manifest["labels"] == {"0": "background", "1": "cancer"}
    record = manifest["training"][0]["image"]
    assert record["path"] == "./imagesTr/lung_001.nii.gz" and record["size"] == 120391773
    assert len(record["sha256"]) == 64


@pytest.mark.skipif(not SHARED_MSD.is_dir(), reason="../shared/msd not present")
def test_manifest_matches_the_official_dataset_json(manifest: dict) -> None:
    official = json.loads((SHARED_MSD / "dataset.json").read_text())
    official_ids = sorted(Path(item["image"]).name.removesuffix(".nii.gz") for item in official["training"])
    assert [c["case"] for c in manifest["training"]] == official_ids
    files = {f["path"]: f for f in json.loads((SHARED_MSD / "files.json").read_text())["files"]}
    for case in manifest["training"]:
        for kind in ("image", "label"):
            assert files[case[kind]["path"]]["sha256"] == case[kind]["sha256"]


def test_folds_are_disjoint_and_cover_every_case(manifest: dict) -> None:
    ids = {c["case"] for c in manifest["training"]}
    folds = [set(f["validation"]) for f in manifest["folds"]]
    assert len(folds) == 5 and [len(f) for f in folds] == [13, 13, 13, 12, 12]
    assert set().union(*folds) == ids
    assert sum(len(f) for f in folds) == len(ids)  # no patient in two folds
    for fold in manifest["folds"]:
        assert set(fold["training"]) == ids - set(fold["validation"])


def test_manifest_folds_are_reproducible(manifest: dict) -> None:
    ids = [c["case"] for c in manifest["training"]]
    assert make_folds(ids) == [f["validation"] for f in manifest["folds"]]
    assert MANIFEST_PATH.name == "data_manifest.json"


def test_fold_split_uses_the_manifest_for_official_ids(manifest: dict) -> None:
    ids = [c["case"] for c in manifest["training"]]
    training, validation = fold_split(ids, 2, manifest)
    assert validation == manifest["folds"][2]["validation"]
    assert not set(training) & set(validation) and len(training) + len(validation) == 63


def test_fold_split_makes_folds_for_other_ids(manifest: dict) -> None:
    ids = [f"lung_{i:03d}" for i in range(1, 17)]
    splits = [fold_split(ids, k, manifest) for k in range(5)]
    validations = [set(v) for _, v in splits]
    assert set().union(*validations) == set(ids) and sum(map(len, validations)) == 16
    with pytest.raises(LungTumorError, match="fold must be an integer in"):
        fold_split(ids, 5, manifest)
    # fold all: every case trains, none validates (nnU-Net's `fold all`)
    assert fold_split(ids, parse_fold("all"), manifest) == (ids, [])
    assert parse_fold("3") == 3 and parse_fold(2) == 2
    for bad in ("every", True, 1.5):
        with pytest.raises(LungTumorError, match="fold must be an integer or 'all'"):
            parse_fold(bad)
