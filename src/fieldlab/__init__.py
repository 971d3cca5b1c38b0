"""fieldlab: deterministic experiments in production, measured from your traces.

Public names are listed in ``__all__``; everything else is private.
"""

from __future__ import annotations

import sys

from . import _internal
from ._assignment import REASONS, Assignment
from ._hashing import BUCKETS, bucket, hash32
from .context import assignment, choose, current, expose, param, variant
from .errors import ConfigError, FieldLabError
from .experiments import Experiment, Holdout, Layer, Variant
from .faults import InjectedFault, fault_point, inject
from .lab import Lab
from .overrides import VerifiedOverrides, make_token, verify_token
from .switches import switch

__version__ = "0.1.0"


def stats() -> dict[str, int]:
    """Every process-wide counter of fieldlab, as a plain dict ``{"<group>.<name>": count}``.

    Groups: ``request`` (unit resolvers, attribute callables, request start, baggage),
    ``faults`` (injected, skipped by each rail, engine errors), ``killswitch``,
    ``context`` (telemetry hooks), ``telemetry`` (recorder and processor errors).
    Each internal failure is also logged once at WARNING on the ``fieldlab`` logger.
    A group appears once its part of fieldlab is loaded (``request`` with the first
    adapter). A lab's own counters (errors, reloads, unknown experiments) are ``lab.stats``.
    """
    out = _internal.stats()
    telemetry = sys.modules.get("fieldlab.telemetry")  # loaded with the adapters; it keeps its own dict for now
    for name, value in getattr(telemetry, "stats", {}).items():
        out.setdefault(f"telemetry.{name}", value)
    return dict(sorted(out.items()))


__all__ = [
    "BUCKETS",
    "bucket",
    "hash32",
    "Assignment",
    "REASONS",
    "ConfigError",
    "FieldLabError",
    "Experiment",
    "Holdout",
    "Layer",
    "Variant",
    "fault_point",
    "inject",
    "InjectedFault",
    "Lab",
    "stats",
    "VerifiedOverrides",
    "make_token",
    "verify_token",
    "variant",
    "param",
    "switch",
    "choose",
    "assignment",
    "expose",
    "current",
    "__version__",
]
