"""The model shipped in the package (``predict`` without ``--run``) and ``lung-tumor export``."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from monai.bundle import ConfigParser
from test_geometry import make_shift_run

from lung_tumor import models
from lung_tumor.cli import main
from lung_tumor.config import config_hash
from lung_tumor.data.synth import synthesize_case
from lung_tumor.models import DEFAULT_MODEL
from lung_tumor.postprocessing import PostProcessing, load_postprocessing
from lung_tumor.training.run import load_trained_model

MAX_WEIGHTS_MB = 20


def test_shipped_model_is_complete_small_and_documented() -> None:
    from lung_tumor.ensemble import ensemble_members, is_ensemble

    assert is_ensemble(DEFAULT_MODEL)
    members = ensemble_members(DEFAULT_MODEL)
    assert [m.name for m in members] == ["member_1", "member_2"]  # the lesion stage, then the small-lesion stage
    weights = [member / "checkpoints" / "best.pt" for member in members]
    assert 0 < sum(w.stat().st_size for w in weights) <= MAX_WEIGHTS_MB * 2**20
    for member in members:
        network, config = load_trained_model(member)  # the config hash check passes: config.yaml is as trained
        assert (
            sum(p.numel() for p in network.parameters())
            == json.loads((member / "metadata.json").read_text())["parameters"]
        )
        assert config.get("stream")["enabled"] is True  # trained on the synthetic stream
    tuned = json.loads((DEFAULT_MODEL / "postprocess.json").read_text())  # chosen by lung-tumor tune, for the pair
    # written before min_slice_mm existed: a setting the file lacks keeps its default (0, the scan's own slices)
    assert load_postprocessing(DEFAULT_MODEL) == PostProcessing(**tuned["settings"]) and tuned["chosen_on"]["cases"]
    assert load_postprocessing(DEFAULT_MODEL).min_slice_mm == 0.0
    # the first member alone is the model shipped before the pair, with its own post-processing
    assert load_postprocessing(members[0]).as_dict() == {
        "threshold": 0.4,
        "min_lesion_mm3": 300.0,
        "lung_mask": False,
        "flip_tta": True,
        "min_depth_ratio": 0.5,
        "min_slice_mm": 0.0,
        "second_look_mm": 0.0,  # written before the second look existed: off
        "second_look_threshold": 0.7,
        "second_look_support": 0.5,
    }
    card = (DEFAULT_MODEL / "MODEL_CARD.md").read_text()
    for needed in (
        "lung-tumor train --config configs/pretrained.yaml",
        "lung-tumor train --config configs/pretrained_lesion.yaml",
        "lung-tumor train --config configs/pretrained_small.yaml",
        "lung-tumor tune --run lung_tumor/models/default",
        "synthetic",
        "not for diagnosis",
    ):
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


CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# the first stage's network weights as exported (lung_tumor/models/default/checkpoints/best.pt until the second
# stage replaced them): the shipped second stage started from them
FIRST_STAGE_EXPORT_SHA256 = "2a238e45782776e8e78c9c97fd8a75c48c3f262c515191eebeb75e72e7d426e0"


def _fine_tunes_on_the_same_data(name: str, base: str = "pretrained.yaml") -> tuple[ConfigParser, ConfigParser]:
    """The stage ``configs/NAME`` and the stage it starts from, ``configs/BASE`` (default the first stage), checked
    to share data, cache, preprocessing and network, to draw a fresh stream and to start from BASE's run folder."""
    from lung_tumor.config import PreprocessConfig, StreamConfig, TrainingConfig, load_config

    first, stage = load_config(CONFIGS / base), load_config(CONFIGS / name)
    # same data, cache and preprocessing (worker count aside): the same validation cases choose the model
    assert stage["data"] == first["data"]
    same = {"num_workers": 0}
    assert PreprocessConfig.from_dict({**stage["preprocess"], **same}) == PreprocessConfig.from_dict(
        {**first["preprocess"], **same}
    )
    assert stage["network_def"] == first["network_def"] and stage["features"] == first["features"]
    # a fresh stream: none of the base stage's synthetic cases
    assert StreamConfig.from_dict(stage["stream"]).seed != StreamConfig.from_dict(first["stream"]).seed
    start = TrainingConfig.from_dict(stage["training"]).init_from
    assert Path(start) == Path(first["output_dir"]) / first["run_name"] / f"fold_{first['fold']}"
    assert stage["run_name"] != first["run_name"]
    return first, stage


def test_gpu_stage_fine_tunes_the_cpu_stage_on_the_same_data() -> None:
    from lung_tumor.config import StreamConfig, load_config

    _, gpu = _fine_tunes_on_the_same_data("pretrained_gpu.yaml")
    lesion = load_config(CONFIGS / "pretrained_lesion.yaml")
    assert StreamConfig.from_dict(gpu["stream"]).seed != StreamConfig.from_dict(lesion["stream"]).seed


def test_shipped_model_is_the_lesion_stage_as_configured() -> None:
    from lung_tumor.training.run import load_initial_weights, saved_config_hash

    _, stage = _fine_tunes_on_the_same_data("pretrained_lesion.yaml")
    assert stage["sampler"]["balance"] == "lesion"
    # the config as trained, but for where the weights came from: the run started from the first stage's export,
    # then the shipped model (the same network weights as the first stage's run folder)
    as_run = copy.deepcopy(stage.get())
    as_run["training"]["init_from"] = "lung_tumor/models/default"
    member = DEFAULT_MODEL / "member_1"
    metadata = json.loads((member / "metadata.json").read_text())
    assert metadata["config_hash"] == saved_config_hash(as_run)
    assert metadata["init_from"]["sha256"] == FIRST_STAGE_EXPORT_SHA256
    assert metadata["sampler_balance"] == "lesion" and metadata["stream"]["seed"] == 1400
    network = stage.get_parsed_content("network_def", instantiate=True)
    assert load_initial_weights(network, member).resolve() == member / "checkpoints" / "best.pt"


def test_shipped_small_lesion_member_is_the_small_stage_as_configured() -> None:
    """The second member: configs/pretrained_small.yaml as trained, from the lesion stage's run folder."""
    from lung_tumor.config import StreamConfig, TrainingConfig
    from lung_tumor.training.run import saved_config_hash

    lesion, stage = _fine_tunes_on_the_same_data("pretrained_small.yaml", base="pretrained_lesion.yaml")
    assert stage["preprocess"] == lesion["preprocess"]  # the loader's worker count too
    assert stage["loss"]["_target_"] == "monai.losses.DiceCELoss" and stage["loss"]["batch"] is False
    start = TrainingConfig.from_dict(stage["training"]).init_from
    metadata = json.loads((DEFAULT_MODEL / "member_2" / "metadata.json").read_text())
    assert metadata["config_hash"] == saved_config_hash(stage.get())
    assert metadata["stream"]["seed"] == StreamConfig.from_dict(stage["stream"]).seed == 1900
    assert metadata["init_from"]["path"] == f"{start}/checkpoints/best.pt"


def test_fine_grid_stage_fine_tunes_the_lesion_stage_on_the_same_data_and_field() -> None:
    """The third stage tried (not shipped): the lesion stage on 2.0 mm pixels, same data, field of view, network
    and sampling, from a fresh stream."""
    from lung_tumor.config import PreprocessConfig, StreamConfig, TrainingConfig, load_config

    lesion, stage = load_config(CONFIGS / "pretrained_lesion.yaml"), load_config(CONFIGS / "pretrained_fine.yaml")
    assert stage["data"]["root"] == lesion["data"]["root"] and stage["fold"] == lesion["fold"]
    assert stage["data"]["cache_dir"] != lesion["data"]["cache_dir"]  # slices of another grid
    fine, coarse = PreprocessConfig.from_dict(stage["preprocess"]), PreprocessConfig.from_dict(lesion["preprocess"])
    assert (fine.pixel_mm, coarse.pixel_mm) == (2.0, 2.5)
    assert fine.pixel_mm * fine.image_size == coarse.pixel_mm * coarse.image_size  # the same 400 mm field
    for name in ("network_def", "features", "context_slices", "sampler", "loss", "augmentation"):
        assert stage[name] == lesion[name], name
    earlier = ("pretrained.yaml", "pretrained_lesion.yaml", "pretrained_gpu.yaml")
    seeds = {StreamConfig.from_dict(load_config(CONFIGS / name)["stream"]).seed for name in earlier}
    assert StreamConfig.from_dict(stage["stream"]).seed not in seeds  # a fresh stream
    start = TrainingConfig.from_dict(stage["training"]).init_from
    assert Path(start) == Path(lesion["output_dir"]) / lesion["run_name"] / f"fold_{lesion['fold']}"
    assert stage["run_name"] != lesion["run_name"]


def test_full_size_stage_fine_tunes_the_small_stage_on_full_size_scans() -> None:
    """configs/pretrained_full.yaml: the small-lesion stage on full-size synthetic scans of their own seed (the earlier
    stages saw only `--size small` cases, whose tumours start near 10 mm), same grid, network, loss and sampling, from
    a fresh stream."""
    from lung_tumor.config import PreprocessConfig, StreamConfig, TrainingConfig, load_config

    small, stage = load_config(CONFIGS / "pretrained_small.yaml"), load_config(CONFIGS / "pretrained_full.yaml")
    assert stage["data"]["root"] != small["data"]["root"] and stage["data"]["cache_dir"] != small["data"]["cache_dir"]
    assert PreprocessConfig.from_dict(stage["preprocess"]) == PreprocessConfig.from_dict(small["preprocess"])
    for name in ("network_def", "features", "context_slices", "sampler", "loss", "augmentation"):
        assert stage[name] == small[name], name
    header = (CONFIGS / "pretrained_full.yaml").read_text()
    synth = f"lung-tumor synth --out {stage['data']['root']} --cases 40 --test-cases 0 --size full --seed 3131"
    assert synth in header
    earlier = ("pretrained.yaml", "pretrained_lesion.yaml", "pretrained_gpu.yaml", "pretrained_small.yaml")
    seeds = {StreamConfig.from_dict(load_config(CONFIGS / name)["stream"]).seed for name in earlier}
    assert StreamConfig.from_dict(stage["stream"]).seed not in seeds  # a fresh stream
    # neither the validation scans' seed (the configs' `--seed 5555`) nor the held-out benchmark's (its default)
    bench = (CONFIGS.parent / "scripts" / "bench_generalisation.py").read_text()
    assert '"--seed", type=int, default=7777' in bench and "--size full --seed 5555" in header
    start = TrainingConfig.from_dict(stage["training"]).init_from
    assert Path(start) == Path(small["output_dir"]) / small["run_name"] / f"fold_{small['fold']}"
    assert stage["run_name"] not in {load_config(CONFIGS / name)["run_name"] for name in earlier}


def test_gpu_fine_stage_fine_tunes_member_1_on_its_own_full_size_cases_at_1_25_mm() -> None:
    """configs/pretrained_gpu_fine.yaml (tried on a GPU, not shipped): member 1 on 1.25 mm pixels over the same
    400 mm field and 240 mm patches, on full-size cases of a seed of their own (scripts/gpu_stage.py makes them),
    with no stream."""
    from lung_tumor.config import PreprocessConfig, StreamConfig, TrainingConfig, load_config

    lesion, stage = load_config(CONFIGS / "pretrained_lesion.yaml"), load_config(CONFIGS / "pretrained_gpu_fine.yaml")
    fine, coarse = PreprocessConfig.from_dict(stage["preprocess"]), PreprocessConfig.from_dict(lesion["preprocess"])
    assert (fine.pixel_mm, coarse.pixel_mm) == (1.25, 2.5)
    assert fine.pixel_mm * fine.image_size == coarse.pixel_mm * coarse.image_size  # the same 400 mm field
    crops = stage["augmentation"]["crop_size"], lesion["augmentation"]["crop_size"]
    assert crops[0] * fine.pixel_mm == crops[1] * coarse.pixel_mm  # the same 240 mm patches
    for name in ("network_def", "features", "context_slices", "sampler"):
        assert stage[name] == lesion[name], name
    assert not StreamConfig.from_dict(stage["stream"]).enabled
    assert (
        Path(TrainingConfig.from_dict(stage["training"]).init_from)
        == DEFAULT_MODEL.relative_to(CONFIGS.parent) / "member_1"
    )
    others = [
        load_config(path)
        for path in sorted(CONFIGS.glob("pretrained*.yaml"))
        if path.name != "pretrained_gpu_fine.yaml"
    ]
    assert stage["data"]["root"] not in {c["data"]["root"] for c in others}
    assert stage["run_name"] not in {c["run_name"] for c in others}
    # the script's seed: none of the validation scans', the held-out benchmark's or another stage's data
    script = (CONFIGS.parent / "scripts" / "gpu_stage.py").read_text()
    assert (
        '"--seed", type=int, default=6262' in script
        and "seed 6262" in (CONFIGS / "pretrained_gpu_fine.yaml").read_text()
    )
    used = {5555, 7777, 20, 3131, 4646} | {StreamConfig.from_dict(c["stream"]).seed for c in others}
    assert 6262 not in used
