"""Adapter options: the one typed set every adapter takes, and what the request path makes of them.

:class:`Options` is the documented list (``fieldlab.adapters.Options``); every
adapter accepts the same names as keyword arguments (typed by
:class:`AdapterOptions` for IDEs and mypy) and Django reads its ``FIELDLAB``
setting through the same list. A misspelt name is a
:class:`~fieldlab.errors.ConfigError` naming the closest valid one.

:class:`AdapterConfig` is built once per adapter from a lab and those options:
every resolver is compiled and every value checked there, so bad input fails
at start-up with the field and the fix, and :meth:`AdapterConfig.plan` says
per configuration which units a request resolves.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypedDict

from .. import telemetry
from .._cache_headers import COOKIE, OPAQUE, header_source
from .._fault_kinds import HTTP_POINT
from ..errors import ConfigError
from ..lab import Lab
from .caching import Sources
from .headers import env_key
from .prepared import PreparedCache
from .wiring import UnitWatch

__all__ = [
    "DEFAULT_OVERRIDE_COOKIE",
    "DEFAULT_OVERRIDE_HEADER",
    "DEFAULT_VISITOR_COOKIE",
    "AdapterConfig",
    "AdapterOptions",
    "Options",
    "Resolver",
    "Unit",
]

_log = logging.getLogger("fieldlab")

DEFAULT_VISITOR_COOKIE = "fieldlab_visitor"
DEFAULT_OVERRIDE_HEADER = "X-Fieldlab-Override"
DEFAULT_OVERRIDE_COOKIE = "fieldlab_override"

#: A unit or attribute resolver: a callable taking the framework's request.
Resolver = Callable[[Any], Any]


@dataclasses.dataclass(frozen=True)
class Options:
    """What every adapter accepts besides the lab.

    Args:
        units: unit kind -> resolver: a callable taking the request, ``"header:X-User-Id"`` or
            ``"cookie:NAME"``. Kinds without one use the framework's default.
        headers: request headers (by name) that become targeting attributes, named in lower case.
        attributes: a callable taking the request and returning more targeting attributes.
        unit_ids: how unit ids are written on spans: ``hash`` (default: ``lab.unit_ids``), ``raw`` or ``none``.
        trust_baggage: use signed inbound fieldlab baggage (default: ``lab.trust_baggage``).
        propagate_baggage: send the request's variants downstream as signed W3C baggage.
        visitor_cookie: the cookie holding fieldlab's ``visitor`` id.
        override_header: the header carrying signed override tokens (None: none).
        override_cookie: the cookie carrying signed override tokens (None: none).
        cache_headers: give a response whose code read a variant the ``Vary`` / ``Cache-Control: private``
            that keep shared caches from serving it to another unit; False when the app handles caching itself.
    """

    units: Mapping[str, Any] | None = None
    headers: Iterable[str] = ()
    attributes: Resolver | None = None
    unit_ids: str | None = None
    trust_baggage: bool | None = None
    propagate_baggage: bool = False
    visitor_cookie: str = DEFAULT_VISITOR_COOKIE
    override_header: str | None = DEFAULT_OVERRIDE_HEADER
    override_cookie: str | None = DEFAULT_OVERRIDE_COOKIE
    cache_headers: bool = True

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, in documentation order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def of(cls, given: Mapping[str, Any], where: str = "options", *, also: Iterable[str] = ()) -> Options:
        """Options from keyword arguments (or a settings dict); a misspelt name is a ConfigError with the fix.

        ``also`` lists names the caller handles itself (they are accepted and ignored here).
        """
        valid = (*cls.names(), *also)
        unknown = sorted(set(given) - set(valid))
        if unknown:
            close = [m for name in unknown for m in difflib.get_close_matches(name, valid, n=1)]
            fix = f"did you mean {', '.join(map(repr, close))}? " if close else ""
            raise ConfigError(where, f"unknown keys {unknown}", f"{fix}valid options: {', '.join(valid)}")
        return cls(**{k: v for k, v in given.items() if k in cls.names()})


class AdapterOptions(TypedDict, total=False):
    """:class:`Options` as keyword arguments (for ``**options: Unpack[AdapterOptions]``)."""

    units: Mapping[str, Any] | None
    headers: Iterable[str]
    attributes: Resolver | None
    unit_ids: str | None
    trust_baggage: bool | None
    propagate_baggage: bool
    visitor_cookie: str
    override_header: str | None
    override_cookie: str | None
    cache_headers: bool


@dataclasses.dataclass(frozen=True)
class Unit:
    """One compiled unit resolver: ``how`` is ``header``, ``cookie``, ``call``, ``visitor`` or ``request``.

    ``source`` says what the id came from, for caches (see :mod:`fieldlab._cache_headers`).
    """

    kind: str
    how: str
    name: str = ""
    fn: Resolver | None = None
    source: str = OPAQUE


def _compile_unit(kind: str, spec: Any, where: str) -> Unit:
    if callable(spec):
        return Unit(kind, "call", fn=spec)
    if isinstance(spec, str):
        how, sep, name = spec.partition(":")
        how = how.strip().lower()
        name = name.strip()
        if sep and name and how == "header":
            return Unit(kind, "header", name.lower(), source=header_source(name))
        if sep and name and how == "cookie":
            return Unit(kind, "cookie", name, source=COOKIE)
    raise ConfigError(
        f"{where}[{kind!r}]",
        f"cannot use {spec!r} as a unit resolver",
        'give a callable taking the request, "header:X-User-Id" or "cookie:NAME"',
    )


def _check(
    lab: Lab, units: Any, headers: Any, attributes: Any, visitor_cookie: Any, cache_headers: Any, where: str
) -> None:
    """Raise the ConfigError (field, problem, fix) of the first adapter argument that cannot work."""
    if not isinstance(lab, Lab):
        raise ConfigError(
            "lab",
            f"expected a fieldlab.Lab, got {type(lab).__name__}",
            "pass lab=Lab.from_file('experiments.toml') (or a Lab you built)",
        )
    if units is not None and not isinstance(units, Mapping):
        raise ConfigError(
            where,
            f"expected a mapping of unit kind to resolver, got {type(units).__name__}",
            'write units={"user": "header:X-User-Id"}',
        )
    if attributes is not None and not callable(attributes):
        raise ConfigError(
            "attributes", f"{attributes!r} is not callable", "pass a function taking the request and returning a dict"
        )
    if isinstance(headers, str):
        raise ConfigError("headers", "expected a list of header names, got one string", f'write headers=["{headers}"]')
    if not isinstance(cache_headers, bool):
        raise ConfigError(
            "cache_headers",
            f"{cache_headers!r} is not True or False",
            "write False when the app keeps variant pages out of shared caches itself, else True",
        )
    if not isinstance(visitor_cookie, str) or not re.match(r"^[A-Za-z0-9_.-]+$", visitor_cookie):
        raise ConfigError(
            "visitor_cookie", f"{visitor_cookie!r} is not a valid cookie name", "use letters, digits, '_', '.' or '-'"
        )


class AdapterConfig:
    """Everything an adapter needs per request, validated and precomputed once.

    The keyword arguments are those of :class:`Options`. ``framework_defaults``
    maps unit kinds to the framework's default resolver (e.g. Django's
    ``request.user``); explicit ``units`` win over them, and
    ``framework_sources`` says what each default reads (:data:`~fieldlab._cache_headers.COOKIE` for a
    cookie-kept session or login; anything else is opaque). ``where`` names the ``units`` field in errors.
    ``unit_hints`` says, per unit kind, how to wire it in this framework, for
    the warnings of :mod:`~fieldlab._request.wiring` (``adapter`` names the adapter in them).
    """

    def __init__(
        self,
        lab: Lab,
        *,
        units: Mapping[str, Any] | None = None,
        headers: Iterable[str] = (),
        attributes: Resolver | None = None,
        unit_ids: str | None = None,
        trust_baggage: bool | None = None,
        propagate_baggage: bool = False,
        visitor_cookie: str = DEFAULT_VISITOR_COOKIE,
        override_header: str | None = DEFAULT_OVERRIDE_HEADER,
        override_cookie: str | None = DEFAULT_OVERRIDE_COOKIE,
        cache_headers: bool = True,
        framework_defaults: Mapping[str, Resolver] | None = None,
        framework_sources: Mapping[str, str] | None = None,
        where: str = "units",
        unit_hints: Mapping[str, str] | None = None,
        adapter: str = "this adapter",
    ) -> None:
        _check(lab, units, headers, attributes, visitor_cookie, cache_headers, where)
        self.lab = lab
        self.recorder = telemetry.Recorder(lab, unit_ids)
        self.units: dict[str, Unit] = {k: _compile_unit(k, v, where) for k, v in (units or {}).items()}
        known_sources = framework_sources or {}
        self.defaults: dict[str, Unit] = {
            k: Unit(k, "call", fn=fn, source=known_sources.get(k, OPAQUE))
            for k, fn in (framework_defaults or {}).items()
        }
        self.cache_headers = cache_headers
        #: unit kinds nothing resolved yet, warned about once (see :mod:`fieldlab._request.wiring`)
        self.watch = UnitWatch(unit_hints or {}, self.defaults, adapter)
        #: unit kind -> where its id came from, for the kinds of the current plan (see plan())
        self.sources: Sources = Sources({})
        self.headers = tuple(h.strip().lower() for h in headers)
        self.attributes = attributes
        self.trust_baggage = bool(lab.settings.get("trust_baggage", False) if trust_baggage is None else trust_baggage)
        self.propagate_baggage = bool(propagate_baggage)
        self.visitor_cookie = visitor_cookie
        self.override_header = override_header.lower() if override_header else None
        self.override_cookie = override_cookie or None
        #: what a Cookie header holds when it carries the override cookie
        self.override_cookie_probe = f"{override_cookie}=" if override_cookie else None
        if (self.trust_baggage or self.propagate_baggage) and not lab.secret:
            _log.warning(
                "fieldlab: baggage needs a lab secret (lab.secret_env / FIELDLAB_SECRET); "
                "without one, fieldlab baggage is neither sent nor trusted"
            )
        # set by plan(), per configuration
        self._planned_for: object = None
        self._paused_for: object = None
        self._bandits_for: object = None
        self._plan: tuple[Unit, ...] = ()
        #: unit ids -> the evaluation every request with them shares (None: assignments depend on more)
        self.cache: PreparedCache | None = None
        #: the header that is the request's only unit when prepared evaluations are found by it alone
        self.single_header: str | None = None
        self.needs_request_object = attributes is not None
        self.needs_request_unit = False
        self.may_abort = False

    @property
    def override_env(self) -> str:
        """The override header's WSGI environ / Django META key ("" without one)."""
        return env_key(self.override_header) if self.override_header else ""

    def _unit_for(self, kind: str) -> Unit | None:
        """The resolver of a unit kind: the adapter's, else fieldlab's (visitor, request), else the framework's."""
        unit = self.units.get(kind)
        if unit is not None:
            return unit
        if kind == "visitor":
            return Unit(kind, "visitor", self.visitor_cookie, source=COOKIE)
        if kind == "request":
            return Unit(kind, "request")
        return self.defaults.get(kind)

    def plan(self) -> tuple[Unit, ...]:
        """The resolvers to run: one per unit kind the lab's experiments use (redone when the config changes)."""
        state = self.lab._state  # one snapshot: experiments and fault plan of the same configuration
        paused = self.lab._paused  # a guardrail pause or resume makes evaluations made before it stale
        bandits = self.lab._bandits  # so does a new bandit weights version
        if state is self._planned_for and paused is self._paused_for and bandits is self._bandits_for:
            return self._plan
        kinds = sorted({e.unit for e in state.experiments.values()})
        plan = [unit for unit in map(self._unit_for, kinds) if unit is not None]
        self._plan = tuple(plan)
        self.sources = Sources({unit.kind: unit.source for unit in plan})
        self.watch.planned(self.lab, kinds, {unit.kind: unit.how == "call" for unit in plan})
        # Without targeting and without per-request units, the assignments are a function of the
        # unit ids alone, so they (and their span attributes) are computed once per distinct ids.
        cacheable = "request" not in kinds and not any(e.targeting for e in state.experiments.values())
        self.cache = PreparedCache(state.version) if cacheable else None
        self.needs_request_object = self.attributes is not None or any(u.how == "call" for u in plan)
        self.needs_request_unit = any(u.how == "request" for u in plan)
        self.may_abort = HTTP_POINT in state.fault_plan.by_point
        only = plan[0] if len(plan) == 1 else None
        simple = cacheable and not self.headers and self.attributes is None
        self.single_header = only.name if simple and only is not None and only.how == "header" else None
        self._planned_for = state
        self._paused_for = paused
        self._bandits_for = bandits
        return self._plan
