"""Atomic file writes: a reader never sees a half-written file, even after a crash or a kill.

A write goes to a hidden temporary file beside its target, ``.{stem}.{host}-{pid}.{random}.tmp{suffixes}``,
and is renamed onto the target when complete. A process killed mid-write leaves that temporary file
behind; :func:`remove_stale_temporaries` removes the ones whose writer is gone, and input listings skip
hidden files, so the next run neither trips on it nor keeps it.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

STALE_AFTER_S = 24 * 3600.0  # a temporary file this old is stale whoever wrote it
_HOST = re.sub(r"[^A-Za-z0-9-]", "", socket.gethostname())[:32] or "host"
# ours: .{stem}.{host}-{pid}.{mkstemp's 8 characters}.tmp{suffixes}; before the pid was recorded: without host-pid
_TEMPORARY = re.compile(
    r"^\.(?P<stem>.+?)\.(?:(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)\.)?[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9.]+)?$"
)


def _writer_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (a recycled id counts as alive: the safe side)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale_temporary(path: Path, now: float | None = None) -> bool:
    """Whether ``path`` is a temporary file of :func:`atomic_path` whose writer is gone.

    Gone means: written on this host by a process that no longer runs, or untouched for
    :data:`STALE_AFTER_S` (the only test for files from other hosts or from before the pid was recorded).
    """
    match = _TEMPORARY.match(path.name)
    if match is None or path.is_symlink() or not path.is_file():
        return False
    if match["host"] == _HOST and int(match["pid"]) != os.getpid() and not _writer_alive(int(match["pid"])):
        return True
    try:
        age = (time.time() if now is None else now) - path.stat().st_mtime
    except OSError:
        return False
    return age > STALE_AFTER_S


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove the temporary files that killed writers left in ``folder`` (not its sub-folders); returns them."""
    folder = Path(folder)
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for path in entries:
        if path.name.startswith(".") and is_stale_temporary(path):
            try:
                path.unlink()
            except FileNotFoundError:  # another run removed it first
                continue
            removed.append(path)
    return removed


def temporary_prefix(stem: str) -> str:
    """The name prefix of a temporary file for ``stem``, naming this host and process."""
    return f".{stem}.{_HOST}-{os.getpid()}."


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    The temporary file is hidden and keeps ``path``'s suffixes (``.x.host-123.abcd1234.tmp.nii.gz``) so that
    writers that choose a format by suffix work; on failure it is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    fd, tmp_name = tempfile.mkstemp(prefix=temporary_prefix(stem), suffix=f".tmp{suffix}", dir=path.parent)
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
    array: np.ndarray,
    affine: np.ndarray,
    path: str | Path,
    description: str = "",
    rescale: tuple[float, float] | None = None,
) -> Path:
    """Write a NIfTI atomically, with ``affine`` as both qform and sform (code 1, scanner) and mm units.

    With both forms equal and coded 1, every reader places the voxels alike: nibabel takes the sform,
    ITK the sform when its code is 1 (the qform otherwise), FSL and MRtrix the qform. Inputs whose forms
    disagree are refused by :mod:`lung_tumor.data.checks`, so a mask written with the affine its CT was
    read with lies on that CT for all of them (``tests/test_input_checks.py`` reads both back with ITK).
    ``description`` goes into the header's ``descrip`` (80 bytes; :mod:`lung_tumor.outputs` marks its files so).
    ``rescale`` is ``(scl_slope, scl_inter)``: ``array`` holds the stored values, readers see
    ``array * slope + intercept``.
    """
    import nibabel as nib

    from lung_tumor.nifti_gzip import write_nifti_image

    image = nib.Nifti1Image(array, affine)
    image.header["descrip"] = description.encode()[:80]
    if rescale is not None:
        image.header.set_slope_inter(*rescale)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        write_nifti_image(image, tmp)
    return Path(path)
