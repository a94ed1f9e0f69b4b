"""Shared fixtures: paths to the repository's neighbours, small synthetic datasets, NIfTI writing."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import nibabel as nib
import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_CT = REPO_ROOT.parent / "shared" / "real_ct"


def load_script(name: str) -> ModuleType:
    """The module ``scripts/NAME.py`` (scripts are no package), imported under ``NAME``."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def real_ct_dir() -> Path:
    """``../shared/real_ct`` (small real chest CT scans, read-only); skips the test when absent."""
    if not (REAL_CT / "lidc-idri-0001" / "ct.nii.gz").is_file():
        pytest.skip(f"real CT test data not found at {REAL_CT}")
    return REAL_CT


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic MSD dataset (seed 0): lung_001-lung_002 labelled, lung_003 in imagesTs. Do not modify it."""
    from lung_tumor.data.synth import synthesize_dataset

    return synthesize_dataset(tmp_path_factory.mktemp("synth") / "Task06_Lung", cases=2, size="small", test_cases=1)


@pytest.fixture
def write_nifti() -> Callable[..., Path]:
    """``write_nifti(path, array, affine=None)``: save an array as NIfTI (1 mm identity grid by default)."""

    def write(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), path)
        return path

    return write
