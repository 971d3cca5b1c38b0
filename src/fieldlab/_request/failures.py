"""What went wrong on the request path, counted by kind and logged once: the request takes the default path."""

from __future__ import annotations

import logging

__all__ = ["failed", "stats"]

_log = logging.getLogger("fieldlab")

#: Failures on the request path, by kind; each one is logged once.
stats: dict[str, int] = {"resolver_errors": 0, "attribute_errors": 0, "start_errors": 0, "fault_errors": 0,
                         "baggage_rejected": 0}
_logged: set[str] = set()


def failed(kind: str, detail: str = "") -> None:
    """Count one failure of ``kind``; log it (with the exception being handled) the first time per detail."""
    stats[kind] = stats.get(kind, 0) + 1
    tag = f"{kind}:{detail}"
    if tag not in _logged and len(_logged) < 1000:
        _logged.add(tag)
        _log.warning("fieldlab: %s %s failed; the request takes the default path", kind.replace("_", " "), detail,
                     exc_info=True)
