"""One lock per folder that a command writes (a run folder, a slice cache), held for the whole command.

The lock is an ``fcntl.flock`` on a file in the folder: the operating system releases it when the holding
process ends, however it ends (``kill -9`` included), so a crashed run never leaves its folder stuck. A second
command on the same folder is refused in one line while the first holds it. The lock file is removed when the
lock is released, and folders that taking the lock had to create are removed again if they stayed empty, so a
command that fails before writing anything leaves no trace.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from lung_tumor.errors import LungTumorError

log = logging.getLogger(__name__)

LOCK_NAME = ".lung_tumor.lock"

# descriptors of the locks this process holds: closed in forked children (data-loader workers), so that a
# child outliving a killed parent does not keep the lock (a flock lasts while any descriptor of it is open)
_HELD: set[int] = set()


def _close_held_in_child() -> None:
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


def _missing_parents(folder: Path) -> list[Path]:
    """``folder`` and those of its ancestors that do not exist yet, deepest first."""
    missing = []
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing.append(path)
    return missing


def _holder(path: Path) -> str:
    """What the lock file says about its holder (``pid N``), for the refusal message."""
    try:
        text = path.read_text().strip()
    except OSError:
        return ""
    return f" ({text})" if text else ""


@contextlib.contextmanager
def folder_lock(folder: str | Path, name: str = LOCK_NAME, what: str = "folder") -> Iterator[Path]:
    """Hold the exclusive lock of ``folder`` (created if needed) for the body of the ``with`` block.

    Args:
        folder: the folder the command writes.
        name: the lock file's name in ``folder`` (several locks may share a folder).
        what: how the refusal names the folder (``run folder``, ``slice cache``).

    Yields:
        The lock file's path.

    Raises:
        LungTumorError: another process holds the lock.

    Examples::

        with folder_lock(run_dir, what="run folder"):
            ...  # no other lung-tumor command writes run_dir meanwhile
    """
    folder = Path(folder)
    created = _missing_parents(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LungTumorError(
                f"{what} is in use by another lung-tumor command{_holder(path)}; wait for it to finish or stop it",
                folder,
            ) from None
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            break
        os.close(fd)  # the previous holder removed the file between our open and our lock: lock the new one
    _HELD.add(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        log.debug("locked %s", path)
        yield path
    finally:
        path.unlink(missing_ok=True)  # while still holding the lock, so nobody locks the file being removed
        _HELD.discard(fd)
        os.close(fd)
        for empty in created:
            try:
                empty.rmdir()
            except OSError:
                break
