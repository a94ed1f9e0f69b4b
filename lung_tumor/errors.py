"""The one exception type that the command line turns into a one-line error."""

from __future__ import annotations

from pathlib import Path


class LungTumorError(Exception):
    """A problem with the user's input (file, config value, run folder), stated in one line.

    Args:
        message: what is wrong, phrased for the user.
        path: the file or folder concerned; prefixed to the message when given.
    """

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        text = message if path is None else f"{path}: {message}"
        super().__init__(" ".join(text.split()))
