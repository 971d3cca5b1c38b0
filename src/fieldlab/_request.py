"""The one request path every adapter shares: units, attributes, overrides, baggage, context.

An adapter builds an :class:`AdapterConfig` once (all parsing and validation
happen there, so bad input fails at start-up with the field and the fix), then
per request calls :func:`begin` with a header getter, binds the returned
context, asks :func:`abort_for` whether a fault answers first, and calls
:func:`end` when the response is done. :func:`begin` never raises: any failure
means "no context", which is the default path everywhere.

Units. ``units`` maps a unit kind to a resolver: a callable taking the
framework's request, or ``"header:X-User-Id"`` / ``"cookie:NAME"``. Kinds with
no resolver use the adapter's framework default (``user``, ``session``), or
fieldlab's own ``visitor`` cookie and ``request`` trace id. Only the kinds the
lab's experiments use are resolved. A unit that cannot be resolved is None:
not in the experiment, never a random fallback.

Header and cookie values are the UTF-8 text the client sent (the contract
hashes it): ASGI bytes are decoded as UTF-8, and a WSGI/Django ``environ``
value (PEP 3333: the bytes decoded as latin-1) is re-encoded to its bytes and
decoded as UTF-8. A unit id that is not valid text (bytes that are not UTF-8,
or a resolver returning a ``str`` with a lone surrogate) is None too, counted
in ``lab.stats["invalid_units"]`` (see :mod:`fieldlab._units`).

Baggage. With ``propagate_baggage=True`` the request's assignments travel
downstream as W3C baggage member ``fieldlab``, signed with the lab secret and
valid for five minutes; inbound fieldlab baggage is only used when the adapter
(or ``lab.trust_baggage``) says ``trust_baggage=True`` and the signature verifies.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import random
import re
import time
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import quote, unquote

from opentelemetry import baggage as otel_baggage
from opentelemetry import context as otel_context
from opentelemetry import trace

from . import attributes as A
from . import telemetry
from ._assignment import SPLIT, Assignment
from ._fault_kinds import HTTP_POINT
from ._units import MAX_CACHED_ID_LENGTH, is_unit_text, wsgi_text
from .context import PreparedRequest, RequestContext, reset
from .errors import ConfigError
from .lab import Lab
from .overrides import sign

__all__ = ["AdapterConfig", "begin", "end", "abort_for", "visitor_cookie", "parse_cookies", "outbound_baggage",
           "verify_baggage", "baggage_header", "new_visitor_id", "env_key", "stats", "DEFAULT_VISITOR_COOKIE", "DEFAULT_OVERRIDE_HEADER",
           "DEFAULT_OVERRIDE_COOKIE", "BAGGAGE_TTL_SECONDS", "VISITOR_MAX_AGE"]

_log = logging.getLogger("fieldlab")

DEFAULT_VISITOR_COOKIE = "fieldlab_visitor"
DEFAULT_OVERRIDE_HEADER = "X-Fieldlab-Override"
DEFAULT_OVERRIDE_COOKIE = "fieldlab_override"
BAGGAGE_TTL_SECONDS = 300
VISITOR_MAX_AGE = 365 * 24 * 3600
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
_BAGGAGE_CONTEXT = "fieldlab-baggage-v1."
_CACHE_SIZE = 10_000

#: Failures on the request path, by kind; each one is logged once.
stats: dict[str, int] = {"resolver_errors": 0, "attribute_errors": 0, "start_errors": 0, "fault_errors": 0,
                         "baggage_rejected": 0}
_logged: set[str] = set()


def _failed(kind: str, detail: str = "") -> None:
    stats[kind] = stats.get(kind, 0) + 1
    tag = f"{kind}:{detail}"
    if tag not in _logged and len(_logged) < 1000:
        _logged.add(tag)
        _log.warning("fieldlab: %s %s failed; the request takes the default path", kind.replace("_", " "), detail,
                     exc_info=True)


Resolver = Callable[[Any], Any]


class _Unit:
    """One compiled unit resolver: ``header``, ``cookie``, ``call``, ``visitor`` or ``request``."""

    __slots__ = ("kind", "how", "name", "env", "fn")

    def __init__(self, kind: str, how: str, name: str = "", fn: Resolver | None = None) -> None:
        self.kind, self.how, self.name, self.fn = kind, how, name, fn
        #: the header's WSGI environ / Django META key
        self.env = env_key(name) if how == "header" else ""


def _compile_unit(kind: str, spec: Any, where: str) -> _Unit:
    if callable(spec):
        return _Unit(kind, "call", fn=spec)
    if isinstance(spec, str):
        how, sep, name = spec.partition(":")
        how = how.strip().lower()
        name = name.strip()
        if sep and name and how == "header":
            return _Unit(kind, "header", name.lower())
        if sep and name and how == "cookie":
            return _Unit(kind, "cookie", name)
    raise ConfigError(f"{where}[{kind!r}]", f"cannot use {spec!r} as a unit resolver",
                      'give a callable taking the request, "header:X-User-Id" or "cookie:NAME"')


def env_key(header: str) -> str:
    """The WSGI environ / Django META key of a header name."""
    return "HTTP_" + header.upper().replace("-", "_")


class AdapterConfig:
    """Everything an adapter needs per request, validated and precomputed once.

    ``framework_defaults`` maps unit kinds to the framework's default resolver
    (e.g. Django's ``request.user``); explicit ``units`` win over them.
    ``headers`` is the allow-list of request headers that become targeting
    attributes, named by the lower-case header name (``x-country``).
    ``attributes`` is a callable taking the request and returning more.
    """

    def __init__(self, lab: Lab, *, units: Mapping[str, Any] | None = None, headers: Iterable[str] = (),
                 attributes: Resolver | None = None, unit_ids: str | None = None,
                 trust_baggage: bool | None = None, propagate_baggage: bool = False,
                 visitor_cookie: str = DEFAULT_VISITOR_COOKIE, override_header: str | None = DEFAULT_OVERRIDE_HEADER,
                 override_cookie: str | None = DEFAULT_OVERRIDE_COOKIE,
                 framework_defaults: Mapping[str, Resolver] | None = None, where: str = "units") -> None:
        if not isinstance(lab, Lab):
            raise ConfigError("lab", f"expected a fieldlab.Lab, got {type(lab).__name__}",
                              "pass lab=Lab.from_file('experiments.toml') (or a Lab you built)")
        if units is not None and not isinstance(units, Mapping):
            raise ConfigError(where, f"expected a mapping of unit kind to resolver, got {type(units).__name__}",
                              'write units={"user": "header:X-User-Id"}')
        if attributes is not None and not callable(attributes):
            raise ConfigError("attributes", f"{attributes!r} is not callable",
                              "pass a function taking the request and returning a dict")
        if isinstance(headers, str):
            raise ConfigError("headers", "expected a list of header names, got one string",
                              f'write headers=["{headers}"]')
        if not isinstance(visitor_cookie, str) or not re.match(r"^[A-Za-z0-9_.-]+$", visitor_cookie):
            raise ConfigError("visitor_cookie", f"{visitor_cookie!r} is not a valid cookie name",
                              "use letters, digits, '_', '.' or '-'")
        self.lab = lab
        self.recorder = telemetry.Recorder(lab, unit_ids)
        self.units: dict[str, _Unit] = {k: _compile_unit(k, v, where) for k, v in (units or {}).items()}
        self.defaults: dict[str, _Unit] = {k: _Unit(k, "call", fn=fn) for k, fn in (framework_defaults or {}).items()}
        self.headers = tuple(h.strip().lower() for h in headers)
        self.attributes = attributes
        self.trust_baggage = bool(lab.settings.get("trust_baggage", False) if trust_baggage is None else trust_baggage)
        self.propagate_baggage = bool(propagate_baggage)
        self.visitor_cookie = visitor_cookie
        self.override_header = override_header.lower() if override_header else None
        self.override_env = env_key(self.override_header) if self.override_header else ""
        self.override_cookie = override_cookie or None
        self._override_cookie_probe = f"{override_cookie}=" if override_cookie else None
        # the same names as ASGI bytes, for begin(raw=True)
        self._override_raw = self.override_header.encode("latin-1") if self.override_header else None
        self._override_cookie_probe_raw = self._override_cookie_probe.encode("latin-1") if override_cookie else None
        if (self.trust_baggage or self.propagate_baggage) and not lab.secret:
            _log.warning("fieldlab: baggage needs a lab secret (lab.secret_env / FIELDLAB_SECRET); "
                         "without one, fieldlab baggage is neither sent nor trusted")
        wanted = set(self.headers) | {"cookie", "traceparent"}
        wanted |= {u.name for u in self.units.values() if u.how == "header"}
        if self.override_header:
            wanted.add(self.override_header)
        if self.trust_baggage:
            wanted.add("baggage")
        #: Lower-case header names the request path may read (ASGI adapters decode only these).
        self.wanted_header_bytes = frozenset(h.encode("latin-1") for h in wanted)
        self._state: Any = None
        self._paused: Any = None  # the lab's paused view the plan and cache were made under
        self._plan: tuple[_Unit, ...] = ()
        self._single_header: tuple[str, str, str, bytes] | None = None
        #: unit ids (a tuple in plan order; the id itself for a one-header plan, as str and, for
        #: ASGI, as the raw header bytes) -> the evaluation every request with those ids shares; see begin()
        self.cache: _PreparedCache | None = None
        self.needs_request_object = attributes is not None
        self.may_abort = False
        #: no abort faults and no baggage in or out: a raw (ASGI) request found prepared needs no decoded header
        self._plain = False

    def plan(self) -> tuple[_Unit, ...]:
        """The resolvers to run: one per unit kind the lab's experiments use (redone when the config changes)."""
        lab = self.lab
        state = lab._state
        if self._paused is not lab._paused:  # a guardrail pause or resume: evaluations made before are stale
            self._paused = lab._paused
            if self.cache is not None:
                self.cache = _PreparedCache(state.version)
        if state is not self._state:
            kinds = sorted({e.unit for e in state.experiments.values()})
            plan = []
            for kind in kinds:
                unit = self.units.get(kind)
                if unit is None:
                    if kind == "visitor":
                        unit = _Unit(kind, "visitor", self.visitor_cookie)
                    elif kind == "request":
                        unit = _Unit(kind, "request")
                    else:
                        unit = self.defaults.get(kind)
                if unit is not None:
                    plan.append(unit)
            self._plan = tuple(plan)
            # Without targeting and without per-request units, the assignments are a function of the
            # unit ids alone, so they (and their span attributes) are computed once per distinct ids.
            cacheable = "request" not in kinds and not any(e.targeting for e in state.experiments.values())
            self.cache = _PreparedCache(state.version) if cacheable else None
            self.needs_request_object = self.attributes is not None or any(u.how == "call" for u in plan)
            self.may_abort = HTTP_POINT in state.fault_plan.by_point
            only = plan[0] if len(plan) == 1 else None
            simple = self.cache is not None and not self.headers and self.attributes is None
            #: (header name, environ key, unit kind, raw name) when one header is the request's only unit:
            #: begin()'s short path
            self._single_header = (only.name, only.env, only.kind, only.name.encode("latin-1")) if (
                simple and only is not None and only.how == "header") else None
            self._plain = not (self.may_abort or self.trust_baggage or self.propagate_baggage)
            self._state = state
        return self._plan


def parse_cookies(header: str | None) -> dict[str, str]:
    """A ``Cookie`` header as a dict (first value of a name wins; quotes stripped)."""
    out: dict[str, str] = {}
    if not header:
        return out
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name and name not in out:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            out[name] = value
    return out


_sysrandom = random.SystemRandom()


def new_visitor_id() -> str:
    """128 random bits from the OS as 32 hex digits."""
    return "%032x" % _sysrandom.getrandbits(128)


def _known_trace_id(get: Callable[[str], str | None]) -> str | None:
    """The current span's trace id, else the inbound ``traceparent``'s; None when neither exists."""
    sc = trace.get_current_span().get_span_context()
    if sc.is_valid:
        return format(sc.trace_id, "032x")
    tp = get("traceparent")
    if tp:
        m = _TRACEPARENT.match(tp.strip().lower())
        if m and m.group(1) != "0" * 32:
            return m.group(1)
    return None


def _request_id(get: Callable[[str], str | None], ctx_extra: dict[str, Any]) -> str:
    known = _known_trace_id(get)
    if known is not None:
        return known
    ctx_extra["request_generated"] = True  # replaced by the server span's trace id when it starts
    return "%032x" % random.getrandbits(128)


def header_getter(headers: Mapping[str, str], environ: bool) -> Callable[[str], str | None]:
    """A function returning a request header by lower-case name from ``headers`` (see :func:`begin`)."""
    if environ:
        return lambda name: headers.get(env_key(name))
    return headers.get


def begin(cfg: AdapterConfig, request: Any, headers: Mapping[str, str], path: str, method: str,
          known: Mapping[str, Any] | None = None, make_request: Callable[[Any], Any] | None = None,
          environ: bool = False, raw: bool = False) -> RequestContext | None:
    """Start a request's context (not bound yet); None when anything fails: the default path.

    ``headers`` holds the request's headers by lower-case name, or, with
    ``environ``, is a WSGI environ (or Django ``META``) holding them under
    ``HTTP_*`` keys, or, with ``raw``, maps ASGI header names to values, both
    bytes (``dict(scope["headers"])``: only what a request needs is decoded).
    ``request`` is what callables receive; with ``make_request``, they receive
    ``make_request(request)``, built only when a callable needs it.
    ``known`` holds unit ids the adapter already resolved (e.g. Django's async
    user).

    This runs on every request, so the common case is kept short: units read
    from headers or cookies, no override token, and a prepared evaluation of
    those unit ids (see :class:`~fieldlab.context.PreparedRequest`).
    """
    try:
        lab = cfg.lab
        if cfg._state is not lab._state or cfg._paused is not lab._paused:
            cfg.plan()
        single = cfg._single_header
        prepared = None
        raw_id = None
        if raw:
            if single is not None and cfg._plain:
                probe_raw = cfg._override_cookie_probe_raw
                override_raw = cfg._override_raw
                cookie = headers.get(b"cookie")  # type: ignore[call-overload]
                # bytes.find, not `in`: `in` first tries the probe as an int and builds a TypeError
                if not ((override_raw is not None and headers.get(override_raw))  # type: ignore[call-overload]
                        or (probe_raw is not None and cookie and cookie.find(probe_raw) != -1)):
                    raw_id = headers.get(single[3])  # type: ignore[call-overload]
                    if raw_id:
                        prepared = cfg.cache.get(raw_id)  # type: ignore[union-attr]
            if prepared is None:  # decode what the general path may read
                wanted = cfg.wanted_header_bytes
                # values as UTF-8 (header_text, inlined): the text the client sent; other bytes stay
                # surrogate escapes, which the unit check below turns into "no unit"
                headers = {k.decode("latin-1"): v.decode("utf-8", "surrogateescape")  # type: ignore[attr-defined]
                           for k, v in headers.items() if k in wanted}
        hget = headers.get
        cookie_key = "HTTP_COOKIE" if environ else "cookie"
        probe = cfg._override_cookie_probe
        has_override = False
        if prepared is None:
            has_override = bool((cfg.override_header and hget(cfg.override_env if environ else cfg.override_header))
                                or (probe and probe in (hget(cookie_key) or "")))
            if single is not None and not has_override and raw_id is None:  # (a raw id missed: so does its str)
                # one unit, read from a header: a prepared evaluation
                prepared = cfg.cache.get(hget(single[1] if environ else single[0]) or None)  # type: ignore[union-attr]
        if prepared is not None:
            # the common case, kept short: a prepared evaluation, nothing else to do but find the span
            return _started(cfg, RequestContext.from_prepared(lab, {"path": path, "method": method}, prepared,
                                                              cfg.recorder), headers, environ)
        if make_request is not None and cfg.needs_request_object:
            try:
                request = make_request(request)
            except Exception:
                pass
        extra: dict[str, Any] | None = None
        cookies: dict[str, str] | None = None
        units: dict[str, str | None] = {}
        for unit in cfg._plan:
            how = unit.how
            value: Any = None
            if known is not None and unit.kind in known and unit.kind not in cfg.units:
                value = known[unit.kind]
            elif how == "header":
                value = hget(unit.env if environ else unit.name)
                if environ and value:
                    value = wsgi_text(value)
            elif how == "call":
                try:
                    value = unit.fn(request)  # type: ignore[misc]
                except Exception:
                    _failed("resolver_errors", unit.kind)
                    value = None
            elif how == "cookie" or how == "visitor":
                if cookies is None:
                    cookie_header = hget(cookie_key)
                    cookies = parse_cookies(wsgi_text(cookie_header) if environ and cookie_header else cookie_header)
                value = cookies.get(unit.name)
                if how == "visitor" and (value is None or not _HEX32.match(value)):
                    value = new_visitor_id()
                    if extra is None:
                        extra = {}
                    extra["set_visitor"] = value
            elif how == "request":
                if extra is None:
                    extra = {}
                value = _request_id(header_getter(headers, environ), extra)
            if value is not None and value.__class__ is not str:
                value = str(value)
            if value and not value.isascii() and not is_unit_text(value):
                lab._invalid_unit()  # not text (a lone surrogate): no unit, and nothing downstream sees it
                value = None
            units[unit.kind] = value or None
        attrs: dict[str, Any] = {"path": path, "method": method}
        if cfg.headers:
            for h in cfg.headers:
                v = hget(env_key(h) if environ else h)
                if v is not None:
                    attrs[h] = wsgi_text(v) if environ else v
        if cfg.attributes is not None:
            try:
                more = cfg.attributes(request)
                if more:
                    attrs.update(more)
            except Exception:
                _failed("attribute_errors", "attributes callable")
        overrides = _overrides(cfg, header_getter(headers, environ), cookies) if has_override else None
        cache = cfg.cache
        if cache is not None and overrides is None:
            # one-header plan: keyed by the header value as read (the short path above looks it up so;
            # under WSGI that is the latin-1 form, which maps bytes one to one, unlike the decoded unit)
            key = (tuple(units.values()) if single is None
                   else hget(single[1] if environ else single[0]) or None)
            prepared = cache.get(key)
            if prepared is None:
                prepared = _prepare(cfg, key, units, attrs)
                if raw_id:  # (only a one-header plan reads a raw id)
                    _remember(cache, raw_id, prepared)
            ctx = RequestContext.from_prepared(lab, attrs, prepared, cfg.recorder)
        else:
            ctx = RequestContext(lab, units, attrs, overrides, units.get("request"), copy=False)
            ctx.recorder = cfg.recorder
        if extra is not None:
            ctx.extra = extra
        return _started(cfg, ctx, headers, environ)
    except Exception:
        _failed("start_errors", "request start")
        return None


def _started(cfg: AdapterConfig, ctx: RequestContext, headers: Mapping[str, str],
             environ: bool) -> RequestContext | None:
    """The part of :func:`begin` every context goes through (inside its ``try``): faults' trace id, baggage, the span."""
    if cfg.may_abort and ctx.trace_id is None:
        # Fault decisions hash the trace id; an abort may run before any span
        # exists, so take the caller's W3C trace id when there is one.
        ctx.trace_id = _known_trace_id(header_getter(headers, environ))
    if cfg.trust_baggage:
        _apply_baggage(cfg, ctx, headers.get("HTTP_BAGGAGE" if environ else "baggage"))
    try:
        cfg.recorder.attach_current(ctx)
    except Exception:
        telemetry._failed("recorder_errors")
    if ctx.server_span is None and not telemetry._installed_on:
        telemetry.ensure_processor()  # fieldlab runs outside the instrumentation: the span starts later
    if cfg.propagate_baggage:
        value = outbound_baggage(ctx)
        if value is not None:
            ctx.own_extra()["otel_token"] = otel_context.attach(otel_baggage.set_baggage(A.BAGGAGE_KEY, value))
    return ctx


def _overrides(cfg: AdapterConfig, get: Callable[[str], str | None], cookies: dict[str, str] | None) -> Any:
    """The verified override tokens of a request (header and cookie), or None when it has none."""
    tokens: list[str] = []
    if cfg.override_header:
        raw = get(cfg.override_header)
        if raw:
            tokens.extend(t.strip() for t in raw.split(",") if t.strip())
    if cfg._override_cookie_probe:
        raw_cookie = get("cookie")
        if raw_cookie and cfg._override_cookie_probe in raw_cookie:
            if cookies is None:
                cookies = parse_cookies(raw_cookie)
            raw = cookies.get(cfg.override_cookie)  # type: ignore[arg-type]
            if raw:
                tokens.extend(t.strip() for t in unquote(raw).split(",") if t.strip())
    if not tokens:
        return None
    verified = cfg.lab.verify_overrides(tokens)
    return verified if len(verified) else None


def _prepare(cfg: AdapterConfig, key: Any, units: dict[str, str | None],
             attrs: dict[str, Any]) -> PreparedRequest:
    """Evaluate one set of unit ids in full and keep what every request with them shares."""
    paused = cfg.lab._paused  # before evaluating: a pause that lands meanwhile must not leave this in the cache
    full = RequestContext(cfg.lab, units, attrs)
    recorder = cfg.recorder
    unit_values = recorder.unit_values(full.units)
    full.own_extra()["unit_values"] = unit_values
    prepared = PreparedRequest(full.units, full.assignments, list(full.held_out), frozenset(full.exposed), full.version,
                               recorder.base_attributes(full), unit_values)
    cache = cfg.cache
    if cache is not None and cfg._paused is paused:
        _remember(cache, key, prepared)
    return prepared


class _PreparedCache(dict):  # type: ignore[type-arg]
    """Unit ids -> :class:`PreparedRequest`, for one configuration (``version``); replaced when it changes."""

    __slots__ = ("version",)

    def __init__(self, version: str) -> None:
        super().__init__()
        self.version = version


def _remember(cache: _PreparedCache, key: Any, prepared: PreparedRequest) -> None:
    """Keep ``prepared`` under ``key``, unless another configuration made it or an id is too long.

    A request that evaluated under the old configuration while a reload put a
    new cache in place must not leave its assignments there: every later
    request with those ids would get the old config.

    The cache holds at most ``_CACHE_SIZE`` entries, and no id (str, or raw
    header bytes) longer than :data:`~fieldlab._units.MAX_CACHED_ID_LENGTH`:
    such ids are evaluated on every request instead, so its size in bytes is
    bounded whatever clients send.
    """
    if prepared.version != cache.version:
        return
    if key.__class__ is tuple:
        for part in key:
            if part is not None and len(part) > MAX_CACHED_ID_LENGTH:
                return
    elif key is not None and len(key) > MAX_CACHED_ID_LENGTH:
        return
    if len(cache) >= _CACHE_SIZE:
        cache.clear()
    cache[key] = prepared


def end(ctx: RequestContext, token: Any) -> None:
    """Finish a request: make sure a fault shows on the span, detach baggage, unbind. Never raises."""
    try:
        if ctx._fault_injected:
            span = ctx.server_span
            if span is not None and span.is_recording():
                span.set_attribute(A.FAULT_INJECTED, True)
        extra = ctx.extra
        if extra:
            otel_token = extra.get("otel_token")
            if otel_token is not None:
                otel_context.detach(otel_token)
    except Exception:
        telemetry._failed("recorder_errors")
    if token is not None:
        reset(token)


_abort_hook: list[Any] = []


def abort_for(ctx: RequestContext) -> tuple[int, bytes] | None:
    """A ``(status, body)`` fault injection answers with before the app runs, else None. Never raises."""
    if HTTP_POINT not in ctx.lab._state.fault_plan.by_point:
        return None
    if not _abort_hook:
        try:
            from . import faults  # written separately; absent in builds without fault injection
            _abort_hook.append(getattr(faults, "abort_for", None))
        except Exception:
            _abort_hook.append(None)
    fn = _abort_hook[0]
    if fn is None:
        return None
    try:
        result = fn(ctx)
        if result is None:
            return None
        status, body = result
        return int(status), body if isinstance(body, bytes) else str(body).encode("utf-8")
    except Exception:
        _failed("fault_errors", "abort_for")
        return None


def visitor_cookie(cfg: AdapterConfig, ctx: RequestContext | None, secure: bool) -> str | None:
    """The ``Set-Cookie`` value for a new visitor id, or None when the request had a valid one."""
    if ctx is None:
        return None
    vid = ctx.extra.get("set_visitor")
    if vid is None:
        return None
    value = f"{cfg.visitor_cookie}={vid}; Path=/; Max-Age={VISITOR_MAX_AGE}; HttpOnly; SameSite=Lax"
    return value + "; Secure" if secure else value


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def outbound_baggage(ctx: RequestContext, *, now: float | None = None) -> str | None:
    """The signed ``fieldlab`` baggage value carrying this request's variants, or None without a secret."""
    secret = ctx.lab.secret
    if not secret:
        return None
    variants = {k: a.variant for k, a in ctx.assignments.items() if a.in_experiment}
    expiry = int((time.time() if now is None else now) + BAGGAGE_TTL_SECONDS)
    payload = _b64(json.dumps({"a": variants, "x": expiry}, separators=(",", ":"), sort_keys=True).encode("utf-8"))
    return f"{payload}.{sign(secret, _BAGGAGE_CONTEXT + payload)}"


def verify_baggage(secret: bytes | None, value: str, *, now: float | None = None) -> dict[str, str] | None:
    """The variants a ``fieldlab`` baggage value carries, if its signature verifies and it has not expired."""
    if not secret or not value or len(value) > 4096:
        return None
    payload, sep, sig = value.strip().partition(".")
    if not sep or not hmac.compare_digest(sign(secret, _BAGGAGE_CONTEXT + payload), sig):
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        variants, expiry = data["a"], data["x"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(variants, dict) or not isinstance(expiry, int) or expiry < (time.time() if now is None else now):
        return None
    return {str(k): str(v) for k, v in variants.items()}


def _baggage_member(header: str | None) -> str | None:
    if not header:
        return None
    for member in header.split(","):
        name, sep, value = member.partition("=")
        if sep and name.strip() == A.BAGGAGE_KEY:
            return unquote(value.split(";", 1)[0].strip())
    return None


def _apply_baggage(cfg: AdapterConfig, ctx: RequestContext, header: str | None) -> bool:
    """Apply verified inbound baggage; True when it changed an assignment."""
    raw = _baggage_member(header)
    if raw is None:
        return False
    variants = verify_baggage(cfg.lab.secret, raw)
    if variants is None:
        stats["baggage_rejected"] += 1
        return False
    changed = False
    experiments = cfg.lab.experiments
    for key, name in variants.items():
        exp = experiments.get(key)
        if exp is None or name not in exp.variant_names or ctx.assignments.get(key, None) is None:
            continue
        if ctx.assignments[key].reason == "override":
            continue  # a signed override on this hop wins
        a = Assignment(key, name, None, SPLIT, exp.variant(name).params)
        ctx.own_assignments()[key] = cfg.lab._guardrail(a) if cfg.lab._paused else a  # paused here: control
        changed = True
    return changed


def baggage_header(value: str) -> str:
    """A ``baggage`` header carrying only the fieldlab member (for clients without OTel propagation)."""
    return f"{A.BAGGAGE_KEY}={quote(value, safe='')}"

