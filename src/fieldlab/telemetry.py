"""OpenTelemetry recording: a request's assignments on its SERVER span, exposures as events.

Schema (the names live in :mod:`fieldlab.attributes`; see docs/integration.md):
``fieldlab.variant.<key>``, ``fieldlab.exposed.<key>``, ``fieldlab.forced.<key>``,
``fieldlab.holdout.<holdout>``, ``fieldlab.unit.<kind>``, ``fieldlab.config.version``,
``fieldlab.fault.injected``, and one ``feature_flag.evaluation`` event per exposure.

Order-proof wiring. Frameworks' OTel instrumentations start the server span at
different points, so fieldlab finds it two ways and needs no wiring:

* fieldlab inside the instrumentation: the adapter sees a recording SERVER span
  as the current span when the request starts and writes onto it;
* fieldlab outside: the context is bound before the span starts, and
  :class:`FieldLabSpanProcessor` (added once, lazily, to the SDK's global
  tracer provider as soon as one is set) writes onto the first SERVER span
  started while the context is current.

Exposures and faults that happen later go to the span remembered in the
context. Unit ids are written as a keyed hash by default (``h1:<16 hex>``,
HMAC-SHA256); without a configured key the hash is pseudonymous only.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from collections import deque
from typing import Any, Mapping

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from . import attributes as A
from ._assignment import Assignment
from ._units import MAX_CACHED_ID_LENGTH
from .context import RequestContext, current
from .errors import ConfigError
from .lab import Lab

__all__ = ["Recorder", "UnitHasher", "FieldLabSpanProcessor", "ensure_processor", "processor_installed",
           "unit_hash_key", "set_attributes", "add_event", "UNIT_ID_MODES", "DEFAULT_UNIT_HASH_KEY", "stats"]

_log = logging.getLogger("fieldlab")
_SERVER = SpanKind.SERVER

#: How unit ids are written: ``hash`` (default), ``raw``, or ``none`` (left out).
UNIT_ID_MODES = ("hash", "raw", "none")
#: The key used when neither ``lab.unit_hash_key_env`` nor a lab secret is set.
#: It is public, so hashes made with it are pseudonymous, not anonymous.
DEFAULT_UNIT_HASH_KEY = b"fieldlab-unit-hash-v1-public-default-key"

#: Failures inside recording, by kind; requests go on unrecorded.
stats: dict[str, int] = {"recorder_errors": 0, "processor_errors": 0}
_logged: set[str] = set()


def _failed(kind: str) -> None:
    stats[kind] = stats.get(kind, 0) + 1
    if kind not in _logged:
        _logged.add(kind)
        _log.warning("fieldlab: telemetry failed (%s); the request goes on unrecorded", kind, exc_info=True)


def unit_hash_key(lab: Lab) -> bytes:
    """The unit-id hash key: env var named by ``lab.unit_hash_key_env``, else the lab secret, else the public default."""
    env = lab.settings.get("unit_hash_key_env")
    if env:
        value = os.environ.get(str(env), "")
        if value:
            return value.encode("utf-8")
    return lab.secret or DEFAULT_UNIT_HASH_KEY


class UnitHasher:
    """``h1:`` + the first 16 hex digits of HMAC-SHA256(key, unit id).

    Recent results are cached (a user makes many requests); the cache is
    bounded and simply emptied when full, and ids longer than
    :data:`~fieldlab._units.MAX_CACHED_ID_LENGTH` are never kept, so its size
    in bytes is bounded too.
    """

    __slots__ = ("_base", "_cache")
    CACHE_SIZE = 8192

    def __init__(self, key: bytes) -> None:
        self._base = hmac.new(key, digestmod=hashlib.sha256)
        self._cache: dict[str, str] = {}

    def __call__(self, unit_id: str) -> str:
        hit = self._cache.get(unit_id)
        if hit is not None:
            return hit
        h = self._base.copy()
        h.update(unit_id.encode("utf-8"))
        value = "h1:" + h.hexdigest()[:16]
        if len(unit_id) <= MAX_CACHED_ID_LENGTH:
            if len(self._cache) >= self.CACHE_SIZE:
                self._cache.clear()
            self._cache[unit_id] = value
        return value


try:
    from opentelemetry.attributes import BoundedAttributes as _BoundedAttributes
except ImportError:  # pragma: no cover
    _BoundedAttributes = None  # type: ignore[assignment,misc]
try:  # the SDK is optional: without it every write takes the public API
    from opentelemetry.sdk.trace import Event as _Event
    from opentelemetry.sdk.trace import _Span as _SdkSpan
    from opentelemetry.sdk.util import BoundedList as _BoundedList
except ImportError:  # pragma: no cover
    _Event = _SdkSpan = _BoundedList = None  # type: ignore[assignment,misc]


def _direct_events() -> bool:
    """True when SDK events and span event lists have the layout :meth:`Recorder.on_expose` writes directly.

    An exposure event is then made without the SDK's two ``__init__`` frames
    and appended to the span's bounded deque without its lock (a request's
    span is written by that request alone). Any other layout takes the public path.
    """
    if _Event is None or _BoundedList is None or _BoundedAttributes is None:
        return False
    try:
        probe = _Event("probe", None, 1)
        return (vars(probe) == {"_name": "probe", "_timestamp": 1, "_attributes": None}
                and _BoundedList(1)._dq.__class__ is deque)
    except Exception:  # pragma: no cover
        return False


_DIRECT_EVENTS = _direct_events()
_new = object.__new__
_time_ns = time.time_ns


def _context_var() -> tuple[Any, Any]:
    """(the ContextVar holding the current OTel context, the span's key in it), when the default runtime
    context is in use; else (None, None)."""
    try:
        from opentelemetry import context as otel_context
        from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
        from opentelemetry.trace.propagation import _SPAN_KEY
        runtime = otel_context._RUNTIME_CONTEXT
        if runtime.__class__ is ContextVarsRuntimeContext:
            var = runtime._current_context
            var.get()
            return var, _SPAN_KEY
    except Exception:
        pass
    return None, None


_OTEL_CONTEXT, _SPAN_KEY = _context_var()
_INVALID = trace.INVALID_SPAN


def set_attributes(span: Any, attrs: dict[str, Any]) -> None:
    """``span.set_attributes(attrs)``, without re-validating values fieldlab built itself.

    fieldlab writes only ``str`` and ``bool`` values under valid keys, yet the
    SDK's public path re-cleans every value. When the span is the SDK's own
    (see :func:`_sdk_attributes`) and has room, the values go straight into its
    attribute dict (:func:`_put`); otherwise the public API is used.
    """
    target = _sdk_attributes(span)
    if target is None or not _put(span, target, attrs):
        span.set_attributes(attrs)


def _sdk_attributes(span: Any) -> Any:
    """The SDK span's own attribute store when fieldlab may write into it directly, else None.

    That is: plain BoundedAttributes with no value-length limit, still mutable.
    Writers then check the span's end and the count limit (:func:`_put`);
    anything else goes through the public API.
    """
    target = getattr(span, "_attributes", None)
    if (target is not None and target.__class__ is _BoundedAttributes and target.max_value_len is None
            and not target._immutable and hasattr(span, "_end_time")):
        return target
    return None


def _put(span: Any, target: Any, attrs: dict[str, Any]) -> bool:
    """Write ``attrs`` into ``target`` (from :func:`_sdk_attributes`); False when only the public API may.

    No lock is taken: a request's span is written by that request alone, and
    each ``dict.update`` of str keys is atomic in CPython, so the SDK's locks
    would only guard the count check below against a concurrent writer of the
    same span, where the worst case is a few attributes over the limit.
    """
    if span._end_time is not None:
        return True  # ended: the SDK would drop the write too
    d = target._dict
    if target.maxlen is not None and len(d) + len(attrs) > target.maxlen:
        return False
    d.update(attrs)
    return True


def _frozen_event_attributes(span: Any, attrs: dict[str, Any]) -> Any:
    """Immutable SDK event attributes built without re-validation, or None when the SDK's limits need the public path."""
    limits = getattr(span, "_limits", None)
    if (_Event is None or _BoundedAttributes is None or limits is None
            or getattr(limits, "max_attribute_length", 0) is not None
            or (limits.max_event_attributes is not None and len(attrs) > limits.max_event_attributes)):
        return None
    try:
        bounded = _BoundedAttributes(limits.max_event_attributes, None, immutable=False)
        bounded._dict.update(attrs)
        bounded._immutable = True
    except AttributeError:
        return None
    return bounded


def add_event(span: Any, name: str, attrs: Any) -> None:
    """``span.add_event(name, attrs)``, skipping the re-validation of values fieldlab built (see :func:`set_attributes`).

    ``attrs`` may be a dict or attributes made by :func:`_frozen_event_attributes` (immutable, so one
    object can serve the events of many spans).
    """
    add = getattr(span, "_add_event", None)
    if add is not None and _Event is not None:
        bounded = attrs if attrs.__class__ is _BoundedAttributes else _frozen_event_attributes(span, attrs)
        if bounded is not None:
            try:
                add(_Event(name=name, attributes=bounded))
                return
            except AttributeError:
                pass
    span.add_event(name, dict(attrs))


class Recorder:
    """Writes requests of one adapter onto their server spans.

    ``unit_ids`` is ``hash``, ``raw`` or ``none``; None takes ``lab.unit_ids``,
    else ``hash``. The ``request`` unit (a trace id) is always written as is.
    """

    def __init__(self, lab: Lab, unit_ids: str | None = None) -> None:
        mode = unit_ids if unit_ids is not None else lab.settings.get("unit_ids", "hash")
        if mode not in UNIT_ID_MODES:
            field = "unit_ids" if unit_ids is not None else "lab.unit_ids"
            raise ConfigError(field, f"unknown mode {mode!r}", f"use one of {', '.join(UNIT_ID_MODES)}")
        self.lab = lab
        self.mode = mode
        self._hasher = UnitHasher(unit_hash_key(lab))
        self._names: dict[str, tuple[str, str, str]] = {}

    # ------------------------------------------------------------------ values
    def unit_value(self, kind: str, unit_id: str | None) -> str | None:
        """What ``fieldlab.unit.<kind>`` holds for ``unit_id`` (None: not written)."""
        if unit_id is None:
            return None
        if kind == "request" or self.mode == "raw":
            return unit_id
        if self.mode == "none":
            return None
        return self._hasher(unit_id)

    def _unit_values(self, ctx: RequestContext) -> dict[str, str]:
        prepared = ctx.prepared
        if prepared is not None:
            return prepared.unit_values
        values = ctx.extra.get("unit_values")
        if values is None:
            values = self.unit_values(ctx.units)
            ctx.own_extra()["unit_values"] = values
        return values

    def unit_values(self, units: Mapping[str, str | None]) -> dict[str, str]:
        """``fieldlab.unit.<kind>`` values of a request's units, by kind (those written at all)."""
        values = {}
        for kind, uid in units.items():
            v = self.unit_value(kind, uid)
            if v is not None:
                values[kind] = v
        return values

    def _attr_names(self, key: str) -> tuple[str, str, str]:
        names = self._names.get(key)
        if names is None:
            names = (A.variant_attr(key), A.exposed_attr(key), A.forced_attr(key))
            self._names[key] = names
        return names

    def flag_event(self, ctx: RequestContext, a: Assignment) -> dict[str, Any]:
        """The ``feature_flag.evaluation`` event attributes of one exposure."""
        attrs: dict[str, Any] = {
            A.FLAG_KEY: a.experiment,
            A.FLAG_VARIANT: a.variant,
            A.FLAG_REASON: A.OTEL_REASONS.get(a.reason, "unknown"),
            A.FLAG_PROVIDER: A.PROVIDER_NAME,
            A.FLAG_VERSION: ctx.version,
        }
        exp = ctx.lab.experiments.get(a.experiment)
        if exp is not None:
            uid = self._unit_values(ctx).get(exp.unit)
            if uid is not None:
                attrs[A.FLAG_CONTEXT_ID] = uid
            if exp.layer:
                attrs[A.FLAG_SET_ID] = exp.layer
        return attrs

    def _event_attributes(self, ctx: RequestContext, span: Any, a: Assignment) -> Any:
        """The exposure event's attributes; built once per prepared set of units (see ``_request``) and frozen."""
        prepared = ctx.prepared
        cache = prepared.events if prepared is not None else None
        attrs = cache.get(a.experiment) if cache is not None else None
        if attrs is None:
            attrs = self.flag_event(ctx, a)
            if cache is not None:
                frozen = _frozen_event_attributes(span, attrs)
                if frozen is not None:
                    cache[a.experiment] = attrs = frozen
        return attrs

    def _add_flag_event(self, ctx: RequestContext, span: Any, a: Assignment) -> None:
        attrs = self._event_attributes(ctx, span, a)
        if ctx.span_attrs is not None and attrs.__class__ is _BoundedAttributes:
            span._add_event(_Event(A.FLAG_EVENT, attrs))  # an SDK span (see attach) and frozen attributes
        else:
            add_event(span, A.FLAG_EVENT, attrs)

    # ----------------------------------------------------------------- writing
    def hook(self, ctx: RequestContext) -> None:
        """Make this recorder the one that writes ``ctx``'s exposures, events and faults."""
        ctx.recorder = self

    def base_attributes(self, ctx: RequestContext) -> dict[str, Any]:
        """The attributes that depend only on the assignments: version, units, variants, overrides, holdouts.

        Adapters compute this once per distinct set of units and reuse it
        (see ``fieldlab._request``); it is treated as read-only.
        """
        attrs: dict[str, Any] = {A.CONFIG_VERSION: ctx.version}
        for kind, v in self._unit_values(ctx).items():
            attrs[A.unit_attr(kind)] = v
        all_names = self._names
        for key, a in ctx.assignments.items():
            reason = a.reason
            if reason == "split" or reason == "override":
                names = all_names.get(key) or self._attr_names(key)
                attrs[names[0]] = a.variant
                if reason == "override":
                    attrs[names[2]] = True
            elif reason == "guardrail":  # the unit got control because the variant it drew is paused
                attrs[(all_names.get(key) or self._attr_names(key))[0]] = a.variant
                attrs[A.guardrail_attr(key)] = a.paused
            elif a.holdout is not None:
                attrs[A.holdout_attr(a.holdout)] = True
        return attrs

    def _late_attributes(self, ctx: RequestContext) -> dict[str, Any]:
        """What the request did after it started: ``fieldlab.exposed.<key>`` per exposure, and a fault flag."""
        all_names = self._names
        more: dict[str, Any] = {(all_names.get(key) or self._attr_names(key))[1]: True for key in ctx.exposed}
        if ctx._fault_injected:
            more[A.FAULT_INJECTED] = True
        return more

    def attach(self, ctx: RequestContext, span: Any) -> None:
        """Make ``span`` the request's server span and write everything known so far."""
        ctx.server_span = span
        extra = ctx.extra
        if extra and extra.get("request_generated"):
            tid = format(span.get_span_context().trace_id, "032x")
            extra["request_generated"] = False
            ctx.trace_id = tid
            ctx.rebind_unit("request", tid)
        prepared = ctx.prepared
        base = prepared.base_attrs if prepared is not None else self.base_attributes(ctx)
        target = _sdk_attributes(span)
        if target is None or not _put(span, target, base):
            target = None
            span.set_attributes(base)
        ctx.span_attrs = target
        exposed = ctx.exposed
        if exposed or ctx._fault_injected:
            more = self._late_attributes(ctx)
            if target is None or not _put(span, target, more):
                span.set_attributes(more)
            for key in exposed:
                self._add_flag_event(ctx, span, ctx.assignments[key])
        pending = extra.pop("pending_events", None) if extra else None
        if pending:
            for name, event_attrs in pending:
                span.add_event(name, event_attrs)  # other parts' events: validated by the SDK

    def attach_current(self, ctx: RequestContext) -> None:
        """Take the current span when it is a recording SERVER span (fieldlab inside the instrumentation) and write it."""
        # trace.get_current_span() without its four Python frames when the default runtime context is in use
        span = _OTEL_CONTEXT.get().get(_SPAN_KEY, _INVALID) if _OTEL_CONTEXT is not None else trace.get_current_span()
        if span.__class__ is _SdkSpan:  # the SDK's own span: its fields, read directly
            if span._kind is not _SERVER or span._end_time is not None:
                return
        elif getattr(span, "kind", None) is not _SERVER or not span.is_recording():
            return
        self.attach(ctx, span)

    def on_expose(self, ctx: RequestContext, a: Assignment) -> None:
        """Write one exposure as it happens: ``fieldlab.exposed.<key>`` and its ``feature_flag.evaluation`` event.

        This runs on the first read of each experiment in every request, so the
        common case (an SDK span fieldlab may write directly, see :meth:`attach`,
        and event attributes prepared for these units) is a dict store, one
        object and a deque append.
        """
        span = ctx.server_span
        if span is None:
            return  # written when the span is found (ctx.exposed holds it)
        try:
            key = a.experiment
            name = (self._names.get(key) or self._attr_names(key))[1]
            target = ctx.span_attrs
            if target is not None:
                if span._end_time is not None:
                    return  # ended: the SDK would drop the write too
                prepared = ctx.prepared
                attrs = prepared.events.get(key) if prepared is not None else None
                events = span._events
                if (attrs is not None and _DIRECT_EVENTS and events.__class__ is _BoundedList
                        and (target.maxlen is None or len(target._dict) < target.maxlen)):
                    target._dict[name] = True
                    event = _new(_Event)
                    event._name = A.FLAG_EVENT
                    event._timestamp = _time_ns()
                    event._attributes = attrs
                    dq = events._dq
                    if dq.maxlen is None or len(dq) < dq.maxlen:
                        dq.append(event)
                    else:
                        events.append(event)  # full: the SDK's own path counts the dropped one
                    return
                if not _put(span, target, {name: True}):
                    span.set_attribute(name, True)
            elif span.is_recording():
                span.set_attribute(name, True)
            else:
                return
            self._add_flag_event(ctx, span, a)
        except Exception:
            _failed("recorder_errors")

    def on_event(self, ctx: RequestContext, name: str, attrs: dict[str, Any]) -> None:
        span = ctx.server_span
        try:
            if span is None:
                ctx.own_extra().setdefault("pending_events", []).append((name, dict(attrs)))
            elif span.is_recording():
                span.add_event(name, attrs)
        except Exception:
            _failed("recorder_errors")

    def on_fault(self, ctx: RequestContext) -> None:
        span = ctx.server_span
        try:
            if span is not None and span.is_recording():
                span.set_attribute(A.FAULT_INJECTED, True)
        except Exception:
            _failed("recorder_errors")


try:  # the SDK is optional: without it there is no provider to add a processor to
    from opentelemetry.sdk.trace import SpanProcessor as _SpanProcessorBase
except ImportError:  # pragma: no cover
    _SpanProcessorBase = object  # type: ignore[assignment,misc]


class FieldLabSpanProcessor(_SpanProcessorBase):  # type: ignore[misc,valid-type]
    """Writes the current request's assignments onto the first SERVER span it starts."""

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        if span.kind is not _SERVER:
            return
        ctx = current()
        if ctx is None or ctx.server_span is not None or ctx.recorder is None:
            return
        try:
            ctx.recorder.attach(ctx, span)
        except Exception:
            _failed("processor_errors")

    def on_end(self, span: Any) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


_install_lock = threading.Lock()
_installed_on: list[Any] = []
_MISSING = object()


def _sdk_provider() -> Any:
    """The global tracer provider if one was set, else None, without the API's per-call environment lookups."""
    provider = getattr(trace, "_TRACER_PROVIDER", _MISSING)
    if provider is None and "OTEL_PYTHON_TRACER_PROVIDER" not in os.environ:
        return None  # nothing set yet (the common case before set_tracer_provider)
    return trace.get_tracer_provider()


def processor_installed() -> bool:
    return bool(_installed_on)


def ensure_processor() -> bool:
    """Add :class:`FieldLabSpanProcessor` to the global tracer provider once; True when it is in place.

    Adapters call it for a request that starts with no server span current
    (fieldlab outside the instrumentation), so an app whose instrumentation
    wraps fieldlab never pays for a processor. Until an SDK provider is set
    (``trace.set_tracer_provider``) there is nothing to add to, and such
    requests try again.
    """
    if _installed_on:
        return True
    provider = _sdk_provider()
    add = getattr(provider, "add_span_processor", None)
    if add is None:
        return False
    with _install_lock:
        if not _installed_on:
            add(FieldLabSpanProcessor())
            _installed_on.append(provider)
    return True
