"""Ensembles (``lung-tumor export --run A --run B``): averaged probabilities, and one-line errors for bad folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from test_inference import chest, make_unet_run

from lung_tumor.cli import main
from lung_tumor.ensemble import FILENAME, ensemble_members, export_ensemble
from lung_tumor.errors import LungTumorError
from lung_tumor.evaluation.evaluate import run_cases
from lung_tumor.inference import Predictor


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two runs of the same network and preprocessing with different weights (the second's last layer rescaled)."""
    root = tmp_path_factory.mktemp("runs")
    first = make_unet_run(root / "a")
    second = root / "b"
    shutil.copytree(first, second)
    state = torch.load(second / "checkpoints" / "best.pt", weights_only=True)
    last = [name for name in state["network"] if name.endswith("weight")][-1]
    state["network"][last] = state["network"][last] * 0.3
    torch.save(state, second / "checkpoints" / "best.pt")
    return first, second


def copies(runs: tuple[Path, Path], root: Path) -> tuple[Path, Path]:
    """This test's own copies of the two runs (as ``root/a`` and ``root/b``)."""
    first, second = (shutil.copytree(run, root / run.name) for run in runs)
    return Path(first), Path(second)


def scan(folder: Path) -> Path:
    path = folder / "scan.nii.gz"
    nib.save(nib.Nifti1Image(chest((64, 64, 12)), np.diag([2.0, 2.0, 2.0, 1.0])), path)
    return path


@pytest.mark.parametrize("flip_tta", [False, True])
def test_an_ensemble_averages_its_members_probabilities(
    tmp_path: Path, flip_tta: bool, trained_runs: tuple[Path, Path]
) -> None:
    first, second = copies(trained_runs, tmp_path)
    out = tmp_path / "ensemble"
    export_ensemble([first, second], out)
    assert ensemble_members(out) == [out / "member_1", out / "member_2"]
    volume = Predictor(first, precision="float32").prepare(scan(tmp_path)).volume
    members = [Predictor(run, precision="float32", flip_tta=flip_tta).probabilities(volume) for run in (first, second)]
    assert (members[0] - members[1]).abs().max() > 0.05  # the members disagree: the mean is not either one
    ensemble = Predictor(out, precision="float32", flip_tta=flip_tta)
    torch.testing.assert_close(ensemble.probabilities(volume), (members[0] + members[1]) / 2, atol=1e-6, rtol=0)


def test_tune_takes_both_flip_settings_from_one_pass_as_each_setting_alone(
    tmp_path: Path, trained_runs: tuple[Path, Path]
) -> None:
    first, second = copies(trained_runs, tmp_path)
    out = tmp_path / "ensemble"
    export_ensemble([first, second], out)
    volume = Predictor(first, precision="float32").prepare(scan(tmp_path)).volume
    plain, mirrored = Predictor(out, precision="float32").probabilities_with_and_without_flips(volume)
    alone = {tta: Predictor(out, precision="float32", flip_tta=tta).probabilities(volume) for tta in (False, True)}
    assert (alone[True] - alone[False]).abs().max() > 1e-3  # the mirror images change the probabilities
    assert torch.equal(plain, alone[False]) and torch.equal(mirrored, alone[True])  # bit for bit


def test_predict_with_an_ensemble_records_every_member(tmp_path: Path, trained_runs: tuple[Path, Path]) -> None:
    first, second = copies(trained_runs, tmp_path)
    out = tmp_path / "ensemble"
    assert main(["export", "--run", str(first), "--run", str(second), "--out", str(out)]) == 0
    content = json.loads((out / FILENAME).read_text())
    assert content["members"] == ["member_1", "member_2"] and content["generator"].startswith("lung-tumor")
    assert main(["predict", "--run", str(out), "--input", str(scan(tmp_path)), "--output", str(tmp_path / "p")]) == 0
    provenance = json.loads((tmp_path / "p" / "scan_report.json").read_text())["provenance"]
    assert provenance["checkpoint"] == str((out / FILENAME).resolve())
    assert provenance["ensemble_members"] == [
        str((out / name / "checkpoints" / "best.pt").resolve()) for name in ("member_1", "member_2")
    ]
    mask = np.asarray(nib.load(tmp_path / "p" / "scan.nii.gz").dataobj)
    assert mask.shape == (64, 64, 12) and mask.any()


def test_members_must_be_preprocessed_alike(
    tmp_path: Path, capsys: pytest.CaptureFixture, trained_runs: tuple[Path, Path]
) -> None:
    first, second = copies(trained_runs, tmp_path)
    config = yaml.safe_load((second / "config.yaml").read_text())
    config["preprocess"]["pixel_mm"] = 3.0
    (second / "config.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "ensemble"
    assert main(["export", "--run", str(first), "--run", str(second), "--out", str(out)]) != 0
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "differs from a in preprocess.pixel_mm (3.0 against 2.0)" in error[0]
    assert str(second / "config.yaml") in error[0]
    assert not out.exists()  # nothing written


def test_export_refuses_one_run_a_single_model_folder_and_a_checkpoint(
    tmp_path: Path, trained_runs: tuple[Path, Path]
) -> None:
    first, second = copies(trained_runs, tmp_path)
    with pytest.raises(LungTumorError, match="at least two runs"):
        export_ensemble([first], tmp_path / "one")
    with pytest.raises(LungTumorError, match="given twice"):
        export_ensemble([first, second, tmp_path / "a" / ".." / "a"], tmp_path / "twice")
    assert not (tmp_path / "twice").exists()
    single = tmp_path / "single"
    assert main(["export", "--run", str(first), "--out", str(single)]) == 0
    with pytest.raises(LungTumorError, match="holds a single model"):
        export_ensemble([first, second], single)
    assert not (single / FILENAME).exists()
    args = ["export", "--run", str(first), "--run", str(second), "--out", str(tmp_path / "e"), "--checkpoint", "last"]
    assert main(args) != 0 and not (tmp_path / "e").exists()


def test_re_export_removes_the_former_members_post_processing(tmp_path: Path, trained_runs: tuple[Path, Path]) -> None:
    first, second = copies(trained_runs, tmp_path)
    out = tmp_path / "ensemble"
    export_ensemble([first, second], out)
    (out / "postprocess.json").write_text(json.dumps({"generator": "lung-tumor tune", "settings": {"threshold": 0.3}}))
    assert Predictor(out).postprocessing.threshold == 0.3
    export_ensemble([second, first], out)
    assert not (out / "postprocess.json").exists() and Predictor(out).postprocessing.threshold == 0.5


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([], "non-empty list"),
        (["member_1", "member_1"], "named twice"),
        (["member_1", "../a"], "not a folder inside"),
        (["member_1", "missing"], "not a folder inside"),
    ],
)
def test_a_bad_ensemble_file_is_one_line(
    tmp_path: Path, members: list[str], message: str, trained_runs: tuple[Path, Path]
) -> None:
    first, second = copies(trained_runs, tmp_path)
    out = tmp_path / "ensemble"
    export_ensemble([first, second], out)
    (out / FILENAME).write_text(json.dumps({"generator": "lung-tumor export ensemble", "members": members}))
    with pytest.raises(LungTumorError, match=message) as caught:
        Predictor(out)
    assert str(out / FILENAME) in str(caught.value)


def test_an_ensemble_is_scored_on_all_cases_or_a_named_fold(tmp_path: Path, trained_runs: tuple[Path, Path]) -> None:
    first, second = copies(trained_runs, tmp_path)
    out = tmp_path / "ensemble"
    export_ensemble([first, second], out)
    with pytest.raises(LungTumorError, match="no fold of its own"):
        run_cases(out, data=tmp_path / "data")
