"""Loss functions from the config's ``loss`` section (all take raw logits)."""

from __future__ import annotations

from typing import Any

from monai.bundle import ConfigParser
from torch import nn

from lung_tumor.errors import LungTumorError

LOSS_PRESETS: dict[str, dict[str, Any]] = {
    "bce": {"_target_": "torch.nn.BCEWithLogitsLoss"},
    "dice_bce": {"_target_": "monai.losses.DiceCELoss", "sigmoid": True},
    "dice_focal": {"_target_": "monai.losses.DiceFocalLoss", "sigmoid": True},
    "focal": {"_target_": "monai.losses.FocalLoss", "use_softmax": False},
}


def build_loss(section: str | dict[str, Any] | None) -> nn.Module:
    """Instantiate the loss.

    ``section`` is a preset name (``bce`` as in the original recipe, ``dice_bce``, ``dice_focal``, ``focal``),
    a mapping ``{name: preset, **keyword arguments}`` (e.g. ``{name: dice_bce, batch: true}``), or a
    MONAI-style mapping with ``_target_``.

    Raises:
        LungTumorError: unknown preset or arguments the loss does not take.
    """
    section = "bce" if section is None else section
    spec = {"name": section} if isinstance(section, str) else dict(section)
    if "_target_" not in spec:
        name = spec.pop("name", None)
        if name not in LOSS_PRESETS:
            raise LungTumorError(f"loss.name must be one of {sorted(LOSS_PRESETS)}, got {name!r}")
        spec = {**LOSS_PRESETS[name], **spec}
    try:
        loss = ConfigParser({"loss": spec}).get_parsed_content("loss")
    except Exception as err:
        raise LungTumorError(f"loss: cannot build {spec} ({str(err).splitlines()[0]})") from None
    if not callable(loss):
        raise LungTumorError(f"loss: {spec} is not a loss function")
    return loss
