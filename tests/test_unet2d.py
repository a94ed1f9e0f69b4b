from __future__ import annotations

import pytest
import torch

from lung_tumor.networks import UNet2D
from lung_tumor.networks.folding import fold_batch_norms
from lung_tumor.training.run import AutocastInferer, SliceStackInferer

SMALL = (4, 8, 16, 32)


@pytest.mark.parametrize("size", [(64, 64), (97, 128), (33, 45)])
def test_output_shape_matches_input_for_odd_and_even_sizes(size):
    net = UNet2D(in_channels=1, out_channels=1, features=SMALL)
    assert net(torch.zeros(2, 1, *size)).shape == (2, 1, *size)


def test_2p5d_input_and_several_outputs():
    net = UNet2D(in_channels=5, out_channels=2, features=SMALL, norm=None, dropout=0.1)
    assert net(torch.randn(3, 5, 40, 40)).shape == (3, 2, 40, 40)


def test_default_widths_are_the_original_unet():
    net = UNet2D()
    assert sum(p.numel() for p in net.parameters()) == 7_701_825


def test_returns_logits_not_probabilities():
    torch.manual_seed(0)
    out = UNet2D(features=SMALL)(torch.randn(2, 1, 32, 32) * 10)
    assert out.min() < 0 or out.max() > 1


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = UNet2D(in_channels=3, out_channels=1, features=SMALL)
    x = torch.randn(2, 3, 37, 42)
    target = (torch.rand(2, 1, 37, 42) > 0.5).float()
    torch.nn.functional.binary_cross_entropy_with_logits(net(x), target).backward()
    for name, param in net.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name


def test_prior_probability_sets_the_initial_output():
    torch.manual_seed(0)
    net = UNet2D(features=SMALL, prior_probability=0.01)
    with torch.no_grad():
        probability = torch.sigmoid(net(torch.rand(2, 1, 32, 32))).mean()
    assert abs(float(probability) - 0.01) < 0.01


@pytest.mark.parametrize(
    "kwargs", [{"spatial_dims": 3}, {"features": (4, 8, 16)}, {"in_channels": 0}, {"prior_probability": 1.0}]
)
def test_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        UNet2D(**kwargs)


def test_autocast_inferer_returns_float32_close_to_full_precision():
    torch.manual_seed(0)
    network = UNet2D(spatial_dims=2, in_channels=3, out_channels=1, features=(4, 8, 16, 32)).eval()
    image = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        full = network(image)
        mixed = AutocastInferer("cpu", torch.bfloat16)(image, network)
        stacked = AutocastInferer("cpu", torch.bfloat16, inner=SliceStackInferer(1, 4))(image[:1, :1, None], network)
    assert mixed.dtype == stacked.dtype == torch.float32
    assert mixed.shape == full.shape and stacked.shape == (1, 1, 1, 32, 32)
    # bfloat16 keeps 8 bits of mantissa: logits agree to a few hundredths, not exactly
    assert 0 < (mixed - full).abs().max() < 0.1


def test_folded_batch_norms_give_the_same_outputs_with_no_norm_left() -> None:
    torch.manual_seed(0)
    network = UNet2D(in_channels=5, features=(8, 16, 32, 64)).eval()
    plain = torch.nn.Sequential(torch.nn.Conv2d(5, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU()).eval()
    for norm in (m for net in (network, plain) for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        norm.running_mean.normal_()  # statistics far from the identity, as training leaves them
        norm.running_var.uniform_(0.2, 3.0)
        norm.weight.data.normal_()
        norm.bias.data.normal_()
    x = torch.randn(3, 5, 40, 36)
    for net, norms in ((network, 14), (plain, 1)):  # 7 double-conv blocks; one conv-norm pair
        folded, count = fold_batch_norms(net)
        assert count == norms
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == norms  # the original is untouched
        with torch.no_grad():
            torch.testing.assert_close(folded(x), net(x), rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norms(network.train())
