"""The request side of the guardrails: every Lab follows its state store from a background thread.

A Lab whose config names a state store (``[lab] state``, by default the JSON
file beside the config, which is also the kill switch's file) is registered
here. One :class:`~fieldlab.control.state.StatePoller` per store and poll
interval is shared by every Lab of the process that follows the same store;
each new snapshot is handed to those Labs (``Lab._follow_state``), which swap
an immutable view of what is paused. Nothing here runs on the request path:
requests read the snapshot a Lab holds, and only do work when something is
paused.

The poller stops when the last Lab following it is collected. Its thread
starts at the Lab's first evaluation, in the process that evaluates (so
gunicorn ``--preload`` works), and again in a forked child.

This module needs neither numpy nor a web framework.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import Any

from .state import DEFAULT_POLL_INTERVAL, Snapshot, StatePoller, open_store

__all__ = ["follow", "start", "unfollow", "pollers"]

_log = logging.getLogger("fieldlab.control")


class _Follow:
    """One store followed by one poller, and the Labs that follow it (weakly held)."""

    def __init__(self, url: str, interval: float) -> None:
        self.url = url
        self.labs: weakref.WeakSet[Any] = weakref.WeakSet()
        ref = weakref.ref(self)
        self.poller = StatePoller(
            open_store(url), interval, on_change=lambda snap: _changed(ref, snap), name=f"fieldlab-state {url}"
        )

    def deliver(self, snapshot: Snapshot) -> None:
        for lab in list(self.labs):
            try:
                lab._follow_state(snapshot)
            except Exception:  # one Lab's failure never stops the others or the poller
                _log.exception("fieldlab: applying the lab state failed")


def _changed(ref: weakref.ref[_Follow], snapshot: Snapshot) -> None:
    f = ref()
    if f is not None:
        f.deliver(snapshot)


_SHARED: dict[tuple[str, float], _Follow] = {}
#: Reentrant: a Lab's finalizer (``_release``) can run inside ``follow`` on the same thread, when the
#: garbage collector collects an old Lab while ``follow`` allocates; a plain Lock would deadlock there.
_LOCK = threading.RLock()


def follow(lab: Any, url: str, interval: float = DEFAULT_POLL_INTERVAL, *, start: bool = True) -> StatePoller:
    """Make ``lab`` follow the store at ``url`` (an absolute path or a URL); returns the shared poller.

    The first Lab of a store reads it once before returning (bounded by the
    store's timeout), so a process that starts with a reachable store knows its
    pauses before its first request. ``lab`` receives the current snapshot at
    once and every change afterwards. With ``start=False`` the poller thread is
    left for :func:`start` (the Lab starts it at its first evaluation, so
    ``import`` and a forking server's master start no thread).
    """
    key = (url, float(interval))
    with _LOCK:
        f = _SHARED.get(key)
        first = f is None
        if f is None:
            f = _SHARED[key] = _Follow(url, interval)
        f.labs.add(lab)
    weakref.finalize(lab, _release, key)
    if first:
        f.poller.poll_once()
    if start:
        f.poller.start(first_read=False)
    lab._follow_state(f.poller.snapshot)
    return f.poller


def start(lab: Any) -> None:
    """Start (or, in a forked child, restart) the poller threads ``lab`` follows. Never raises."""
    for f in list(_SHARED.values()):
        if lab in f.labs:
            try:
                f.poller.start(first_read=False)
            except Exception:  # pragma: no cover - a thread that cannot start: the last snapshot stays
                _log.exception("fieldlab: cannot start the state poller of %s", f.url)


def unfollow(lab: Any) -> None:
    """Stop delivering snapshots to ``lab`` (its poller stops when no Lab follows it any more)."""
    with _LOCK:
        for key, f in list(_SHARED.items()):
            if lab in f.labs:
                f.labs.discard(lab)
                if _empty(f.labs):
                    _stop(key)


def _release(key: tuple[str, float]) -> None:
    with _LOCK:
        f = _SHARED.get(key)
        if f is not None and _empty(f.labs):
            _stop(key)


def _empty(labs: weakref.WeakSet[Any]) -> bool:
    """No live Lab left (iterating skips the dead: a finalizer may run before the set drops its entry)."""
    return next(iter(labs), None) is None


def _stop(key: tuple[str, float]) -> None:
    f = _SHARED.pop(key)
    f.poller.stop(timeout=0)
    try:
        f.poller.store.close()
    except Exception:  # pragma: no cover - closing a dead connection
        pass


def pollers() -> dict[str, StatePoller]:
    """The pollers of this process by store (for ``status`` pages and tests)."""
    return {key[0]: f.poller for key, f in list(_SHARED.items())}


def _after_fork_in_child() -> None:
    """Fresh lock in a forked child; each Lab restarts its pollers at its first evaluation there."""
    global _LOCK
    _LOCK = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
