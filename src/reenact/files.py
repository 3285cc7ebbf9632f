"""Files: atomic writes and content hashes. Every writer in reenact goes through `atomic_write`, so a run
that fails or is interrupted leaves the previous file (or none), never a half-written one."""

from __future__ import annotations

import hashlib
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def temporary_path(path: str | Path, tag: str = "partial") -> Path:
    """A sibling of `path` to write it atomically: same folder (so the rename is atomic), hidden, named after
    this process and `tag`, keeping the suffix so writers that choose a format by suffix still can."""
    path = Path(path)
    return path.with_name(f".{path.stem}.{os.getpid()}.{tag}{path.suffix}")


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
