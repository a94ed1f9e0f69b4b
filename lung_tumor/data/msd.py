"""The Medical Segmentation Decathlon layout: ``dataset.json``, ``imagesTr/``, ``labelsTr/``, ``imagesTs/``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lung_tumor.errors import LungTumorError
from lung_tumor.io import write_json

NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class Case:
    """One CT scan of a dataset: its id, image path and (for training cases) label path."""

    case_id: str
    image: Path
    label: Path | None = None


def case_id_from_path(path: str | Path) -> str:
    """``imagesTr/lung_001.nii.gz`` -> ``lung_001``; a DICOM folder keeps its folder name."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_dataset_json(root: str | Path) -> dict[str, Any]:
    """Read ``root/dataset.json``.

    Raises:
        LungTumorError: the file is missing, not JSON, or lacks the ``training`` list.
    """
    path = Path(root) / "dataset.json"
    if not path.is_file():
        raise LungTumorError("dataset.json not found (is this an MSD task folder?)", path)
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LungTumorError(f"not valid JSON ({err})", path) from None
    if not isinstance(content, dict) or not isinstance(content.get("training"), list):
        raise LungTumorError("has no 'training' list", path)
    return content


def resolve_inside(root: Path, entry: str, source: Path) -> Path:
    """Resolve a ``./imagesTr/...`` entry under ``root``; refuse one that points outside it."""
    if not isinstance(entry, str) or not entry:
        raise LungTumorError(f"entry {entry!r} is not a file path", source)
    candidate = (root / entry).resolve()
    if Path(entry).is_absolute() or not candidate.is_relative_to(root.resolve()):
        raise LungTumorError(f"entry {entry!r} resolves outside the dataset folder", source)
    return candidate


def list_cases(root: str | Path, split: str = "training") -> list[Case]:
    """The cases of ``split`` (``training`` or ``test``) listed by ``dataset.json``, paths resolved."""
    root = Path(root)
    content = read_dataset_json(root)
    source = root / "dataset.json"
    cases: list[Case] = []
    if split == "training":
        for item in content["training"]:
            if not isinstance(item, dict) or "image" not in item:
                raise LungTumorError(f"training entry {item!r} has no 'image'", source)
            image = resolve_inside(root, item["image"], source)
            label = resolve_inside(root, item["label"], source) if item.get("label") else None
            cases.append(Case(case_id_from_path(image), image, label))
    elif split == "test":
        for item in content.get("test", []):
            entry = item["image"] if isinstance(item, dict) else item
            image = resolve_inside(root, entry, source)
            cases.append(Case(case_id_from_path(image), image, None))
    else:
        raise LungTumorError(f"unknown split {split!r}; use 'training' or 'test'")
    ids = [c.case_id for c in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise LungTumorError(f"case id(s) listed twice: {duplicates}", source)
    return cases


def write_dataset_json(root: str | Path, training_ids: list[str], test_ids: list[str], **fields: Any) -> Path:
    """Write an MSD-style ``dataset.json`` for the given case ids, atomically (used by the synthetic generator)."""
    root = Path(root)
    content: dict[str, Any] = {
        "name": "Lung",
        "description": "Lung and cancer segmentation",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "cancer"},
        "numTraining": len(training_ids),
        "numTest": len(test_ids),
        **fields,
        "training": [{"image": f"./imagesTr/{i}.nii.gz", "label": f"./labelsTr/{i}.nii.gz"} for i in training_ids],
        "test": [f"./imagesTs/{i}.nii.gz" for i in test_ids],
    }
    return write_json(root / "dataset.json", content)
