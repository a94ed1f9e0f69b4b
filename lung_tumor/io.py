"""Atomic file writes: a reader never sees a half-written file, even after a crash or a kill."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    The temporary file keeps ``path``'s suffixes (``x.tmp123.nii.gz``) so that writers that choose a
    format by suffix work; on failure it is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    fd, tmp_name = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, write: Callable[[IO[Any]], None], mode: str = "w") -> Path:
    """Write ``path`` through ``write(file_object)`` atomically."""
    with atomic_path(path) as tmp, open(tmp, mode) as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    return Path(path)


def write_json(path: str | Path, content: Any) -> Path:
    """Write JSON atomically (indented, keys in insertion order)."""
    return write_atomic(path, lambda f: f.write(json.dumps(content, indent=1, default=str) + "\n"))


def write_npy(path: str | Path, array: np.ndarray) -> Path:
    """Write a ``.npy`` file atomically."""
    return write_atomic(path, lambda f: np.save(f, array), mode="wb")


def save_nifti(
    array: np.ndarray, affine: np.ndarray, path: str | Path, rescale: tuple[float, float] | None = None
) -> Path:
    """Write a NIfTI atomically, with ``affine`` as both qform and sform (code 1, scanner) and mm units.

    ``rescale`` is ``(scl_slope, scl_inter)``: ``array`` holds the stored values, readers see
    ``array * slope + intercept``.
    """
    import nibabel as nib

    image = nib.Nifti1Image(array, affine)
    if rescale is not None:
        image.header.set_slope_inter(*rescale)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(image, tmp)
    return Path(path)
