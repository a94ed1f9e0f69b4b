"""The shipped configs build everything training needs, and every loss preset gives a sensible value."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss, DiceFocalLoss, FocalLoss, TverskyLoss

from lung_tumor.config import PreprocessConfig, load_config
from lung_tumor.networks import UNet2D
from lung_tumor.training.data import build_augmentation, tumour_weights
from lung_tumor.training.losses import LOSS_PRESETS, build_loss
from lung_tumor.training.run import context_slices
from lung_tumor.training.trainer import TrainingConfig, _build_callable

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

EXPECTED = {  # what each config promises in its comments and the README
    "train.yaml": {
        "context": 1,
        "intensity": {"mode": "window", "window": [-1350, 150]},
        "loss": DiceCELoss,
        "optimizer": (torch.optim.AdamW, 3e-4),
        "scheduler": torch.optim.lr_scheduler.CosineAnnealingLR,
        "epochs": 100,
        "image_size": 256,
    },
    "recipe.yaml": {
        "context": 0,
        "intensity": {"mode": "divide", "divisor": 3071},
        "loss": torch.nn.BCEWithLogitsLoss,
        "optimizer": (torch.optim.Adam, 1e-4),
        "scheduler": None,
        "epochs": 30,
        "image_size": 256,
    },
    "demo.yaml": {
        "context": 2,
        "intensity": {"mode": "window", "window": [-1350, 150]},
        "loss": TverskyLoss,
        "optimizer": (torch.optim.Adam, 2e-3),
        "scheduler": torch.optim.lr_scheduler.CosineAnnealingLR,
        "epochs": None,
        "image_size": 96,
    },
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_and_builds_network_loss_optimizer_and_data(name: str) -> None:
    expected = EXPECTED[name]
    config = load_config(CONFIGS / name)
    preprocess = PreprocessConfig.from_dict(config["preprocess"])
    assert preprocess.intensity == expected["intensity"] and preprocess.image_size == expected["image_size"]
    training = TrainingConfig.from_dict(config["training"])
    if expected["epochs"] is not None:
        assert training.epochs == expected["epochs"]

    context = context_slices(config)
    assert context == expected["context"]
    network = config.get_parsed_content("network_def", instantiate=True)
    first_conv = next(m for m in network.modules() if isinstance(m, torch.nn.Conv2d))
    assert isinstance(network, UNet2D) and first_conv.in_channels == 2 * context + 1
    assert first_conv.out_channels == config["features"][0]
    # the steps below run the same definition with narrow layers: the full-width network takes seconds per step
    config["features"] = [4, 8, 16, 32]
    network = config.get_parsed_content("network_def", instantiate=True, lazy=False)
    network.eval()
    with torch.no_grad():
        logits = network(torch.zeros(2, 2 * context + 1, 64, 64))
    assert logits.shape == (2, 1, 64, 64) and torch.isfinite(logits).all()

    loss = build_loss(config["loss"])
    assert isinstance(loss, expected["loss"])
    optimizer_type, lr = expected["optimizer"]
    optimizer = _build_callable(config, "optimizer")(network.parameters())
    assert isinstance(optimizer, optimizer_type) and optimizer.param_groups[0]["lr"] == pytest.approx(lr)
    scheduler_factory = _build_callable(config, "scheduler")
    if expected["scheduler"] is None:
        assert scheduler_factory is None
    else:
        scheduler = scheduler_factory(optimizer)
        assert isinstance(scheduler, expected["scheduler"]) and scheduler.T_max == training.epochs

    # one training step on a 2.5D batch through the config's own augmentation and sampler weights
    augment = build_augmentation(config["augmentation"], preprocess.image_size)
    rng = np.random.default_rng(0)
    label = np.zeros((1, preprocess.image_size, preprocess.image_size), np.float32)
    label[:, 40:56, 40:56] = 1
    item = augment({"image": rng.random((2 * context + 1, *label.shape[1:]), dtype=np.float32), "label": label})
    assert item["image"].shape[0] == 2 * context + 1 and item["label"].shape[0] == 1
    sampler = config.get("sampler") or {}
    weights = tumour_weights([True, False, False, False], sampler.get("tumour_weight"), sampler.get("tumour_fraction"))
    assert weights[0] > weights[1] > 0
    network.train()  # on the 64 px around the tumour: enough for the loss and the optimiser, and fast
    image, target = (torch.as_tensor(item[key])[None, :, 16:80, 16:80] for key in ("image", "label"))
    step = loss(network(image), target)
    step.backward()
    optimizer.step()
    assert torch.isfinite(step)


LOSS_TYPES = {
    "bce": torch.nn.BCEWithLogitsLoss,
    "dice_bce": DiceCELoss,
    "dice_focal": DiceFocalLoss,
    "focal": FocalLoss,
}
# every preset, and the Dice ones also with the Dice over the whole batch (as configs/train.yaml uses it)
LOSS_SPECS = sorted(LOSS_PRESETS) + [{"name": p, "batch": True} for p in sorted(LOSS_PRESETS) if p.startswith("dice")]


@pytest.mark.parametrize("spec", LOSS_SPECS, ids=str)
def test_every_loss_preset_scores_a_good_prediction_below_a_bad_one(spec: str | dict) -> None:
    loss = build_loss(spec)
    assert set(LOSS_TYPES) == set(LOSS_PRESETS)
    assert isinstance(loss, LOSS_TYPES[spec if isinstance(spec, str) else spec["name"]])
    label = torch.zeros(4, 1, 16, 16)
    label[:, :, 4:10, 5:12] = 1
    label[3] = 0  # a tumour-free slice in the batch
    good = (label * 2 - 1) * 8.0  # confident and right
    unsure = torch.zeros_like(label)  # 0.5 everywhere
    bad = -good  # confident and wrong
    values = [float(loss(logits, label)) for logits in (good, unsure, bad)]
    assert all(np.isfinite(values))
    assert values[0] < values[1] < values[2]
    assert values[0] < 0.05 * values[2]
    logits = unsure.clone().requires_grad_(True)
    loss(logits, label).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # the gradient pushes tumour pixels up and the others down
    assert logits.grad[label > 0].mean() < 0 < logits.grad[label == 0].mean()
