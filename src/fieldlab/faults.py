"""Fault injection per variant: deterministic across services, inside a blast radius, with a kill switch.

A fault is an assignment like any other. Code names *points*; configuration
says which variant of which experiment gets which fault there::

    @fieldlab.fault_point("db.query")
    def query(sql): ...

    async with fieldlab.fault_point("db.query"):
        rows = await conn.fetch(sql)

    # config: variant "slow" of "slow-db" carries
    #   faults = [{point = "db.query", latency_ms = 300, rate = 50}]

At a point, for the current request, a fault applies only when all hold:

1. the request's assignment of the experiment is that variant, by a split or a
   signed override (never when held out, paused, concluded or not targeted);
2. the rate draw passes: ``bucket(salt, trace_id) < rate * 100`` with
   ``salt = "<experiment>:<variant>:fault"``, so every service on the trace's
   path decides alike and a replay of the trace decides alike;
3. the rails: ``[faults] enabled = true``, env ``FIELDLAB_FAULTS`` is not
   ``off``, the kill switch does not name the experiment (or ``--all``; checked
   at least once a second, whatever the reload interval), and
   fewer than ``max_active`` faults are in progress in this process.

Latency draws (uniform, lognormal, jitter) come from the same trace id and
salt, plus the point and its occurrence number in the request, so replays
match. Async code awaits ``asyncio.sleep``; sync code sleeps; a *sync* point
reached on a thread that runs an event loop skips its latency (counted) rather
than block the loop. Aborts are answered by the web adapters through
:func:`abort_for` before the app runs (point ``"http"``).

A sick canary (``[[canaries]]``, :mod:`fieldlab.control.canary_runtime`) adds
latency doses at its point for the requests its published weights put in a
dose arm, inside the same rails (enabled, ``FIELDLAB_FAULTS``, the kill switch
naming the canary's key, ``max_active``), and records the request's arm as
``fieldlab.canary.<key>`` on its span.

Every injected fault is recorded through ``ctx.event`` as the span event
``fieldlab.fault`` and sets ``ctx.fault_injected``. Reaching a point exposes
the request to each experiment with a fault there that its unit is in, in any
variant (control included), so trigger analysis sees the experiment. Nothing here raises into
a request except the injected exception itself: an internal failure means no
fault, counted in :func:`stats` and logged once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import logging
import math
import os
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from opentelemetry import trace as _otel_trace

from . import _internal, killswitch
from . import attributes as A
from ._assignment import OVERRIDE, SPLIT
from ._fault_kinds import (
    EXCEPTION_NAME_RE,
    HTTP_POINT,
    MAX_LATENCY_MS,
    POINT_NAME_RE,
    FaultEntry,
    FaultPlan,
    FaultSpec,
    parse_fault,
)
from ._hashing import BUCKETS, bucket, hash32
from .context import RequestContext, current
from .control.canary_runtime import arms_at
from .errors import ConfigError

__all__ = [
    "fault_point",
    "inject",
    "InjectedFault",
    "register_exception",
    "unregister_exception",
    "abort_for",
    "stats",
    "reset_stats",
    "active",
    "blast_radius",
    "FAULTS_ENV",
    "HTTP_POINT",
]

_log = logging.getLogger("fieldlab.faults")
F = TypeVar("F", bound=Callable[..., Any])

#: ``FIELDLAB_FAULTS=off`` (or 0/false/no) turns every fault off in the process, whatever the config says.
FAULTS_ENV = "FIELDLAB_FAULTS"
_OFF_VALUES = frozenset({"off", "0", "false", "no", "disabled"})
_Z99 = statistics.NormalDist().inv_cdf(0.99)
_NORMAL = statistics.NormalDist()
_TWO32 = float(2**32)


class InjectedFault(Exception):
    """The exception fieldlab raises for an exception fault that names no registered class.

    Carries ``point``, ``experiment`` and ``variant`` so handlers and logs can tell it apart.
    """

    def __init__(
        self,
        message: str = "fieldlab injected fault",
        *,
        point: str | None = None,
        experiment: str | None = None,
        variant: str | None = None,
    ) -> None:
        super().__init__(message)
        self.point = point
        self.experiment = experiment
        self.variant = variant


# ------------------------------------------------------------ exception registry
_REGISTRY: dict[str, Callable[[str], BaseException]] = {
    "InjectedFault": InjectedFault,
    "fieldlab.InjectedFault": InjectedFault,
}
_BUILTIN_NAMES = frozenset(_REGISTRY)


def register_exception(name: str, exc: type[Exception] | Callable[[str], Exception]) -> None:
    """Allow exception faults named ``name`` to raise ``exc``.

    ``exc`` is an ``Exception`` subclass called with one message argument, or
    a factory ``message -> Exception`` for classes with other constructors.
    Only registered names can be raised: a config cannot make the app raise
    an arbitrary class. ``BaseException`` subclasses that are not
    ``Exception`` (``SystemExit``, ``KeyboardInterrupt``) are refused.
    """
    if not isinstance(name, str) or not EXCEPTION_NAME_RE.match(name) or name in _BUILTIN_NAMES:
        raise ConfigError(
            "register_exception(name)",
            f"{name!r} is not a usable exception name",
            "use letters, digits, '_', '.', '-' (and not InjectedFault, which is built in)",
        )
    if isinstance(exc, type):
        if not issubclass(exc, Exception):
            raise ConfigError(
                "register_exception(exc)",
                f"{exc.__name__} is not an Exception subclass",
                "register an Exception subclass; SystemExit and KeyboardInterrupt are refused",
            )
    elif not callable(exc):
        raise ConfigError(
            "register_exception(exc)",
            f"{exc!r} is neither an exception class nor a factory",
            "pass e.g. TimeoutError, or lambda msg: MyError(msg, code=504)",
        )
    _REGISTRY[name] = exc


def unregister_exception(name: str) -> None:
    """Remove a registered name (built-in names stay)."""
    if name not in _BUILTIN_NAMES:
        _REGISTRY.pop(name, None)


# ------------------------------------------------------------------- counters
_STATS_KEYS = (
    "injected",
    "skipped_disabled",
    "skipped_env",
    "skipped_killed",
    "skipped_paused",
    "skipped_max_active",
    "skipped_over_cap",
    "skipped_no_trace",
    "skipped_in_event_loop",
    "skipped_unknown_exception",
    "errors",
)
#: Process-wide counters, also in ``fieldlab.stats()`` as ``faults.<name>``.
_stats: dict[str, int] = _internal.counters("faults", _STATS_KEYS)
_lock = threading.Lock()
_active = 0


def _after_fork_in_child() -> None:
    """A forked worker starts with no faults in progress and a fresh lock (gunicorn --preload)."""
    global _active, _lock
    _active = 0
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def stats() -> dict[str, int]:
    """Process-wide counters: faults injected, skipped by each rail, and internal errors."""
    return dict(_stats)


def reset_stats() -> None:
    """Zero the counters (tests, benchmarks)."""
    _internal.reset("faults")


def active() -> int:
    """Faults in progress in this process (delays being served)."""
    return _active


def _count(key: str) -> None:
    _internal.count("faults", key)


def _log_once(tag: str, msg: str, *args: Any) -> None:
    _internal.log_once(f"faults:{tag}", msg, *args, logger=_log)


def _internal_error(where: str) -> None:
    _internal.failed(
        "faults", "errors", where, "fieldlab: fault engine failed in %s; no fault injected", where, logger=_log
    )


def _take_slot(max_active: int) -> bool:
    """Take one of the process's ``max_active`` fault slots; False (counted) when all are in use."""
    global _active
    with _lock:
        full = _active >= max_active
        if not full:
            _active += 1
    if full:
        _count("skipped_max_active")
    return not full


def _release(n: int) -> None:
    global _active
    if n:
        with _lock:
            _active -= n


#: Fault variants defined in code (``inject``), in registration order: the cap covers them with the config's.
_CODE_VARIANTS: dict[tuple[str, str], None] = {}


def _code_admitted(plan: FaultPlan) -> frozenset[tuple[str, str]]:
    """The code-defined fault variants that fit under the cap together with the config's fault variants.

    Taken in registration (import) order, each variant is admitted when the
    config's fault variants plus those admitted before it plus itself stay
    within ``max_blast_radius``; a variant that is already a configured fault
    variant is counted there. Computed once per plan and registration count.
    """
    n = len(_CODE_VARIANTS)
    cached = plan.code_admitted
    if cached is not None and cached[0] == n:
        return cached[1]
    total = plan.total_radius
    admitted: set[tuple[str, str]] = set()
    for key in list(_CODE_VARIANTS):
        if key in plan.radius:
            admitted.add(key)
            continue
        share = plan.shares.get(key, 0.0)
        if (total + share) * 100 <= plan.max_blast_radius + 1e-9:
            total += share
            admitted.add(key)
    result = frozenset(admitted)
    plan.code_admitted = (n, result)
    return result


def blast_radius(lab: Any) -> dict[str, Any]:
    """The share of units (percent) each fault variant can reach, their total and the cap, for ``lab``.

    ``variants`` are the config's fault variants; ``code`` the ``inject()``
    variants admitted under the cap on top of them; ``refused`` the
    ``inject()`` variants that would exceed it (never injected). ``total``
    covers both config and admitted code variants.
    """
    plan: FaultPlan = lab._state.fault_plan
    admitted = _code_admitted(plan)
    code = {
        f"{e}/{v}": plan.shares.get((e, v), 0.0) * 100
        for (e, v) in _CODE_VARIANTS
        if (e, v) in admitted and (e, v) not in plan.radius
    }
    refused = [f"{e}/{v}" for (e, v) in _CODE_VARIANTS if (e, v) not in admitted]
    return {
        "variants": {f"{e}/{v}": share * 100 for (e, v), share in plan.radius.items()},
        "code": code,
        "refused": refused,
        "total": plan.total_radius * 100 + sum(code.values()),
        "cap": plan.max_blast_radius,
    }


# ------------------------------------------------------------------ decisions
class _Hit:
    """One fault that will be injected now; its concurrency slot is already taken."""

    __slots__ = ("experiment", "variant", "spec", "delay_ms", "attrs")

    def __init__(self, experiment: str, variant: str, spec: FaultSpec, delay_ms: float, attrs: dict[str, Any]) -> None:
        self.experiment, self.variant, self.spec, self.delay_ms, self.attrs = experiment, variant, spec, delay_ms, attrs


def _env_off() -> bool:
    value = os.environ.get(FAULTS_ENV)
    return value is not None and value.strip().lower() in _OFF_VALUES


def _trace_key(ctx: RequestContext) -> str | None:
    """The request's trace id as 32 lowercase hex digits, the input of every fault draw; None if unknown.

    ``ctx.trace_id`` when the adapter set a real one (an int or hex string);
    otherwise the trace of the request's server span, else of the current
    span. A placeholder id an adapter made up before any span existed
    (``ctx.trace_id_generated``) is not used: it would not match the
    trace that gets recorded, so a replay could not reproduce the decision.
    """
    tid = ctx.trace_id
    if tid and not ctx.trace_id_generated:
        if isinstance(tid, int):
            return f"{tid:032x}"
        return str(tid).lower()
    span = getattr(ctx, "server_span", None)
    if span is None:
        span = _otel_trace.get_current_span()
    sc = span.get_span_context()
    if sc is not None and sc.is_valid:
        return f"{sc.trace_id:032x}"
    return None


def _unit_key(ctx: RequestContext) -> str:
    return "units:" + ",".join(f"{k}={v}" for k, v in sorted(ctx.units.items()) if v)


def _uniform(*parts: Any) -> float:
    """A deterministic draw in [0, 1) from the joined parts."""
    return hash32(":".join(str(p) for p in parts)) / _TWO32


def _draw_delay(spec: FaultSpec, salt: str, key: str, point: str, seq: int) -> float:
    if spec.distribution == "fixed":
        delay = spec.latency_ms
    elif spec.distribution == "uniform":
        delay = spec.min_ms + (spec.max_ms - spec.min_ms) * _uniform(salt, key, point, seq, "latency")
    else:
        u = min(max(_uniform(salt, key, point, seq, "latency"), 1e-9), 1 - 1e-9)
        sigma = math.log(spec.p99_ms / spec.median_ms) / _Z99
        delay = min(spec.median_ms * math.exp(sigma * _NORMAL.inv_cdf(u)), spec.max_ms)
    if spec.jitter_ms:
        delay += (2 * _uniform(salt, key, point, seq, "jitter") - 1) * spec.jitter_ms
    return min(max(delay, 0.0), MAX_LATENCY_MS)


def _candidates(ctx: RequestContext, point: str, code: tuple[FaultEntry, ...]) -> list[tuple[FaultEntry, bool]]:
    """Faults at ``point`` whose variant the request is in by split or signed override; flag: defined in code."""
    plan: FaultPlan = ctx.lab._state.fault_plan
    found = []
    assignments = ctx.assignments
    for group, from_code in ((plan.by_point.get(point, ()), False), (code, True)):
        for entry in group:
            a = assignments.get(entry.experiment)
            if a is not None and a.variant == entry.variant and (a.reason == SPLIT or a.reason == OVERRIDE):
                found.append((entry, from_code))
    return found


def _decide(ctx: RequestContext, point: str, code: tuple[FaultEntry, ...], mode: str) -> list[_Hit]:
    """The faults to inject now at ``point`` (``mode``: sync, async or abort), each with a slot taken and recorded."""
    cands = _candidates(ctx, point, code)
    if not cands:
        return []
    lab = ctx.lab
    plan: FaultPlan = lab._state.fault_plan
    key = _trace_key(ctx)
    seqs = ctx.fault_seq
    seq = seqs.get(point, 0)
    seqs[point] = seq + 1
    in_loop: bool | None = None
    hits: list[_Hit] = []
    raised = False
    for (exp_key, variant, spec, salt), from_code in cands:
        kind = spec.kind
        if (mode == "abort") != (kind == "abort"):
            continue
        if kind == "abort" and hits:
            continue  # one answer per request
        if kind == "exception" and raised:
            continue  # one exception per point
        # Rate: the same decision in every service on the trace, and in a replay.
        if spec.rate_bp < BUCKETS:
            if key is None:
                _count("skipped_no_trace")
                _log_once(
                    "no_trace",
                    "fieldlab: fault at %r has a rate but the request has no trace id; "
                    "skipped (start a span before fieldlab, or use rate = 100)",
                    point,
                )
                continue
            if bucket(salt, key) >= spec.rate_bp:
                continue
        # Rails, cheapest first; each skip is counted.
        if not plan.enabled:
            _count("skipped_disabled")
            continue
        if _env_off():
            _count("skipped_env")
            continue
        if plan.state_file is not None:
            # Clamped to 0.01-1 s by the kill switch itself, whatever the reload interval.
            interval = lab.reload_interval or plan.reload_interval or killswitch.MAX_CHECK_INTERVAL
            if killswitch.is_killed(plan.state_file, exp_key, interval):
                _count("skipped_killed")
                continue
        snap = lab._control  # the followed lab state (fieldlab.control): pauses, and kills in a Redis store
        if snap is not None:
            if (exp_key, variant) in snap.paused:
                _count("skipped_paused")
                continue
            if plan.state_file is None and snap.faults_halted(exp_key):  # a state file: the kill switch reads it
                _count("skipped_killed")
                continue
        if from_code and (exp_key, variant) not in _code_admitted(plan):
            _count("skipped_over_cap")
            _log_once(
                f"cap:{exp_key}/{variant}",
                "fieldlab: inject() fault for %s/%s would take the blast "
                "radius of the config's and the code's fault variants together above the cap of %g%%; "
                "skipped (see fieldlab.faults.blast_radius(lab))",
                exp_key,
                variant,
                plan.max_blast_radius,
            )
            continue
        delay = 0.0
        if kind == "latency":
            if mode == "sync":
                if in_loop is None:
                    try:
                        asyncio.get_running_loop()
                        in_loop = True
                    except RuntimeError:
                        in_loop = False
                if in_loop:
                    _count("skipped_in_event_loop")
                    _log_once(
                        f"loop:{point}",
                        "fieldlab: latency fault at %r reached from sync code on an "
                        "event-loop thread; skipped so the loop is not blocked (use `async with "
                        "fieldlab.fault_point(...)` or decorate the async function)",
                        point,
                    )
                    continue
            delay = _draw_delay(spec, salt, key if key is not None else _unit_key(ctx), point, seq)
        elif kind == "exception" and spec.exception not in _REGISTRY:
            _count("skipped_unknown_exception")
            _log_once(
                f"exc:{spec.exception}",
                "fieldlab: exception fault names %r, which the app has not "
                "registered (fieldlab.faults.register_exception); skipped",
                spec.exception,
            )
            continue
        if not _take_slot(plan.max_active):
            continue
        _count("injected")
        attrs: dict[str, Any] = {
            A.FAULT_POINT: point,
            A.FAULT_KIND: kind,
            A.FAULT_EXPERIMENT: exp_key,
            A.FAULT_VARIANT: variant,
        }
        if kind == "latency":
            attrs[A.FAULT_DELAY_MS] = round(delay, 3)
        elif kind == "exception":
            attrs[A.FAULT_EXCEPTION] = spec.exception
            raised = True
        else:
            attrs[A.FAULT_STATUS] = spec.status
        hits.append(_Hit(exp_key, variant, spec, delay, attrs))
    for hit in hits:
        _record(ctx, hit)
    return hits


def _canary_spec(point: str, dose_ms: float) -> FaultSpec:
    spec = _CANARY_SPECS.get((point, dose_ms))
    if spec is None:
        if len(_CANARY_SPECS) > 4096:  # doses change as the search refines; keep the cache bounded
            _CANARY_SPECS.clear()
        spec = _CANARY_SPECS[(point, dose_ms)] = parse_fault({"point": point, "latency_ms": dose_ms}, "canary")
    return spec


_CANARY_SPECS: dict[tuple[str, float], FaultSpec] = {}


def _canary_hits(ctx: RequestContext, point: str, mode: str) -> list[_Hit]:
    """The latency doses of the sick canaries at ``point`` for this request, inside the same rails as faults.

    Every request in a canary (its control included) gets ``fieldlab.canary.<key>`` = its arm on the
    SERVER span, so the controller compares each dose with the canary's own control. With the rails
    off (``[faults] enabled``, ``FIELDLAB_FAULTS``, the kill switch) nothing is recorded: the canary's
    arms are then not measured either.
    """
    lab = ctx.lab
    state = lab._state
    if point not in state.canaries.points:
        return []  # no canary here: nothing to count as skipped either
    plan: FaultPlan = state.fault_plan
    if not plan.enabled:
        return []
    if _env_off():
        _count("skipped_env")
        return []
    arms = arms_at(lab, point, _trace_key(ctx), ctx.units)
    hits: list[_Hit] = []
    for key, label, dose in arms:
        if plan.state_file is not None:
            interval = lab.reload_interval or plan.reload_interval or killswitch.MAX_CHECK_INTERVAL
            if killswitch.is_killed(plan.state_file, key, interval):
                _count("skipped_killed")
                continue
        if dose is None:
            ctx.annotate({A.canary_attr(key): label})
            continue  # the canary's control: measured, never dosed
        # A dose that cannot be injected (event loop, max_active) leaves the request out of the canary:
        # recorded in its arm, it would count as a dosed request that was not.
        if mode == "sync":
            try:
                asyncio.get_running_loop()
                _count("skipped_in_event_loop")
                continue
            except RuntimeError:
                pass
        if not _take_slot(plan.max_active):
            continue
        _count("injected")
        ctx.annotate({A.canary_attr(key): label})
        attrs: dict[str, Any] = {
            A.FAULT_POINT: point,
            A.FAULT_KIND: "latency",
            A.FAULT_CANARY: key,
            A.FAULT_VARIANT: label,
            A.FAULT_DELAY_MS: dose,
        }
        hit = _Hit(key, label, _canary_spec(point, dose), dose, attrs)
        hits.append(hit)
        _record(ctx, hit)
    return hits


def _record(ctx: RequestContext, hit: _Hit) -> None:
    try:
        ctx.add_fault(dict(hit.attrs))
        ctx.event(A.FAULT_EVENT, dict(hit.attrs))
        ctx.fault_injected = True
    except Exception:
        _internal_error("record")


def _make_exception(hit: _Hit, point: str) -> BaseException | None:
    spec = hit.spec
    message = spec.message or f"fieldlab injected fault: {hit.experiment}/{hit.variant} at {point}"
    factory = _REGISTRY.get(spec.exception or "InjectedFault")
    if factory is None:
        return None
    if factory is InjectedFault:
        return InjectedFault(message, point=point, experiment=hit.experiment, variant=hit.variant)
    exc = factory(message)
    if not isinstance(exc, BaseException):
        raise TypeError(f"exception factory for {spec.exception!r} returned {exc!r}")
    return exc


_NOTHING: tuple[float, None, int] = (0.0, None, 0)


def _prepare(
    ctx: RequestContext, point: str, code: tuple[FaultEntry, ...], mode: str
) -> tuple[float, BaseException | None, int]:
    """Decide and prepare: total delay, exception to raise (or None), slots held. Never raises."""
    hits: list[_Hit] = []
    try:
        state = ctx.lab._state
        if state.canaries and mode != "abort":
            hits = _canary_hits(ctx, point, mode)  # the sick canary's doses (fieldlab.control.canary_runtime)
        configured = state.fault_plan.by_point.get(point, ())
        if (configured or code) and (_expose_at(ctx, configured) | _expose_at(ctx, code)):
            # Reaching the point exposes the request to every experiment with a fault here that the
            # unit is in, whatever its variant (control too), so trigger analysis compares like with like.
            hits += _decide(ctx, point, code, mode)
    except Exception:
        _internal_error("decide")
        _release(len(hits))
        return 0.0, None, 0
    if not hits:
        return 0.0, None, 0
    delay = 0.0
    exc: BaseException | None = None
    try:
        for hit in hits:
            if hit.spec.kind == "latency":
                delay += hit.delay_ms
            elif hit.spec.kind == "exception" and exc is None:
                exc = _make_exception(hit, point)
    except Exception:
        _internal_error("exception")
        _release(len(hits))
        return 0.0, None, 0
    return min(delay, MAX_LATENCY_MS), exc, len(hits)


def _expose_at(ctx: RequestContext, faults: tuple[FaultEntry, ...]) -> bool:
    """Mark exposed each experiment of ``faults`` the request's unit is in; True if it is in a faulted variant."""
    hit = False
    assignments = ctx.assignments
    for entry in faults:
        a = assignments.get(entry.experiment)
        if a is None or not a.in_experiment:
            continue
        if entry.experiment not in ctx.exposed:
            ctx.read(entry.experiment)
        if a.variant == entry.variant:
            hit = True
    return hit


def _enter_sync(ctx: RequestContext, point: str, code: tuple[FaultEntry, ...]) -> None:
    delay, exc, slots = _prepare(ctx, point, code, "sync")
    if not slots:
        return
    try:
        if delay > 0:
            time.sleep(delay / 1000.0)
    finally:
        _release(slots)
    if exc is not None:
        raise exc


async def _enter_async(ctx: RequestContext, point: str, code: tuple[FaultEntry, ...]) -> None:
    delay, exc, slots = _prepare(ctx, point, code, "async")
    if not slots:
        return
    try:
        if delay > 0:
            await asyncio.sleep(delay / 1000.0)
    finally:
        _release(slots)
    if exc is not None:
        raise exc


def abort_for(ctx: RequestContext | None) -> tuple[int, bytes] | None:
    """The (status, body) to answer before the app runs, when an abort fault applies to this request; else None.

    Called by the web adapters right after the request context is started.
    Never raises.
    """
    if ctx is None:
        return None
    try:
        plan: FaultPlan = ctx.lab._state.fault_plan
        configured = plan.by_point.get(HTTP_POINT)
        if configured is None:
            return None
        if not _expose_at(ctx, configured):  # every request reaches the HTTP point
            return None
        hits = _decide(ctx, HTTP_POINT, (), "abort")
        if not hits:
            return None
        _release(len(hits))
        hit = hits[0]
        body = hit.spec.body
        if body is None:
            body = f"fieldlab injected fault: {hit.experiment}/{hit.variant} answered {hit.spec.status}\n"
        return hit.spec.status, body.encode("utf-8")
    except Exception:
        _internal_error("abort")
        return None


# ------------------------------------------------------------------ the API
class FaultPoint:
    """A named place where configured faults may happen: decorator or (async) context manager.

    The object holds no per-call state, so one instance serves every call and
    every thread; :func:`fault_point` caches them by name.
    """

    __slots__ = ("name", "code", "__weakref__")

    def __init__(self, name: str, code: tuple[FaultEntry, ...] = ()) -> None:
        self.name = name
        self.code = code

    def __call__(self, fn: F) -> F:
        name, code = self.name, self.code
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                ctx = current()
                if ctx is not None and (code or name in ctx.lab._state.fault_plan.by_point or ctx.lab._state.canaries):
                    await _enter_async(ctx, name, code)
                return await fn(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            ctx = current()
            if ctx is not None and (code or name in ctx.lab._state.fault_plan.by_point or ctx.lab._state.canaries):
                _enter_sync(ctx, name, code)
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    def __enter__(self) -> FaultPoint:
        ctx = current()
        if ctx is not None:
            _enter_sync(ctx, self.name, self.code)
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    async def __aenter__(self) -> FaultPoint:
        ctx = current()
        if ctx is not None:
            await _enter_async(ctx, self.name, self.code)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        return None

    def __repr__(self) -> str:
        return f"fault_point({self.name!r})"


_POINTS: dict[str, FaultPoint] = {}


def fault_point(name: str) -> FaultPoint:
    """The fault point ``name``, for ``@fault_point(name)``, ``with`` or ``async with``.

    The code names the place; the configuration decides which fault (if any)
    happens there, for which variant. Outside a request it does nothing.
    """
    p = _POINTS.get(name)
    if p is None:
        if not isinstance(name, str) or not POINT_NAME_RE.match(name) or name == HTTP_POINT:
            raise ConfigError(
                f"fault_point({name!r})",
                "not a valid point name",
                f"use 1-128 letters, digits, '.', '_', '-', ':' or '/' ({HTTP_POINT!r} is for aborts)",
            )
        p = _POINTS.setdefault(name, FaultPoint(name))
    return p


def inject(experiment: str, variant: str, *, point: str | None = None, **fault: Any) -> Callable[[F], F]:
    """A code-defined fault, for tests and scripts: ``@inject(experiment="slow-db", variant="slow", latency_ms=50)``.

    The decorated function (or ``with inject(...)`` block) becomes a fault
    point named ``point`` (default: the function's module and qualified name,
    or ``"inject"`` for a block); configured faults at that point apply too.
    The fault applies when the current request is in ``variant`` of
    ``experiment`` by split or signed override, and is still subject to every
    rail: enabled, ``FIELDLAB_FAULTS``, the kill switch, ``max_active`` and
    the blast-radius cap. The cap holds for the union of the config's and the
    code's fault variants: code-defined variants are admitted in registration
    order while the total stays within ``max_blast_radius``; one that would
    exceed it is never injected (counted as ``skipped_over_cap`` and logged
    once). :func:`blast_radius` lists admitted and refused variants. ``fault`` takes the keys of
    a config entry (``latency_ms``, ``exception``, ``rate``, ...); aborts
    belong in the config.
    """
    label = f"inject(experiment={experiment!r}, variant={variant!r})"
    if not isinstance(experiment, str) or not isinstance(variant, str):
        raise ConfigError(label, "experiment and variant must be strings", "name the experiment and its variant")
    entry = dict(fault)
    if entry.get("kind") == "abort" or "status" in entry or "body" in entry:
        raise ConfigError(
            label,
            "aborts answer the HTTP request before the app runs, so code cannot inject them",
            'configure aborts in the config (point = "http"); use exception= here',
        )
    entry["point"] = point or "inject"
    spec = parse_fault(entry, label)
    salt = spec.salt or f"{experiment}:{variant}:fault"
    _CODE_VARIANTS.setdefault((experiment, variant), None)  # counted under the cap from now on

    def build(name: str) -> FaultPoint:
        return FaultPoint(name, (FaultEntry(experiment, variant, dataclasses.replace(spec, point=name), salt),))

    return _Inject(build, point)


class _Inject:
    """What :func:`inject` returns: a decorator, and a context manager for blocks."""

    __slots__ = ("build", "point", "block")

    def __init__(self, build: Callable[[str], FaultPoint], point: str | None) -> None:
        self.build = build
        self.point = point
        self.block: FaultPoint | None = None

    def __call__(self, fn: F) -> F:
        name = self.point or f"{fn.__module__}.{fn.__qualname__}".replace("<", "").replace(">", "")[:128]
        return self.build(name)(fn)

    def _block(self) -> FaultPoint:
        if self.block is None:
            self.block = self.build(self.point or "inject")
        return self.block

    def __enter__(self) -> FaultPoint:
        return self._block().__enter__()

    def __exit__(self, *exc: Any) -> None:
        return None

    async def __aenter__(self) -> FaultPoint:
        return await self._block().__aenter__()

    async def __aexit__(self, *exc: Any) -> None:
        return None
