"""Measurement from traces: ``analyze()``, the SRM check, peek-safe statistics, balance checks, reports.

numpy and scipy are imported lazily, inside the functions that need them, so
``import fieldlab`` stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "analyze",
    "write_html",
    "render_text",
    "render_html",
    "balance",
    "FileSource",
    "ClickHouseSource",
    "open_source",
    "parse_metric",
    "SourceError",
]


def __getattr__(name: str) -> Any:
    if name == "analyze":
        from .core import analyze

        return analyze
    if name in ("write_html", "render_text", "render_html"):
        from . import report

        return getattr(report, name)
    if name == "balance":
        from .balance import balance

        return balance
    if name in ("FileSource", "ClickHouseSource", "open_source", "parse_metric", "SourceError"):
        from . import sources

        return getattr(sources, name)
    raise AttributeError(f"module 'fieldlab.analysis' has no attribute {name!r}")
