"""``evaluate_run`` and its scoring loop with a fake predictor: CSV, JSON, case choice and errors."""

from __future__ import annotations

import csv
import json
import sys
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from test_heap import batches_keeping_freed_memory

from lung_tumor.cli import main
from lung_tumor.data.manifest import fold_split, load_manifest
from lung_tumor.data.msd import list_cases, write_dataset_json
from lung_tumor.errors import LungTumorError
from lung_tumor.evaluation.evaluate import evaluate_run, score_cases

AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])
SHAPE = (24, 24, 8)


def write_dataset(root: Path, count: int = 5) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``count`` cases; case 0 has a 6x6x4 tumour predicted 1 voxel off, case 1 has no tumour but a false blob."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    cases = {}
    for index in range(count):
        case_id = f"synth_{index:03d}"
        image = np.full(SHAPE, -800, dtype=np.int16)
        image[0] = -1000  # a strip of air: a constant volume is refused as not CT
        truth = np.zeros(SHAPE, dtype=np.uint8)
        prediction = np.zeros(SHAPE, dtype=np.uint8)
        if index != 1:
            truth[6:12, 6:12, 2:6] = 1
            prediction[7:13, 6:12, 2:6] = 1
        else:
            prediction[15:17, 15:17, 3:5] = 1
        image[truth > 0] = 30
        nib.save(nib.Nifti1Image(image, AFFINE), root / "imagesTr" / f"{case_id}.nii.gz")
        nib.save(nib.Nifti1Image(truth, AFFINE), root / "labelsTr" / f"{case_id}.nii.gz")
        cases[case_id] = (truth, prediction)
    write_dataset_json(root, sorted(cases), [])
    return cases


class FakePredictor:
    """Returns the prepared prediction of each case, with probabilities 0.9 inside and 0.0 outside."""

    def __init__(self, cases: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        self.cases = cases
        self.calls: list[str] = []

    def predict_file(self, image_path: Path) -> types.SimpleNamespace:
        case_id = Path(image_path).name.removesuffix(".nii.gz")
        self.calls.append(case_id)
        _, prediction = self.cases[case_id]
        image = np.asarray(nib.load(image_path).dataobj, dtype=np.float32)
        return types.SimpleNamespace(
            mask=prediction,
            probability=prediction.astype(np.float32) * 0.9,
            affine=AFFINE,
            spacing=(1.0, 1.0, 2.0),
            image_hu=image,
        )


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as handle:
        return {row["case_id"]: row for row in csv.DictReader(handle)}


def test_score_cases_writes_expected_csv_and_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cases = write_dataset(tmp_path / "data", count=2)
    chosen = list_cases(tmp_path / "data")
    batches = batches_keeping_freed_memory(monkeypatch, "lung_tumor.evaluation.evaluate")
    summary = score_cases(FakePredictor(cases), chosen, tmp_path / "out", pictures=False)
    assert len(batches) == 1  # two cases: the second reuses the memory the first freed

    rows = read_csv(tmp_path / "out" / "per_case.csv")
    tumour, empty = rows["synth_000"], rows["synth_001"]
    # 6x6x4 cube shifted by one voxel: overlap 5x6x4 = 120 of 144 voxels each
    assert tumour["case_type"] == "tumour"
    assert float(tumour["dice"]) == pytest.approx(120 / 144, rel=1e-5)
    assert float(tumour["hd95_mm"]) == pytest.approx(1.0)
    assert tumour["note"] == ""
    assert empty["case_type"] == "empty_truth"
    assert float(empty["dice"]) == 0.0
    assert empty["recall"] == "" and empty["hd95_mm"] == ""
    assert "recall undefined: empty ground truth" in empty["note"]
    assert empty["lesions_false_positive"] == "1"

    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert written["case_types"]["empty_truth"] == 1
    assert written["dice_per_case_n"] == 2
    assert written["dice_per_case_mean"] == pytest.approx((120 / 144 + 0.0) / 2, rel=1e-5)
    assert written["hd95_mm_per_case_n"] == 1
    # pooled over both cases: TP 120, FP 24 + 8 (the 2x2x2 blob), FN 24
    assert written["dice_pooled"] == pytest.approx(240 / (240 + 32 + 24))
    assert written["lesion_sensitivity_pooled"] == 1.0
    assert written["lesion_false_positives_per_case"] == 0.5
    # naive soft Dice over the 16 axial slices: case 0 has 4 slices of 2*0.9*30 / (0.9*36 + 36), the rest 0
    per_tumour_slice = 2 * 0.9 * 30 / (0.9 * 36 + 36)
    assert written["soft_dice_slice_averaged_naive"] == pytest.approx(4 * per_tumour_slice / 16, rel=1e-5)
    assert "nnU-Net" in written["conventions"]["both_empty"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["per_case.csv", "summary.json"]


def write_run(run: Path, data: Path, fold: int) -> Path:
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"fold": fold, "data": {"root": str(data)}}))
    return run


def test_evaluate_run_defaults_to_the_runs_fold_and_writes_pictures(tmp_path: Path, monkeypatch) -> None:
    cases = write_dataset(tmp_path / "data")
    run = write_run(tmp_path / "run", tmp_path / "data", fold=1)
    predictor = FakePredictor(cases)
    fake = types.ModuleType("lung_tumor.inference")
    fake.Predictor = lambda run_dir: predictor
    monkeypatch.setitem(sys.modules, "lung_tumor.inference", fake)

    summary = evaluate_run(run)
    _, validation = fold_split(sorted(cases), 1, load_manifest())
    assert summary["case_ids"] == validation == predictor.calls
    pictures = sorted(p.name for p in (run / "evaluation" / "pictures").iterdir())
    assert pictures == sorted(f"{c}_{kind}.png" for c in validation for kind in ("overlay", "montage"))

    chosen = evaluate_run(
        run, tmp_path / "data", cases=["synth_001", "synth_003"], output=tmp_path / "o", pictures=False
    )
    assert chosen["case_ids"] == ["synth_001", "synth_003"]
    assert chosen["case_types"] == {"tumour": 1, "empty_truth": 1, "empty_prediction": 0, "both_empty": 0}
    assert not (tmp_path / "o" / "pictures").exists()

    held_out = evaluate_run(run, tmp_path / "data", all_cases=True, output=tmp_path / "all", pictures=False)
    assert held_out["case_ids"] == sorted(cases) and held_out["cases"] == 5

    status = main(["evaluate", "--run", str(run), "--data", str(tmp_path / "data"), "--fold", "2", "--no-pictures"])
    assert status == 0
    assert (
        json.loads((run / "evaluation" / "summary.json").read_text())["case_ids"]
        == fold_split(sorted(cases), 2, load_manifest())[1]
    )


def test_label_shape_mismatch_names_the_file_and_writes_nothing(tmp_path: Path) -> None:
    cases = write_dataset(tmp_path / "data", count=1)
    label = tmp_path / "data" / "labelsTr" / "synth_000.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((24, 24, 7), np.uint8), AFFINE), label)
    with pytest.raises(LungTumorError, match="label shape") as error:
        score_cases(FakePredictor(cases), list_cases(tmp_path / "data"), tmp_path / "out", pictures=False)
    assert str(label) in str(error.value)
    assert not (tmp_path / "out" / "per_case.csv").exists()


def test_user_errors(tmp_path: Path, capsys) -> None:
    cases = write_dataset(tmp_path / "data")
    run = write_run(tmp_path / "run", tmp_path / "data", fold=0)
    with pytest.raises(LungTumorError, match="unknown case"):
        evaluate_run(run, tmp_path / "data", cases=["nope"], predictor=FakePredictor(cases))
    with pytest.raises(LungTumorError, match="fold must be"):
        evaluate_run(run, tmp_path / "data", fold=7, predictor=FakePredictor(cases))
    with pytest.raises(LungTumorError, match="fold all .* no validation cases: score a separate test set with --all"):
        evaluate_run(run, tmp_path / "data", fold="all", predictor=FakePredictor(cases))
    assert main(["evaluate", "--run", str(tmp_path / "missing"), "--data", str(tmp_path / "data")]) == 1
    assert "run folder not found" in capsys.readouterr().err
