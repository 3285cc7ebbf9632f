"""Thread counts: torch's intra-op thread count is process-wide, so changing it is serialised here and always
restored, also when the work in between fails."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

_lock = threading.RLock()  # one change at a time: two threads restoring out of order would leave a wrong count


@contextmanager
def torch_threads(n: int) -> Iterator[int]:
    """Run the block with torch using `n` threads (at least 1); yields the count it had before."""
    import torch

    with _lock:
        before = torch.get_num_threads()
        torch.set_num_threads(max(1, int(n)))
        try:
            yield before
        finally:
            torch.set_num_threads(before)
