"""The per-request context: which variants this request has, and what it did with them.

Data flows one way: request -> adapter -> context -> lab -> telemetry. An
adapter resolves the request's units and attributes, calls :func:`start` (which
evaluates every experiment once), and binds the context with a
:class:`contextvars.ContextVar`, so each request sees only its own assignments,
in threads started with a copied context, in asyncio tasks and in sync views
run in threadpools. Outside a request everything returns the default.

Telemetry hooks (set by :mod:`fieldlab.telemetry`) are called on exposure and
on fault events; a failing hook is swallowed, counted and logged once.
"""

from __future__ import annotations

import contextvars
import logging
from typing import Any, Callable, Mapping

from ._assignment import Assignment
from .lab import Lab
from .overrides import VerifiedOverrides

__all__ = ["RequestContext", "read_from", "current", "start", "bind", "reset", "variant", "param", "choose", "assignment", "expose"]

_log = logging.getLogger("fieldlab")
_current: contextvars.ContextVar["RequestContext | None"] = contextvars.ContextVar("fieldlab_request", default=None)


class RequestContext:
    """Everything fieldlab knows about one request.

    ``assignments`` holds an :class:`Assignment` for every experiment (also
    those the unit is not in, with their reason). ``exposed`` lists the keys
    whose variant the code read. ``events`` collects span events to record
    (exposures, faults) for recorders that attach them late.
    """

    __slots__ = ("lab", "units", "attributes", "overrides", "assignments", "exposed", "held_out",
                 "trace_id", "version", "faults", "_fault_injected", "on_expose", "on_event", "on_fault",
                 "server_span", "recorder", "extra")

    def __init__(self, lab: Lab, units: Mapping[str, str | None], attributes: Mapping[str, Any] | None = None,
                 overrides: VerifiedOverrides | None = None, trace_id: str | None = None, *,
                 copy: bool = True, assignments: dict[str, Assignment] | None = None) -> None:
        self.lab = lab
        # copy=False: the caller hands over fresh dicts it will not touch again (the adapters' hot path)
        self.units = dict(units) if copy or units.__class__ is not dict else units  # type: ignore[assignment]
        self.attributes = dict(attributes or {}) if copy or attributes.__class__ is not dict else attributes  # type: ignore[assignment]
        self.overrides = overrides
        self.trace_id = trace_id
        self.version = lab.version
        # assignments: already evaluated for exactly these units (an adapter's cache); else evaluate now
        self.assignments: dict[str, Assignment] = (assignments if assignments is not None else
                                                   lab.assign_all(self.units, self.attributes, overrides=overrides))
        self.held_out = sorted({a.holdout for a in self.assignments.values() if a.holdout}) if lab.holdouts else []
        self.exposed: set[str] = set()
        self.faults: list[dict[str, Any]] = []
        self._fault_injected = False
        self.on_expose: Callable[["RequestContext", Assignment], None] | None = None
        self.on_event: Callable[["RequestContext", str, dict[str, Any]], None] | None = None
        self.on_fault: Callable[["RequestContext"], None] | None = None
        #: The request's SERVER span once telemetry found it (see :mod:`fieldlab.telemetry`).
        self.server_span: Any = None
        #: The telemetry recorder that writes this request onto its span, if any.
        self.recorder: Any = None
        self.extra: dict[str, Any] = {}
        self._expose_on_assign()

    def _expose_on_assign(self) -> None:
        keys = _on_assign_keys(self.lab)
        if keys:
            assignments = self.assignments
            for key in keys:
                a = assignments.get(key)
                if a is not None and a.in_experiment:
                    self.exposed.add(key)

    @property
    def fault_injected(self) -> bool:
        """True once any fault was injected into this request; setting it tells telemetry."""
        return self._fault_injected

    @fault_injected.setter
    def fault_injected(self, value: bool) -> None:
        self._fault_injected = bool(value)
        hook = self.on_fault
        if value and hook is not None:
            try:
                hook(self)
            except Exception:
                _hook_failed("fault")

    def rebind_unit(self, kind: str, unit_id: str | None) -> None:
        """Re-evaluate the experiments of one unit kind with a new id.

        Used for the ``request`` unit when the server span (and so the trace
        id) only appears after the context was started; it happens before the
        application has read anything.
        """
        self.units[kind] = unit_id
        keys = [key for key, exp in self.lab.experiments.items() if exp.unit == kind]
        if not keys:
            return
        for key in keys:  # only this kind's experiments: the others keep their one evaluation
            self.assignments[key] = self.lab.assign(key, unit_id, self.attributes, overrides=self.overrides)
            self.exposed.discard(key)
        self.held_out = sorted({a.holdout for a in self.assignments.values() if a.holdout}) if self.lab.holdouts else []
        self._expose_on_assign()

    def in_experiment(self) -> dict[str, Assignment]:
        """Assignments where the unit takes part (split or override) or got a concluded winner."""
        return {k: a for k, a in self.assignments.items() if a.variant is not None}

    def read(self, key: str) -> Assignment | None:
        """The assignment of ``key``, marking it exposed when the unit is in the experiment."""
        a = self.assignments.get(key)
        if a is not None and a.in_experiment and key not in self.exposed:
            self.exposed.add(key)
            hook = self.on_expose
            if hook is not None:
                try:
                    hook(self, a)
                except Exception:
                    _hook_failed("expose")
        return a

    def event(self, name: str, attributes: dict[str, Any]) -> None:
        """Record a span event (e.g. an injected fault) through the telemetry hook."""
        hook = self.on_event
        if hook is not None:
            try:
                hook(self, name, attributes)
            except Exception:
                _hook_failed("event")


_failed_hooks: set[str] = set()
_on_assign_cache: dict[int, tuple[str, tuple[str, ...]]] = {}


def _on_assign_keys(lab: Lab) -> tuple[str, ...]:
    """Keys of experiments exposed on assignment, cached per lab and config version."""
    version = lab.version
    hit = _on_assign_cache.get(id(lab))
    if hit is None or hit[0] != version:
        keys = tuple(k for k, e in lab.experiments.items() if e.exposure == "on_assign")
        if len(_on_assign_cache) > 256:
            _on_assign_cache.clear()
        _on_assign_cache[id(lab)] = hit = (version, keys)
    return hit[1]


def _hook_failed(kind: str) -> None:
    if kind not in _failed_hooks:
        _failed_hooks.add(kind)
        _log.warning("fieldlab: a telemetry %s hook failed; requests go on unrecorded", kind, exc_info=True)


def start(lab: Lab, units: Mapping[str, str | None], attributes: Mapping[str, Any] | None = None,
          overrides: VerifiedOverrides | None = None, trace_id: str | None = None) -> RequestContext:
    """Evaluate a request's experiments; does not bind the context (see :func:`bind`)."""
    return RequestContext(lab, units, attributes, overrides, trace_id)


def bind(ctx: RequestContext | None) -> contextvars.Token:
    """Make ``ctx`` the current request context; pass the token to :func:`reset`."""
    return _current.set(ctx)


def reset(token: contextvars.Token) -> None:
    """Undo :func:`bind`; never raises (a token from another context just clears the variable)."""
    try:
        _current.reset(token)
    except ValueError:
        _current.set(None)


def current() -> RequestContext | None:
    """The current request's context, or None outside a request."""
    return _current.get()


def read_from(ctx: RequestContext | None, key: str) -> Assignment | None:
    """``ctx.read(key)`` for a context that may be None; never raises (the default path)."""
    if ctx is None:
        return None
    try:
        return ctx.read(key)
    except Exception:
        return None


def assignment(key: str) -> Assignment | None:
    """The current request's assignment of ``key`` (marks it exposed), or None outside a request."""
    return read_from(_current.get(), key)


def expose(key: str) -> None:
    """Mark ``key`` exposed for the current request without reading a value."""
    assignment(key)


def variant(key: str, default: str | None = None) -> str | None:
    """The current request's variant of ``key``; ``default`` outside a request or when not in it."""
    a = assignment(key)
    if a is None or a.variant is None:
        return default
    return a.variant


def choose(key: str, options: Mapping[str, Any], default: Any = None) -> Any:
    """The value ``options`` maps the current variant of ``key`` to, else ``default``.

    >>> choose("checkout-redesign", {"treatment": "new.html"}, default="old.html")  # outside a request
    'old.html'
    """
    v = variant(key)
    if v is None:
        return default
    return options.get(v, default)


def param(key: str, name: str, default: Any = None) -> Any:
    """A parameter of the current request's variant of ``key``, else ``default``."""
    a = assignment(key)
    if a is None or a.variant is None:
        return default
    return a.params.get(name, default)
