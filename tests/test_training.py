from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lung_tumor.cache import SliceCache, SliceDataset
from lung_tumor.cli import main
from lung_tumor.config import load_config
from lung_tumor.errors import LungTumorError
from lung_tumor.training.compare import compare_networks
from lung_tumor.training.data import VolumeDataset, build_augmentation
from lung_tumor.training.losses import build_loss
from lung_tumor.training.run import AutocastInferer, SliceStackInferer, context_slices, load_trained_model
from lung_tumor.training.trainer import train_from_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SIZE = 32


def write_tiny_cache(root: Path, cases: int = 10, depth: int = 8, seed: int = 0) -> Path:
    """A slice cache in the documented format (docs/slice_cache.md): bright disks as tumours in noise."""
    rng = np.random.default_rng(seed)
    names = [f"lung_{i:03d}" for i in range(1, cases + 1)]
    yy, xx = np.mgrid[:SIZE, :SIZE]
    rows = []
    for case in names:
        image = rng.normal(0.3, 0.05, (depth, SIZE, SIZE))
        label = np.zeros((depth, SIZE, SIZE), np.uint8)
        cy, cx = rng.integers(9, SIZE - 9, 2)
        for z in range(depth // 4, depth // 4 + depth // 2):
            disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= 16
            label[z][disk], image[z][disk] = 1, 0.8
        folder = root / "cases" / case
        folder.mkdir(parents=True)
        np.save(folder / "image.npy", image.clip(0, 1).astype(np.float16))
        np.save(folder / "label.npy", label)
        (folder / "meta.json").write_text(json.dumps({"case": case, "spacing": [1.0, 1.0, 1.0]}))
        rows += [
            {"case": case, "slice": z, "source_slice": z, "tumour_pixels": int(label[z].sum())} for z in range(depth)
        ]
    with open(root / "slices.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["case", "slice", "source_slice", "tumour_pixels"])
        writer.writeheader()
        writer.writerows(rows)
    (root / "cache.json").write_text(json.dumps({"version": 1, "preprocess": {"image_size": SIZE}, "cases": names}))
    return root


def tiny_overrides(tmp_path: Path, cache: Path, **extra: object) -> list[str]:
    """Overrides that shrink configs/demo.yaml to seconds on a CPU."""
    settings = {
        "data.cache_dir": str(cache),
        "output_dir": str(tmp_path / "runs"),
        "features": [4, 8, 16, 32],
        "training.epochs": 2,
        "training.batch_size": 4,
        "training.samples_per_epoch": 16,
        "training.num_workers": 0,
        "training.max_minutes": None,
        "training.validation_interval": 1,
        "augmentation.crop_size": 24,
        **extra,
    }
    return [f"{key}={json.dumps(value)}" for key, value in settings.items()]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return write_tiny_cache(tmp_path_factory.mktemp("cache"))


def _events(run_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def test_demo_config_run_writes_tensorboard_and_reloadable_checkpoints(tmp_path, cache_dir):
    metadata = train_from_config(CONFIGS / "demo.yaml", fold=0, overrides=tiny_overrides(tmp_path, cache_dir))
    run_dir = tmp_path / "runs" / "unet2d" / "fold_0"
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoints", "config.yaml", "metadata.json", "tensorboard"]
    assert metadata["status"] == "finished" and metadata["iterations"] == 8 and metadata["epochs"] == 2
    assert metadata["parameters"] == sum(p.numel() for p in load_trained_model(run_dir)[0].parameters())
    assert set(metadata["validation_cases"]).isdisjoint(metadata["train_cases"])
    assert {"torch", "monai", "ignite", "lung_tumor"} <= set(metadata["versions"])

    events = _events(run_dir)
    scalars = set(events.Tags()["scalars"])
    assert {"train_loss", "val_dice", "val_precision", "val_recall", "lr"} <= scalars
    assert [e.step for e in events.Scalars("val_dice")] == [1, 2]
    assert events.Tags()["images"] and all(tag.startswith("validation/") for tag in events.Tags()["images"])

    # checkpoints hold state dicts and plain numbers only
    for name in ("best", "last"):
        state = torch.load(run_dir / "checkpoints" / f"{name}.pt", weights_only=True)
        assert {"network", "optimizer", "trainer", "run_state"} <= set(state)
    # the reloaded best network reproduces the per-case Dice recorded at its epoch
    network, config = load_trained_model(run_dir, "best")
    assert not network.training and context_slices(config) == 2
    cache = SliceCache(cache_dir)
    inferer = SliceStackInferer(context_slices(config))
    if metadata["amp"] == "bfloat16":  # validation ran under CPU autocast: score the same way
        inferer = AutocastInferer("cpu", torch.bfloat16, inner=inferer)
    for case, recorded in metadata["best_per_case_dice"].items():
        item = VolumeDataset(cache, [case])[0]
        with torch.no_grad():
            first = inferer(item["image"][None], network)
            again = inferer(item["image"][None], load_trained_model(run_dir, "best")[0])
        torch.testing.assert_close(first, again, rtol=0, atol=0)
        pred, truth = (first[0] > 0).float(), item["label"]
        union = pred.sum() + truth.sum()
        dice = 1.0 if union == 0 else float(2 * (pred * truth).sum() / union)
        assert dice == pytest.approx(recorded, abs=1e-5)
    # the saved config is plain YAML that load_config reads back, with the fold filled in
    saved = load_config(run_dir / "config.yaml")
    assert saved["fold"] == 0 and saved["features"] == [4, 8, 16, 32]


class BrightPixels(torch.nn.Module):
    """A stand-in network whose prediction is known: the centre channel's pixels brighter than ``level``.

    On the tiny cache (tumour disks at 0.8 in noise around 0.3) that is the disk and about a third of the
    noise, so the prediction panel differs from the truth panel and from an empty one.
    """

    def __init__(self, in_channels: int = 5, level: float = 0.33) -> None:
        super().__init__()
        self.unused = torch.nn.Conv2d(in_channels, 1, kernel_size=1)  # something for the optimiser
        self.level = level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centre = x.shape[1] // 2
        return 40.0 * (x[:, centre : centre + 1] - self.level) + 0.0 * self.unused(x)


def test_tensorboard_grid_shows_ct_truth_and_prediction_of_the_largest_tumour_slice(tmp_path, cache_dir):
    """Each shown validation case: CT | truth | prediction of its largest tumour slice, side by side."""
    settings = {
        "network_def": {"_target_": "test_training.BrightPixels", "in_channels": 5},
        "training.max_iterations": 1,
    }
    metadata = train_from_config(
        CONFIGS / "demo.yaml", fold=0, overrides=tiny_overrides(tmp_path, cache_dir, **settings)
    )
    run_dir = tmp_path / "runs" / "unet2d" / "fold_0"
    events, cache = _events(run_dir), SliceCache(cache_dir)
    network, config = load_trained_model(run_dir, "last")
    inferer = SliceStackInferer(context_slices(config))
    if metadata["amp"] == "bfloat16":
        inferer = AutocastInferer("cpu", torch.bfloat16, inner=inferer)
    tags = events.Tags()["images"]
    assert sorted(tags) == [f"validation/{case}" for case in sorted(metadata["validation_cases"])[: len(tags)]]
    for tag in tags:
        last = events.Images(tag)[-1]
        assert last.step == metadata["epochs"]
        grid = np.asarray(Image.open(io.BytesIO(last.encoded_image_string)).convert("L"), dtype=np.float32) / 255
        assert grid.shape == (SIZE, 3 * SIZE)
        item = VolumeDataset(cache, [tag.split("/", 1)[1]])[0]
        label = item["label"][0].numpy()
        z = int(label.sum(axis=(1, 2)).argmax())
        with torch.no_grad():
            prediction = (inferer(item["image"][None], network)[0, 0, z] >= 0).float().numpy()
        panels = np.split(grid, 3, axis=1)
        assert label[z].sum() == label.sum(axis=(1, 2)).max() > 0 and 0 < prediction.sum() < prediction.size
        assert not np.array_equal(prediction, label[z])
        # 8-bit PNG: each value truncated to a multiple of 1/255
        np.testing.assert_allclose(panels[0], item["image"][0, z].clamp(0, 1).numpy(), atol=1.01 / 255)
        np.testing.assert_array_equal(panels[1], label[z])
        np.testing.assert_array_equal(panels[2], prediction)


def test_stop_after_iterations_then_resume_continues_at_that_iteration(tmp_path, cache_dir):
    overrides = tiny_overrides(tmp_path, cache_dir, run_name="resumed")
    first = train_from_config(CONFIGS / "demo.yaml", fold=1, overrides=[*overrides, "training.max_iterations=6"])
    run_dir = tmp_path / "runs" / "resumed" / "fold_1"
    assert first["iterations"] == 6
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["trainer"]["iteration"] == 6
    with pytest.raises(LungTumorError, match="--resume"):
        train_from_config(CONFIGS / "demo.yaml", fold=1, overrides=overrides)

    resumed = train_from_config(CONFIGS / "demo.yaml", fold=1, resume=True, overrides=overrides)
    assert resumed["iterations"] == 8 and resumed["epochs"] == 2
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 8
    # epoch 1 was logged by the first run, epoch 2 after resuming
    assert [e.step for e in _events(run_dir).Scalars("train_loss")] == [1, 2]

    # the stop fell in the middle of epoch 2: the resumed run drew the rest of that epoch's slices, with the
    # same augmentation, so it ends with the weights of an uninterrupted run (whose loader has a worker)
    straight = tiny_overrides(tmp_path, cache_dir, run_name="straight", **{"training.num_workers": 1})
    train_from_config(CONFIGS / "demo.yaml", fold=1, overrides=straight)
    uninterrupted = torch.load(tmp_path / "runs" / "straight" / "fold_1" / "checkpoints" / "last.pt", weights_only=True)
    for name, tensor in uninterrupted["network"].items():
        torch.testing.assert_close(state["network"][name], tensor, rtol=0, atol=0, msg=name)


def test_cli_errors_are_one_line(tmp_path, cache_dir, capsys):
    config = ["--config", str(CONFIGS / "demo.yaml")]
    sets = [a for o in tiny_overrides(tmp_path, cache_dir) for a in ("--set", o)]
    assert main(["train", *config, *sets, "--resume"]) == 1
    assert "cannot resume" in capsys.readouterr().err
    assert main(["train", *config, *sets, "--set", "training.batch_size=0"]) == 1
    assert "training.batch_size" in capsys.readouterr().err
    assert main(["train", *config, *sets, "--set", "training.threads=0"]) == 1
    assert "training.threads must be an integer >= 1 or null, got 0" in capsys.readouterr().err
    assert main(["train", *config, "--set", f"data.cache_dir={tmp_path / 'nowhere'}", "--set", "output_dir=x"]) == 1
    assert "no slice cache" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_network_that_cannot_take_the_cache_slices_is_refused_before_training(tmp_path, cache_dir):
    # MONAI's UNet with three stride-2 levels needs sizes divisible by 8: 36 px is not
    odd_cache = tmp_path / "cache36"
    write_tiny_cache(odd_cache, cases=5)
    meta = json.loads((odd_cache / "cache.json").read_text())
    (odd_cache / "cache.json").write_text(json.dumps({**meta, "preprocess": {"image_size": 36}}))
    unet = yaml.safe_load((CONFIGS / "networks" / "unet.yaml").read_text())["network_def"]
    overrides = [*tiny_overrides(tmp_path, odd_cache), f"network_def={json.dumps(unet)}"]
    with pytest.raises(LungTumorError, match=r"UNet does not accept 5-channel 36x36 slices"):
        train_from_config(CONFIGS / "demo.yaml", fold=0, overrides=overrides)
    assert not (tmp_path / "runs").exists()
    # the same network on the 32 px cache passes the check
    ok = [*tiny_overrides(tmp_path, cache_dir, **{"training.max_iterations": 1}), f"network_def={json.dumps(unet)}"]
    assert train_from_config(CONFIGS / "demo.yaml", fold=0, overrides=ok)["iterations"] == 1


def test_load_trained_model_errors(tmp_path):
    with pytest.raises(LungTumorError, match="run folder not found"):
        load_trained_model(tmp_path / "missing")
    (tmp_path / "run").mkdir()
    with pytest.raises(LungTumorError, match="config file not found"):
        load_trained_model(tmp_path / "run")
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump({"network_def": {"_target_": "torch.nn.Identity"}}))
    with pytest.raises(LungTumorError, match="no best checkpoint"):
        load_trained_model(tmp_path / "run")


@pytest.mark.parametrize("overlay", sorted(p.stem for p in (CONFIGS / "networks").glob("*.yaml")) + ["unet2d"])
def test_each_network_overlay_instantiates_and_trains_one_step(overlay):
    config = load_config(CONFIGS / "demo.yaml", overrides=["features=[4,8,16,32]"])
    if overlay != "unet2d":
        config["network_def"] = yaml.safe_load((CONFIGS / "networks" / f"{overlay}.yaml").read_text())["network_def"]
    network = config.get_parsed_content("network_def")
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    torch.manual_seed(0)
    image = torch.rand(2, 2 * context_slices(config) + 1, 32, 32)
    label = (torch.rand(2, 1, 32, 32) > 0.8).float()
    before = [p.detach().clone() for p in network.parameters()]
    loss = build_loss(config["loss"])(network(image), label)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, network.parameters(), strict=True))


def test_compare_trains_each_network_on_the_same_fold_and_writes_the_table(tmp_path, cache_dir):
    overrides = tiny_overrides(tmp_path, cache_dir, **{"training.epochs": 1})
    rows = compare_networks(CONFIGS / "demo.yaml", fold=0, networks=["unet2d", "unet"], overrides=overrides)
    assert [r["network"] for r in rows] == ["unet2d", "unet"]
    compare_dir = tmp_path / "runs" / "compare"
    with open(compare_dir / "fold_0.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [r["network"] for r in table] == ["unet2d", "unet"]
    assert json.loads((compare_dir / "fold_0.json").read_text())["networks"] == rows
    cases = [json.loads((compare_dir / n / "fold_0" / "metadata.json").read_text()) for n in ("unet2d", "unet")]
    assert cases[0]["validation_cases"] == cases[1]["validation_cases"]
    assert cases[0]["network"] != cases[1]["network"] and rows[0]["parameters"] != rows[1]["parameters"]
    # finished runs are reused, not retrained
    again = compare_networks(CONFIGS / "demo.yaml", fold=0, networks=["unet2d", "unet"], overrides=overrides)
    assert again == rows
    with pytest.raises(LungTumorError, match="no network overlay"):
        compare_networks(CONFIGS / "demo.yaml", fold=0, networks=["resnet9000"], overrides=overrides)


def test_a_slice_drawn_with_a_seed_is_augmented_by_that_seed_alone(cache_dir):
    cache = SliceCache(cache_dir)
    augment = build_augmentation(
        {"rotate_deg": 30, "affine_prob": 1.0, "elastic_prob": 0.0}, cache.preprocess.image_size
    )
    dataset = SliceDataset(cache, context=1, transform=augment)
    first, other, again = (np.asarray(dataset[(3, s)]["image"]) for s in (7, 8, 7))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_fold_all_trains_on_every_case_without_validation_and_its_model_is_the_last_checkpoint(
    tmp_path, cache_dir, capsys
):
    sets = [a for o in tiny_overrides(tmp_path, cache_dir, run_name="every") for a in ("--set", o)]
    assert main(["train", "--config", str(CONFIGS / "demo.yaml"), *sets, "--fold", "all"]) == 0
    run_dir = tmp_path / "runs" / "every" / "fold_all"
    metadata = json.loads((run_dir / "metadata.json").read_text())
    labelled = [c for c in SliceCache(cache_dir).cases if SliceCache(cache_dir).label(c) is not None]
    assert metadata["train_cases"] == sorted(labelled) and metadata["validation_cases"] == []
    assert metadata["best_metric"] is None and metadata["iterations"] == 8
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.pt"]
    assert "val_dice" not in _events(run_dir).Tags()["scalars"]
    assert load_config(run_dir / "config.yaml")["fold"] == "all"
    # "best" of a run without validation is its last checkpoint
    best, last = load_trained_model(run_dir, "best")[0], load_trained_model(run_dir, "last")[0]
    for a, b in zip(best.state_dict().values(), last.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # compare needs validation cases; a fold that is neither a number nor "all" is refused in one line
    with pytest.raises(LungTumorError, match="fold all has none"):
        compare_networks(
            CONFIGS / "demo.yaml", fold="all", networks=["unet2d"], overrides=tiny_overrides(tmp_path, cache_dir)
        )
    with pytest.raises(SystemExit):
        main(["train", "--config", str(CONFIGS / "demo.yaml"), "--fold", "every"])
    assert "fold must be an integer or 'all'" in capsys.readouterr().err


def test_init_from_starts_from_another_runs_weights(tmp_path, cache_dir):
    train_from_config(CONFIGS / "demo.yaml", fold=0, overrides=tiny_overrides(tmp_path, cache_dir, run_name="source"))
    source_dir = tmp_path / "runs" / "source" / "fold_0"
    start = torch.load(source_dir / "checkpoints" / "best.pt", weights_only=True)["network"]
    frozen = {"optimizer.lr": 1e-12, "training.max_iterations": 1}  # one step that moves no parameter measurably

    def parameters(run_name: str) -> dict[str, torch.Tensor]:
        state = torch.load(tmp_path / "runs" / run_name / "fold_0" / "checkpoints" / "last.pt", weights_only=True)
        return {k: v for k, v in state["network"].items() if "running" not in k and "num_batches" not in k}

    tuned = train_from_config(
        CONFIGS / "demo.yaml",
        fold=0,
        overrides=tiny_overrides(
            tmp_path, cache_dir, run_name="tuned", **frozen, **{"training.init_from": str(source_dir)}
        ),
    )
    for name, tensor in parameters("tuned").items():
        torch.testing.assert_close(tensor, start[name], rtol=0, atol=1e-9, msg=name)
    assert tuned["init_from"]["path"] == str(source_dir / "checkpoints" / "best.pt")
    assert len(tuned["init_from"]["sha256"]) == 64
    # without it the same run starts from a random draw
    fresh = train_from_config(
        CONFIGS / "demo.yaml", fold=0, overrides=tiny_overrides(tmp_path, cache_dir, run_name="fresh", **frozen)
    )
    assert fresh["init_from"] is None
    assert not torch.equal(parameters("fresh")["conv_0.conv_0.conv.weight"], start["conv_0.conv_0.conv.weight"])


@pytest.mark.parametrize(
    ("source", "extra", "message"),
    [
        ("missing", {}, "no such checkpoint file or folder"),
        ("empty", {}, "has no checkpoints/best.pt or last.pt"),
        ("garbage.pt", {}, "cannot read checkpoint"),
        ("run", {"features": [8, 16, 32, 64]}, "do not fit the config's network_def UNet2D"),
    ],
)
def test_init_from_errors_are_one_line_before_the_run_folder(tmp_path, cache_dir, source, extra, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    if source == "run":
        train_from_config(CONFIGS / "demo.yaml", fold=0, overrides=tiny_overrides(tmp_path, cache_dir, run_name="run"))
        source = "runs/run/fold_0"
    overrides = tiny_overrides(
        tmp_path, cache_dir, run_name="refused", **extra, **{"training.init_from": str(tmp_path / source)}
    )
    with pytest.raises(LungTumorError, match=message):
        train_from_config(CONFIGS / "demo.yaml", fold=0, overrides=overrides)
    assert not (tmp_path / "runs" / "refused").exists()
