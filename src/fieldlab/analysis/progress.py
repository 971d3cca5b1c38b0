"""Progress on stderr while a long read runs: a line rewritten in place, and an elapsed-time ticker."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

__all__ = ["Ticker", "progress_printer"]


class Ticker:
    """Elapsed-time progress while a single database query runs (chdb reports no fraction done).

    Calls ``show`` twice a second from a daemon thread until :meth:`stop`.
    """

    def __init__(self, show: Callable[[str], None], what: str) -> None:
        self._stop = threading.Event()
        self._t0 = time.monotonic()

        def run() -> None:
            while not self._stop.wait(0.5):
                show(f"{what}: {time.monotonic() - self._t0:5.1f} s")

        self._thread = threading.Thread(target=run, name="fieldlab-progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def progress_printer(enabled: bool) -> Callable[[str], None] | None:
    """A ``progress`` callback that rewrites one 100-column line on stderr, or None when not ``enabled``."""
    if not enabled:
        return None

    def show(msg: str) -> None:
        sys.stderr.write("\r" + msg[:100].ljust(100))
        sys.stderr.flush()

    return show
