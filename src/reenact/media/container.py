"""Containers: open a media file with one clear line for FFmpeg's errors, and check an output path before any
work is done."""

from __future__ import annotations

import os
from pathlib import Path

import av

from reenact.errors import ReenactError


def open_container(path: str | Path) -> av.container.InputContainer:
    """Open a media file, turning FFmpeg's errors into one clear line."""
    path = Path(path)
    if not path.exists():
        raise ReenactError("file not found", path)
    if path.is_dir():
        raise ReenactError("is a folder, expected a media file", path)
    if path.stat().st_size == 0:
        raise ReenactError("file is empty", path)
    try:
        return av.open(str(path))
    except av.error.EOFError:
        raise ReenactError("has no frames: the file ends before its first frame (truncated?)", path) from None
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise ReenactError(f"cannot be read as audio or video ({short_error(exc)})", path) from None


def short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # PyAV messages look like "[Errno 1094995529] Invalid data found when processing input: 'x'"
    if "] " in text:
        text = text.split("] ", 1)[1]
    return text.split(": '")[0]



def check_output_path(path: str | Path, suffixes: tuple[str, ...] = ()) -> Path:
    """Refuse an output path whose folder is missing, which is a folder, or (given `suffixes`) whose suffix
    is not one of them."""
    path = Path(path)
    if path.is_dir():
        raise ReenactError("is a folder; give an output file name such as out.mp4", path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise ReenactError(f"output must be a {' or '.join(suffixes)} file", path)
    if not path.parent.exists():
        raise ReenactError(f"output folder {path.parent} does not exist; create it first", path)
    if not path.parent.is_dir():
        raise ReenactError(f"{path.parent} is a file, not a folder; give an output path in a folder", path)
    if not os.access(path.parent, os.W_OK) or not _can_create_in(path.parent):
        raise ReenactError(f"output folder {path.parent} is not writable", path)
    return path


def _can_create_in(folder: Path) -> bool:
    """Whether a file can be created in `folder` (os.access says yes for root, also under /proc)."""
    import tempfile

    try:
        fd, probe = tempfile.mkstemp(prefix=".reenact-", suffix=".probe", dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True
