"""Files: atomic writes and content hashes. Every writer in reenact goes through `atomic_write`, so a run
that fails or is interrupted leaves the previous file (or none), never a half-written one."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)


def temporary_path(path: str | Path, tag: str = "partial") -> Path:
    """A sibling of `path` to write it atomically: same folder (so the rename is atomic), hidden, named after
    this process and `tag`, keeping the suffix so writers that choose a format by suffix still can."""
    path = Path(path)
    return path.with_name(f".{path.stem}.{os.getpid()}.{tag}{path.suffix}")


def clear_stale_partials(path: str | Path) -> list[Path]:
    """Remove the temporary files that earlier runs writing `path` left when they were killed: hidden files
    beside it named ``.STEM[.SUFFIX].PID.TAG...`` (as `temporary_path` names them, also nested) whose process
    is gone. Files of running processes, and any other file, are left alone. Returns the files removed."""
    path = Path(path)
    pattern = re.compile(rf"^\.+{re.escape(path.stem)}(?:{re.escape(path.suffix)})?\.(\d+)\.([A-Za-z]+)\b")
    removed = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if not match or match.group(2) not in TEMPORARY_TAGS or _process_alive(int(match.group(1))):
            continue
        try:
            if entry.is_file() or entry.is_symlink():
                entry.unlink()
            elif entry.is_dir():
                shutil.rmtree(entry)
            removed.append(entry)
        except OSError:
            continue
    if removed:
        log.info("removed %d temporary file(s) left by interrupted runs: %s",
                 len(removed), ", ".join(p.name for p in removed))
    return removed


TEMPORARY_TAGS = ("partial", "unsigned", "encoded", "tagged", "muxed")  # the tags reenact's writers use


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process (or not a process id): leave its files alone
    return True


@contextmanager
def atomic_write(path: str | Path, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends without an exception it replaces `path`
    (a file, or a folder that does not exist yet), otherwise it is deleted. `mode` sets the permissions."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def replace_together(moves: list[tuple[Path, Path]]) -> None:
    """os.replace each (temporary, final) pair with SIGINT and SIGTERM held back, so an interruption
    lands before the first rename or after the last, never between them."""
    held = {signal.SIGINT, signal.SIGTERM}
    main = threading.current_thread() is threading.main_thread()
    if main:
        signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        for tmp, final in moves:
            os.replace(tmp, final)
    finally:
        if main:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, held)


def write_text(path: str | Path, text: str, mode: int | None = None) -> Path:
    """Write `text` to `path` atomically."""
    with atomic_write(path, mode) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes(path: str | Path, data: bytes, mode: int | None = None) -> Path:
    """Write `data` to `path` atomically; with `mode`, the file never exists with wider permissions."""
    with atomic_write(path, mode) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644 if mode is None else mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    return Path(path)


def copy_file(src: str | Path, dst: str | Path) -> Path:
    """Copy `src` to `dst` atomically."""
    with atomic_write(dst) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The sha256 of a file's bytes, read in chunks (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
