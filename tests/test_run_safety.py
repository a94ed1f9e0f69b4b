"""Config validation, run folders that a failed command leaves as they were, and the one-writer folder lock."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from test_inference import make_run
from test_preprocess import write_case, write_config
from test_training import CONFIGS, tiny_overrides, write_tiny_cache

from lung_tumor.cli import main
from lung_tumor.config import CONFIG_SECTIONS, load_config
from lung_tumor.data.msd import write_dataset_json
from lung_tumor.errors import LungTumorError
from lung_tumor.lock import LOCK_NAME, folder_lock
from lung_tumor.training.run import load_trained_model, saved_config_hash

ROOT = Path(__file__).resolve().parents[1]


def sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The command's stderr must be exactly one ``lung-tumor: error:`` line, no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lung-tumor: error: "), err
    return lines[0]


def checksums(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (hidden ones included), by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return write_tiny_cache(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir) -> Path:
    """A finished tiny run of configs/demo.yaml on fold 0 (its output_dir is this folder's ``runs``)."""
    work = tmp_path_factory.mktemp("trained")
    assert main(["train", "--config", str(CONFIGS / "demo.yaml"), *sets(tiny_overrides(work, cache_dir))]) == 0
    return work / "runs" / "unet2d" / "fold_0"


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    """A copy of the finished run where ``tiny_overrides(tmp_path, ...)`` puts fold 0 of run ``unet2d``."""
    run_dir = tmp_path / "runs" / "unet2d" / "fold_0"
    shutil.copytree(trained, run_dir)
    return run_dir


def write_scan(path: Path) -> Path:
    image = np.full((40, 40, 12), -800, dtype=np.int16)
    image[15:25, 15:25, 4:8] = 40
    nib.save(nib.Nifti1Image(image, np.diag([3.0, 3.0, 5.0, 1.0])), path)
    return path


# --- one config validation path ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config", sorted(str(p.relative_to(ROOT)) for p in [*ROOT.glob("configs/*.yaml"), *ROOT.glob("configs/*/*.yaml")])
)
def test_shipped_configs_and_network_overlays_pass_validation(config):
    parser = load_config(ROOT / config)
    assert set(parser.get()) <= set(CONFIG_SECTIONS)
    if "networks" not in config:  # the full configs: every section the commands read is there
        assert {"data", "preprocess", "network_def", "optimizer", "training", "output_dir"} <= set(parser.get())


def test_a_misspelt_section_in_the_file_is_refused_by_every_command_with_the_closest_key(tmp_path, capsys):
    text = (CONFIGS / "demo.yaml").read_text().replace("\ntraining:", "\ntrainng:")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    for command in ("train", "preprocess", "compare"):
        extra = ["--networks", "unet2d"] if command == "compare" else []
        assert main([command, "--config", str(bad), *extra]) == 1
        line = one_error_line(capsys)
        assert f"{bad}: unknown top-level key 'trainng' (did you mean 'training'?)" in line
        assert "known keys: data, preprocess" in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("foo=1", "--set foo=1: unknown top-level key 'foo'; known keys: data,"),
        ("trainng.epochs=3", "unknown top-level key 'trainng' (did you mean 'training'?)"),
        ("training.epoch=3", "training: unknown key(s) ['epoch'] (did you mean 'epochs'?)"),
        ("training=3", "training must be a mapping, got 3"),
        ("seed.value=3", "--set seed.value=3: seed is 0, not a section"),
        ("data.cache.dir=x", "--set data.cache.dir=x: the config has no section 'data.cache' (did you mean"),
        ("features.7=8", "--set features.7=8: features has no item 7"),
        ("training.threshold=high", "training.threshold must be in (0, 1), got 'high'"),
        ("sampler.tumour_fraction=most", "sampler.tumour_fraction must be a number >= 0 or null, got 'most'"),
        ("sampler.balance=case", "sampler.balance must be one of slice, lesion, got 'case'"),
        ("context_slices=-1", "context_slices must be an integer >= 0"),
    ],
)
def test_bad_overrides_are_refused_in_one_line_before_anything_is_written(
    tmp_path, cache_dir, capsys, override, expected
):
    command = ["train", "--config", str(CONFIGS / "demo.yaml"), *sets(tiny_overrides(tmp_path, cache_dir))]
    assert main([*command, "--set", override]) == 1
    assert expected in one_error_line(capsys)
    assert not (tmp_path / "runs").exists()


def test_a_section_given_twice_or_a_binary_file_is_refused_rather_than_read_in_part(tmp_path, capsys):
    # PyYAML keeps the last of two equal keys without a word: the first training section would vanish
    twice = tmp_path / "twice.yaml"
    twice.write_text((CONFIGS / "demo.yaml").read_text() + "\ntraining: {epochs: 1}\n")
    assert main(["preprocess", "--config", str(twice)]) == 1
    line = one_error_line(capsys)
    assert f"{twice}: not valid YAML: key 'training' given twice in one mapping (line " in line
    binary = tmp_path / "best.pt"
    torch.save({"x": torch.zeros(3)}, binary)
    assert main(["train", "--config", str(binary)]) == 1
    assert f"{binary}: cannot read it as a text file" in one_error_line(capsys)


def test_a_variable_of_ones_own_is_accepted_when_the_config_refers_to_it(tmp_path):
    content = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    content["base_lr"] = 0.01
    content["optimizer"]["lr"] = "@base_lr"
    path = tmp_path / "own.yaml"
    path.write_text(yaml.safe_dump(content))
    assert load_config(path, ["base_lr=0.02"]).get_parsed_content("optimizer::lr") == 0.02
    # a known section the file leaves out or sets to null can be given by --set
    assert load_config(path, ["early_stopping.patience=3"]).get("early_stopping") == {"patience": 3}
    content["early_stopping"] = None
    path.write_text(yaml.safe_dump(content))
    assert load_config(path, ["early_stopping.min_delta=0.1"]).get("early_stopping") == {"min_delta": 0.1}


def test_exponent_numbers_are_numbers_in_files_and_overrides(tmp_path):
    # PyYAML alone reads 1e-4 as the string "1e-4", which the optimizer then refuses
    text = (CONFIGS / "demo.yaml").read_text().replace("lr: 2.0e-3", "lr: 2e-3")
    assert "lr: 2e-3" in text
    path = tmp_path / "exponent.yaml"
    path.write_text(text)
    assert load_config(path).get_parsed_content("optimizer::lr") == 0.002
    assert load_config(path, ["optimizer.lr=1e-4"]).get_parsed_content("optimizer::lr") == 0.0001
    assert load_config(path, ["run_name=1e"]).get("run_name") == "1e"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optimizer.lr=-0.001", "optimizer: cannot build it (Invalid learning rate: -0.001)"),
        ("optimizer.lr=0", "optimizer.lr must be a positive number, got 0"),
        ("optimizer.betas=[2.0,0.9]", "optimizer: cannot build it (Invalid beta parameter at index 0: 2.0)"),
        ("optimizer.momentum=0.9", "optimizer: cannot build it"),
        ("scheduler.warmup=3", "scheduler: cannot build it"),
        ("loss.gamma=2", "loss: cannot build"),
        ("augmentation.rotate=10", "augmentation: unknown key(s) ['rotate']"),
    ],
)
def test_components_that_refuse_their_arguments_fail_in_one_line_naming_the_key(
    tmp_path, cache_dir, capsys, override, expected
):
    command = ["train", "--config", str(CONFIGS / "demo.yaml"), *sets(tiny_overrides(tmp_path, cache_dir))]
    assert main([*command, "--set", override]) == 1
    assert expected in one_error_line(capsys)
    assert not (tmp_path / "runs").exists()


# --- a run folder whose files do not belong together ------------------------------------------------------------


def test_the_config_hash_survives_the_round_trip_and_an_untouched_run_loads(trained):
    metadata = json.loads((trained / "metadata.json").read_text())
    saved = load_config(trained / "config.yaml")
    assert metadata["config_hash"] == saved_config_hash(saved.get())
    network, config = load_trained_model(trained)
    assert not network.training and config.get("fold") == 0


def test_a_config_edited_after_training_is_refused_by_predict_and_evaluate(run_copy, tmp_path, capsys):
    config_path = run_copy / "config.yaml"
    content = yaml.safe_load(config_path.read_text())
    content["preprocess"]["pixel_mm"] = 2.0
    config_path.write_text(yaml.safe_dump(content, sort_keys=False))
    before = checksums(run_copy)
    scan = write_scan(tmp_path / "scan.nii.gz")
    assert main(["predict", "--run", str(run_copy), "--input", str(scan), "--output", str(tmp_path / "out")]) == 1
    line = one_error_line(capsys)
    assert f"{config_path}: edited after training" in line and "config_hash in metadata.json" in line
    data = tmp_path / "data"
    write_case(data, "lung_001", 16, (slice(30, 40), slice(50, 60), slice(8, 12)), seed=0)
    write_dataset_json(data, ["lung_001"], [])
    assert main(["evaluate", "--run", str(run_copy), "--data", str(data), "--cases", "lung_001"]) == 1
    assert "edited after training" in one_error_line(capsys)
    assert checksums(run_copy) == before and not (tmp_path / "out").exists()


def test_a_hand_made_run_without_metadata_is_used_with_a_warning(tmp_path, caplog):
    run_dir = make_run(tmp_path / "hand_made")
    network, _ = load_trained_model(run_dir)
    assert isinstance(network, torch.nn.Conv2d)
    assert "no metadata.json" in caplog.text


def test_a_checkpoint_that_does_not_fit_its_network_is_one_line_naming_it(run_copy, tmp_path, capsys):
    best = run_copy / "checkpoints" / "best.pt"
    state = torch.load(best, weights_only=True)
    name = next(iter(state["network"]))
    state["network"][name] = torch.zeros(3, 3)
    torch.save(state, best)
    scan = write_scan(tmp_path / "scan.nii.gz")
    assert main(["predict", "--run", str(run_copy), "--input", str(scan), "--output", str(tmp_path / "out")]) == 1
    line = one_error_line(capsys)
    assert f"{best}: checkpoint does not fit the network_def UNet2D of config.yaml" in line
    assert f"size mismatch for {name}" in line


# --- a failed resume leaves the run folder as it was ------------------------------------------------------------


def test_a_corrupt_last_checkpoint_on_resume_is_one_line_and_leaves_the_run_folder_byte_identical(
    run_copy, tmp_path, cache_dir, capsys
):
    last = run_copy / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    before = checksums(run_copy)
    command = ["train", "--config", str(CONFIGS / "demo.yaml"), *sets(tiny_overrides(tmp_path, cache_dir)), "--resume"]
    assert main(command) == 1
    assert f"{last}: cannot resume: checkpoint unreadable" in one_error_line(capsys)
    assert checksums(run_copy) == before
    metadata = json.loads((run_copy / "metadata.json").read_text())
    assert metadata["status"] == "finished" and metadata["best_metric"] is not None


def test_a_resume_whose_config_no_longer_fits_the_checkpoint_leaves_the_run_folder_as_it_was(
    run_copy, tmp_path, cache_dir, capsys
):
    before = checksums(run_copy)
    overrides = tiny_overrides(tmp_path, cache_dir, features=[8, 16, 32, 64])
    assert main(["train", "--config", str(CONFIGS / "demo.yaml"), *sets(overrides), "--resume"]) == 1
    line = one_error_line(capsys)
    assert "last.pt: cannot resume: checkpoint's network state does not fit the config's network" in line
    assert checksums(run_copy) == before


def test_a_resume_that_fails_inside_the_run_before_it_starts_writes_nothing(run_copy, tmp_path, cache_dir, monkeypatch):
    # without the check before the processes start, the corrupt checkpoint is found by MONAI's CheckpointLoader
    # at the trainer's start: the run folder must still be as it was (no config, metadata or event file written)
    from lung_tumor.training import trainer

    monkeypatch.setattr(trainer, "check_resumable", lambda *args: None)
    last = run_copy / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    before = checksums(run_copy)
    with pytest.raises(Exception):  # noqa: B017 - whatever the loader raises
        trainer.train_from_config(CONFIGS / "demo.yaml", resume=True, overrides=tiny_overrides(tmp_path, cache_dir))
    assert checksums(run_copy) == before


def test_a_resume_that_fails_after_it_started_keeps_the_finished_runs_results(
    run_copy, tmp_path, cache_dir, monkeypatch
):
    from lung_tumor.training import trainer

    finished = json.loads((run_copy / "metadata.json").read_text())

    def disk_full(*args: object) -> None:
        raise OSError("no space left on device")

    monkeypatch.setattr(trainer, "save_checkpoint", disk_full)
    overrides = tiny_overrides(tmp_path, cache_dir, **{"training.epochs": 3})
    with pytest.raises(OSError, match="no space left"):
        trainer.train_from_config(CONFIGS / "demo.yaml", resume=True, overrides=overrides)
    metadata = json.loads((run_copy / "metadata.json").read_text())
    assert metadata["status"] == "running"
    for key in ("best_metric", "best_metric_epoch", "best_per_case_dice", "epochs", "iterations"):
        assert metadata[key] == finished[key], key
    assert not (run_copy / LOCK_NAME).exists()


def test_a_resume_keeps_the_finished_runs_metadata_until_it_writes_its_own(run_copy, tmp_path, cache_dir):
    finished = json.loads((run_copy / "metadata.json").read_text())
    overrides = tiny_overrides(tmp_path, cache_dir, **{"training.epochs": 3})
    assert main(["train", "--config", str(CONFIGS / "demo.yaml"), *sets(overrides), "--resume"]) == 0
    resumed = json.loads((run_copy / "metadata.json").read_text())
    assert resumed["status"] == "finished" and resumed["epochs"] == 3 and resumed["iterations"] == 12
    assert resumed["best_metric"] >= finished["best_metric"]
    assert resumed["config_hash"] == saved_config_hash(load_config(run_copy / "config.yaml").get())
    assert LOCK_NAME not in {p.name for p in run_copy.iterdir()}


# --- one writer per folder --------------------------------------------------------------------------------------


def test_two_trainings_on_one_run_folder_and_a_killed_one_does_not_leave_it_stuck(tmp_path, cache_dir, capsys):
    # many epochs, no early stopping: the first training is still running when the second comes
    overrides = tiny_overrides(tmp_path, cache_dir, **{"training.epochs": 100000, "early_stopping": None})
    command = ["train", "--config", str(CONFIGS / "demo.yaml"), *sets(overrides)]
    run_dir = tmp_path / "runs" / "unet2d" / "fold_0"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = tmp_path / "first.log"
    with open(log, "w") as stream:
        first = subprocess.Popen([sys.executable, "-m", "lung_tumor", *command], env=env, stdout=stream, stderr=stream)
    try:
        deadline = time.monotonic() + 300
        # training for real: it holds the lock and has saved a checkpoint
        while not (run_dir / "checkpoints" / "last.pt").is_file():
            assert first.poll() is None, f"the first training ended early: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "the first training never saved a checkpoint"
            time.sleep(0.2)
        assert (run_dir / LOCK_NAME).read_text() == f"pid {first.pid}"
        assert main(command) == 1
        line = one_error_line(capsys)
        assert f"{run_dir}: run folder is in use by another lung-tumor command (pid {first.pid})" in line
        assert main([*command, "--resume"]) == 1
        assert "is in use" in one_error_line(capsys)
    finally:
        first.kill()  # SIGKILL: no clean-up runs in the first training
        first.wait()
    assert (run_dir / LOCK_NAME).is_file()  # the file stays, but the lock died with its process
    iteration = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["trainer"]["iteration"]
    resumed = [*command, "--set", f"training.max_iterations={iteration + 1}", "--resume"]
    assert main(resumed) == 0
    assert json.loads((run_dir / "metadata.json").read_text())["iterations"] == iteration + 1
    assert not (run_dir / LOCK_NAME).exists()


def test_a_comparison_of_a_fold_is_refused_while_another_holds_it(tmp_path, cache_dir, capsys):
    overrides = tiny_overrides(tmp_path, cache_dir)
    with folder_lock(tmp_path / "runs" / "compare", name=".fold_0.lock"):
        assert main(["compare", "--config", str(CONFIGS / "demo.yaml"), *sets(overrides), "--networks", "unet2d"]) == 1
    line = one_error_line(capsys)
    assert f"{tmp_path / 'runs' / 'compare'}: comparison of fold 0 is in use by another lung-tumor command" in line
    assert not (tmp_path / "runs" / "compare" / "unet2d").exists()


def test_compare_does_not_reuse_a_finished_run_trained_with_other_settings(tmp_path, cache_dir, capsys):
    command = ["compare", "--config", str(CONFIGS / "demo.yaml"), "--networks", "unet2d", "--fold", "0"]
    overrides = tiny_overrides(tmp_path, cache_dir, **{"training.epochs": 1})
    assert main([*command, *sets(overrides)]) == 0
    run_dir = tmp_path / "runs" / "compare" / "unet2d" / "fold_0"
    before = checksums(run_dir)
    assert main([*command, *sets(overrides)]) == 0  # the same settings: reused, not retrained
    assert checksums(run_dir) == before
    capsys.readouterr()
    longer = tiny_overrides(tmp_path, cache_dir, **{"training.epochs": 2})
    assert main([*command, *sets(longer)]) == 1
    assert f"{run_dir}: this finished run was trained with another config" in one_error_line(capsys)
    assert checksums(run_dir) == before


def test_two_preprocess_runs_on_one_cache_the_second_refused(tmp_path, capsys):
    root = tmp_path / "data"
    write_case(root, "lung_001", 16, (slice(30, 40), slice(50, 60), slice(8, 12)), seed=0)
    write_dataset_json(root, ["lung_001"], [])
    cache = tmp_path / "cache"
    config = write_config(tmp_path / "pre.yaml", root, cache, crop_from_slice=4)
    with folder_lock(cache):
        assert main(["preprocess", "--config", str(config)]) == 1
        assert f"{cache}: slice cache is in use by another lung-tumor command" in one_error_line(capsys)
        assert sorted(p.name for p in cache.iterdir()) == [LOCK_NAME]
    assert not cache.exists()  # the lock made the folder and took it away again
    assert main(["preprocess", "--config", str(config)]) == 0
    assert (cache / "cache.json").is_file() and not (cache / LOCK_NAME).exists()


def test_the_lock_refuses_a_second_holder_and_is_free_again_after_release(tmp_path):
    folder = tmp_path / "a" / "b"
    with folder_lock(folder, what="run folder"):
        with pytest.raises(LungTumorError, match=r"b: folder is in use .*\(pid \d+\)"), folder_lock(folder):
            pass
        assert (folder / LOCK_NAME).read_text() == f"pid {os.getpid()}"
    assert not (tmp_path / "a").exists()
    with folder_lock(folder):
        (folder / "kept.txt").write_text("x")
    assert sorted(p.name for p in folder.iterdir()) == ["kept.txt"]


def test_a_forked_child_outliving_its_killed_parent_does_not_hold_the_lock(tmp_path):
    # data-loader workers are forked from the training process; they must not keep its folder locked
    script = f"""
import os, sys, time
from lung_tumor.lock import folder_lock
with folder_lock({str(tmp_path / "run")!r}):
    if os.fork() == 0:
        # the child says its pid once it runs: its after-fork handlers (which drop the lock) have run by then
        print(os.getpid(), flush=True)
        time.sleep(60)
        os._exit(0)
    time.sleep(60)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    parent = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        with pytest.raises(LungTumorError, match="in use"), folder_lock(tmp_path / "run"):
            pass
        parent.kill()
        parent.wait()
        os.kill(child, 0)  # the child is still alive...
        with folder_lock(tmp_path / "run"):  # ...and the folder is free
            pass
    finally:
        parent.kill()
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


@pytest.mark.slow
def test_spawned_ranks_run_under_the_launchers_lock(tmp_path, cache_dir):
    from lung_tumor.training.trainer import train_from_config

    overrides = tiny_overrides(tmp_path, cache_dir, **{"training.epochs": 1})
    run_dir = tmp_path / "runs" / "unet2d" / "fold_0"
    with folder_lock(run_dir), pytest.raises(LungTumorError, match="run folder is in use"):
        train_from_config(CONFIGS / "demo.yaml", overrides=overrides, nproc_per_node=2, backend="gloo")
    assert not (tmp_path / "runs").exists()
    metadata = train_from_config(CONFIGS / "demo.yaml", overrides=overrides, nproc_per_node=2, backend="gloo")
    assert metadata["world_size"] == 2 and metadata["status"] == "finished"
    assert metadata["config_hash"] == saved_config_hash(load_config(run_dir / "config.yaml").get())
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoints", "config.yaml", "metadata.json", "tensorboard"]
