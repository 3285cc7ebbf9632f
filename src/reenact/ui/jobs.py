"""The UI's work: one job at a time per process, errors as the CLI's one-line message, nothing half-made."""

from __future__ import annotations

import html
import logging
import re
import shutil
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from reenact.errors import ReenactError
from reenact.files import copy_file, sha256_file

log = logging.getLogger(__name__)
T = TypeVar("T")


class Jobs:
    """Runs the work of the page under one lock per process.

    Gradio's queue (one shared concurrency group of size 1) already runs one job at a time in order;
    the lock also covers any other way into the same process, so two browsers cannot write one
    subject at once."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self._lock = threading.Lock()

    def run(self, work: Callable[[], T]) -> tuple[T | None, str]:
        """(result, "") when `work` succeeds; (None, one-line message) when it raises."""
        with self._lock:
            try:
                return work(), ""
            except ReenactError as exc:
                return None, self.plain(str(exc))
            except Exception as exc:  # noqa: BLE001 - a bug: logged in full, one line in the page
                log.exception("the UI's job failed")
                first = (str(exc).strip().splitlines() or [""])[0]
                return None, f"internal error ({type(exc).__name__}{': ' + first if first else ''}); the server log " \
                             "has the details"

    def plain(self, message: str) -> str:
        """`message` with each uploaded file named as the user named it, not by its path in the upload folder."""
        uploads = re.escape(str(self.work_dir / "gradio")) + r"/[0-9a-f]{16,}/"
        return re.sub(uploads, "", message)

    @contextmanager
    def output_folder(self, label: str) -> Iterator[Path]:
        """A new folder under work_dir/outputs for one job's files; removed again when the job fails."""
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", label)[:40] or "job"
        folder = self.work_dir / "outputs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{safe}-{uuid.uuid4().hex[:6]}"
        folder.mkdir(parents=True)
        try:
            yield folder
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise


def status(message: str, ok: bool = True) -> str:
    """The status line of a page (HTML): a result, or an error in the CLI's words."""
    kind = "ok" if ok else "error"
    prefix = "" if ok else "error: "
    return f'<div class="reenact-status reenact-{kind}">{html.escape(prefix + message)}</div>'


def safe_name(path: str | Path) -> str:
    """A file name's stem reduced to letters, digits, '.', '_' and '-' (for output names)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem)[:40] or "file"


def publish(work_dir: Path, path: Path) -> str:
    """A copy of `path` in the app's upload folder, for the page to show: the app serves no file outside the work
    folder, and one in the upload folder only as a download unless its type is safe to show (no HTML)."""
    copy = work_dir / "gradio" / "view" / sha256_file(path)[:16] / path.name
    if not copy.exists():
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy_file(path, copy)
    return str(copy)


def forget_copies(work_dir: Path, originals: list[Path]) -> int:
    """Remove every file under the work folder (uploads, the page's copies) with the content of one of
    `originals`; returns how many went. Deleting a subject thus also removes its portrait and consent
    document from what the app has kept."""
    wanted: dict[int, set[str]] = {}
    for path in originals:
        if path.is_file():
            wanted.setdefault(path.stat().st_size, set()).add(sha256_file(path))
    removed = 0
    for folder in (work_dir / "gradio",):
        for path in sorted(folder.rglob("*")) if folder.exists() else []:
            if path.is_file() and path.stat().st_size in wanted and sha256_file(path) in wanted[path.stat().st_size]:
                path.unlink()
                removed += 1
                if path.parent != folder and not any(path.parent.iterdir()):
                    path.parent.rmdir()
    return removed
