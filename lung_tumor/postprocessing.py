"""A model's post-processing: the settings that turn its probabilities into lesions, stored beside the model.

``RUN/postprocess.json`` (written by ``lung-tumor tune``, :mod:`lung_tumor.evaluation.tune`) holds the settings
chosen on the run's validation cases; ``predict`` and ``evaluate`` use them unless told otherwise on the command
line. A run without the file uses :data:`DEFAULT` (threshold 0.5 and nothing else), as before the file existed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from lung_tumor.errors import LungTumorError

FILENAME = "postprocess.json"
MAX_SLICE_MM = 20.0  # thicker than any CT slice
MIN_PIXEL_MM, MAX_PIXEL_MM = 0.1, 10.0  # the in-plane pixel sizes a network may see (preprocessing and second look)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class PostProcessing:
    """How probabilities become a mask.

    Args:
        threshold: probability above which a voxel is tumour.
        min_lesion_mm3: drop predicted lesions (26-connected) smaller than this.
        lung_mask: keep only lesions in or within 10 mm of the lungs (a HU lung mask, :mod:`lung_tumor.thorax`).
        flip_tta: average the probabilities of the scan and its in-plane (left-right, front-back) mirror images.
        min_depth_ratio: drop predicted lesions whose craniocaudal extent is less than this fraction of their
            widest in-plane extent (flat shapes along the mediastinum and chest wall are rarely tumour); a lesion
            that reaches the first or last axial slice is kept, since the scan may cut it.
        min_slice_mm: the network sees slices at least this far apart (mm): a scan with closer slices is averaged
            along the body axis to that spacing before the network and its probabilities are interpolated back to
            every slice, so that the neighbour slices of 2.5D context span the depth they spanned in training;
            0: the scan's own slices.
        second_look_mm: a second pass of the network over the same field on a finer in-plane grid of this pixel size
            (0: none), without mirror images. A small nodule there spans as many pixels as the larger tumours the
            network learned from; each lesion of that pass (above ``second_look_threshold``, then the size, depth
            and lung rules above) is added to the mask where the first pass's probability inside it reaches
            ``second_look_support``, so the first pass vouches for what the finer one finds.
        second_look_threshold: the second pass's probability cut.
        second_look_support: the first pass's highest probability a second-look lesion must hold.
    """

    threshold: float = 0.5
    min_lesion_mm3: float = 0.0
    lung_mask: bool = False
    flip_tta: bool = False
    min_depth_ratio: float = 0.0
    min_slice_mm: float = 0.0
    second_look_mm: float = 0.0
    second_look_threshold: float = 0.7
    second_look_support: float = 0.5

    def __post_init__(self) -> None:
        if not _is_number(self.threshold) or not 0.0 < self.threshold < 1.0:
            raise LungTumorError(f"threshold must be in (0, 1), got {self.threshold!r}")
        if not _is_number(self.min_lesion_mm3) or self.min_lesion_mm3 < 0:
            raise LungTumorError(f"min lesion volume must be >= 0 mm3, got {self.min_lesion_mm3!r}")
        if not _is_number(self.min_depth_ratio) or self.min_depth_ratio < 0:
            raise LungTumorError(f"min depth ratio must be >= 0, got {self.min_depth_ratio!r}")
        if not _is_number(self.min_slice_mm) or not 0 <= self.min_slice_mm <= MAX_SLICE_MM:
            raise LungTumorError(f"min slice spacing must be in [0, {MAX_SLICE_MM:g}] mm, got {self.min_slice_mm!r}")
        if not _is_number(self.second_look_mm) or not (
            self.second_look_mm == 0 or MIN_PIXEL_MM <= self.second_look_mm <= MAX_PIXEL_MM
        ):
            raise LungTumorError(
                f"second look pixel size must be 0 (off) or in [{MIN_PIXEL_MM:g}, {MAX_PIXEL_MM:g}] mm, "
                f"got {self.second_look_mm!r}"
            )
        if not _is_number(self.second_look_threshold) or not 0.0 < self.second_look_threshold < 1.0:
            raise LungTumorError(f"second look threshold must be in (0, 1), got {self.second_look_threshold!r}")
        if not _is_number(self.second_look_support) or not 0.0 <= self.second_look_support <= 1.0:
            raise LungTumorError(f"second look support must be in [0, 1], got {self.second_look_support!r}")
        for name in ("lung_mask", "flip_tta"):
            if not isinstance(getattr(self, name), bool):
                raise LungTumorError(f"{name} must be true or false, got {getattr(self, name)!r}")

    def with_overrides(self, **overrides: Any) -> PostProcessing:
        """These settings with the given ones replaced; ``None`` values keep the stored setting."""
        return replace(self, **{name: value for name, value in overrides.items() if value is not None})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT = PostProcessing()


def load_postprocessing(run_dir: str | Path) -> PostProcessing:
    """The run's stored settings (``RUN/postprocess.json``), or :data:`DEFAULT` where it has none.

    Raises:
        LungTumorError: the file is unreadable, not a JSON object, or holds an unknown key or a bad value.
    """
    path = Path(run_dir) / FILENAME
    if not path.is_file():
        return DEFAULT
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise LungTumorError(f"unreadable ({type(err).__name__})", path) from None
    settings = content.get("settings") if isinstance(content, dict) else None
    if not isinstance(settings, dict):
        raise LungTumorError("no 'settings' object (write it with lung-tumor tune)", path)
    known = {f.name for f in fields(PostProcessing)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise LungTumorError(f"unknown setting(s) {unknown}; known: {sorted(known)}", path)
    try:
        return PostProcessing(**settings)
    except LungTumorError as err:
        raise LungTumorError(str(err), path) from None
