"""fieldlab's own failures and process-wide counters: count by name, log once, never raise.

fieldlab never raises into a request: when one of its parts fails (a unit
resolver, the fault engine, a telemetry hook), the request takes the default
path, the failure is counted here and logged once. This module is the one
place that does that; :func:`fieldlab.stats` returns every counter.

Counters live in groups (``request``, ``faults``, ``context``, ...). Each
module gets its group's dict from :func:`counters` and keeps it, so a module
may still show its own counters (``fieldlab.faults.stats()``); ``fieldlab.stats()``
names them ``"<group>.<name>"``.

Logging convention: every message goes to the ``fieldlab`` logger or a child
of it (``fieldlab.faults`` for the fault engine and the kill switch), and
children propagate, so configuring ``logging.getLogger("fieldlab")`` sees or
silences all of them. Internal failures are logged at WARNING, once per tag
per process (at most ``MAX_TAGS`` distinct tags, so a flood of distinct
failures costs bounded memory; later ones are only counted).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from typing import Any

__all__ = ["counters", "count", "log_once", "failed", "stats", "reset", "MAX_TAGS"]

LOG = logging.getLogger("fieldlab")
#: Distinct tags logged once each; beyond it failures are only counted.
MAX_TAGS = 1000

_groups: dict[str, dict[str, int]] = {}
_logged: set[str] = set()
_lock = threading.Lock()


def counters(group: str, names: Iterable[str] = ()) -> dict[str, int]:
    """The counter dict of ``group``, created on first use with ``names`` at zero.

    The same dict is returned each time: read it directly, count with :func:`count`.
    """
    with _lock:
        found = _groups.setdefault(group, {})
        for name in names:
            found.setdefault(name, 0)
        return found


def count(group: str, name: str, n: int = 1) -> None:
    """Add ``n`` to counter ``name`` of ``group``; never raises."""
    try:
        with _lock:
            found = _groups.setdefault(group, {})
            found[name] = found.get(name, 0) + n
    except Exception:  # counting a failure must not become one
        pass


def log_once(tag: str, msg: str, *args: Any, logger: logging.Logger = LOG, exc_info: bool = False) -> None:
    """Log ``msg % args`` at WARNING the first time ``tag`` is seen in this process; never raises."""
    try:
        with _lock:
            if tag in _logged or len(_logged) >= MAX_TAGS:
                return
            _logged.add(tag)
        logger.warning(msg, *args, exc_info=exc_info)
    except Exception:
        pass


def failed(
    group: str, name: str, tag: str, msg: str, *args: Any, logger: logging.Logger = LOG, exc_info: bool = True
) -> None:
    """An internal failure: count ``group.name`` and log ``msg`` once per ``tag`` (with the traceback); never raises.

    Call it from the ``except`` block that caught the failure.
    """
    count(group, name)
    log_once(f"{group}:{tag}", msg, *args, logger=logger, exc_info=exc_info)


def stats() -> dict[str, int]:
    """Every process-wide counter, as ``{"<group>.<name>": value}``, sorted by name."""
    with _lock:
        return {
            f"{group}.{name}": value
            for group, found in sorted(_groups.items())
            for name, value in sorted(found.items())
        }


def reset(group: str) -> None:
    """Zero the counters of ``group`` (tests, benchmarks); the once-only log tags stay."""
    with _lock:
        found = _groups.get(group, {})
        for name in found:
            found[name] = 0


def _after_fork_in_child() -> None:
    """A lock held by another thread at fork time would stay held forever in the child."""
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
