"""Settings of `reenact ui`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def default_work_dir() -> Path:
    """Where the UI keeps uploads and outputs: $XDG_DATA_HOME/reenact/ui, else ~/.local/share/reenact/ui."""
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "reenact" / "ui"


@dataclass
class UIConfig:
    """Settings of `reenact ui`."""

    host: str = "127.0.0.1"
    port: int = 7860
    auth: tuple[str, str] | None = None
    work_dir: Path = field(default_factory=default_work_dir)
    subjects_dir: Path | None = None  # None: reenact.subject.subjects_root()
    max_upload_mb: int = 2048

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 2**20
