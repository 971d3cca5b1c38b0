"""OpenTelemetry recording: a request's assignments on its SERVER span, exposures as events.

Schema (the names live in :mod:`fieldlab.attributes`; see docs/integration.md):
``fieldlab.variant.<key>``, ``fieldlab.exposed.<key>``, ``fieldlab.forced.<key>``,
``fieldlab.holdout.<holdout>``, ``fieldlab.unit.<kind>``, ``fieldlab.config.version``,
``fieldlab.fault.injected``, and one ``feature_flag.evaluation`` event per exposure.

Only the public OpenTelemetry API writes: ``span.set_attributes``,
``span.set_attribute`` and ``span.add_event``, after ``span.is_recording()``.
Any tracer provider works, the SDK's or another implementation of the API.

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

The attribute limit. An SDK span holds at most ``OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT``
attributes (128 by default) and makes room for a new one by dropping its
oldest, which would be the instrumentation's ``http.*`` attributes. fieldlab
never adds an attribute beyond ``limit - headroom`` (the headroom is kept for
attributes others write after fieldlab: the response status, the app's own).
When a request's assignments do not all fit, fieldlab writes them by priority
(config version, units, the packed ``fieldlab.assignments``, the fault flag,
the experiments exposed so far, forced and held-out ones, then the other
variants, which stop :data:`EXPOSURE_RESERVE` slots early so that later reads
still fit), counts what it left out in :data:`stats` and logs once.
``fieldlab.assignments`` then holds every variant of the request, so analysis
loses nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from . import attributes as A
from ._assignment import Assignment
from ._units import MAX_CACHED_ID_LENGTH
from .context import RequestContext, current
from .errors import ConfigError
from .lab import Lab

__all__ = [
    "DEFAULT_SPAN_ATTRIBUTE_HEADROOM",
    "DEFAULT_SPAN_ATTRIBUTE_LIMIT",
    "DEFAULT_UNIT_HASH_KEY",
    "EXPOSURE_RESERVE",
    "UNIT_ID_MODES",
    "FieldLabSpanProcessor",
    "Recorder",
    "UnitHasher",
    "span_attribute_limit",
    "stats",
    "unit_hash_key",
]

_log = logging.getLogger("fieldlab")

#: How unit ids are written: ``hash`` (default), ``raw``, or ``none`` (left out).
UNIT_ID_MODES = ("hash", "raw", "none")
#: The key used when neither ``lab.unit_hash_key_env`` nor a lab secret is set.
#: It is public, so hashes made with it are pseudonymous, not anonymous.
DEFAULT_UNIT_HASH_KEY = b"fieldlab-unit-hash-v1-public-default-key"
#: The OpenTelemetry default of ``OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT`` / ``OTEL_ATTRIBUTE_COUNT_LIMIT``.
DEFAULT_SPAN_ATTRIBUTE_LIMIT = 128
#: Attribute slots fieldlab leaves free on a span for attributes written after it (``lab.span_attribute_headroom``).
DEFAULT_SPAN_ATTRIBUTE_HEADROOM = 16
#: When a request's assignments do not all fit, the variants of experiments not read yet stop this many
#: slots early, so that reads later in the request can still write their variant and exposed flag.
EXPOSURE_RESERVE = 16

#: What recording could not do, by kind; requests go on regardless. ``attributes_left_out`` counts
#: fieldlab attributes that did not make it onto their span for lack of room, ``spans_over_limit``
#: the spans whose assignments did not all fit at the start of the request.
stats: dict[str, int] = {"recorder_errors": 0, "processor_errors": 0, "attributes_left_out": 0, "spans_over_limit": 0}
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


def span_attribute_limit(lab: Lab) -> int | None:
    """How many attributes a span holds: ``lab.span_attribute_limit``, else the OpenTelemetry environment
    variables the SDK reads (``OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT``, then ``OTEL_ATTRIBUTE_COUNT_LIMIT``), else 128.

    None means no limit (the variable set to ``unset``). Set ``lab.span_attribute_limit`` when the
    tracer provider is built with explicit ``SpanLimits``, which fieldlab cannot see.
    """
    setting = lab.settings.get("span_attribute_limit")
    if setting is not None:
        return _count(setting, "lab.span_attribute_limit", "set it to the tracer provider's span attribute limit")
    for name in ("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "OTEL_ATTRIBUTE_COUNT_LIMIT"):
        text = os.environ.get(name, "").strip().lower()
        if text == "unset":
            return None
        if text:
            try:
                value = int(text)
            except ValueError:
                value = -1
            return _count(value, name, "set it to a whole number of attributes, e.g. 256")
    return DEFAULT_SPAN_ATTRIBUTE_LIMIT


def _count(value: Any, field: str, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(field, f"{value!r} is not a whole number of attributes (0 or more)", fix)
    return value


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


def _is_server_span(span: Any) -> bool:
    """A recording span of kind SERVER. A span of another API implementation that does not say its
    kind is taken as the request's (the current span when a request starts is the server span)."""
    return span.is_recording() and getattr(span, "kind", SpanKind.SERVER) is SpanKind.SERVER


class Recorder:
    """Writes requests of one adapter onto their server spans.

    ``unit_ids`` is ``hash``, ``raw`` or ``none``; None takes ``lab.unit_ids``,
    else ``hash``. The ``request`` unit (a trace id) is always written as is.
    The span attribute limit and headroom (see the module docstring) are read
    once, here: :func:`span_attribute_limit` and ``lab.span_attribute_headroom``.
    """

    def __init__(self, lab: Lab, unit_ids: str | None = None) -> None:
        mode = unit_ids if unit_ids is not None else lab.settings.get("unit_ids", "hash")
        if mode not in UNIT_ID_MODES:
            field = "unit_ids" if unit_ids is not None else "lab.unit_ids"
            raise ConfigError(field, f"unknown mode {mode!r}", f"use one of {', '.join(UNIT_ID_MODES)}")
        self.lab = lab
        self.mode = mode
        self._hasher = UnitHasher(unit_hash_key(lab))
        #: the span attribute count limit (None: none) and the slots fieldlab leaves free below it
        self.attribute_limit = span_attribute_limit(lab)
        self.attribute_headroom = _count(
            lab.settings.get("span_attribute_headroom", DEFAULT_SPAN_ATTRIBUTE_HEADROOM),
            "lab.span_attribute_headroom",
            "set it to the attribute slots to keep free for others, e.g. 16",
        )

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
        values = ctx.unit_values
        if values is None:
            values = ctx.unit_values = self.unit_values(ctx.units)
        return values

    def unit_values(self, units: Mapping[str, str | None]) -> dict[str, str]:
        """``fieldlab.unit.<kind>`` values of a request's units, by kind (those written at all)."""
        values = {}
        for kind, uid in units.items():
            v = self.unit_value(kind, uid)
            if v is not None:
                values[kind] = v
        return values

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

    def _event_attributes(self, ctx: RequestContext, a: Assignment) -> dict[str, Any]:
        """The exposure event's attributes, built once per prepared set of units (see ``_request``).

        The dict is shared by the events of every request with those units, so
        it is never changed after it is built (the SDK copies it into the event).
        """
        prepared = ctx.prepared
        if prepared is None:
            return self.flag_event(ctx, a)
        attrs = prepared.events.get(a.experiment)
        if attrs is None:
            attrs = prepared.events[a.experiment] = self.flag_event(ctx, a)
        return attrs

    @staticmethod
    def _variant_attributes(a: Assignment) -> dict[str, Any]:
        """``fieldlab.variant.<key>`` (and ``fieldlab.forced.<key>`` for an override, ``fieldlab.bandit.<key>`` for a
        bandit's split) of an assignment in its experiment."""
        attrs: dict[str, Any] = {A.variant_attr(a.experiment): a.variant}
        if a.reason == "override":
            attrs[A.forced_attr(a.experiment)] = True
        if a.period is not None:  # a bandit: the weights version that decided the variant
            attrs[A.bandit_attr(a.experiment)] = a.period
        return attrs

    # ------------------------------------------------------------------- room
    def _room(self, span: Any) -> int | None:
        """How many attributes fieldlab may still add to ``span`` (None: no limit).

        The span's current count comes from ``span.attributes`` (the SDK's
        spans have it); a span that does not show its attributes counts as empty.
        """
        limit = self.attribute_limit
        if limit is None:
            return None
        try:
            held = len(getattr(span, "attributes", None))  # type: ignore[arg-type]
        except TypeError:  # a span that does not show its attributes (None, or not sized)
            held = 0
        return limit - self.attribute_headroom - held

    @staticmethod
    def _left_out(count: int, new_span: bool) -> None:
        """Count attributes not written for lack of room; the first time, say why and what to do."""
        stats["attributes_left_out"] += count
        if new_span:
            stats["spans_over_limit"] += 1
        if "attribute_limit" not in _logged:
            _logged.add("attribute_limit")
            _log.warning(
                "fieldlab: a span's attribute limit left no room for %d fieldlab attribute(s); they were left out, "
                "so no attribute of another instrumentation was dropped, and %s holds every variant of the "
                "request. Raise OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT (and lab.span_attribute_limit when the tracer "
                "provider sets SpanLimits in code) to keep them all; counted in fieldlab.telemetry.stats",
                count,
                A.ASSIGNMENTS,
            )

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
        for a in ctx.assignments.values():
            if a.in_experiment:
                attrs[A.variant_attr(a.experiment)] = a.variant
                if a.reason == "override":
                    attrs[A.forced_attr(a.experiment)] = True
                elif a.reason == "guardrail":  # the unit got control because the variant it drew is paused
                    attrs[A.guardrail_attr(a.experiment)] = a.paused
                if a.period is not None:  # a bandit: the weights version (enrolment period) that decided it
                    attrs[A.bandit_attr(a.experiment)] = a.period
            elif a.holdout is not None:
                attrs[A.holdout_attr(a.holdout)] = True
        return attrs

    def _late_attributes(self, ctx: RequestContext) -> dict[str, Any]:
        """What the request did before its span was found: ``fieldlab.exposed.<key>`` per exposure, and a fault flag."""
        more: dict[str, Any] = {A.exposed_attr(key): True for key in ctx.exposed}
        if ctx.fault_injected:
            more[A.FAULT_INJECTED] = True
        return more

    def _by_priority(self, ctx: RequestContext) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
        """The start-of-request attributes in groups written whole or not at all, highest priority first.

        Returns (groups that may fill the room, groups of the other variants,
        which leave :data:`EXPOSURE_RESERVE` free, the experiment key of each of
        those other groups).
        """
        first: list[dict[str, Any]] = [{A.CONFIG_VERSION: ctx.version}]
        first += [{A.unit_attr(kind): v} for kind, v in self._unit_values(ctx).items()]
        packed = A.pack_assignments(
            {key: a.variant for key, a in ctx.assignments.items() if a.in_experiment and a.variant is not None}
        )
        first.append({A.ASSIGNMENTS: packed})
        if ctx.fault_injected:
            first.append({A.FAULT_INJECTED: True})
        exposed: list[dict[str, Any]] = []
        flagged: list[dict[str, Any]] = []
        others: list[dict[str, Any]] = []
        other_keys: list[str] = []
        for key, a in ctx.assignments.items():
            if key in ctx.exposed:
                attrs = self._variant_attributes(a) if a.in_experiment else {}
                attrs[A.exposed_attr(key)] = True
                exposed.append(attrs)
            elif a.reason == "override":
                flagged.append(self._variant_attributes(a))
            elif a.in_experiment:
                others.append(self._variant_attributes(a))
                other_keys.append(key)
            elif a.holdout is not None:
                flagged.append({A.holdout_attr(a.holdout): True})
        return [*first, *exposed, *flagged], others, other_keys

    def _write_within(self, ctx: RequestContext, span: Any, room: int) -> None:
        """Write as much of the request as ``room`` allows, by priority (see the module docstring)."""
        groups, others, other_keys = self._by_priority(ctx)
        chosen: dict[str, Any] = {}
        left_out = 0
        for group in groups:
            if len(chosen) + len(group) <= room:
                chosen.update(group)
            else:
                left_out += len(group)
        skipped: set[str] = set()
        for key, group in zip(other_keys, others, strict=False):
            if len(chosen) + len(group) <= room - EXPOSURE_RESERVE:
                chosen.update(group)
            else:
                left_out += len(group)
                skipped.add(key)
        if chosen:
            span.set_attributes(chosen)
        ctx.span_left_out = skipped
        if left_out:
            self._left_out(left_out, new_span=True)

    def attach(self, ctx: RequestContext, span: Span) -> None:
        """Make ``span`` the request's server span and write everything known so far."""
        ctx.server_span = span
        prepared = ctx.prepared
        base = prepared.base_attrs if prepared is not None else self.base_attributes(ctx)
        late = self._late_attributes(ctx) if ctx.exposed or ctx.fault_injected else None
        room = self._room(span)
        if room is None or len(base) + (len(late) if late else 0) <= room:
            span.set_attributes({**base, **late} if late else base)
        else:
            self._write_within(ctx, span, room)
        for key in ctx.exposed:
            span.add_event(A.FLAG_EVENT, self._event_attributes(ctx, ctx.assignments[key]))
        if ctx.pending_attributes:
            late_attrs, ctx.pending_attributes = ctx.pending_attributes, {}
            self.on_attributes(ctx, late_attrs)
        if ctx.pending_events:
            for name, event_attrs in ctx.pending_events:
                span.add_event(name, event_attrs)
            ctx.pending_events = []

    def attach_current(self, ctx: RequestContext) -> None:
        """Take the current span when it is a recording SERVER span (fieldlab inside the instrumentation) and write it."""
        span = trace.get_current_span()
        if _is_server_span(span):
            self.attach(ctx, span)

    def on_expose(self, ctx: RequestContext, a: Assignment) -> None:
        """Write one exposure as it happens: ``fieldlab.exposed.<key>`` and its ``feature_flag.evaluation`` event.

        The event is stamped with the time of the read. An exposure before the
        span is found is written when it is (``ctx.exposed`` holds it); one
        after the span ended is not written.
        """
        span = ctx.server_span
        if span is None:
            return
        try:
            if not span.is_recording():
                return
            key = a.experiment
            room = self._room(span)
            if room is not None and room < 1:
                self._left_out(1, new_span=False)
            elif ctx.span_left_out and key in ctx.span_left_out:
                self._write_late_variant(ctx, span, a, room)
            else:
                span.set_attribute(A.exposed_attr(key), True)
            span.add_event(A.FLAG_EVENT, self._event_attributes(ctx, a))
        except Exception:
            _failed("recorder_errors")

    def _write_late_variant(self, ctx: RequestContext, span: Any, a: Assignment, room: int | None) -> None:
        """The exposure of an experiment whose variant did not fit at the start: its exposed flag
        (analysis then takes the variant from ``fieldlab.assignments``), and the variant when there is room."""
        attrs: dict[str, Any] = {A.exposed_attr(a.experiment): True}
        variant = self._variant_attributes(a)
        if room is None or room >= 1 + len(variant):
            attrs.update(variant)
            ctx.span_left_out.discard(a.experiment)  # type: ignore[union-attr]
            stats["attributes_left_out"] -= len(variant)  # counted at the start, written after all
        span.set_attributes(attrs)

    def on_event(self, ctx: RequestContext, name: str, attrs: dict[str, Any]) -> None:
        span = ctx.server_span
        try:
            if span is None:
                ctx.pending_events.append((name, dict(attrs)))
            elif span.is_recording():
                span.add_event(name, attrs)
        except Exception:
            _failed("recorder_errors")

    def on_attributes(self, ctx: RequestContext, attrs: dict[str, Any]) -> None:
        """Attributes the request earned while it ran (a canary arm): on the span, or when it is found."""
        span = ctx.server_span
        try:
            if span is None:
                ctx.pending_attributes.update(attrs)
            elif span.is_recording():
                room = self._room(span)
                if room is None or room >= len(attrs):
                    span.set_attributes(attrs)
                else:
                    self._left_out(len(attrs), new_span=False)
        except Exception:
            _failed("recorder_errors")

    def on_fault(self, ctx: RequestContext) -> None:
        span = ctx.server_span
        try:
            if span is not None and span.is_recording():
                room = self._room(span)
                if room is None or room >= 1:
                    span.set_attribute(A.FAULT_INJECTED, True)
                else:
                    self._left_out(1, new_span=False)
        except Exception:
            _failed("recorder_errors")


try:  # the SDK is optional: without it there is no provider to add a processor to
    # SpanProcessor is the SDK's public extension point for span start and end
    from opentelemetry.sdk.trace import SpanProcessor as _SpanProcessorBase
except ImportError:  # pragma: no cover
    _SpanProcessorBase = object  # type: ignore[assignment,misc]


#: What the processor does with the current request's context and the SERVER span that starts for it.
ServerSpanStarted = Callable[[RequestContext, Span], None]


def _attach(ctx: RequestContext, span: Span) -> None:
    if isinstance(ctx.recorder, Recorder):
        ctx.recorder.attach(ctx, span)


class FieldLabSpanProcessor(_SpanProcessorBase):
    """Hands the first SERVER span started while a request context is current to ``on_server_span``.

    The request path passes its own function (which learns the span's trace id
    and then has the recorder write the span); the default only writes.
    """

    def __init__(self, on_server_span: ServerSpanStarted | None = None) -> None:
        self._on_server_span = on_server_span or _attach

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        if span.kind is not SpanKind.SERVER:
            return
        ctx = current()
        if ctx is None or ctx.server_span is not None or ctx.recorder is None:
            return
        try:
            self._on_server_span(ctx, span)
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


def ensure_processor(on_server_span: ServerSpanStarted | None = None) -> bool:
    """Add :class:`FieldLabSpanProcessor` to the global tracer provider once; True when it is in place.

    Adapters call it for a request that starts with no server span current
    (fieldlab outside the instrumentation), so an app whose instrumentation
    wraps fieldlab never pays for a processor. Until a provider that takes
    span processors is set (the SDK's, via ``trace.set_tracer_provider``)
    there is nothing to add to, and such requests try again.
    """
    if _installed_on:
        return True
    add = getattr(trace.get_tracer_provider(), "add_span_processor", None)
    if add is None:
        return False
    with _install_lock:
        if not _installed_on:
            add(FieldLabSpanProcessor(on_server_span))
            _installed_on.append(add)
    return True
