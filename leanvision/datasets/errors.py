"""The error raised for a media file that cannot be used: missing, unreadable, corrupt, empty."""

from __future__ import annotations

import os


class MediaError(ValueError):
    """A file (or array) could not be loaded; the message names the file and the problem.

    It is a ``ValueError``, so callers that only know the documented contract
    (``except ValueError``) catch it; ``path`` and ``problem`` are kept for programs.

    >>> str(MediaError("clip.mp4", "file does not exist"))
    "cannot load 'clip.mp4': file does not exist"
    """

    def __init__(self, path: str | os.PathLike[str], problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"cannot load {self.path!r}: {problem}")


def check_readable_file(path: str | os.PathLike[str]) -> str:
    """Return ``path`` as a string, or raise :class:`MediaError` if it is not a readable file."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MediaError(path, "file does not exist")
    if os.path.isdir(path):
        raise MediaError(path, "is a directory, not a file")
    if not os.access(path, os.R_OK):
        raise MediaError(path, "file is not readable (permission denied)")
    if os.path.getsize(path) == 0:
        raise MediaError(path, "file is empty (0 bytes)")
    return path
