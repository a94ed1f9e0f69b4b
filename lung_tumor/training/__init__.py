"""Training with MONAI/Ignite engines: data, losses, the trainer, run folders and network comparison."""

from __future__ import annotations
