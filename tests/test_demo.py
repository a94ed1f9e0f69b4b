"""The README's main command end to end: synth, preprocess, train, evaluate, predict and report."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lung_tumor.data.manifest import fold_split
from lung_tumor.demo import run_demo


@pytest.mark.slow
def test_demo_runs_the_whole_job(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    summary = run_demo(tmp_path, minutes=0.5)
    ids = [f"lung_{i:03d}" for i in range(1, 17)]
    assert summary["case_ids"] == fold_split(ids, 0)[1]  # the held-out cases of fold 0
    evaluation = tmp_path / "runs" / "unet2d" / "fold_0" / "evaluation"
    written = json.loads((evaluation / "summary.json").read_text())
    assert not {"lung_008", "lung_016"} & set(summary["case_ids"])  # the tumour-free cases are in other folds
    assert written["dice_per_case_n"] == len(summary["case_ids"])  # so Dice is defined for every case
    assert 0.0 <= written["dice_pooled"] <= 1.0
    assert len((evaluation / "per_case.csv").read_text().splitlines()) == 1 + len(summary["case_ids"])
    assert len(list((evaluation / "pictures").glob("*.png"))) >= len(summary["case_ids"])
    held_out = summary["held_out"]
    assert held_out["case_ids"] == [f"lung_{i:03d}" for i in range(1, 17)]  # every case of the separate test set
    assert held_out == json.loads((evaluation.parent / "evaluation_held_out" / "summary.json").read_text())
    assert (tmp_path / "held_out" / "dataset.json").is_file()
    shipped = summary["pretrained_held_out"]
    assert shipped["case_ids"] == held_out["case_ids"]  # the shipped model on the same held-out set
    assert shipped == json.loads((tmp_path / "pretrained_held_out" / "summary.json").read_text())
    assert [p["mask"].name for p in summary["pretrained_predictions"]] == [
        p["mask"].name for p in summary["predictions"]
    ]
    for paths in summary["predictions"] + summary["pretrained_predictions"]:
        source = tmp_path / "data" / "imagesTs" / paths["mask"].name
        mask, image = nib.load(paths["mask"]), nib.load(source)
        assert mask.shape == image.shape and mask.get_data_dtype() == np.uint8
        np.testing.assert_allclose(mask.affine, image.affine, atol=1e-4)
        assert "total tumour volume" in paths["report_text"].read_text()
    printed = capsys.readouterr().out
    assert "lung-tumor demo finished" in printed and printed.count("Dice per case, mean") == 3
    assert "held-out test set (16 cases" in printed and "the model shipped in the package" in printed
    assert printed.count("shipped model's prediction: ") == 2
