"""Reading YAML configs with MONAI's ``ConfigParser``, command-line overrides and validated sections."""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml
from monai.bundle import ConfigParser

from lung_tumor.errors import LungTumorError
from lung_tumor.postprocessing import MAX_PIXEL_MM, MIN_PIXEL_MM

INTENSITY_MODES = ("window", "divide")
THIN_VOLUME_POLICIES = ("keep", "error")
AXIAL_ORIENTATIONS = ("RAS", "LAS", "RPS", "LPS")


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML would keep the last in silence)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen and key != "<<":
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 (PyYAML) reads ``1e-4`` as a string; YAML 1.2 and every user mean a number: read it as a float
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key=value`` into a MONAI config id (``a.b`` or ``a#b`` becomes ``a::b``) and a YAML-parsed value."""
    if "=" not in text:
        raise LungTumorError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip().replace(".", "::").replace("#", "::")
    if not key or "" in key.split("::"):
        raise LungTumorError(f"override {text!r} has an empty key")
    try:
        value = yaml.load(raw, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as err:
        raise LungTumorError(f"override {text!r}: value is not valid YAML ({err})") from None
    return key, value


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ConfigParser:
    """Read a YAML (or JSON) config into a ``ConfigParser``, apply ``key=value`` overrides and validate it.

    Args:
        path: the config file.
        overrides: ``key=value`` strings; nested keys use ``.`` or ``::``.

    Raises:
        LungTumorError: the file is missing or not a mapping, an override is malformed or names a key that is
            not there, or the content fails :func:`validate_config`.
    """
    path = Path(path)
    if not path.is_file():
        raise LungTumorError("config file not found", path)
    try:
        content = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except (OSError, UnicodeDecodeError) as err:
        raise LungTumorError(f"cannot read it as a text file ({type(err).__name__})", path) from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise LungTumorError(f"not valid YAML: {problem}{line}", path) from None
    if not isinstance(content, dict):
        raise LungTumorError("config must be a mapping of keys to values", path)
    check_top_level_keys(content, path)
    for text in overrides:
        apply_override(content, text)
    parser = ConfigParser(content)
    parser.config_path = str(path)  # type: ignore[attr-defined]
    validate_config(parser, path)
    return parser


def apply_override(content: dict[str, Any], text: str) -> None:
    """Set ``key=value`` in a config's content, refusing keys that name nothing.

    A new top-level key must be a known section (:data:`CONFIG_SECTIONS`); a nested key may add a key to a
    section (the section's own check then refuses an unknown one) or create a known section left out or null.

    Raises:
        LungTumorError: a malformed override, an unknown top-level key, or a path through a missing section.
    """
    key, value = parse_override(text)
    parts = key.split("::")
    if parts[0] not in content and parts[0] not in CONFIG_SECTIONS:
        raise LungTumorError(f"--set {text}: {_unknown_key_message(parts[0])}")
    node: Any = content
    for depth, part in enumerate(parts[:-1]):
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise LungTumorError(f"--set {text}: {'.'.join(parts[:depth])} has no item {part}")
            node = node[int(part)]
            continue
        if depth == 0 and node.get(part) is None and part in CONFIG_SECTIONS:
            node[part] = {}  # a known section the file leaves out or sets to null
        if part not in node:
            close = difflib.get_close_matches(part, [str(k) for k in node], n=1)
            hint = f" (did you mean {'.'.join([*parts[:depth], close[0]])!r}?)" if close else ""
            raise LungTumorError(f"--set {text}: the config has no section {where!r}{hint}")
        node = node[part]
        if not isinstance(node, dict | list):
            raise LungTumorError(f"--set {text}: {where} is {node!r}, not a section")
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise LungTumorError(f"--set {text}: {'.'.join(parts[:-1])} has no item {last}")
        node[int(last)] = value
    else:
        node[last] = value


# The top-level keys the commands read (train, compare, preprocess, predict/evaluate through a run's config.yaml,
# demo and scripts/), with the types their values may have. ``_meta_`` is MONAI's own metadata key.
CONFIG_SECTIONS: dict[str, tuple[type, ...]] = {
    "data": (dict,),
    "preprocess": (dict,),
    "output_dir": (str,),
    "run_name": (str,),
    "fold": (int, str),
    "seed": (int,),
    "context_slices": (int,),
    "features": (list,),
    "network_def": (dict,),
    "loss": (str, dict),
    "optimizer": (dict,),
    "scheduler": (dict,),
    "sampler": (dict,),
    "augmentation": (dict,),
    "training": (dict,),
    "early_stopping": (dict,),
    "stream": (dict,),
    "_meta_": (dict,),
}
DATA_KEYS = ("root", "cache_dir")
SAMPLER_KEYS = ("tumour_weight", "tumour_fraction", "balance")
EARLY_STOPPING_KEYS = ("patience", "min_delta")
SAMPLER_BALANCE = ("slice", "lesion")
_REFERENCE = re.compile(r"@([A-Za-z_][A-Za-z0-9_]*)")


def _unknown_key_message(key: str) -> str:
    close = difflib.get_close_matches(key, CONFIG_SECTIONS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    known = ", ".join(k for k in CONFIG_SECTIONS if not k.startswith("_"))
    return (
        f"unknown top-level key {key!r}{hint}; known keys: {known}; "
        f"a key of your own is allowed where the config uses it as @{key}"
    )


def _references(content: Any) -> set[str]:
    """The top-level ids that strings in ``content`` refer to as MONAI references (``@name``, ``@name::x``)."""
    if isinstance(content, dict):
        return set().union(*(_references(v) for v in content.values())) if content else set()
    if isinstance(content, list):
        return set().union(*(_references(v) for v in content)) if content else set()
    return set(_REFERENCE.findall(content)) if isinstance(content, str) else set()


def check_top_level_keys(content: dict[str, Any], path: str | Path | None = None) -> None:
    """Refuse top-level keys that no command reads, unless the config refers to them (``@name``: a variable).

    Raises:
        LungTumorError: the first unknown key, with the closest known key and the list of known keys.
    """
    referenced = _references(content)
    for key in content:
        if key not in CONFIG_SECTIONS and key not in referenced:
            raise LungTumorError(_unknown_key_message(str(key)), path)


def _is_expression(value: Any) -> bool:
    """A MONAI expression (``$...``), reference (``@...``) or macro (``%...``), whose type shows only once parsed."""
    return isinstance(value, str) and value.startswith(("$", "@", "%"))


def _parsed_section(parser: ConfigParser, key: str) -> Any:
    try:
        return parser.get_parsed_content(key, instantiate=False)
    except Exception as err:  # an expression or reference that does not evaluate
        raise LungTumorError(f"{key}: cannot evaluate it ({str(err).splitlines()[0]})") from None


def _check_keys(section: dict[str, Any], name: str, known: tuple[str, ...]) -> None:
    unknown = sorted(set(section) - set(known))
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise LungTumorError(f"{name}: unknown key(s) {unknown}{hint}; known keys are {sorted(known)}")


def validate_config(parser: ConfigParser, path: str | Path | None = None) -> None:
    """Check a config's top-level keys, the types of its sections and the values of its plain-data sections.

    Every command that reads a config calls this (through :func:`load_config`); components built from the
    config (network, loss, optimizer, scheduler, augmentation) are checked where they are built.

    Args:
        parser: the config, overrides applied.
        path: the config file, named in the message.

    Raises:
        LungTumorError: the first problem, in one line naming the key.
    """
    try:
        content = parser.get()
        check_top_level_keys(content)
        for key, value in content.items():
            types = CONFIG_SECTIONS.get(key)
            if types is None or value is None or _is_expression(value):
                continue
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                expected = " or ".join("a mapping" if t is dict else t.__name__ for t in types)
                raise LungTumorError(f"{key} must be {expected}, got {value!r}")
        if content.get("fold") is not None:
            from lung_tumor.data.manifest import parse_fold

            parse_fold(_parsed_section(parser, "fold"))
        for key in ("seed", "context_slices"):
            value = _parsed_section(parser, key) if content.get(key) is not None else 0
            if not isinstance(value, int) or isinstance(value, bool) or (key == "context_slices" and value < 0):
                raise LungTumorError(f"{key} must be an integer{' >= 0' if key == 'context_slices' else ''}")
        plain = {"data": DATA_KEYS, "sampler": SAMPLER_KEYS, "early_stopping": EARLY_STOPPING_KEYS}
        for key, known in plain.items():
            if isinstance(content.get(key), dict):
                section = _parsed_section(parser, key)
                _check_keys(section, key, known)
                for name, value in section.items():
                    number = isinstance(value, int | float) and not isinstance(value, bool)
                    if key == "sampler" and name == "balance":
                        check_balance(value)
                    elif key != "data" and value is not None and not (number and value >= 0):
                        raise LungTumorError(f"{key}.{name} must be a number >= 0 or null, got {value!r}")
        if isinstance(content.get("preprocess"), dict):
            PreprocessConfig.from_dict(_parsed_section(parser, "preprocess"))
        if isinstance(content.get("training"), dict):
            TrainingConfig.from_dict(_parsed_section(parser, "training"))
        if isinstance(content.get("stream"), dict):
            StreamConfig.from_dict(_parsed_section(parser, "stream"))
    except LungTumorError as err:
        if err.path is None and path is not None:
            raise LungTumorError(str(err), path) from None
        raise


def check_balance(balance: Any) -> str:
    """``sampler.balance``: ``slice`` (every tumour slice alike) or ``lesion`` (every lesion alike)."""
    if balance not in SAMPLER_BALANCE:
        raise LungTumorError(f"sampler.balance must be one of {', '.join(SAMPLER_BALANCE)}, got {balance!r}")
    return str(balance)


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
        if not isinstance(self.pixel_mm, int | float) or not MIN_PIXEL_MM <= self.pixel_mm <= MAX_PIXEL_MM:
            raise LungTumorError(
                f"preprocess.pixel_mm must be a number in [{MIN_PIXEL_MM:g}, {MAX_PIXEL_MM:g}], got {self.pixel_mm!r}"
            )
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
            numbers = isinstance(window, list | tuple) and all(isinstance(v, int | float) for v in window)
            if not (numbers and len(window) == 2 and window[0] < window[1]):
                raise LungTumorError(f"preprocess.intensity.window must be [low, high] with low < high, got {window!r}")
        else:
            divisor = self.intensity.get("divisor")
            if not isinstance(divisor, int | float) or divisor <= 0:
                raise LungTumorError(f"preprocess.intensity.divisor must be a positive number, got {divisor!r}")

    @classmethod
    def from_dict(cls, section: dict[str, Any] | None) -> PreprocessConfig:
        """Build from a config section, refusing unknown keys so that typos do not pass silently."""
        section = dict(section or {})
        _check_keys(section, "preprocess", tuple(f.name for f in fields(cls)))
        return cls(**section)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def cache_key_content(self) -> dict[str, Any]:
        """What decides the cached arrays (the worker count does not)."""
        content = self.to_dict()
        content.pop("num_workers")
        return content


@dataclass(frozen=True)
class TrainingConfig:
    """The ``training`` section.

    Args:
        epochs: maximum number of epochs.
        batch_size: slices per step and process.
        samples_per_epoch: slices drawn per epoch over all processes (default: the number of training slices).
        num_workers: data-loader worker processes per training process.
        threads: compute threads of each training process on a CPU (ignored on a GPU); ``null`` chooses them
            (:func:`lung_tumor.cores.network_threads`): the cores this process may use, shared among the training
            processes of the machine, less one for each loader worker when the ``stream`` keeps them busy.
        amp: mixed precision: float16 on a GPU (MONAI's engines); bfloat16 on a CPU that computes it natively
            (AVX512-BF16 or AMX), otherwise float32.
        max_iterations: stop after this many steps in all (for tests and CI); the run can be resumed.
        max_minutes: wall-clock budget; the run stops after the step that exceeds it.
        validation_interval: validate every this many epochs (and always where the run stops).
        slices_per_batch: slices per forward pass when inferring validation volumes.
        threshold: probability above which a pixel is tumour, for validation metrics.
        tensorboard_images: validation cases shown as (CT, truth, prediction) images in TensorBoard.
        init_from: start from these network weights instead of a random draw (fine-tuning): a checkpoint file, or
            a run or model folder (its best checkpoint), e.g. ``lung_tumor/models/default/member_1``; the optimizer, the
            schedule and the epochs start afresh. ``--resume`` continues from the run's own checkpoint instead.
    """

    epochs: int = 30
    batch_size: int = 8
    samples_per_epoch: int | None = None
    num_workers: int = 2
    threads: int | None = None
    amp: bool = True
    max_iterations: int | None = None
    max_minutes: float | None = None
    validation_interval: int = 1
    slices_per_batch: int = 32
    threshold: float = 0.5
    tensorboard_images: int = 2
    init_from: str | None = None

    def __post_init__(self) -> None:
        positive = ("epochs", "batch_size", "validation_interval", "slices_per_batch")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise LungTumorError(f"training.{name} must be an integer >= 1, got {value!r}")
        for name in ("samples_per_epoch", "max_iterations"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise LungTumorError(f"training.{name} must be an integer >= 1 or null, got {value!r}")
        if self.max_minutes is not None and not (isinstance(self.max_minutes, int | float) and self.max_minutes > 0):
            raise LungTumorError(f"training.max_minutes must be a positive number or null, got {self.max_minutes!r}")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise LungTumorError(f"training.num_workers must be an integer >= 0, got {self.num_workers!r}")
        threads = self.threads
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise LungTumorError(f"training.threads must be an integer >= 1 or null, got {threads!r}")
        if not isinstance(self.amp, bool):
            raise LungTumorError(f"training.amp must be true or false, got {self.amp!r}")
        if not isinstance(self.threshold, int | float) or not 0 < self.threshold < 1:
            raise LungTumorError(f"training.threshold must be in (0, 1), got {self.threshold!r}")
        if self.init_from is not None and (not isinstance(self.init_from, str) or not self.init_from.strip()):
            raise LungTumorError(f"training.init_from must be a path or null, got {self.init_from!r}")

    @classmethod
    def from_dict(cls, section: dict[str, Any] | None) -> TrainingConfig:
        """Build from a config section, refusing unknown keys so that typos do not pass silently."""
        section = dict(section or {})
        _check_keys(section, "training", tuple(f.name for f in fields(cls)))
        return cls(**section)


@dataclass(frozen=True)
class StreamConfig:
    """The ``stream`` section: training draws from fresh synthetic cases besides the slice cache.

    See :mod:`lung_tumor.training.stream` for how the cases, slices and seeds are drawn.

    Args:
        enabled: draw from the stream at all.
        fraction: share of each epoch's draws (spread evenly, so of each batch's too) taken from the stream;
            the rest come from the slice cache. ``1.0`` trains on the stream alone.
        size: synthetic case size (``lung_tumor.data.synth.SIZES``; ``small`` keeps the generator fast).
        variety: the engine's anatomy and findings (``lung_tumor.data.variety.VARIETIES``).
        acquisition: scanner and protocol preset (``lung_tumor.data.synth.ACQUISITIONS``).
        slices_per_case: consecutive stream draws that share one synthetic case (each a slice of it).
        seed: the stream's dataset seed; its case numbers start at 1,000,000, beyond any ``lung-tumor synth``
            dataset's, so a stream case is never a case of a fixed dataset even with the same seed.
        tumour_fraction: share of a tumour case's draws that show tumour; ``null``: the sampler's
            ``tumour_fraction``, else 0.5.
    """

    enabled: bool = False
    fraction: float = 0.5
    size: str = "small"
    variety: str = "varied"
    acquisition: str = "varied"
    slices_per_case: int = 8
    seed: int = 1000
    tumour_fraction: float | None = None

    def __post_init__(self) -> None:
        from lung_tumor.data.synth import ACQUISITIONS, SIZES
        from lung_tumor.data.variety import VARIETIES

        if not isinstance(self.enabled, bool):
            raise LungTumorError(f"stream.enabled must be true or false, got {self.enabled!r}")
        number = isinstance(self.fraction, int | float) and not isinstance(self.fraction, bool)
        if not number or not 0 < self.fraction <= 1:
            raise LungTumorError(f"stream.fraction must be a number in (0, 1], got {self.fraction!r}")
        for name, known in (("size", SIZES), ("variety", VARIETIES), ("acquisition", ACQUISITIONS)):
            if getattr(self, name) not in known:
                raise LungTumorError(f"stream.{name} must be one of {list(known)}, got {getattr(self, name)!r}")
        for name, low in (("slices_per_case", 1), ("seed", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise LungTumorError(f"stream.{name} must be an integer >= {low}, got {value!r}")
        tumour = self.tumour_fraction
        if tumour is not None and (
            isinstance(tumour, bool) or not isinstance(tumour, int | float) or not 0 <= tumour <= 1
        ):
            raise LungTumorError(f"stream.tumour_fraction must be a number in [0, 1] or null, got {tumour!r}")

    @classmethod
    def from_dict(cls, section: dict[str, Any] | None) -> StreamConfig:
        """Build from a config section, refusing unknown keys so that typos do not pass silently."""
        section = dict(section or {})
        _check_keys(section, "stream", tuple(f.name for f in fields(cls)))
        return cls(**section)
