"""Wiring mistakes the request path can see: a unit nothing resolves, a middleware added twice.

They fail no request; they silently leave people out of experiments (reason
``no_unit``). So each adapter warns once, on the ``fieldlab`` logger, naming
the fix its framework needs (``AdapterConfig(unit_hints=...)``):

* a running experiment uses a unit kind the adapter has no resolver for
  (Flask has no built-in ``user``): at start-up, when the plan is made;
* a unit whose resolver (the framework's default or the app's callable)
  returned nothing for each of the first :data:`UNRESOLVED_AFTER` requests;
* the same middleware wrapped around the app twice (see the adapters).

Django has system checks for its equivalents (``fieldlab.adapters.django_app.checks``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["UNRESOLVED_AFTER", "UnitWatch", "added_twice", "same_lab_outside"]

_log = logging.getLogger("fieldlab")

#: Requests after which a unit that never resolved is reported.
UNRESOLVED_AFTER = 100


def _experiments_of(lab: Any, kind: str) -> list[str]:
    return sorted(key for key, e in lab.experiments.items() if e.unit == kind and e.status == "running")


class UnitWatch:
    """Per adapter: which unit kinds have not resolved yet, and what to say when they never do."""

    def __init__(self, hints: Mapping[str, str], default_kinds: Iterable[str], where: str) -> None:
        self.hints = dict(hints)
        self.default_kinds = frozenset(default_kinds)
        self.where = where
        self.reported: set[str] = set()
        self.resolved: set[str] = set()
        #: kind -> requests seen without it; empty when nothing is left to watch (the request path checks this)
        self.pending: dict[str, int] = {}

    def _fix(self, kind: str, own: bool) -> str:
        if own:
            return f"check the {kind!r} resolver passed in units= ({self.where}): it returned nothing every time"
        return self.hints.get(kind) or f'pass units={{"{kind}": ...}} to {self.where} (a callable or "header:NAME")'

    def planned(self, lab: Any, kinds: Iterable[str], resolvable: Mapping[str, bool]) -> None:
        """A new plan: warn about kinds with no resolver, watch those resolved by a callable.

        ``resolvable`` maps each kind the experiments use to whether the plan
        has a resolver for it, and True only for callables worth watching.
        """
        pending = {}
        for kind in kinds:
            if kind in ("visitor", "request"):
                continue
            if kind not in resolvable:
                names = _experiments_of(lab, kind)
                if names and kind not in self.reported:
                    self.reported.add(kind)
                    _log.warning(
                        "fieldlab: running experiments %s use the %r unit, which %s cannot resolve, so "
                        "nobody is in them (reason no_unit); %s",
                        names,
                        kind,
                        self.where,
                        self._fix(kind, False),
                    )
            elif resolvable[kind] and kind not in self.reported and kind not in self.resolved:
                pending[kind] = 0
        self.pending = pending

    def report_now(self, lab: Any, kind: str, problem: str) -> None:
        """Warn at once (a first request proved ``kind`` cannot resolve), then stop watching it."""
        self.pending = {k: v for k, v in self.pending.items() if k != kind}
        names = _experiments_of(lab, kind)
        if names and kind not in self.reported:
            self.reported.add(kind)
            _log.warning(
                "fieldlab: %s, so nobody is in experiments %s (reason no_unit); %s",
                problem,
                names,
                self._fix(kind, False),
            )

    def note(self, lab: Any, units: Mapping[str, str | None], own: Iterable[str]) -> None:
        """One request's resolved units (called only while ``pending`` is not empty); never raises."""
        try:
            self._note(lab, units, own)
        except Exception:
            self.pending = {}

    def _note(self, lab: Any, units: Mapping[str, str | None], own: Iterable[str]) -> None:
        done = []
        for kind in list(self.pending):
            if units.get(kind) is not None:
                self.resolved.add(kind)
                done.append(kind)
                continue
            seen = self.pending.get(kind, 0) + 1
            self.pending[kind] = seen
            if seen >= UNRESOLVED_AFTER:
                done.append(kind)
                names = _experiments_of(lab, kind)
                if names and kind not in self.reported:
                    self.reported.add(kind)
                    _log.warning(
                        "fieldlab: the %r unit resolved in none of the first %d requests, so nobody is in "
                        "experiments %s (reason no_unit); %s",
                        kind,
                        seen,
                        names,
                        self._fix(kind, kind in set(own)),
                    )
        if done:
            self.pending = {k: v for k, v in self.pending.items() if k not in done}


def same_lab_outside(outer: Any, middleware: Any) -> bool:
    """True when ``outer`` (the middleware that marked the request first) is another fieldlab middleware
    with the same lab: added twice. Another lab is a mounted sub-app, which runs normally."""
    return (
        outer is not None
        and outer is not middleware
        and getattr(outer, "config", None) is not None
        and outer.config.lab is middleware.config.lab
    )


def added_twice(middleware: Any, where: str, fix: str) -> None:
    """Warn once per middleware object that another fieldlab middleware already handles its requests."""
    if getattr(middleware, "_warned_twice", False):
        return
    middleware._warned_twice = True
    _log.warning(
        "fieldlab: %s is added twice around the same app; the inner one passes requests through untouched; %s",
        where,
        fix,
    )
