"""The config-file watcher of a :class:`~fieldlab.lab.Lab` built with ``Lab.from_file``.

A daemon thread polls the file every ``reload_interval`` seconds and applies a
changed file through the Lab. It starts lazily: nothing runs at import or
construction; the Lab calls :meth:`ConfigWatcher.ensure_started` from its
evaluation entry points (a boolean check once started), so the thread runs in
the process that evaluates. Threads do not survive ``fork``: in a forked child
(gunicorn ``--preload`` workers) every watcher is marked not started, and the
child's first evaluation starts its own.

Settle rule: a changed file is applied only once it is stable, the same
signature (mtime, size) and the same content hash at every poll for at least
``RELOAD_SETTLE_SECONDS`` (and at least one poll interval). A file being
rewritten in place (``open(path, "w")`` then writes) changes one or the other
between polls, so it is never read half-written. ``Lab.reload()`` skips the
rule: it is called after an atomic replace.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, NamedTuple

from .config import MAX_RELOAD_INTERVAL

if TYPE_CHECKING:
    from .lab import Lab

__all__ = ["ConfigWatcher", "RELOAD_SETTLE_SECONDS", "THREAD_NAME"]

_log = logging.getLogger("fieldlab")
#: A changed config file takes effect once it has stayed the same (size, mtime, content hash) this long.
RELOAD_SETTLE_SECONDS = 1.0
THREAD_NAME = "fieldlab-config-watcher"


class _Candidate(NamedTuple):
    """A changed file seen by a poll and not applied yet."""

    signature: tuple[int, int]
    digest: bytes
    first_seen: float


class ConfigWatcher:
    """Polls one Lab's config file in a daemon thread, started on first use in each process."""

    def __init__(self, lab: Lab, interval: float) -> None:
        self._lab = weakref.ref(lab)  # the watcher never keeps a Lab alive; it ends when the Lab is collected
        self.interval = min(interval, MAX_RELOAD_INTERVAL)  # validated already; never an OverflowError in sleep
        #: True once a thread runs in this process (or after close): the Lab's cheap check on every evaluation.
        self.started = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._candidate: _Candidate | None = None
        _WATCHERS.add(self)

    def ensure_started(self) -> None:
        """Start the polling thread in this process unless it runs already (or the watcher is closed)."""
        with self._lock:
            if self.started:
                return
            self.started = True
            thread = self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        thread.start()

    def close(self) -> None:
        """Stop polling, for good (the thread ends at its next wake-up)."""
        with self._lock:
            self._closed = self.started = True
            self._thread = None

    def poll(self) -> bool:
        """One poll: apply a changed file once it is stable. True when a new config took effect."""
        lab = self._lab()
        if lab is None:
            return False
        read = lab._read_changed_file()
        if read is None:  # unchanged, or unreadable (reported by the Lab)
            self._candidate = None
            return False
        signature, data = read
        digest = hashlib.sha256(data).digest()
        now = time.monotonic()
        cand = self._candidate
        if cand is None or cand.signature != signature or cand.digest != digest:
            self._candidate = _Candidate(signature, digest, now)
            return False
        if now - cand.first_seen < RELOAD_SETTLE_SECONDS:
            return False
        self._candidate = None
        return lab._apply_file(signature, data)

    def _run(self) -> None:
        me = threading.current_thread()
        while True:
            time.sleep(self.interval)
            if self._thread is not me or self._lab() is None:
                return
            try:
                self.poll()
            except Exception:  # the Lab reports its own failures; nothing may end the watcher
                _log.exception("fieldlab: config watcher poll failed; watching on")

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._thread = None
        self._candidate = None
        self.started = self._closed


_WATCHERS: weakref.WeakSet[ConfigWatcher] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """The parent's threads are gone in a forked child: each watcher starts again on first use."""
    for watcher in list(_WATCHERS):
        watcher._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
