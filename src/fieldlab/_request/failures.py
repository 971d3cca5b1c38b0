"""What went wrong on the request path, counted by kind and logged once: the request takes the default path.

A thin front on :mod:`fieldlab._internal`, the one count-and-log-once helper: the
counters are the ``request`` group of :func:`fieldlab.stats`.
"""

from __future__ import annotations

from .. import _internal

__all__ = ["failed", "stats"]

#: Failures on the request path, by kind (also in ``fieldlab.stats()`` as ``request.<kind>``).
stats: dict[str, int] = _internal.counters(
    "request",
    ("resolver_errors", "attribute_errors", "start_errors", "fault_errors", "baggage_rejected", "cache_header_errors"),
)


def failed(kind: str, detail: str = "") -> None:
    """Count one failure of ``kind``; log it (with the exception being handled) the first time per detail."""
    _internal.failed(
        "request",
        kind,
        f"{kind}:{detail}",
        "fieldlab: %s %s failed; the request takes the default path",
        kind.replace("_", " "),
        detail,
    )
