"""Batch normalisation folded into the convolution before it, for inference."""

from __future__ import annotations

import copy

from monai.networks.blocks import Convolution
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def fold_batch_norms(network: nn.Module) -> tuple[nn.Module, int]:
    """A copy of an eval-mode ``network`` in which each batch norm that directly follows a convolution (MONAI's
    ``Convolution`` blocks with norm first in their ``adn``, and a convolution then a batch norm in an
    ``nn.Sequential``) is folded into that convolution's weights and bias and replaced by ``nn.Identity``.

    The outputs are those of the original up to float rounding, with one pass less over each activation map.
    Returns the copy and the number of norms folded; the original is left as it was.

    Raises:
        ValueError: the network is in training mode (its batch norms use batch statistics, which cannot be folded).
    """
    if network.training:
        raise ValueError("fold_batch_norms needs a network in eval mode")
    folded = copy.deepcopy(network)
    count = 0
    for module in folded.modules():
        if isinstance(module, Convolution):
            adn = getattr(module, "adn", None)
            norm = getattr(adn, "N", None)
            norm_first = adn is not None and next(iter(adn.children()), None) is norm
            if isinstance(norm, _BATCH_NORMS) and isinstance(module.conv, _CONVS) and norm_first:
                module.conv = fuse_conv_bn_eval(module.conv, norm)
                adn.N = nn.Identity()
                count += 1
        elif isinstance(module, nn.Sequential):
            names = list(module._modules)
            for first, second in zip(names, names[1:], strict=False):
                conv, norm = module._modules[first], module._modules[second]
                if isinstance(conv, _CONVS) and isinstance(norm, _BATCH_NORMS):
                    module._modules[first] = fuse_conv_bn_eval(conv, norm)
                    module._modules[second] = nn.Identity()
                    count += 1
    return folded, count
