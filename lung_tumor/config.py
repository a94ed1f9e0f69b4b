"""Reading YAML configs with MONAI's ``ConfigParser``, command-line overrides and validated sections."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from monai.bundle import ConfigParser

from lung_tumor.errors import LungTumorError

INTENSITY_MODES = ("window", "divide")
THIN_VOLUME_POLICIES = ("keep", "error")
AXIAL_ORIENTATIONS = ("RAS", "LAS", "RPS", "LPS")


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key=value`` into a MONAI config id (``a.b`` becomes ``a::b``) and a YAML-parsed value."""
    if "=" not in text:
        raise LungTumorError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip().replace(".", "::")
    if not key:
        raise LungTumorError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise LungTumorError(f"override {text!r}: value is not valid YAML ({err})") from None
    return key, value


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ConfigParser:
    """Read a YAML (or JSON) config into a ``ConfigParser`` and apply ``key=value`` overrides.

    Args:
        path: the config file.
        overrides: ``key=value`` strings; nested keys use ``.`` or ``::``.

    Raises:
        LungTumorError: the file is missing or not a mapping, or an override is malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise LungTumorError("config file not found", path)
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise LungTumorError(f"not valid YAML: {str(err).splitlines()[0]}", path) from None
    if not isinstance(content, dict):
        raise LungTumorError("config must be a mapping of keys to values", path)
    parser = ConfigParser(content)
    for text in overrides:
        key, value = parse_override(text)
        parser[key] = value
    parser.config_path = str(path)  # type: ignore[attr-defined]
    return parser


def config_hash(content: Any) -> str:
    """A short, stable hash of JSON-serialisable content (used to key caches and runs)."""
    blob = json.dumps(content, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class PreprocessConfig:
    """The ``preprocess`` section: how a CT volume becomes normalised axial slices.

    Args:
        crop_from_slice: first axial slice kept (counted from the inferior end after reorientation).
        thin_volume: what to do with a volume that has no more than ``crop_from_slice`` slices:
            ``keep`` all its slices (with a warning) or raise an ``error``.
        pixel_mm: in-plane pixel size after resampling, in millimetres.
        image_size: in-plane size in pixels after resampling (centre crop or pad).
        orientation: canonical axis codes, ``RAS`` by default (axial slices along the last axis).
        intensity: ``{"mode": "window", "window": [lo, hi]}`` clips HU to the window and scales it
            to [0, 1]; ``{"mode": "divide", "divisor": 3071}`` divides HU as the original recipe did.
        num_workers: worker processes for the slice cache.
    """

    crop_from_slice: int = 30
    thin_volume: str = "keep"
    pixel_mm: float = 1.5
    image_size: int = 256
    orientation: str = "RAS"
    intensity: dict[str, Any] = field(default_factory=lambda: {"mode": "window", "window": [-1350, 150]})
    num_workers: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.crop_from_slice, int) or self.crop_from_slice < 0:
            raise LungTumorError(f"preprocess.crop_from_slice must be an integer >= 0, got {self.crop_from_slice!r}")
        if self.thin_volume not in THIN_VOLUME_POLICIES:
            raise LungTumorError(
                f"preprocess.thin_volume must be one of {THIN_VOLUME_POLICIES}, got {self.thin_volume!r}"
            )
        if not isinstance(self.pixel_mm, int | float) or not 0.1 <= self.pixel_mm <= 10:
            raise LungTumorError(f"preprocess.pixel_mm must be a number in [0.1, 10], got {self.pixel_mm!r}")
        if not isinstance(self.image_size, int) or not 16 <= self.image_size <= 2048:
            raise LungTumorError(f"preprocess.image_size must be an integer in [16, 2048], got {self.image_size!r}")
        if self.orientation not in AXIAL_ORIENTATIONS:
            raise LungTumorError(
                f"preprocess.orientation must be one of {AXIAL_ORIENTATIONS}, got {self.orientation!r}"
            )
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise LungTumorError(f"preprocess.num_workers must be an integer >= 0, got {self.num_workers!r}")
        mode = self.intensity.get("mode") if isinstance(self.intensity, dict) else None
        if mode not in INTENSITY_MODES:
            raise LungTumorError(f"preprocess.intensity.mode must be one of {INTENSITY_MODES}, got {mode!r}")
        if mode == "window":
            window = self.intensity.get("window")
            if not (isinstance(window, list | tuple) and len(window) == 2 and float(window[0]) < float(window[1])):
                raise LungTumorError(f"preprocess.intensity.window must be [low, high] with low < high, got {window!r}")
        else:
            divisor = self.intensity.get("divisor")
            if not isinstance(divisor, int | float) or divisor <= 0:
                raise LungTumorError(f"preprocess.intensity.divisor must be a positive number, got {divisor!r}")

    @classmethod
    def from_dict(cls, section: dict[str, Any] | None) -> PreprocessConfig:
        """Build from a config section, refusing unknown keys so that typos do not pass silently."""
        section = dict(section or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(section) - known)
        if unknown:
            raise LungTumorError(f"preprocess: unknown key(s) {unknown}; known keys are {sorted(known)}")
        return cls(**section)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def cache_key_content(self) -> dict[str, Any]:
        """What decides the cached arrays (the worker count does not)."""
        content = self.to_dict()
        content.pop("num_workers")
        return content
