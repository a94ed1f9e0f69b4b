"""The output policy of every command that writes: plan every output path, check them all, then work.

Before a command loads a model or reads a scan it names each file and folder it will write in an
:class:`OutputPlan`, and :meth:`OutputPlan.check` refuses with one line (:class:`LungTumorError`) when

- an output is one of the command's inputs (the same path, a symlink to it or a hard link: an input is
  never replaced, ``--overwrite`` or not), or lies inside an input folder (a DICOM series);
- an output exists as a folder where a file is needed, or a file stands where a folder is needed;
- an output folder cannot be created or written (found by creating and removing a probe file, which
  works as root too, where permission bits are not enforced);
- an output file exists and was not written by lung-tumor, unless the user passed ``--overwrite``.

A command recognises its own earlier outputs, so re-running it over its own output folder needs no
``--overwrite``: NIfTI files carry ``lung-tumor ...`` in the header's ``descrip``, JSON files a top-level
``"generator"`` field, PNG files a ``Software`` text chunk. A file format with no room for a mark
(a CSV, a text report) is vouched for by the marked file written beside it (``summary.json``,
``CASE_report.json``). The check also removes the temporary files that killed writers left in the
output folders (:func:`lung_tumor.io.remove_stale_temporaries`). It creates nothing: a run that fails
before its first write leaves no empty folder behind.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from lung_tumor.errors import LungTumorError
from lung_tumor.io import remove_stale_temporaries, temporary_prefix

log = logging.getLogger(__name__)

GENERATOR = "lung-tumor"
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def marker(command: str, what: str = "") -> str:
    """The mark a command leaves in what it writes, e.g. ``lung-tumor predict mask``."""
    return " ".join(part for part in (GENERATOR, command, what) if part)


def written_by_lung_tumor(path: str | Path) -> bool:
    """Whether ``path`` carries the lung-tumor mark (an unreadable or unmarked file does not)."""
    path = Path(path)
    name = path.name.lower()
    try:
        if name.endswith(NIFTI_SUFFIXES):
            import nibabel as nib

            descrip = nib.load(path).header["descrip"].item()
            return bytes(descrip).startswith(GENERATOR.encode())
        if name.endswith(".json"):
            content = json.loads(path.read_text())
            return isinstance(content, dict) and str(content.get("generator", "")).startswith(GENERATOR)
        if name.endswith(".png"):
            from PIL import Image

            with Image.open(path) as image:
                return str(image.info.get("Software", "")).startswith(GENERATOR)
    except Exception:  # damaged, truncated or not what its name says: not ours
        return False
    return False


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _probe_folder(folder: Path) -> None:
    """Create and remove a file in ``folder``: the one test of writability that holds for root too."""
    fd, name = tempfile.mkstemp(prefix=temporary_prefix("lung-tumor-probe"), suffix=".tmp", dir=folder)
    os.close(fd)
    os.unlink(name)


class OutputPlan:
    """Every file and folder a command will write, checked together before any work.

    Args:
        inputs: the files and folders the command reads; an output may never be (or lie inside) one.
        overwrite: replace existing files that lung-tumor did not write (never an input).

    Examples::

        plan = OutputPlan(inputs=[scan], overwrite=False)
        plan.add_file(out / "lung_001.nii.gz", source=scan)
        plan.add_file(out / "lung_001_report.txt", vouched_by=out / "lung_001_report.json")
        plan.check()  # raises LungTumorError, or removes stale temporaries and returns
    """

    def __init__(self, inputs: Iterable[str | Path] = (), overwrite: bool = False) -> None:
        self.inputs = [Path(p) for p in inputs]
        self.overwrite = overwrite
        self.files: dict[Path, Path] = {}  # output file -> the file whose mark says it is ours
        self.folders: list[Path] = []
        self._sources: dict[Path, Path] = {}

    def add_file(
        self, path: str | Path, vouched_by: str | Path | None = None, source: str | Path | None = None
    ) -> Path:
        """Plan to write the file ``path``.

        Args:
            path: the output file.
            vouched_by: the marked file written with it that shows an existing ``path`` is ours
                (default: ``path`` itself).
            source: the input it is written for; two sources may not write one file.

        Raises:
            LungTumorError: another source already writes ``path``.
        """
        path = Path(path)
        key = _resolved(path)
        if source is not None:
            other = self._sources.setdefault(key, Path(source))
            if other != Path(source):
                raise LungTumorError(f"two inputs would write this output: {other} and {source}", path)
        self.files[path] = Path(vouched_by) if vouched_by is not None else path
        return path

    def add_folder(self, path: str | Path) -> Path:
        """Plan to write into the folder ``path`` (created if missing)."""
        path = Path(path)
        self.folders.append(path)
        return path

    def check(self) -> None:
        """Refuse the plan in one line if any output is unsafe; then remove stale temporaries from its folders.

        Raises:
            LungTumorError: naming the output and its problem (see the module docstring).
        """
        inputs = [(p, _resolved(p)) for p in self.inputs if p.exists()]
        input_folders = [(p, r) for p, r in inputs if r.is_dir()]
        for path in self.files:
            self._check_not_input(path, inputs, input_folders)
        folders = list(dict.fromkeys([*self.folders, *(p.parent for p in self.files)]))
        probed: set[Path] = set()
        for folder in folders:
            self._check_folder(folder, inputs, input_folders, probed)
        for path, vouched_by in self.files.items():
            if path.is_dir():
                raise LungTumorError("exists as a folder; a file is needed here", path)
            if path.exists() and not self.overwrite and not written_by_lung_tumor(vouched_by):
                raise LungTumorError("exists and was not written by lung-tumor; pass --overwrite to replace it", path)
        for folder in folders:
            for stale in remove_stale_temporaries(folder):
                log.info("removed %s, left by an interrupted write", stale)

    @staticmethod
    def _check_not_input(path: Path, inputs: list[tuple[Path, Path]], input_folders: list[tuple[Path, Path]]) -> None:
        resolved = _resolved(path)
        for original, target in inputs:
            same = resolved == target or (path.exists() and os.path.samefile(path, original))
            if same:
                raise LungTumorError(f"is an input of this command ({original}); an input is never replaced", path)
        for original, folder in input_folders:
            if resolved.is_relative_to(folder):
                raise LungTumorError(f"lies inside the input folder {original}; outputs never go into an input", path)

    @staticmethod
    def _check_folder(
        folder: Path, inputs: list[tuple[Path, Path]], input_folders: list[tuple[Path, Path]], probed: set[Path]
    ) -> None:
        resolved = _resolved(folder)
        for original, target in inputs:
            if resolved == target and not target.is_dir():
                raise LungTumorError(f"is an input file of this command ({original}); a folder is needed here", folder)
        for original, target in input_folders:
            if resolved.is_relative_to(target):
                raise LungTumorError(f"lies inside the input folder {original}; outputs never go into an input", folder)
        existing = folder
        while not existing.exists() and not existing.is_symlink() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise LungTumorError("exists as a file; a folder is needed here", existing)
        if existing in probed:
            return
        try:
            _probe_folder(existing)
        except OSError as err:
            where = "" if existing == folder else f" (in {existing})"
            raise LungTumorError(f"output folder cannot be written{where}: {err.strerror or err}", folder) from None
        probed.add(existing)


__all__ = ["GENERATOR", "OutputPlan", "marker", "written_by_lung_tumor"]
