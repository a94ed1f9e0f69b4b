"""The model shipped in the package (``predict`` without ``--run``) and ``lung-tumor export``."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from test_geometry import make_shift_run

from lung_tumor import models
from lung_tumor.cli import main
from lung_tumor.config import config_hash
from lung_tumor.data.synth import synthesize_case
from lung_tumor.models import DEFAULT_MODEL
from lung_tumor.postprocessing import load_postprocessing
from lung_tumor.training.run import load_trained_model

MAX_WEIGHTS_MB = 20


def test_shipped_model_is_complete_small_and_documented() -> None:
    weights = DEFAULT_MODEL / "checkpoints" / "best.pt"
    assert 0 < weights.stat().st_size <= MAX_WEIGHTS_MB * 2**20
    network, config = load_trained_model(DEFAULT_MODEL)  # the config hash check passes: config.yaml is as trained
    assert (
        sum(p.numel() for p in network.parameters())
        == json.loads((DEFAULT_MODEL / "metadata.json").read_text())["parameters"]
    )
    assert config.get("stream")["enabled"] is True  # trained on the synthetic stream
    tuned = json.loads((DEFAULT_MODEL / "postprocess.json").read_text())  # chosen by lung-tumor tune
    assert load_postprocessing(DEFAULT_MODEL).as_dict() == tuned["settings"] and tuned["chosen_on"]["cases"]
    card = (DEFAULT_MODEL / "MODEL_CARD.md").read_text()
    for needed in ("lung-tumor train --config configs/pretrained.yaml", "synthetic", "not for diagnosis"):
        assert needed in card


def test_predict_without_run_uses_the_shipped_model_and_writes_a_mask_on_the_input_grid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = synthesize_case(3, seed=424242, size="small")
    source = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(case.image, case.affine), source)
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "--input", str(source)]) == 0
    written = nib.load(tmp_path / "predictions" / "scan.nii.gz")
    assert written.shape == case.image.shape
    np.testing.assert_allclose(written.affine, nib.load(source).affine, atol=1e-5)
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1}
    provenance = json.loads((tmp_path / "predictions" / "scan_report.json").read_text())["provenance"]
    assert provenance["run_dir"] == str(DEFAULT_MODEL)


def test_missing_shipped_weights_are_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    source = tmp_path / "scan.nii.gz"
    case = synthesize_case(1, seed=424242, size="small")
    nib.save(nib.Nifti1Image(case.image, case.affine), source)
    monkeypatch.setattr(models, "DEFAULT_MODEL", tmp_path / "nowhere")
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "--input", str(source)]) != 0
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "shipped model's weights are missing" in error[0] and "--run" in error[0]
    assert not (tmp_path / "predictions").exists()


def test_export_keeps_the_config_byte_for_byte_and_the_network_weights_alone(tmp_path: Path) -> None:
    run = make_shift_run(tmp_path / "run", shift=(1, 0), gain=40.0)
    content = yaml.safe_load((run / "config.yaml").read_text())
    (run / "metadata.json").write_text(json.dumps({"config_hash": config_hash(content), "parameters": 10}))
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    state["optimizer"] = {"state": {}, "param_groups": []}  # a training checkpoint holds more than the network
    torch.save(state, run / "checkpoints" / "best.pt")
    (run / "postprocess.json").write_text(json.dumps({"generator": "lung-tumor tune", "settings": {"threshold": 0.4}}))

    out = tmp_path / "model"
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    assert (out / "config.yaml").read_bytes() == (run / "config.yaml").read_bytes()
    exported = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    assert sorted(exported) == ["network"]
    for name, tensor in state["network"].items():
        torch.testing.assert_close(exported["network"][name], tensor)
    assert load_postprocessing(out).threshold == 0.4
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["parameters"] == 10 and metadata["exported_from"]["run"] == str(run)
    load_trained_model(out)  # the hash check passes on the copy
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0  # its own files: replaced


def test_export_refuses_to_replace_a_file_it_did_not_write(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = make_shift_run(tmp_path / "run", shift=(1, 0), gain=40.0)
    out = tmp_path / "model"
    out.mkdir()
    (out / "config.yaml").write_text("mine")
    assert main(["export", "--run", str(run), "--out", str(out)]) != 0
    assert "config.yaml" in capsys.readouterr().err and (out / "config.yaml").read_text() == "mine"
    assert not (out / "checkpoints").exists()


def test_gpu_stage_fine_tunes_the_cpu_stage_on_the_same_data() -> None:
    from lung_tumor.config import PreprocessConfig, StreamConfig, TrainingConfig, load_config
    from lung_tumor.training.run import load_initial_weights

    configs = Path(__file__).resolve().parents[1] / "configs"
    cpu, gpu = load_config(configs / "pretrained.yaml"), load_config(configs / "pretrained_gpu.yaml")
    # same data, cache and preprocessing (worker count aside): the same validation cases choose the model
    assert gpu["data"] == cpu["data"]
    same = {"num_workers": 0}
    assert PreprocessConfig.from_dict({**gpu["preprocess"], **same}) == PreprocessConfig.from_dict(
        {**cpu["preprocess"], **same}
    )
    assert gpu["network_def"] == cpu["network_def"] and gpu["features"] == cpu["features"]
    # a fresh stream: none of the CPU run's synthetic cases
    assert StreamConfig.from_dict(gpu["stream"]).seed != StreamConfig.from_dict(cpu["stream"]).seed
    # it starts from the CPU stage's run folder, of which the shipped model is the export
    start = TrainingConfig.from_dict(gpu["training"]).init_from
    assert Path(start) == Path(cpu["output_dir"]) / cpu["run_name"] / f"fold_{cpu['fold']}"
    assert json.loads((DEFAULT_MODEL / "metadata.json").read_text())["config_hash"] == config_hash(cpu.get())
    network = gpu.get_parsed_content("network_def", instantiate=True)
    assert load_initial_weights(network, DEFAULT_MODEL).resolve() == DEFAULT_MODEL / "checkpoints" / "best.pt"
