"""The Lab: validated experiments, layers and holdouts, and the evaluation of them.

Evaluation order, each step with a reason (see :mod:`fieldlab._assignment`)::

    status -> signed override -> unit present -> holdout -> targeting -> layer -> traffic -> variant

``assign`` never raises: an internal failure returns "no variant, reason error",
is counted in ``lab.stats`` and logged once. A unit id that is not valid
Unicode text (a ``str`` holding a lone surrogate, which has no UTF-8 bytes to
hash) is no unit: no variant, reason ``no_unit``, counted in
``lab.stats["invalid_units"]``; it never reaches the C hash. Configuration problems raise
:class:`~fieldlab.errors.ConfigError` at construction, clearly.

A Lab built with :meth:`Lab.from_file` reloads its file through a watcher
(:mod:`fieldlab._watcher`): a thread that starts lazily, in the process that
first evaluates (so gunicorn ``--preload`` and other forking servers work), and
again in a forked child, and applies a changed file only once it is stable
(never half-written). A bad new file keeps the last good configuration and is
reported in ``lab.config_error``. A document without experiments never
replaces a config that has some (an empty or truncated file): that is a
``config_error``. Replace config files atomically all the same (write a
temporary file in the same directory, then rename it over the config).

Outcomes that do not depend on the unit are made once per experiment and
shared; a split outcome carries the unit's bucket, so it is made per
evaluation: memory stays bounded whatever the number of units seen.
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from . import _internal
from ._assignment import (
    CONCLUDED,
    ERROR,
    GUARDRAIL,
    HOLDOUT,
    LAYER,
    NO_UNIT,
    OVERRIDE,
    PAUSED,
    SPLIT,
    TARGETING,
    Assignment,
    bucket_outcome,
)
from ._fault_kinds import FaultPlan, compile_plan, state_path
from ._hashing import BUCKETS, bucket
from ._units import is_unit_text
from ._watcher import ConfigWatcher
from .config import (
    DEFAULT_STATE_POLL_INTERVAL,
    SETTINGS_KEYS,
    check_document,
    check_reload_interval,
    content_version,
    parse_bytes,
    parse_format,
    read_config_bytes,
    read_config_file,
)
from .control.canary_config import canaries_of
from .control.settings import GuardrailsConfig, parse_experiment_guardrails, parse_lab_guardrails
from .errors import ConfigError, suggest_names
from .experiments import Experiment, Holdout, Layer
from .overrides import VerifiedOverrides, make_token

__all__ = ["Lab"]

_log = logging.getLogger("fieldlab")
#: Every live Lab of the process (weakly held): fieldlab.testing refreshes them when it forces variants.
_LABS: weakref.WeakSet[Lab] = weakref.WeakSet()
_EMPTY: Mapping[str, Any] = MappingProxyType({})
DEFAULT_SECRET_ENV = "FIELDLAB_SECRET"
DEFAULT_RELOAD_INTERVAL = 5.0
#: Distinct unknown experiment keys named in a warning each; beyond it they are only counted.
UNKNOWN_KEYS_LOGGED = 256


class _Compiled:
    """One experiment, ready to evaluate.

    Every outcome that does not depend on the unit (paused, forced by an
    override, no unit, held out, not targeted, another layer's) is made once
    here and shared. A split outcome carries the unit's bucket, so
    :meth:`split` makes it per evaluation: nothing grows with the units seen.
    """

    __slots__ = (
        "key",
        "exp",
        "unit",
        "salt",
        "running",
        "status",
        "predicate",
        "layer_salt",
        "layer_lo",
        "layer_hi",
        "holdouts",
        "ranges",
        "forced",
        "fixed",
        "no_unit",
        "bad_unit",
        "not_targeted",
        "other_layer",
    )

    def __init__(self, exp: Experiment, layer: Layer | None, holdouts: Sequence[Holdout]) -> None:
        key = exp.key
        self.key, self.exp, self.unit, self.salt = key, exp, exp.unit, exp.salt
        self.status = exp.status
        self.running = exp.status == "running"
        self.predicate = exp._predicate
        self.layer_salt = layer.salt if layer else None
        self.layer_lo, self.layer_hi = exp.layer_range or (0, BUCKETS)
        #: (salt, threshold, outcome) of each holdout that covers this experiment
        self.holdouts = tuple(
            (h.salt, h.threshold, Assignment(key, None, None, HOLDOUT, None, h.key))
            for h in holdouts
            if h.threshold > 0
        )
        #: [lo, hi) bucket range, name and params of each variant
        self.ranges = tuple((lo, hi, v.name, v.params) for v, (lo, hi) in zip(exp.variants, exp._ranges, strict=False))
        self.forced = {v.name: Assignment(key, v.name, None, OVERRIDE, v.params) for v in exp.variants}
        if exp.status == "concluded":
            assert exp.winner is not None  # a concluded experiment names its winner (validated)
            win = exp.variant(exp.winner)
            self.fixed = Assignment(key, win.name, None, CONCLUDED, win.params)
        else:
            self.fixed = Assignment(key, None, None, PAUSED)
        self.no_unit = Assignment(key, None, None, NO_UNIT)
        #: the outcome of a unit id with no UTF-8 form: no_unit, as its own object so the Lab can count it
        self.bad_unit = Assignment(key, None, None, NO_UNIT)
        self.not_targeted = Assignment(key, None, None, TARGETING)
        self.other_layer = Assignment(key, None, None, LAYER)

    def split(self, b: int) -> Assignment:
        """The outcome of bucket ``b``: the variant whose range holds it, else outside the traffic share."""
        for lo, hi, name, params in self.ranges:
            if lo <= b < hi:
                return bucket_outcome(self.key, name, b, params)
        return bucket_outcome(self.key, None, b, _EMPTY)

    def evaluate(
        self, unit: Any, attributes: Mapping[str, Any] | None, overrides: Mapping[str, str] | None
    ) -> Assignment:
        """The evaluation order of :mod:`fieldlab._assignment`, step by step."""
        forced = self.forced.get(overrides[self.key]) if overrides and self.key in overrides else None
        if not self.running:
            return forced if forced is not None and self.status == "draft" else self.fixed
        if forced is not None:
            return forced
        if unit is None or unit == "":
            return self.no_unit
        if not isinstance(unit, str):
            unit = str(unit)
        if not unit.isascii() and not is_unit_text(unit):  # ASCII ids (most) skip the UTF-8 check
            return self.bad_unit  # a lone surrogate: no bytes to hash
        for salt, threshold, held in self.holdouts:
            if bucket(salt, unit) < threshold:
                return held
        if self.predicate is not None and not self.predicate(attributes or _EMPTY):
            return self.not_targeted
        if self.layer_salt is not None and not self.layer_lo <= bucket(self.layer_salt, unit) < self.layer_hi:
            return self.other_layer
        return self.split(bucket(self.salt, unit))


class _CompiledBandit(_Compiled):
    """A ``kind = "bandit"`` experiment: the split follows the weights version in force (``view``).

    ``view`` (a :class:`fieldlab.control.bandit_config.BanditView`) is version 0,
    from the config, until the Lab hands it the version its state store
    publishes; it is swapped whole (one attribute write), so an evaluation sees
    one version or the next, never a mix. Experiments of kind ``ab`` are plain
    :class:`_Compiled` s: labs without bandits pay nothing for them.
    """

    __slots__ = ("view",)

    def __init__(self, exp: Experiment, layer: Layer | None, holdouts: Sequence[Holdout]) -> None:
        from .control.bandit_config import view_of

        super().__init__(exp, layer, holdouts)
        self.view = view_of(exp)

    def split(self, b: int) -> Assignment:
        """The arm and period of bucket ``b`` under the version in force, else outside the (enrolled) traffic."""
        view = self.view
        got = view.assign(b)
        if got is None:
            return bucket_outcome(self.key, None, b, _EMPTY)
        _, _, name, params = self.ranges[got[0]]
        return bucket_outcome(self.key, name, b, params, got[1])


class _State:
    """One immutable, validated configuration: swapped whole on reload."""

    __slots__ = (
        "experiments",
        "layers",
        "holdouts",
        "compiled",
        "version",
        "settings",
        "faults",
        "source",
        "fault_plan",
        "guardrails",
        "state_url",
        "state_poll_interval",
        "canaries",
        "bandits",
    )

    def __init__(
        self,
        experiments: Sequence[Experiment],
        layers: Sequence[Layer],
        holdouts: Sequence[Holdout],
        settings: Mapping[str, Any],
        faults: Mapping[str, Any] | None,
        version: str | None,
        source: str | None,
        guardrails: Mapping[str, Any] | None = None,
        canaries: Any = None,
    ) -> None:
        _validate_together(experiments, layers, holdouts)
        # Fault entries, [faults] settings and the blast-radius cap (fieldlab.faults).
        self.fault_plan: FaultPlan = compile_plan(experiments, holdouts, settings, faults, source)
        # [guardrails] and each [experiments.guardrails], and the state store every process follows.
        self.guardrails, self.state_url, self.state_poll_interval = _guardrails_of(
            experiments, guardrails, settings, source
        )
        # [[canaries]] (fieldlab.control.canary_config): validated, their traffic inside the same cap.
        self.canaries = canaries_of(canaries, self.fault_plan, [e.key for e in experiments])
        self.experiments = MappingProxyType({e.key: e for e in experiments})
        self.layers = MappingProxyType({layer.key: layer for layer in layers})
        self.holdouts = MappingProxyType({h.key: h for h in holdouts})
        self.settings = MappingProxyType(dict(settings))
        self.faults = MappingProxyType(dict(faults or {}))
        self.source = source
        covering: dict[str, list[Holdout]] = {}
        for h in holdouts:
            for key in h.experiments:
                covering.setdefault(key, []).append(h)
        self.compiled = {
            e.key: (_CompiledBandit if e.kind == "bandit" else _Compiled)(
                e, self.layers.get(e.layer) if e.layer else None, covering.get(e.key, ())
            )
            for e in experiments
        }
        #: the bandit experiments' compiled forms, by key (empty without bandits: nothing to follow)
        self.bandits: Mapping[str, _CompiledBandit] = MappingProxyType(
            {k: c for k, c in self.compiled.items() if isinstance(c, _CompiledBandit)}
        )
        self.version = version or content_version(
            {
                "experiments": [e.to_dict() for e in experiments],
                "layers": [x.to_dict() for x in layers],
                "holdouts": [h.to_dict() for h in holdouts],
                "faults": dict(faults or {}),
                **({"guardrails": dict(guardrails)} if guardrails else {}),
                **({"canaries": [c.to_dict() for c in self.canaries]} if self.canaries else {}),
            }
        )


def _guardrails_of(
    experiments: Sequence[Experiment], doc: Mapping[str, Any] | None, settings: Mapping[str, Any], source: str | None
) -> tuple[GuardrailsConfig, str | None, float]:
    """The validated guardrails, the state store to follow (a Redis URL, an absolute path, or None) and its
    poll interval (``[lab] state_poll_interval``, default 1 s)."""
    lab = parse_lab_guardrails(doc)
    exps = {
        e.key: parse_experiment_guardrails(e.guardrails, f"{getattr(e, '_path', None) or e.key}.guardrails", lab)
        for e in experiments
    }
    url = state_path(source, settings)
    spec = settings.get("state")
    if url is None and isinstance(spec, str) and "://" in spec:
        url = spec.strip()
        if importlib.util.find_spec("redis") is None:
            raise ConfigError(
                "lab.state",
                f"{url!r} is a Redis store, and the redis package is not installed",
                "pip install 'fieldlab[redis]', or use a state file",
            )
    interval = float(settings.get("state_poll_interval", DEFAULT_STATE_POLL_INTERVAL))
    return GuardrailsConfig(lab, exps), url, interval


def _bandit_views(state: _State, snapshot: Any, current: Mapping[str, Any]) -> Mapping[str, Any]:
    """Set each bandit of ``state`` to the version ``snapshot`` publishes (version 0 without one); the views.

    A stored entry that does not fit the experiment (other arms, a broken
    document) is logged once and leaves the experiment on the version in
    force here (``current``) when that one still fits, else on version 0.
    """
    if not state.bandits:
        return _EMPTY
    from .control.bandit_config import EntryError, view_of

    entries = snapshot.bandits if snapshot is not None else {}
    views: dict[str, Any] = {}
    for key, c in state.bandits.items():
        entry = entries.get(key)
        try:
            view = view_of(c.exp, entry)
        except EntryError as exc:
            _internal.log_once(
                f"lab:bandit:{key}:{exc}",
                "fieldlab: the state's bandit entry of %r is not usable (%s); keeping the weights in force",
                key,
                exc,
            )
            old = current.get(key)
            view = old if old is not None and old.names == tuple(c.exp.variant_names) else view_of(c.exp)
        if c.view != view:
            c.view = view
        views[key] = c.view
    return MappingProxyType(views)


def _validate_together(experiments: Sequence[Experiment], layers: Sequence[Layer], holdouts: Sequence[Holdout]) -> None:
    """Rules that involve more than one object."""
    groups: tuple[tuple[str, Sequence[Experiment | Layer | Holdout]], ...] = (
        ("experiments", experiments),
        ("layers", layers),
        ("holdouts", holdouts),
    )
    _check_keys_and_salts(groups)
    _check_layers(experiments, layers)
    _check_holdouts(experiments, holdouts)


def _check_keys_and_salts(groups: tuple[tuple[str, Sequence[Experiment | Layer | Holdout]], ...]) -> None:
    """Keys unique per kind; salts hashable and unique across every kind (else two populations coincide)."""
    for kind, items in groups:
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            if item.key in seen:
                raise ConfigError(
                    f"{kind}[{i}].key",
                    f"duplicate key {item.key!r} (also {kind}[{seen[item.key]}])",
                    "give each one its own key",
                )
            seen[item.key] = i
    salts: dict[str, str] = {}
    for kind, items in groups:
        for i, item in enumerate(items):
            where = f"{kind}[{i}]"
            if not is_unit_text(item.salt):  # it is hashed with every unit: it must have UTF-8 bytes
                raise ConfigError(
                    f"{where}.salt" if item.salt != item.key else f"{where}.key",
                    f"{item.salt!r} is not valid Unicode text (it holds a lone surrogate), so it "
                    "has no UTF-8 bytes to hash",
                    "use plain text (for example ASCII letters, digits and '-')",
                )
            if item.salt in salts:
                raise ConfigError(
                    f"{where}.salt",
                    f"salt {item.salt!r} is also used by {salts[item.salt]}; the two "
                    "would draw identical populations, so their effects could not be separated",
                    "give each experiment, layer and holdout its own salt",
                )
            salts[item.salt] = f"{where} ({item.key!r})"


def _check_layers(experiments: Sequence[Experiment], layers: Sequence[Layer]) -> None:
    """Each experiment's layer is declared, and the experiments of one layer have disjoint ranges."""
    layer_keys = {layer.key for layer in layers}
    by_layer: dict[str, list[tuple[int, Experiment]]] = {}
    for i, e in enumerate(experiments):
        if e.layer is not None:
            if e.layer not in layer_keys:
                raise ConfigError(
                    f"experiments[{i}].layer",
                    f"unknown layer {e.layer!r}",
                    f"declare it under [[layers]] or use one of {sorted(layer_keys)}",
                )
            by_layer.setdefault(e.layer, []).append((i, e))
    for layer_key, members in by_layer.items():
        members.sort(key=lambda m: m[1].layer_range)  # type: ignore[arg-type, return-value]
        for (_, a), (j, b) in zip(members, members[1:], strict=False):
            if b.layer_range[0] < a.layer_range[1]:  # type: ignore[index]
                raise ConfigError(
                    f"experiments[{j}].layer_range",
                    f"{b.key!r} [{b.layer_range[0] / 100:g}, {b.layer_range[1] / 100:g}) overlaps "  # type: ignore[index]
                    f"{a.key!r} [{a.layer_range[0] / 100:g}, {a.layer_range[1] / 100:g}) in layer {layer_key!r}",  # type: ignore[index]
                    "give experiments in one layer disjoint ranges",
                )


def _check_holdouts(experiments: Sequence[Experiment], holdouts: Sequence[Holdout]) -> None:
    """A holdout covers declared experiments, all of one unit kind."""
    exp_by_key = {e.key: e for e in experiments}
    for i, h in enumerate(holdouts):
        kinds = set()
        for key in h.experiments:
            if key not in exp_by_key:
                raise ConfigError(
                    f"holdouts[{i}].experiments",
                    f"unknown experiment {key!r}",
                    f"use keys of declared experiments: {sorted(exp_by_key)}",
                )
            kinds.add(exp_by_key[key].unit)
        if len(kinds) > 1:
            raise ConfigError(
                f"holdouts[{i}].experiments",
                f"covers experiments with different unit kinds {sorted(kinds)}",
                "hold out experiments of one unit kind per holdout",
            )


def _build_from_doc(doc: Mapping[str, Any], version: str | None, source: str | None) -> _State:
    def items(name: str) -> list[Any]:
        value = doc.get(name) or []
        if not isinstance(value, list):
            raise ConfigError(name, f"expected a list, got {type(value).__name__}", f"write [[{name}]] tables")
        for i, item in enumerate(value):
            if not isinstance(item, Mapping):
                raise ConfigError(f"{name}[{i}]", "expected a table/object", f"write each entry as a [[{name}]] table")
        return value

    def construct(cls: Any, data: Mapping[str, Any], path: str, required: Sequence[str]) -> Any:
        fields = _fields(cls)
        unknown = [name for name in data if name not in fields]
        if unknown:
            shown = ", ".join(repr(name) for name in unknown)
            raise ConfigError(
                path,
                f"unknown or misplaced field{'s' * (len(unknown) > 1)} {shown}",
                suggest_names(unknown, fields, f"{cls.__name__.lower()} fields"),
            )
        for field in required:
            if field not in data:
                raise ConfigError(f"{path}.{field}", "is missing", f"add {field} = ...")
        try:
            return cls(**data, _path=path)
        except TypeError as exc:
            raise ConfigError(
                path, f"unknown or misplaced field ({exc})", "check the field names in the README's config reference"
            ) from None

    experiments = [
        construct(Experiment, e, f"experiments[{i}]", ("key", "variants")) for i, e in enumerate(items("experiments"))
    ]
    layers = [construct(Layer, x, f"layers[{i}]", ("key",)) for i, x in enumerate(items("layers"))]
    holdouts = [
        construct(Holdout, h, f"holdouts[{i}]", ("key", "percent", "experiments"))
        for i, h in enumerate(items("holdouts"))
    ]
    settings = doc.get("lab") or {}
    if not isinstance(settings, Mapping):
        raise ConfigError("lab", "expected a table/object", "write a [lab] table")
    unknown = set(settings) - SETTINGS_KEYS
    if unknown:
        raise ConfigError(
            "lab",
            f"unknown settings {sorted(unknown, key=str)}",
            suggest_names(sorted(unknown, key=str), SETTINGS_KEYS, "settings"),
        )
    faults = doc.get("faults")
    if faults is not None and not isinstance(faults, Mapping):
        raise ConfigError("faults", "expected a table/object", "write a [faults] table with enabled = true")
    return _State(
        experiments, layers, holdouts, settings, faults, version, source, doc.get("guardrails"), doc.get("canaries")
    )


_FIELDS: dict[type, frozenset[str]] = {}


def _fields(cls: type) -> frozenset[str]:
    """The config fields ``cls`` takes: its constructor's keyword parameters, less the private ones."""
    fields = _FIELDS.get(cls)
    if fields is None:
        params = inspect.signature(cls).parameters.values()
        fields = _FIELDS[cls] = frozenset(
            p.name for p in params if not p.name.startswith("_") and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        )
    return fields


def _after_fork_in_child() -> None:
    """Threads do not survive fork: each Lab that follows a state store restarts its poller at its first evaluation."""
    for lab in list(_LABS):
        lab._poller_pending = lab._follows_store()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Lab:
    """Experiments, layers and holdouts, ready to assign.

    >>> lab = Lab([Experiment("checkout-redesign", {"control": 1, "treatment": 1})])
    >>> lab.assign("checkout-redesign", "alice").variant
    'control'
    """

    def __init__(
        self,
        experiments: Iterable[Experiment] = (),
        layers: Iterable[Layer] = (),
        holdouts: Iterable[Holdout] = (),
        *,
        secret: str | bytes | None = None,
        faults: Mapping[str, Any] | None = None,
        settings: Mapping[str, Any] | None = None,
        guardrails: Mapping[str, Any] | None = None,
    ) -> None:
        state = _State(list(experiments), list(layers), list(holdouts), settings or {}, faults, None, None, guardrails)
        self._init(state, secret, path=None, reload_interval=0)

    def _init(self, state: _State, secret: str | bytes | None, path: str | None, reload_interval: float) -> None:
        self._secret_arg = secret
        self._state = state
        self._path = path
        self._reload_interval = reload_interval
        #: (mtime_ns, size) of the file in force, so a poll reads the file only when it changed
        self._file_sig: tuple[int, int] | None = None
        #: started on the first evaluation in each process (see :mod:`fieldlab._watcher`)
        self._watcher = ConfigWatcher(self, reload_interval) if path is not None and reload_interval > 0 else None
        self._lock = threading.Lock()
        self._listeners: list[Callable[[Lab], object]] = []
        _LABS.add(self)
        self._unknown_logged: set[str] = set()
        self._unknown_overflow = False
        self.config_error: str | None = None
        #: ``invalid_units`` counts evaluations (``assign``) and requests (``assign_all``) whose unit id was
        #: not valid Unicode text; each such unit got no variant, reason ``no_unit``.
        self.stats: dict[str, int] = {
            "errors": 0,
            "reloads": 0,
            "reload_failures": 0,
            "overrides_rejected": 0,
            "invalid_units": 0,
            "unknown_experiments": 0,
        }
        # The lab state this Lab follows (pauses, kills; fieldlab.control.runtime): the last snapshot, and
        # experiment -> variants paused (empty unless something is paused: the hot path tests only that).
        self._control: Any = None
        self._paused: Mapping[str, frozenset[str]] = _EMPTY
        #: experiment -> the bandit weights version in force here (empty without bandits); replaced whole
        #: when a version changes, so the request path's prepared evaluations know they are stale
        self._bandits: Mapping[str, Any] = _bandit_views(state, None, _EMPTY)
        self._following: tuple[str | None, float] | None = None
        #: the state poller's thread starts at the first evaluation in each process, as the file watcher
        self._poller_pending = False
        self._follow_store()

    # ----------------------------------------------------------------- building
    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], *, secret: str | bytes | None = None, source: str = "<dict>") -> Lab:
        """A Lab from plain data shaped like a config file."""
        try:
            try:
                version = content_version(doc)
            except UnicodeEncodeError:  # a lone surrogate: name its field path rather than show a traceback
                check_document(doc)
                raise ConfigError(
                    "(document)",
                    "a string holds a lone surrogate escape, which is not a Unicode character",
                    "write the character itself rather than an escape",
                ) from None
            state = _build_from_doc(doc, version, source)
        except ConfigError as exc:
            raise exc.with_source(source) from None
        lab = cls.__new__(cls)
        lab._init(state, secret, path=None, reload_interval=0)
        return lab

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], *, secret: str | bytes | None = None, reload_interval: float | None = None
    ) -> Lab:
        """A Lab from a TOML/JSON/YAML file, reloaded every ``reload_interval`` seconds (0: never).

        The interval defaults to the file's ``lab.reload_interval``, else 5 s.
        """
        path = os.fspath(path)
        state, sig = cls._load(path)
        if reload_interval is None:
            reload_interval = float(state.settings.get("reload_interval", DEFAULT_RELOAD_INTERVAL))
        else:  # the same range as the file's setting: NaN, infinity or 1e308 would stop the watcher
            reload_interval = check_reload_interval(reload_interval, "reload_interval")
        lab = cls.__new__(cls)
        lab._init(state, secret, path=path, reload_interval=reload_interval)
        lab._file_sig = sig
        return lab

    def _state_from(self, path: str, data: bytes) -> _State:
        """The state a reload would put in force from ``data``; ConfigError when it must not replace this one."""
        doc = parse_bytes(data, parse_format(path), path)
        if doc.get("experiments") is None and self._state.experiments:
            raise ConfigError(
                "experiments",
                f"the new file declares no experiments, while the config in force has "
                f"{len(self._state.experiments)}; an empty or partly written file is never applied",
                "to remove every experiment write experiments = [] explicitly; replace config files "
                "atomically (write a temporary file, then rename it over the config)",
                source=path,
            )
        try:
            return _build_from_doc(doc, content_version(doc), path)
        except ConfigError as exc:
            raise exc.with_source(path) from None

    @staticmethod
    def _load(path: str) -> tuple[_State, tuple[int, int]]:
        try:  # stat before reading: a change during the read shows up at the next poll
            st = os.stat(path)
        except OSError as exc:
            raise ConfigError(
                "(file)", f"cannot read: {exc.strerror}", "check the path and permissions", source=path
            ) from None
        doc, _raw = read_config_file(path)
        try:
            state = _build_from_doc(doc, content_version(doc), path)
        except ConfigError as exc:
            raise exc.with_source(path) from None
        return state, (st.st_mtime_ns, st.st_size)

    # --------------------------------------------------------------- properties
    @property
    def experiments(self) -> Mapping[str, Experiment]:
        return self._state.experiments

    @property
    def layers(self) -> Mapping[str, Layer]:
        return self._state.layers

    @property
    def holdouts(self) -> Mapping[str, Holdout]:
        return self._state.holdouts

    @property
    def version(self) -> str:
        """Content hash of the configuration in force."""
        return self._state.version

    @property
    def settings(self) -> Mapping[str, Any]:
        return self._state.settings

    @property
    def fault_settings(self) -> Mapping[str, Any]:
        return self._state.faults

    @property
    def path(self) -> str | None:
        return self._path

    @property
    def reload_interval(self) -> float:
        """Seconds between checks of the config file (0: not watched); the kill switch checks at least once a second."""
        return self._reload_interval

    @property
    def kill_state_file(self) -> str | None:
        """The kill-switch state file (``lab.state_file``, else ``<config>.state.json``); None without either."""
        return self._state.fault_plan.state_file

    @property
    def secret(self) -> bytes | None:
        """The signing secret: the constructor's, else the env var the config names, else FIELDLAB_SECRET."""
        if self._secret_arg:
            s = self._secret_arg
        else:
            s = os.environ.get(str(self._state.settings.get("secret_env", DEFAULT_SECRET_ENV)), "")
        if not s:
            return None
        return s.encode("utf-8") if isinstance(s, str) else s

    # --------------------------------------------------------------- evaluation
    def assign(
        self,
        key: str,
        unit: Any,
        attributes: Mapping[str, Any] | None = None,
        overrides: VerifiedOverrides | Iterable[str] | None = None,
    ) -> Assignment:
        """The variant of experiment ``key`` for ``unit``; never raises.

        ``attributes`` feed targeting. ``overrides`` are either raw override
        tokens (verified here) or a :class:`VerifiedOverrides` already made by
        :meth:`verify_overrides`.
        """
        if self._watcher is not None and not self._watcher.started:
            self._watcher.ensure_started()
        if self._poller_pending:
            self._start_poller()
        try:
            if overrides is not None and not isinstance(overrides, VerifiedOverrides):
                overrides = self.verify_overrides(overrides)
            c = self._state.compiled.get(key)
            if c is None:  # a typo or a removed experiment: the default path, reported
                self.stats["errors"] += 1
                self._unknown_key(key)
                return Assignment(key, None, None, ERROR)
            a = c.evaluate(unit, attributes, overrides)
            if a is c.bad_unit:
                self._invalid_unit()
            if self._paused:
                return self._guardrail(a)
            return a
        except Exception as exc:
            return self._failed(key, exc)

    def assign_all(
        self,
        units: Mapping[str, Any],
        attributes: Mapping[str, Any] | None = None,
        *,
        overrides: VerifiedOverrides | Iterable[str] | None = None,
    ) -> dict[str, Assignment]:
        """Evaluate every experiment for a request's units (``{"user": "alice", ...}``); never raises."""
        return self.assign_all_with_version(units, attributes, overrides=overrides)[1]

    def assign_all_with_version(
        self,
        units: Mapping[str, Any],
        attributes: Mapping[str, Any] | None = None,
        *,
        overrides: VerifiedOverrides | Iterable[str] | None = None,
        unit_kind: str | None = None,
    ) -> tuple[str, dict[str, Assignment]]:
        """:meth:`assign_all` and the version of the configuration that made those assignments.

        Both come from one snapshot of the configuration, so a reload between
        reading :attr:`version` and evaluating can never label assignments with
        another config's version. With ``unit_kind``, only the experiments of
        that unit kind are evaluated. Never raises.
        """
        state = self._state  # read once: a reload swaps it whole
        if self._watcher is not None and not self._watcher.started:
            self._watcher.ensure_started()
        if self._poller_pending:
            self._start_poller()
        paused = self._paused
        if overrides is not None and not isinstance(overrides, VerifiedOverrides):
            overrides = self.verify_overrides(overrides)
        out: dict[str, Assignment] = {}
        invalid = False
        for key, c in state.compiled.items():
            if unit_kind is not None and c.unit != unit_kind:
                continue
            try:
                out[key] = a = c.evaluate(units.get(c.unit), attributes, overrides)
            except Exception as exc:
                out[key] = self._failed(key, exc)
            else:
                invalid = invalid or a is c.bad_unit
        if invalid:  # counted once per request
            self._invalid_unit()
        if paused:
            for key in paused:
                drawn = out.get(key)
                if drawn is not None:
                    out[key] = self._guardrail(drawn, paused)
        return state.version, out

    def verify_overrides(self, tokens: Iterable[str]) -> VerifiedOverrides:
        """Check override tokens against the secret; bad ones are counted and dropped."""
        try:
            result = VerifiedOverrides.from_tokens(self.secret, tokens)
        except Exception:
            return VerifiedOverrides()
        if result.rejected:
            self.stats["overrides_rejected"] += result.rejected
        return result

    def make_token(self, experiment: str, variant: str, ttl_seconds: float) -> str:
        """A signed override token (see :mod:`fieldlab.overrides`); ConfigError naming the argument when unknown."""
        exp = self.experiments.get(experiment)
        if exp is None:
            raise ConfigError(
                "experiment", f"unknown experiment {experiment!r}", f"use one of {sorted(self.experiments)}"
            )
        if variant not in exp.variant_names:
            raise ConfigError(
                "variant", f"unknown variant {variant!r} of {experiment!r}", f"use one of {exp.variant_names}"
            )
        return make_token(self.secret or b"", experiment, variant, ttl_seconds)

    def _failed(self, key: str, exc: BaseException) -> Assignment:
        """An internal failure while evaluating ``key``: reason error, counted in ``stats["errors"]``, logged once."""
        self.stats["errors"] += 1
        _internal.log_once(
            f"lab:error:{key!r:.128}",
            "fieldlab: assigning %r failed (%r); using the default path",
            key,
            exc,
            exc_info=True,
        )
        return Assignment(key, None, None, ERROR)

    def _unknown_key(self, key: Any) -> None:
        """Report code asking for an experiment the config does not have (a typo, or a removed experiment).

        Counted in ``stats["unknown_experiments"]`` on every read, and logged at WARNING on the
        ``fieldlab`` logger once per key, with the closest configured key. At most
        ``UNKNOWN_KEYS_LOGGED`` distinct keys are remembered and named, so a flood of
        random keys costs bounded memory; later ones are only counted. Never raises.
        """
        try:
            self.stats["unknown_experiments"] += 1
            logged = self._unknown_logged
            key = key[:128] if isinstance(key, str) else repr(key)[:128]  # bounded memory per key too
            if key in logged:
                return
            if len(logged) >= UNKNOWN_KEYS_LOGGED:
                if not self._unknown_overflow:  # one last line, then silence
                    self._unknown_overflow = True
                    _log.warning(
                        "fieldlab: more than %d distinct unknown experiment keys; further ones are only "
                        "counted in lab.stats['unknown_experiments']",
                        UNKNOWN_KEYS_LOGGED,
                    )
                return
            logged.add(key)
            known = list(self._state.experiments)
            close = difflib.get_close_matches(key, known, n=1) if known else []
            hint = f"did you mean {close[0]!r}?" if close else f"the config has {len(known)} experiment(s)"
            _log.warning("fieldlab: unknown experiment %r (%s); using the default path", key, hint)
        except Exception:  # reporting a mistake must not become one
            pass

    def _invalid_unit(self) -> None:
        self.stats["invalid_units"] += 1
        _internal.log_once(
            "lab:invalid_unit",
            "fieldlab: a unit id is not valid Unicode text (a lone surrogate, "
            "e.g. bytes that are not UTF-8); it gets no variant (reason no_unit). Counted in "
            "lab.stats['invalid_units']",
        )

    # --------------------------------------------------------------- guardrails
    # The hook of fieldlab.control: the state poller hands each new snapshot to _follow_state (from its
    # thread); evaluation reads self._paused, which is empty unless a variant is paused.
    @property
    def paused_variants(self) -> Mapping[str, frozenset[str]]:
        """Experiment -> the variants the state store has paused here (their units get control)."""
        return self._paused

    @property
    def state_snapshot(self) -> Any:
        """The last :class:`fieldlab.control.state.Snapshot` of the followed state store (None: none followed)."""
        return self._control

    def _follow_store(self, start: bool = False) -> None:
        """Follow the state store the config in force names (again after a reload that changed it).

        ``start``: start the poller thread now (else at the first evaluation)."""
        state = self._state
        key = (state.state_url, state.state_poll_interval)
        if key == self._following:
            return
        from .control import runtime
        from .control import state as control_state

        runtime.unfollow(self)
        self._following = key
        self._control = None
        if state.state_url is None:
            self._apply_pauses()
            if state.bandits:
                with self._lock:
                    self._apply_bandits(state)
            return
        try:
            runtime.follow(self, state.state_url, state.state_poll_interval, start=start)
            if not start:  # the poller starts at the first evaluation, as the watcher
                self._poller_pending = True
        except Exception as exc:  # a store that cannot even be opened: fail closed, as an unreadable one
            _log.error("fieldlab: cannot follow the lab state %s (%s); ALL faults are halted", state.state_url, exc)
            self._follow_state(control_state.Snapshot(None, "error", str(exc)))

    def _follows_store(self) -> bool:
        return self._following is not None and self._following[0] is not None

    def _follow_state(self, snapshot: Any) -> None:
        """Take a new state snapshot (called by the poller thread, or at start): swap the paused and bandit views."""
        first = self._control is None
        self._control = snapshot
        self._apply_pauses(logging.INFO if first else logging.WARNING)
        if self._state.bandits:
            with self._lock:
                self._apply_bandits(self._state)

    @property
    def bandit_views(self) -> Mapping[str, Any]:
        """Bandit experiment -> the weights version in force here
        (:class:`fieldlab.control.bandit_config.BanditView`: version, weights, assignment table).

        Like an evaluation, the first read starts following the state store (one bounded read)."""
        if self._poller_pending:
            self._start_poller()
        return self._bandits

    def _apply_bandits(self, state: _State) -> None:
        """Hand ``state``'s bandit experiments the versions of the last snapshot; with ``_lock`` held."""
        views = _bandit_views(state, self._control, self._bandits)
        if views == self._bandits:
            return
        changed = [f"{k} v{v.version}" for k, v in sorted(views.items()) if self._bandits.get(k) != v]
        self._bandits = views
        if changed:
            _log.info("fieldlab: bandit weights in force: %s", ", ".join(changed))

    def _apply_pauses(self, level: int = logging.WARNING) -> None:
        snapshot = self._control
        with self._lock:
            state = self._state
            found: dict[str, set[str]] = {}
            for key, variant in snapshot.paused if snapshot is not None else ():
                exp = state.experiments.get(key)
                if exp is not None and variant != exp.control and variant in exp.variant_names:
                    found.setdefault(key, set()).add(variant)
            paused = {key: frozenset(vs) for key, vs in found.items()}
            if paused == dict(self._paused):
                return
            self._paused = MappingProxyType(paused) if paused else _EMPTY
        _log.log(
            level,
            "fieldlab: paused by the guardrails: %s",
            ", ".join(f"{k}/{v}" for k, vs in sorted(paused.items()) for v in sorted(vs)) or "nothing",
        )

    def _guardrail(self, a: Assignment, paused: Mapping[str, frozenset[str]] | None = None) -> Assignment:
        """``a``, or control with reason ``guardrail`` when the split drew a paused variant."""
        names = (self._paused if paused is None else paused).get(a.experiment)
        if not names or a.reason != SPLIT or a.variant not in names:
            return a
        exp = self._state.experiments.get(a.experiment)
        if exp is None:
            return a
        return Assignment(
            a.experiment,
            exp.control,
            a.bucket,
            GUARDRAIL,
            exp.variant(exp.control).params,
            paused=a.variant,
            period=a.period,
        )

    # ------------------------------------------------------------------ reload

    def reload(self) -> bool:
        """Re-read the file now if it changed. True when a new config took effect.

        A file that fails to load keeps the last good config; the error is in
        ``config_error`` (and logged) until a good file replaces it. Unlike the
        watcher, this reads the file at once: call it after replacing the file
        atomically (e.g. from a deploy hook).
        """
        read = self._read_changed_file()
        return read is not None and self._apply_file(*read)

    def _read_changed_file(self) -> tuple[tuple[int, int], bytes] | None:
        """The file's signature and bytes, or None when it is unchanged (or unreadable: reported here)."""
        if self._path is None:
            return None
        try:  # stat before reading: a change during the read shows up at the next poll
            st = os.stat(self._path)
            sig = (st.st_mtime_ns, st.st_size)
            if sig == self._file_sig and self.config_error is None:
                return None
            return sig, read_config_bytes(self._path)
        except OSError as exc:
            with self._lock:
                self._reload_failed(f"{self._path}: cannot read: {exc.strerror}", None)
            return None

    def _apply_file(self, sig: tuple[int, int], data: bytes) -> bool:
        """Put the config in ``data`` in force, or keep the current one and report why; never raises."""
        assert self._path is not None
        with self._lock:
            try:
                state = self._state_from(self._path, data)
            except ConfigError as exc:
                return self._reload_failed(str(exc), sig)
            except Exception as exc:  # never let a reload break the lab or end the watcher
                return self._reload_failed(f"{self._path}: {exc!r}", None)
            self._file_sig = sig
            changed = state.version != self._state.version
            if state.bandits or self._bandits:  # the store's versions before the new config serves a request
                self._apply_bandits(state)
            self._state = state
            if self.config_error is not None:
                _log.warning("fieldlab: %s is valid again; config %s in force", self._path, state.version)
            self.config_error = None
            if changed:
                self.stats["reloads"] += 1
                _log.info("fieldlab: loaded config %s from %s", state.version, self._path)
        if changed:
            self._follow_store(start=True)
            self._apply_pauses()
            self._notify_reloaded()
        return changed

    def on_reload(self, callback: Callable[[Lab], object]) -> None:
        """Call ``callback(lab)`` after each reload that changed the config in force.

        Integrations use it to tell their own caches or SDKs (the OpenFeature provider emits
        a configuration-changed event). A failing callback is counted and logged once, never raised.
        """
        self._listeners.append(callback)

    def _notify_reloaded(self) -> None:
        for callback in list(self._listeners):
            try:
                callback(self)
            except Exception:  # a listener must not stop the watcher
                _internal.failed(
                    "lab",
                    "reload_listener_errors",
                    "reload_listener",
                    "fieldlab: a reload listener failed; the new config is in force",
                )

    def _reload_failed(self, message: str, sig: tuple[int, int] | None) -> bool:
        """Keep the config in force and report ``message`` (once while it stays the same); with ``_lock`` held."""
        if message != self.config_error:
            self.stats["reload_failures"] += 1
            _log.error("fieldlab: keeping config %s; the new file is invalid: %s", self._state.version, message)
        self.config_error = message
        if sig is not None:
            self._file_sig = sig
        return False

    def _start_poller(self) -> None:
        """Start (or, in a forked child, restart) the state poller this Lab follows."""
        self._poller_pending = False
        if self._follows_store():
            from .control import runtime

            runtime.start(self)

    def close(self) -> None:
        """Stop watching the file (the watcher also ends when the Lab is collected)."""
        if self._watcher is not None:
            self._watcher.close()
        if self._follows_store():
            from .control import runtime

            runtime.unfollow(self)
            self._following = (None, 0.0)

    def __repr__(self) -> str:
        return f"<Lab {len(self.experiments)} experiments, config {self.version}>"
