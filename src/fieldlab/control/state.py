"""The lab state every process follows: what is paused, whose faults are halted, and why.

One document, one interface (:class:`StateStore`), two backends chosen by a URL:

* a **JSON file** (``state.json``, ``file:///abs/path.json``): the embedded
  default. Written atomically (a temporary file beside it, fsynced, then
  ``os.replace``) under an exclusive ``flock`` on ``<file>.lock`` so two writers
  never lose an update; readers see the old or the new document, never half.
* **Redis** (``redis://host:port/db``, ``rediss://`` for TLS, ``?key=NAME`` to
  share one server between labs) for a fleet on many hosts: the document in one
  key and its sequence number in ``<key>:seq``, updated in one optimistic
  transaction (``WATCH``/``MULTI``), so pollers read a cheap counter every
  second and fetch the document only when it changed.

The document keeps the kill switch's shape, so today's ``<config>.state.json``
is read as it is and an old reader still sees the kills::

    {"version": 2, "seq": 42, "updated_at": "2026-12-04T20:31:07.123Z",
     "all": null,                                    # faults halted everywhere (who, why), or null
     "experiments": {"slow-db": {"at": ..., "by": "alice", "reason": "INC-42", "cause": "operator"}},
     "paused": {"checkout": {"one-page": {"at": ..., "by": "fieldlab-controller@host", "cause": "guardrail",
                                          "reason": "error burn 1h/5m", "seq": 41}}},
     "alerts": {},                                   # action = "alert": reported, nothing changes
     "history": [{"seq": 41, "action": "pause", ...}],   # the last HISTORY_LIMIT decisions, oldest first
     "report": {...},                                # the controller's last round (burn rates, budget)
     "canaries": {...},                              # the sick canaries (fieldlab.control.canary_controller)
     "bandits": {"hero-banner": {"arms": [...], "version": 3, "weights_bp": [...], "periods": [...]}}}

A :class:`Decision` is what changes it (pause, resume, alert, halt_faults,
resume_faults), with who or what decided, when, why and the evidence.
Applying one is a pure function (:func:`apply_decision`); a decision that
changes nothing (pausing a paused variant) is not written, so the history
holds changes only.

In a request process a :class:`StatePoller` reads the store from a background
thread (default every second, bounded socket timeouts) and publishes an
immutable :class:`Snapshot`; the request path only reads that snapshot, an
attribute lookup and a set membership. A store that goes away leaves the last
known state in force (status ``stale``); a state that has never been read, or
a document that cannot be parsed, sets ``halt_faults`` (status ``error``), as
the kill switch fails closed today.

This module needs neither numpy nor a web framework (it runs in every worker).
"""

from __future__ import annotations

import abc
import datetime as _dt
import json
import logging
import os
import socket
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .._files import write_atomically
from ..errors import FieldLabError

__all__ = [
    "ACTIONS",
    "CAUSES",
    "HISTORY_LIMIT",
    "FORMAT_VERSION",
    "Mark",
    "Decision",
    "LabState",
    "apply_decision",
    "StateStore",
    "JsonFileStore",
    "RedisStore",
    "open_store",
    "StateStoreError",
    "StateFormatError",
    "Snapshot",
    "StatePoller",
    "decider_name",
    "iso_time",
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_TIMEOUT",
]

_log = logging.getLogger("fieldlab.control")

#: What a decision does.
ACTIONS = ("pause", "resume", "alert", "halt_faults", "resume_faults")
#: Why: a guardrail SLO burn, a non-inferiority metric, the experimentation budget, a degraded
#: environment (control burns too), or a person.
CAUSES = ("guardrail", "metric", "budget", "environment", "operator")
#: Decisions kept in the document (oldest dropped first).
HISTORY_LIMIT = 200
FORMAT_VERSION = 2
DEFAULT_POLL_INTERVAL = 1.0
#: Socket timeout (connect and read) of a store operation, seconds.
DEFAULT_TIMEOUT = 0.5


class StateStoreError(FieldLabError):
    """The store cannot be reached or written (the message names the store and the fix)."""


class StateFormatError(StateStoreError, ValueError):
    """The store answered, but its document is not a fieldlab state."""


def iso_time(t: float | None = None) -> str:
    """``t`` (seconds since the epoch; now when None) as the state document writes times: UTC, milliseconds."""
    t = time.time() if t is None else t
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def decider_name() -> str:
    """Who is deciding, for the record: ``fieldlab-controller@<host>:<pid>``."""
    return f"fieldlab-controller@{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Mark:
    """A pause, halt or alert in force: when, by whom, why (``cause`` and words), and the decision's sequence."""

    at: str
    by: str
    cause: str = "operator"
    reason: str = ""
    seq: int = 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"at": self.at, "by": self.by, "cause": self.cause}
        if self.reason:
            out["reason"] = self.reason
        if self.seq:
            out["seq"] = self.seq
        return out

    @classmethod
    def from_json(cls, doc: Any) -> Mark:
        if not isinstance(doc, Mapping):  # the kill switch wrote {} or a bare reason in old files
            return cls(at="?", by="?", reason=str(doc) if doc else "")
        seq = doc.get("seq", 0)
        return cls(
            at=str(doc.get("at", "?")),
            by=str(doc.get("by", "?")),
            cause=str(doc.get("cause", "operator")),
            reason=str(doc.get("reason", "") or ""),
            seq=seq if isinstance(seq, int) else 0,
        )


@dataclass(frozen=True)
class Decision:
    """One decision: ``action`` on ``experiment``/``variant`` (None: all), with its cause, author, time and evidence."""

    action: str
    experiment: str | None = None
    variant: str | None = None
    cause: str = "operator"
    reason: str = ""
    by: str = "?"
    at: str = ""
    evidence: Mapping[str, Any] = field(default_factory=dict)
    seq: int = 0

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r}; use one of {', '.join(ACTIONS)}")
        if self.cause not in CAUSES:
            raise ValueError(f"unknown cause {self.cause!r}; use one of {', '.join(CAUSES)}")
        if self.action in ("pause", "alert") and (self.experiment is None or self.variant is None):
            raise ValueError(f"{self.action} needs an experiment and a variant")
        if self.action == "resume" and self.experiment is None:
            raise ValueError("resume needs an experiment")

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "action": self.action,
            "experiment": self.experiment,
            "variant": self.variant,
            "cause": self.cause,
            "reason": self.reason,
            "by": self.by,
            "at": self.at,
            "evidence": dict(self.evidence),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Decision:
        return cls(
            action=str(doc["action"]),
            experiment=doc.get("experiment"),
            variant=doc.get("variant"),
            cause=str(doc.get("cause", "operator")),
            reason=str(doc.get("reason", "")),
            by=str(doc.get("by", "?")),
            at=str(doc.get("at", "")),
            evidence=dict(doc.get("evidence") or {}),
            seq=int(doc.get("seq", 0)),
        )

    def mark(self, seq: int) -> Mark:
        return Mark(self.at or iso_time(), self.by, self.cause, self.reason, seq)


def _marks(doc: Any, what: str) -> dict[str, Mark]:
    if doc is None:
        return {}
    if not isinstance(doc, Mapping):
        raise StateFormatError(f"{what}: expected an object, got {type(doc).__name__}")
    return {str(k): Mark.from_json(v) for k, v in doc.items()}


def _nested(doc: Any, what: str) -> dict[str, dict[str, Mark]]:
    if doc is None:
        return {}
    if not isinstance(doc, Mapping):
        raise StateFormatError(f"{what}: expected an object, got {type(doc).__name__}")
    return {str(k): _marks(v, f"{what}.{k}") for k, v in doc.items()}


def _nested_json(table: Mapping[str, Mapping[str, Mark]]) -> dict[str, dict[str, Any]]:
    return {e: {v: m.to_json() for v, m in sorted(vs.items())} for e, vs in sorted(table.items()) if vs}


@dataclass(frozen=True)
class LabState:
    """The whole state document (see the module docstring); immutable, replaced on every write."""

    seq: int = 0
    updated_at: str | None = None
    all: Mark | None = None
    killed: Mapping[str, Mark] = field(default_factory=dict)
    paused: Mapping[str, Mapping[str, Mark]] = field(default_factory=dict)
    alerts: Mapping[str, Mapping[str, Mark]] = field(default_factory=dict)
    history: tuple[Decision, ...] = ()
    report: Mapping[str, Any] = field(default_factory=dict)
    #: The sick canaries' states by key (:meth:`fieldlab.control.canary.CanaryState.to_dict`): doses, weights,
    #: bracket and decisions, written by the canary controller and read by every process's poller.
    canaries: Mapping[str, Any] = field(default_factory=dict)
    #: The bandits' published weights by experiment key (``arms``, ``version``, ``weights_bp``, ``at``,
    #: ``reason``, ``p_best``, ``periods``): written by :mod:`fieldlab.control.bandit_controller`, read by every
    #: process's Lab (:func:`fieldlab.control.bandit_config.view_of`) and by the analysis of each period.
    bandits: Mapping[str, Any] = field(default_factory=dict)

    def is_paused(self, experiment: str, variant: str) -> bool:
        return variant in self.paused.get(experiment, {})

    def faults_halted(self, experiment: str) -> bool:
        return self.all is not None or experiment in self.killed

    def to_json(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "seq": self.seq,
            "updated_at": self.updated_at,
            "all": self.all.to_json() if self.all else None,
            "experiments": {k: m.to_json() for k, m in sorted(self.killed.items())},
            "paused": _nested_json(self.paused),
            "alerts": _nested_json(self.alerts),
            "history": [d.to_json() for d in self.history],
            "report": dict(self.report),
            **({"canaries": dict(self.canaries)} if self.canaries else {}),
            **({"bandits": dict(self.bandits)} if self.bandits else {}),
        }

    @classmethod
    def from_json(cls, doc: Any) -> LabState:
        """Parse a state document; a kill-switch file (version 1: ``all`` and ``experiments``) reads as it is."""
        if not isinstance(doc, Mapping):
            raise StateFormatError(f"expected a JSON object, got {type(doc).__name__}")
        version = doc.get("version", 1)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise StateFormatError(
                f"state format {version!r} is newer than this fieldlab understands "
                f"({FORMAT_VERSION}); upgrade fieldlab in this process"
            )
        all_ = doc.get("all")
        seq = doc.get("seq", 0)
        try:
            history = tuple(Decision.from_json(d) for d in doc.get("history") or ())
        except (KeyError, TypeError, ValueError) as exc:
            raise StateFormatError(f"history: {exc}") from None
        report = doc.get("report") or {}
        canaries = doc.get("canaries") or {}
        if not isinstance(canaries, Mapping):
            raise StateFormatError(f"canaries: expected an object, got {type(canaries).__name__}")
        bandits = doc.get("bandits") or {}
        if not isinstance(bandits, Mapping) or not all(isinstance(v, Mapping) for v in bandits.values()):
            raise StateFormatError("bandits: expected an object of objects (experiment key -> published weights)")
        return cls(
            seq=seq if isinstance(seq, int) else 0,
            updated_at=doc.get("updated_at") if isinstance(doc.get("updated_at"), str) else None,
            all=Mark.from_json(all_) if all_ else None,
            killed=_marks(doc.get("experiments"), "experiments"),
            paused=_nested(doc.get("paused"), "paused"),
            alerts=_nested(doc.get("alerts"), "alerts"),
            history=history,
            report=report if isinstance(report, Mapping) else {},
            canaries=canaries,
            bandits={str(k): v for k, v in bandits.items()},
        )

    @classmethod
    def from_bytes(cls, data: bytes | str) -> LabState:
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise StateFormatError(f"not JSON: {exc}") from None
        return cls.from_json(doc)


def _drop(marks: Mapping[str, Mark], key: str | None, decision: Decision) -> dict[str, Mark]:
    """``marks`` without ``key`` (all keys when None), sparing marks a machine may not lift."""
    return {k: m for k, m in marks.items() if not ((key is None or k == key) and _may_lift(m, decision))}


def _may_lift(mark: Mark, decision: Decision) -> bool:
    """A person lifts anything; the controller lifts only what it set for the same cause (a budget
    recovery never lifts an operator's kill or a guardrail pause)."""
    return decision.cause == "operator" or mark.cause == decision.cause


def _lift(
    table: Mapping[str, Mapping[str, Mark]], experiment: str, variant: str | None, decision: Decision
) -> tuple[Mapping[str, Mapping[str, Mark]], bool]:
    """``table`` without the marks ``decision`` resumes, and whether it lost any."""
    if experiment not in table:
        return table, False
    kept = _drop(table[experiment], variant, decision)
    if len(kept) == len(table[experiment]):
        return table, False
    new = {k: x for k, x in table.items() if k != experiment}
    if kept:
        new[experiment] = kept
    return new, True


def apply_decision(state: LabState, decision: Decision, seq: int) -> tuple[LabState, bool]:
    """The state after ``decision`` (its marks numbered ``seq``) and whether anything changed.

    A halt or pause already in force is kept as it is (the first reason stays on record), except
    that a pause or alert the budget set is taken over by a guardrail, metric or operator one.
    """
    e, v, a = decision.experiment, decision.variant, decision.action
    if a in ("pause", "alert"):
        assert e is not None and v is not None
        table = state.paused if a == "pause" else state.alerts
        held = table.get(e, {}).get(v)
        if held is not None and not (held.cause == "budget" and decision.cause != "budget"):
            return state, False  # a budget pause becomes a guardrail's (or a person's), so recovery cannot lift it
        new = {**{k: dict(x) for k, x in table.items()}}
        new.setdefault(e, {})[v] = decision.mark(seq)
        return (replace(state, paused=new) if a == "pause" else replace(state, alerts=new)), True
    if a == "resume":
        assert e is not None
        paused, lost_pause = _lift(state.paused, e, v, decision)
        alerts, lost_alert = _lift(state.alerts, e, v, decision)
        if not (lost_pause or lost_alert):
            return state, False
        return replace(state, paused=paused, alerts=alerts), True
    if a == "halt_faults":
        if e is None:
            if state.all is not None:
                return state, False
            return replace(state, all=decision.mark(seq)), True
        if e in state.killed:
            return state, False
        return replace(state, killed={**state.killed, e: decision.mark(seq)}), True
    # resume_faults
    if e is None:
        changed = False
        out = state
        if state.all is not None and _may_lift(state.all, decision):
            out, changed = replace(out, all=None), True
        if decision.cause == "operator" and out.killed:  # `unkill --all` lifts every kill
            out, changed = replace(out, killed={}), True
        return out, changed
    if e in state.killed and _may_lift(state.killed[e], decision):
        return replace(state, killed={k: m for k, m in state.killed.items() if k != e}), True
    return state, False


# ----------------------------------------------------------------------------- the stores


class StateStore(abc.ABC):
    """Where the lab state lives. ``read`` and ``token`` are what pollers call; ``update`` is the atomic
    read-modify-write writers use, and :meth:`record` applies decisions with it."""

    url: str = ""
    description: str = ""

    @abc.abstractmethod
    def read(self) -> LabState:
        """The current state (an absent document is the empty state). Raises :class:`StateStoreError`."""

    @abc.abstractmethod
    def token(self) -> Hashable:
        """A cheap value that changes whenever the document does (a poller re-reads only then)."""

    @abc.abstractmethod
    def update(self, change: Callable[[LabState], LabState | None]) -> LabState:
        """Atomically replace the state by ``change(current)`` (None: leave it). Returns the state in force."""

    def close(self) -> None:  # noqa: B027 - optional for a backend without connections
        """Release connections (the store may be used again afterwards)."""

    def record(
        self,
        decisions: Iterable[Decision],
        *,
        report: Mapping[str, Any] | None = None,
        by: str | None = None,
        at: str | None = None,
    ) -> tuple[LabState, list[Decision]]:
        """Apply ``decisions`` in one atomic write; returns the new state and the decisions that changed it.

        Each applied decision is numbered with the write's sequence number and
        appended to the history. Nothing is written when no decision changes
        anything and there is no ``report`` (the controller's round summary).
        """
        decisions = list(decisions)
        applied: list[Decision] = []

        def change(current: LabState) -> LabState | None:
            applied.clear()
            seq = current.seq + 1
            when = at or iso_time()
            state = current
            for d in decisions:
                d = replace(d, seq=seq, at=d.at or when, by=d.by if d.by != "?" else (by or d.by))
                state, changed = apply_decision(state, d, seq)
                if changed:
                    applied.append(d)
            if not applied and report is None:
                return None
            history = (state.history + tuple(applied))[-HISTORY_LIMIT:]
            return replace(
                state,
                seq=seq,
                updated_at=when,
                history=history,
                report=dict(report) if report is not None else state.report,
            )

        return self.update(change), list(applied)


def _encode(state: LabState) -> bytes:
    return (json.dumps(state.to_json(), indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


class JsonFileStore(StateStore):
    """The state in a JSON file, replaced atomically; the embedded default (and the kill switch's file)."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.url = "file://" + self.path
        self.description = self.path

    def read(self) -> LabState:
        try:
            with open(self.path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return LabState()
        except OSError as exc:
            raise StateStoreError(
                f"{self.path}: cannot read the state ({exc.strerror}); check the permissions"
            ) from None
        try:
            return LabState.from_bytes(data)
        except StateFormatError as exc:
            raise StateFormatError(
                f"{self.path}: {exc}; fix or remove the file (faults stay halted meanwhile)"
            ) from None

    def token(self) -> Hashable:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateStoreError(f"{self.path}: {exc.strerror}") from None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def update(self, change: Callable[[LabState], LabState | None]) -> LabState:
        directory = os.path.dirname(self.path)
        os.makedirs(directory, exist_ok=True)
        lock_fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                import fcntl

                fcntl.flock(lock_fd, fcntl.LOCK_EX)
            except ImportError:  # pragma: no cover - not POSIX: the atomic replace still holds
                pass
            try:
                current = self.read()
            except StateFormatError:
                current = LabState()  # a broken document already halts every fault; a write starts it afresh
            new = change(current)
            if new is None:
                return current
            write_atomically(self.path, _encode(new))
            return new
        finally:
            os.close(lock_fd)  # closing releases the flock


class RedisStore(StateStore):
    """The state in Redis: the document in ``key``, its sequence number in ``key:seq``.

    Every operation has a bounded socket timeout (connect and read) and no
    retries, so a lost server costs a poller at most ``timeout`` per poll.
    """

    def __init__(self, url: str, *, key: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError:
            raise StateStoreError(
                "a redis:// state store needs the redis package; pip install 'fieldlab[redis]'"
            ) from None
        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qs(parts.query)
        self.key = key or query.pop("key", ["fieldlab:state"])[0]
        clean = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query, doseq=True)))
        self.url = url
        self.description = f"redis {parts.hostname}:{parts.port or 6379}{parts.path or '/0'} key {self.key}"
        self._redis = redis
        try:
            self._client = redis.Redis.from_url(
                clean,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
                retry_on_timeout=False,
            )
        except ValueError as exc:
            raise StateStoreError(f"{url}: {exc}; write redis://host:6379/0") from None

    def _fail(self, exc: Exception) -> StateStoreError:
        return StateStoreError(f"{self.description}: {type(exc).__name__}: {exc}; check that Redis is up and reachable")

    def read(self) -> LabState:
        try:
            data = self._client.get(self.key)
        except self._redis.RedisError as exc:
            raise self._fail(exc) from None
        if data is None:
            return LabState()
        try:
            return LabState.from_bytes(data)
        except StateFormatError as exc:
            raise StateFormatError(f"{self.description}: {exc}; rewrite or delete the key") from None

    def token(self) -> Hashable:
        try:
            return self._client.get(self.key + ":seq")
        except self._redis.RedisError as exc:
            raise self._fail(exc) from None

    def update(self, change: Callable[[LabState], LabState | None]) -> LabState:
        seq_key = self.key + ":seq"
        try:
            with self._client.pipeline(transaction=True) as pipe:
                for _ in range(50):
                    try:
                        pipe.watch(self.key)
                        data = pipe.get(self.key)
                        try:
                            current = LabState.from_bytes(data) if data is not None else LabState()
                        except StateFormatError:
                            current = LabState()
                        new = change(current)
                        if new is None:
                            pipe.unwatch()
                            return current
                        pipe.multi()
                        pipe.set(self.key, _encode(new))
                        pipe.set(seq_key, str(new.seq))
                        pipe.execute()
                        return new
                    except self._redis.WatchError:
                        continue  # another writer won the race: re-read and re-apply
        except self._redis.RedisError as exc:
            raise self._fail(exc) from None
        raise StateStoreError(f"{self.description}: too many concurrent writers; try again")

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # pragma: no cover - closing a dead connection
            pass


def open_store(url: str, *, base_dir: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> StateStore:
    """The store a ``[lab] state`` value names: ``redis://``/``rediss://`` URL, ``file://`` URL or a path.

    A relative path is relative to ``base_dir`` (the config file's directory).
    """
    if not isinstance(url, str) or not url.strip():
        raise StateStoreError(f"state {url!r} is not a store; give a file path or redis://host:6379/0")
    url = url.strip()
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme in ("redis", "rediss", "unix"):
        return RedisStore(url, timeout=timeout)
    if scheme == "file":
        return JsonFileStore(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
    if "://" in url:
        raise StateStoreError(f"state {url!r}: unknown scheme {scheme!r}; use a file path or redis://host:6379/0")
    path = os.path.expanduser(url)
    if not os.path.isabs(path) and base_dir:
        path = os.path.join(base_dir, path)
    return JsonFileStore(path)


# ----------------------------------------------------------------------------- the poller


@dataclass(frozen=True)
class Snapshot:
    """What a request process knows of the state, published atomically by the poller.

    ``status``: ``ok`` (the last poll read the store), ``stale`` (the store is
    lost; the last known state holds), ``error`` (never read, or the document
    is broken: every fault is halted).
    """

    state: LabState | None
    status: str
    error: str | None = None
    read_at: float | None = None  # wall time of the last successful read
    checked_at: float | None = None  # wall time of the last poll, successful or not
    paused: frozenset[tuple[str, str]] = frozenset()
    killed: frozenset[str] = frozenset()
    all_halted: bool = False

    @property
    def halt_faults(self) -> bool:
        """True when no fault may be injected at all (a state that cannot be read, or a lab-wide halt)."""
        return self.status == "error" or self.all_halted

    def is_paused(self, experiment: str, variant: str) -> bool:
        return (experiment, variant) in self.paused

    def faults_halted(self, experiment: str) -> bool:
        return self.status == "error" or self.all_halted or experiment in self.killed

    @property
    def bandits(self) -> Mapping[str, Any]:
        """The bandits' published weights (:attr:`LabState.bandits`) as last read; empty when never read."""
        return self.state.bandits if self.state is not None else {}

    @classmethod
    def of(
        cls, state: LabState | None, status: str, error: str | None, read_at: float | None, checked_at: float | None
    ) -> Snapshot:
        if state is None:
            return cls(None, status, error, read_at, checked_at)
        paused = frozenset((e, v) for e, vs in state.paused.items() for v in vs)
        return cls(state, status, error, read_at, checked_at, paused, frozenset(state.killed), state.all is not None)


def _seq(snapshot: Snapshot) -> int | None:
    return snapshot.state.seq if snapshot.state is not None else None


_POLLERS: weakref.WeakSet[StatePoller] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for p in list(_POLLERS):
        p._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class StatePoller:
    """Follows a :class:`StateStore` from a background thread; requests read :attr:`snapshot` only.

    ``start()`` makes one bounded first read (so a process that starts with a
    reachable store knows its state before its first request) and starts the
    daemon thread. After a fork (gunicorn workers) the child restarts its
    thread at its first read. ``on_change`` is called from the poller thread
    with the new snapshot whenever the state or the status changes.
    """

    def __init__(
        self,
        store: StateStore,
        interval: float = DEFAULT_POLL_INTERVAL,
        *,
        on_change: Callable[[Snapshot], None] | None = None,
        name: str = "fieldlab-state",
    ) -> None:
        if not interval > 0:
            raise ValueError("the poll interval must be positive")
        self.store = store
        self.interval = float(interval)
        self.on_change = on_change
        self.name = name
        self._snapshot = Snapshot(None, "error", "not read yet")
        self._token: Hashable = object()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._restart = False
        self._lock = threading.Lock()
        _POLLERS.add(self)

    @property
    def snapshot(self) -> Snapshot:
        """The current snapshot: an attribute read, never a store operation."""
        if self._restart:
            self._restart_after_fork()
        return self._snapshot

    @property
    def status(self) -> str:
        return self.snapshot.status

    def is_paused(self, experiment: str, variant: str) -> bool:
        return (experiment, variant) in self.snapshot.paused

    def faults_halted(self, experiment: str) -> bool:
        return self.snapshot.faults_halted(experiment)

    def start(self, *, first_read: bool = True) -> StatePoller:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return self
            self._stop.clear()
            if first_read:
                self.poll_once()
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout if timeout is not None else self.interval + 2 * DEFAULT_TIMEOUT + 1)
        self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll_once()

    def poll_once(self) -> Snapshot:
        """One poll: read the token, the document when it changed; publish the new snapshot. Never raises."""
        old = self._snapshot
        now = time.time()
        try:
            token = self.store.token()
            if token == self._token and old.status == "ok" and old.state is not None:
                new = replace(old, checked_at=now)
            else:
                state = self.store.read()
                self._token = token
                new = Snapshot.of(state, "ok", None, now, now)
        except StateFormatError as exc:  # it answered with garbage: fail closed, keep the pauses we knew
            self._token = object()
            new = Snapshot.of(old.state, "error", str(exc), old.read_at, now)
        except Exception as exc:  # lost store (or anything unexpected): keep the last known state
            self._token = object()
            status = "stale" if old.state is not None else "error"
            new = Snapshot.of(old.state, status, str(exc), old.read_at, now)
        self._snapshot = new
        if (new.status, _seq(new)) != (old.status, _seq(old)):
            self._report(old, new)
        return new

    def _report(self, old: Snapshot, new: Snapshot) -> None:
        if old.state is not None and new.state is not None and new.state.seq < old.state.seq:
            _log.warning(
                "fieldlab: state store %s went back from seq %d to %d (restarted without persistence, "
                "or rewritten); following it",
                self.store.description,
                old.state.seq,
                new.state.seq,
            )
        if new.status != old.status:
            if new.status == "ok":
                if old.checked_at is not None:  # not the first read of this poller
                    _log.warning("fieldlab: state store %s is readable again", self.store.description)
            elif new.status == "stale":
                _log.error(
                    "fieldlab: state store %s is lost (%s); keeping the last known state (seq %s)",
                    self.store.description,
                    new.error,
                    new.state.seq if new.state else "-",
                )
            else:
                _log.error(
                    "fieldlab: state store %s cannot be read (%s); ALL faults are halted",
                    self.store.description,
                    new.error,
                )
        if self.on_change is not None:
            try:
                self.on_change(new)
            except Exception:  # a callback never stops the poller
                _log.exception("fieldlab: state on_change callback failed")

    def _forked(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._restart = self._thread is not None
        self._thread = None

    def _restart_after_fork(self) -> None:
        self._restart = False
        try:
            self.start(first_read=False)
        except Exception:  # pragma: no cover - thread creation failing: keep serving the last snapshot
            pass
