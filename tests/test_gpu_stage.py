"""scripts/gpu_stage.py: a time-boxed synth, preprocess and train in one command, and the rate it prints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lung_tumor.data.synth import synthesize_dataset
from tests.conftest import load_script

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stage():
    return load_script("gpu_stage")


def test_validation_seconds_sums_the_evaluator_passes_only(stage, tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text(
        "06:39:21 INFO ignite.engine.engine.SupervisedEvaluator: Epoch[4] Complete. Time taken: 00:00:02.322\n"
        "06:39:21 INFO ignite.engine.engine.SupervisedTrainer: Epoch[4] Complete. Time taken: 00:00:13.753\n"
        "06:40:08 INFO ignite.engine.engine.SupervisedEvaluator: Epoch[8] Complete. Time taken: 00:01:01.500\n"
    )
    assert stage.validation_seconds(log) == pytest.approx(2.322 + 61.5)


@pytest.mark.slow
def test_the_stage_trains_on_the_cases_there_and_prints_its_rate(
    stage, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the cases made already (synth is skipped), the stage preprocesses them, trains within its time and
    prints the slices and the rate; the run's metadata agrees."""
    config = yaml.safe_load((REPO / "configs" / "pretrained_gpu_fine.yaml").read_text())
    config["data"] = {"root": str(tmp_path / "data"), "cache_dir": str(tmp_path / "cache")}
    config["output_dir"] = str(tmp_path / "runs")
    config["preprocess"].update(pixel_mm=5.0, image_size=48)
    config["augmentation"]["crop_size"] = 32
    config["training"].update(batch_size=4, samples_per_epoch=8, num_workers=0, init_from=None)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    synthesize_dataset(tmp_path / "data", cases=5, seed=3, variety="varied")

    stage.main(["--config", str(tmp_path / "config.yaml"), "--deadline-minutes", "2.5", "--reserve-minutes", "0.5",
                "--slices-per-second", "0.2"])  # fmt: skip
    printed = capsys.readouterr().out
    metadata = json.loads((tmp_path / "runs" / "gpu_fine" / "fold_0" / "metadata.json").read_text())
    assert metadata["status"] == "finished" and metadata["iterations"] == 2 * metadata["epochs"]
    assert f"5 cases already in {tmp_path / 'data'}" in printed  # synth skipped: the small cases were there
    assert f"trained {metadata['iterations']} iterations of 4 ({4 * metadata['iterations']} slices" in printed
    assert " slices/s on cpu" in printed and "SupervisedTrainer" in (tmp_path / "gpu_stage.log").read_text()
