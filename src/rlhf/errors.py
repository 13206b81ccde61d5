"""User-facing errors.

Anything the user can fix (bad data, a missing checkpoint, a bad flag) raises `UserError`.
The CLI prints it as one line `error: <message>` and exits 2 - never a traceback.
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """A mistake the user can fix; the message says what is wrong and how to fix it."""


class DataError(UserError):
    """Bad input data, located at `path` (and `line`, 1-based, where one applies)."""

    def __init__(self, path: str | Path, line: int | None, msg: str):
        self.path, self.line, self.msg = str(path), line, msg
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {msg}")
