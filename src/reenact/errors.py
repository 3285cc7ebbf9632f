"""User-facing errors.

A `ReenactError` is a problem with the user's input or environment, not a bug:
the CLI prints it as one line (``FILE: problem``) and exits with code 2.
"""

from __future__ import annotations

from pathlib import Path


class ReenactError(Exception):
    """An error the user can fix: bad input file, missing folder, no face found."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = Path(path) if path is not None else None

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path is not None else self.message
