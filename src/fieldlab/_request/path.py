"""The request path: from a request's headers to its bound context, and back out when it ends.

Per request an adapter calls :func:`begin` with its :class:`AdapterConfig`
and a header getter (:mod:`fieldlab._request.headers`), binds the returned
context, asks :func:`abort_for` whether a fault answers first, and calls
:func:`end` when the response is done. :func:`begin` never raises: any failure
means "no context", which is the default path everywhere.

Order of work in :func:`begin`, one direction: units (headers, cookies,
resolvers; the ``request`` unit is the trace id, learnt before assignment) and
overrides -> the lab's assignments (one call, one configuration snapshot; or a
prepared evaluation of the same unit ids) -> the context -> the recorder, which
writes the server span if it is already current. When fieldlab runs outside
the OpenTelemetry instrumentation and the request carries no ``traceparent``,
its trace id does not exist yet: the ``request`` unit waits, and its
experiments are assigned once, when the server span starts
(:func:`server_span_started`, called by the span processor).

Units. Kinds with no resolver use the adapter's framework default (``user``,
``session``), or fieldlab's own ``visitor`` cookie and ``request`` trace id.
Only the kinds the lab's experiments use are resolved. A unit that cannot be
resolved is None: not in the experiment, never a random fallback. A unit id
that is not valid text is None too, counted in ``lab.stats["invalid_units"]``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote

from opentelemetry import baggage as otel_baggage
from opentelemetry import context as otel_context
from opentelemetry.trace import Span

from .. import attributes as A
from .. import faults, telemetry
from .._fault_kinds import HTTP_POINT
from .._units import is_unit_text
from ..context import PreparedRequest, RequestContext, reset
from ..overrides import VerifiedOverrides
from .baggage import apply_baggage, outbound_baggage
from .failures import failed
from .headers import HeaderGetter, known_trace_id, mapping_getter, parse_cookies
from .options import AdapterConfig, Unit
from .prepared import CacheKey

__all__ = [
    "VISITOR_MAX_AGE",
    "abort_for",
    "begin",
    "end",
    "new_visitor_id",
    "server_span_started",
    "visitor_cookie",
]

VISITOR_MAX_AGE = 365 * 24 * 3600
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_sysrandom = random.SystemRandom()


def new_visitor_id() -> str:
    """128 random bits from the OS as 32 hex digits."""
    return f"{_sysrandom.getrandbits(128):032x}"


def begin(
    cfg: AdapterConfig,
    request: Any,
    headers: HeaderGetter | Mapping[str, str],
    path: str,
    method: str,
    known: Mapping[str, Any] | None = None,
    make_request: Callable[[Any], Any] | None = None,
) -> RequestContext | None:
    """Start a request's context (not bound yet); None when anything fails: the default path.

    ``headers`` returns a request header by lower-case name (see
    :mod:`fieldlab._request.headers`; a mapping of lower-case names works too).
    ``request`` is what resolvers receive; with ``make_request``, they receive
    ``make_request(request)``, built only when a resolver needs it. ``known``
    holds unit ids the adapter already resolved (e.g. Django's async user).
    """
    try:
        get = mapping_getter(headers) if isinstance(headers, Mapping) else headers
        cfg.plan()
        overridden = _has_override(cfg, get)
        attrs: dict[str, Any] = {"path": path, "method": method}
        if cfg.single_header is not None and cfg.cache is not None and not overridden:
            # the common case, kept short: one unit read from a header, evaluated earlier for the same id
            key: CacheKey = get(cfg.single_header) or None
            prepared = cfg.cache.get(key)
            if prepared is None:
                prepared = _prepare(cfg, key, _resolve_units(cfg, request, get, known, None)[0], attrs)
            return _started(cfg, RequestContext.from_prepared(cfg.lab, attrs, prepared, cfg.recorder), get)
        if make_request is not None and cfg.needs_request_object:
            try:
                request = make_request(request)
            except Exception:
                failed("resolver_errors", "request builder")  # resolvers get what the adapter had
        trace_id, generated = _request_trace_id(cfg, get)
        units, visitor = _resolve_units(cfg, request, get, known, trace_id)
        if cfg.watch.pending:
            cfg.watch.note(cfg.lab, units, cfg.units)
        attrs.update(_attributes(cfg, request, get))
        overrides = _overrides(cfg, get) if overridden else None
        if cfg.cache is not None and overrides is None:
            key = tuple(units.values())
            prepared = cfg.cache.get(key) or _prepare(cfg, key, units, attrs)
            ctx = RequestContext.from_prepared(cfg.lab, attrs, prepared, cfg.recorder)
        else:
            ctx = RequestContext(cfg.lab, units, attrs, overrides, copy=False, recorder=cfg.recorder)
        ctx.trace_id = trace_id
        ctx.trace_id_generated = generated
        ctx.request_unit_pending = cfg.needs_request_unit and trace_id is None
        ctx.new_visitor_id = visitor
        return _started(cfg, ctx, get)
    except Exception:
        failed("start_errors", "request start")
        return None


def _has_override(cfg: AdapterConfig, get: HeaderGetter) -> bool:
    if cfg.override_header and get(cfg.override_header):
        return True
    probe = cfg.override_cookie_probe
    return bool(probe and probe in (get("cookie") or ""))


def _request_trace_id(cfg: AdapterConfig, get: HeaderGetter) -> tuple[str | None, bool]:
    """The request's trace id before assignment, and whether fieldlab made it up.

    The current span's (fieldlab inside the instrumentation), else the inbound
    ``traceparent``'s. Without either, when the ``request`` unit is needed:
    None while a span processor will hand over the server span's trace id as
    it starts, else a random id (no span will ever say).
    """
    if not (cfg.needs_request_unit or cfg.may_abort):
        return None, False
    tid = known_trace_id(get)
    if tid is not None or not cfg.needs_request_unit:
        return tid, False
    if telemetry.ensure_processor(server_span_started):
        return None, False
    return f"{random.getrandbits(128):032x}", True


def _resolve_units(
    cfg: AdapterConfig, request: Any, get: HeaderGetter, known: Mapping[str, Any] | None, trace_id: str | None
) -> tuple[dict[str, str | None], str | None]:
    """The request's unit ids by kind (None: no unit), and a visitor id fieldlab made for it, if any."""
    units: dict[str, str | None] = {}
    cookies: dict[str, str] | None = None
    new_visitor = None
    for unit in cfg.plan():
        value: Any = None
        if known is not None and unit.kind in known and unit.kind not in cfg.units:
            value = known[unit.kind]
        elif unit.how == "header":
            value = get(unit.name)
        elif unit.how == "call":
            value = _call(unit, request)
        elif unit.how in ("cookie", "visitor"):
            if cookies is None:
                cookies = parse_cookies(get("cookie"))
            value = cookies.get(unit.name)
            if unit.how == "visitor" and (value is None or not _HEX32.match(value)):
                value = new_visitor = new_visitor_id()
        elif unit.how == "request":
            value = trace_id
        units[unit.kind] = _unit_id(cfg, value)
    return units, new_visitor


def _call(unit: Unit, request: Any) -> Any:
    try:
        return unit.fn(request)  # type: ignore[misc]
    except Exception:
        failed("resolver_errors", unit.kind)
        return None


def _unit_id(cfg: AdapterConfig, value: Any) -> str | None:
    """A resolved value as a unit id: text, or None (empty, or not text: counted by the lab)."""
    if value is None:
        return None
    if not isinstance(value, str):
        value = str(value)
    if not is_unit_text(value):
        cfg.lab._invalid_unit()  # a lone surrogate: no unit, and nothing downstream sees it
        return None
    return value or None


def _attributes(cfg: AdapterConfig, request: Any, get: HeaderGetter) -> dict[str, Any]:
    """Targeting attributes from the allowed headers and the ``attributes`` callable."""
    attrs: dict[str, Any] = {}
    for h in cfg.headers:
        v = get(h)
        if v is not None:
            attrs[h] = v
    if cfg.attributes is not None:
        try:
            more = cfg.attributes(request)
            if more:
                attrs.update(more)
        except Exception:
            failed("attribute_errors", "attributes callable")
    return attrs


def _overrides(cfg: AdapterConfig, get: HeaderGetter) -> VerifiedOverrides | None:
    """The verified override tokens of a request (header and cookie), or None when it has none."""
    tokens: list[str] = []
    if cfg.override_header:
        raw = get(cfg.override_header)
        if raw:
            tokens.extend(t.strip() for t in raw.split(",") if t.strip())
    if cfg.override_cookie:
        raw = parse_cookies(get("cookie")).get(cfg.override_cookie)
        if raw:
            tokens.extend(t.strip() for t in unquote(raw).split(",") if t.strip())
    if not tokens:
        return None
    verified = cfg.lab.verify_overrides(tokens)
    return verified if len(verified) else None


def _prepare(cfg: AdapterConfig, key: CacheKey, units: dict[str, str | None], attrs: dict[str, Any]) -> PreparedRequest:
    """Evaluate one set of unit ids in full and keep what every request with them shares."""
    # before evaluating: a pause or a bandit version that lands meanwhile must not leave this in the cache
    paused, bandits = cfg.lab._paused, cfg.lab._bandits
    full = RequestContext(cfg.lab, units, attrs)
    recorder = cfg.recorder
    full.unit_values = recorder.unit_values(full.units)
    prepared = PreparedRequest(
        full.units,
        full.assignments,
        full.held_out,
        frozenset(full.exposed),
        full.version,
        recorder.base_attributes(full),
        full.unit_values,
    )
    if cfg.cache is not None and cfg.lab._paused is paused and cfg.lab._bandits is bandits:
        cfg.cache.remember(key, prepared)
    return prepared


def _started(cfg: AdapterConfig, ctx: RequestContext, get: HeaderGetter) -> RequestContext:
    """What every new context goes through: faults' trace id, inbound baggage, the span, outbound baggage."""
    if cfg.may_abort and ctx.trace_id is None:
        # Fault decisions hash the trace id; an abort may run before any span
        # exists, so take the caller's W3C trace id when there is one.
        ctx.trace_id = known_trace_id(get)
    if cfg.cache_headers:
        ctx.unit_sources = cfg.sources
    if cfg.trust_baggage:
        apply_baggage(ctx, get("baggage"))
    try:
        cfg.recorder.attach_current(ctx)
    except Exception:
        telemetry._failed("recorder_errors")
    if ctx.server_span is None:
        telemetry.ensure_processor(server_span_started)  # fieldlab outside the instrumentation: the span starts later
    if cfg.propagate_baggage:
        value = outbound_baggage(ctx)
        if value is not None:
            ctx.baggage_token = otel_context.attach(otel_baggage.set_baggage(A.BAGGAGE_KEY, value))
    return ctx


def server_span_started(ctx: RequestContext, span: Span) -> None:
    """The request's SERVER span started after its context (fieldlab outside the instrumentation).

    A ``request`` unit that waited for the trace id gets it now, and its
    experiments their one assignment; then the recorder writes the span.
    """
    if ctx.request_unit_pending:
        ctx.request_unit_pending = False
        tid = format(span.get_span_context().trace_id, "032x")
        ctx.trace_id = tid
        units = {**ctx.units, "request": tid}
        lab = ctx.lab
        version, fresh = lab.assign_all_with_version(
            units, ctx.attributes, overrides=ctx.overrides, unit_kind="request"
        )
        if version != ctx.version:  # reloaded since the request began: everything from the new snapshot
            version, fresh = lab.assign_all_with_version(units, ctx.attributes, overrides=ctx.overrides)
        ctx.set_unit("request", tid, version, fresh)
    if isinstance(ctx.recorder, telemetry.Recorder):
        ctx.recorder.attach(ctx, span)


def end(ctx: RequestContext, token: Any) -> None:
    """Finish a request: make sure a fault shows on the span, detach baggage, unbind. Never raises."""
    try:
        if ctx.fault_injected:
            span = ctx.server_span
            if span is not None and span.is_recording():
                span.set_attribute(A.FAULT_INJECTED, True)
        if ctx.baggage_token is not None:
            otel_context.detach(ctx.baggage_token)  # type: ignore[arg-type]
    except Exception:
        telemetry._failed("recorder_errors")
    if token is not None:
        reset(token)


def abort_for(ctx: RequestContext) -> tuple[int, bytes] | None:
    """A ``(status, body)`` fault injection answers with before the app runs, else None. Never raises."""
    if HTTP_POINT not in ctx.lab._state.fault_plan.by_point:
        return None
    try:
        result = faults.abort_for(ctx)
        if result is None:
            return None
        status, body = result
        return int(status), body if isinstance(body, bytes) else str(body).encode("utf-8")
    except Exception:
        failed("fault_errors", "abort_for")
        return None


def visitor_cookie(cfg: AdapterConfig, ctx: RequestContext | None, secure: bool) -> str | None:
    """The ``Set-Cookie`` value for a new visitor id, or None when the request had a valid one."""
    if ctx is None or ctx.new_visitor_id is None:
        return None
    value = f"{cfg.visitor_cookie}={ctx.new_visitor_id}; Path=/; Max-Age={VISITOR_MAX_AGE}; HttpOnly; SameSite=Lax"
    return value + "; Secure" if secure else value
