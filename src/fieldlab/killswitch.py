"""The fault kill switch: a small state file beside the config, and ``fieldlab kill`` / ``fieldlab unkill``.

In an incident, ``fieldlab kill slow-db --config shop.toml`` (or ``--all``)
stops fault injection in every process that reads the same config, within one
check interval (the config's reload interval, but never more than
``MAX_CHECK_INTERVAL`` = 1 s, whatever the config says), without a deploy and
without touching the config itself.

The state is the lab's state store (:mod:`fieldlab.control.state`): by default
the file ``<config>.state.json`` (or the ``[lab] state`` setting, formerly
``state_file``, relative to the config), or Redis (``state = "redis://..."``).
``kill`` and ``unkill`` go through the store's record API, so they keep the
guardrails' pauses and log themselves in its decision history. The file is
JSON, written atomically (a temporary file in the same directory, then
``os.replace``), so readers see the old or the new state, never half of one::

    {"version": 1,
     "all": null,
     "experiments": {"slow-db": {"at": "2026-11-29T01:02:03Z", "by": "alice", "reason": "INC-42"}}}

Processes poll it lazily from the fault decision path: one ``os.stat`` per
check interval (not per decision), a re-read only when it changed. The check
interval is bounded on its own (:func:`check_interval`): no value of
``reload_interval``, valid or not, can slow the kill switch beyond 1 s or turn
it off. Between
polls the check is a set lookup, so it runs on every fault decision. A state
file that exists but cannot be read or parsed kills ALL faults (fail closed)
until it is fixed. The kill switch stops faults only; assignment goes on (to
stop an experiment, pause it in the config).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import getpass
import json
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import _internal
from ._fault_kinds import state_path
from ._files import write_atomically
from .errors import FieldLabError

__all__ = [
    "KillState",
    "read_state",
    "write_state",
    "kill",
    "unkill",
    "is_killed",
    "watch",
    "add_parsers",
    "DEFAULT_INTERVAL",
    "MAX_CHECK_INTERVAL",
    "MIN_CHECK_INTERVAL",
    "check_interval",
]

_log = logging.getLogger("fieldlab.faults")
_internal.counters("killswitch", ("unreadable_states", "poll_errors"))
DEFAULT_INTERVAL = 5.0
#: The kill switch checks its state file at least this often (seconds), whatever the reload interval.
MAX_CHECK_INTERVAL = 1.0
#: ... and at most this often, so a tiny interval cannot turn every decision into an ``os.stat``.
MIN_CHECK_INTERVAL = 0.01
_FORMAT_VERSION = 1


def check_interval(reload_interval: Any) -> float:
    """Seconds between two checks of the kill-state file: the reload interval, clamped to 0.01-1 s.

    Anything that is not a positive finite number (0 = reloading off, NaN,
    infinity, a negative number, a wrong type) gives the 1 s maximum, so the
    brake never depends on a setting that could switch it off.
    """
    if isinstance(reload_interval, bool) or not isinstance(reload_interval, (int, float)):
        return MAX_CHECK_INTERVAL
    value = float(reload_interval)
    if not math.isfinite(value) or value <= 0:
        return MAX_CHECK_INTERVAL
    return min(max(value, MIN_CHECK_INTERVAL), MAX_CHECK_INTERVAL)


@dataclass
class KillState:
    """What is killed: everything (``all`` holds who and why) and/or named experiments."""

    all: dict[str, Any] | None = None
    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)

    def killed(self, experiment: str) -> bool:
        return self.all is not None or experiment in self.experiments

    def to_json(self) -> dict[str, Any]:
        return {"version": _FORMAT_VERSION, "all": self.all, "experiments": dict(sorted(self.experiments.items()))}

    @classmethod
    def from_json(cls, doc: Any) -> KillState:
        if not isinstance(doc, dict) or not isinstance(doc.get("experiments", {}), dict):
            raise ValueError('expected {"all": ..., "experiments": {...}}')
        all_ = doc.get("all")
        if all_ is not None and not isinstance(all_, dict):
            all_ = {"reason": str(all_)} if all_ else None
        return cls(all_, {str(k): (v if isinstance(v, dict) else {}) for k, v in doc.get("experiments", {}).items()})


def read_state(path: str) -> KillState:
    """The kill state in ``path``; an absent file means nothing is killed.

    Raises ``ValueError``/``OSError`` when the file exists but is unreadable.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return KillState()
    return KillState.from_json(json.loads(data.decode("utf-8")))


def write_state(path: str, state: KillState) -> None:
    """Write ``state`` atomically: a temporary file beside ``path``, fsynced, then ``os.replace``."""
    text = json.dumps(state.to_json(), indent=2, sort_keys=True) + "\n"
    write_atomically(path, text.encode("utf-8"))
    _invalidate(path)


def _config_info(config: str, warn: bool = True) -> tuple[str, list[str] | None, float]:
    """State store (a file path or a Redis URL), experiment keys (None when the config cannot be parsed) and
    kill check interval of a config file.

    A config that does not exist is an error (a mistyped path would kill
    nothing); one that exists but does not parse still gets its default state
    file, so a kill works in the middle of a bad deploy.
    """
    from .config import read_config_file

    if not os.path.isfile(config):
        raise FieldLabError(f"no config file at {config}; pass the file the processes load (--config)")
    try:
        doc, _ = read_config_file(config)
    except FieldLabError as exc:
        if warn:
            print(f"warning: {exc}; using the default state file beside it", file=sys.stderr)
        return state_path(config, {}) or config + ".state.json", None, MAX_CHECK_INTERVAL
    lab = doc.get("lab")
    settings: Mapping[str, Any] = lab if isinstance(lab, Mapping) else {}
    keys = [str(e.get("key")) for e in doc.get("experiments") or [] if isinstance(e, Mapping)]
    # a canary's faults are killed by its key too
    keys += [str(c.get("key")) for c in doc.get("canaries") or [] if isinstance(c, Mapping)]
    interval = check_interval(settings.get("reload_interval", DEFAULT_INTERVAL))
    spec = settings.get("state")
    if isinstance(spec, str) and "://" in spec and not spec.lower().startswith("file://"):
        return spec.strip(), keys, interval  # a Redis store: kills go there, with the pauses
    return state_path(config, settings) or config + ".state.json", keys, interval


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def _store(spec: str) -> Any:
    from .control.state import open_store

    return open_store(spec)


def _kill_state(state: Any) -> KillState:
    """The kill-switch view of a lab state (``fieldlab.control.state.LabState``)."""
    return KillState(
        state.all.to_json() if state.all is not None else None, {k: m.to_json() for k, m in state.killed.items()}
    )


def _record(spec: str, decision: Any) -> KillState:
    """Apply one operator decision to the state store in one atomic read-modify-write.

    Through the store's record API, so a kill never drops what else the state holds: the guardrails'
    pauses, alerts, the decision history (where the kill is logged) and the controller's report.
    """
    from .control.state import StateFormatError

    store = _store(spec)
    try:
        try:
            store.read()
        except StateFormatError:  # a broken document halts every fault; an operator's write starts it afresh
            store.update(lambda current: dataclasses.replace(current, seq=current.seq + 1))
        state, _ = store.record([decision], by=decision.by)
        if "://" not in spec:
            _invalidate(spec)
        return _kill_state(state)
    finally:
        store.close()


def kill(
    config: str, experiment: str | None = None, *, all: bool = False, reason: str | None = None, force: bool = False
) -> KillState:
    """Stop the faults of ``experiment`` (or of every experiment with ``all=True``) for the config file ``config``.

    An experiment the config does not declare is refused (a typo would kill
    nothing) unless ``force``. The kill is logged in the state's decision
    history (cause ``operator``). Returns the new state.
    """
    from .control.state import Decision

    if (experiment is None) == (not all):
        raise FieldLabError("name one EXPERIMENT or pass --all")
    spec, keys, _ = _config_info(config)
    if experiment is not None and keys is not None and experiment not in keys and not force:
        raise FieldLabError(
            f"unknown experiment {experiment!r} in {config} (it has {', '.join(sorted(keys)) or 'none'}); "
            "check the key, or pass --force to kill it anyway"
        )
    return _record(
        spec,
        Decision(
            "halt_faults",
            None if all else str(experiment),
            None,
            "operator",
            reason or "",
            _user(),
            _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        ),
    )


def unkill(config: str, experiment: str | None = None, *, all: bool = False) -> KillState:
    """Lift the kill of ``experiment``, or with ``all=True`` every kill. Returns the new state."""
    from .control.state import Decision

    if (experiment is None) == (not all):
        raise FieldLabError("name one EXPERIMENT or pass --all")
    spec, _, _ = _config_info(config)
    return _record(
        spec,
        Decision(
            "resume_faults",
            None if all else str(experiment),
            None,
            "operator",
            "",
            _user(),
            _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        ),
    )


# ------------------------------------------------------------------ runtime
class _Watch:
    """One state file as seen by this process, polled at most once per interval."""

    __slots__ = ("path", "all", "killed", "next_check", "sig", "lock", "error")

    def __init__(self, path: str) -> None:
        self.path = path
        self.all = False
        self.killed: frozenset[str] = frozenset()
        self.next_check = 0.0
        self.sig: tuple[int, int, int] | None = None
        self.lock = threading.Lock()
        self.error: str | None = None

    def is_killed(self, experiment: str, interval: float) -> bool:
        now = time.monotonic()
        if now >= self.next_check:
            self.poll(now, check_interval(interval))
        return self.all or experiment in self.killed

    def poll(self, now: float, interval: float) -> None:
        if not self.lock.acquire(blocking=False):
            return  # another thread is reading it; use the state we have
        try:
            self.next_check = now + interval
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                self.sig, self.all, self.killed, self.error = None, False, frozenset(), None
                return
            sig = (st.st_mtime_ns, st.st_size, st.st_ino)
            if sig == self.sig:
                return
            try:
                state = read_state(self.path)
            except (OSError, ValueError) as exc:
                _internal.count("killswitch", "unreadable_states")
                if self.error is None:
                    _log.error(
                        "fieldlab: kill-switch state %s is unreadable (%s); ALL faults are off until it is "
                        "fixed or removed",
                        self.path,
                        exc,
                    )
                self.sig, self.all, self.error = sig, True, str(exc)
                return
            if self.error is not None:
                _log.warning("fieldlab: kill-switch state %s is readable again", self.path)
            was = (self.all, self.killed)
            self.sig, self.error = sig, None
            self.all, self.killed = state.all is not None, frozenset(state.experiments)
            if was != (self.all, self.killed):
                _log.warning(
                    "fieldlab: fault kill switch now %s",
                    "ALL" if self.all else (", ".join(sorted(self.killed)) or "off"),
                )
        except Exception:  # never let a poll raise into a request: fail closed
            self.all = True
            _internal.failed(
                "killswitch",
                "poll_errors",
                self.path,
                "fieldlab: reading the kill-switch state %s failed; ALL faults are off until it reads again",
                self.path,
                logger=_log,
            )
        finally:
            self.lock.release()


_WATCHES: dict[str, _Watch] = {}
_WATCHES_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
    """A forked worker re-reads the state at its first decision, with fresh locks."""
    global _WATCHES_LOCK
    _WATCHES_LOCK = threading.Lock()
    for w in list(_WATCHES.values()):
        w.lock = threading.Lock()
        w.next_check = 0.0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def watch(path: str) -> _Watch:
    """The process-wide watch of a state file."""
    w = _WATCHES.get(path)
    if w is None:
        with _WATCHES_LOCK:
            w = _WATCHES.setdefault(path, _Watch(path))
    return w


def is_killed(path: str | None, experiment: str, interval: float = DEFAULT_INTERVAL) -> bool:
    """True when the state file at ``path`` kills ``experiment``.

    The file is polled once per :func:`check_interval` of ``interval`` (0.01-1 s).
    """
    if path is None:
        return False
    return watch(path).is_killed(experiment, interval)


def _invalidate(path: str) -> None:
    """A write from this process takes effect here at the next decision."""
    w = _WATCHES.get(os.path.abspath(path))
    if w is not None:
        w.next_check = 0.0


def _iter_lines(state: KillState) -> Iterator[str]:
    if state.all is not None:
        a = state.all
        yield f"ALL faults killed ({a.get('at', '?')} by {a.get('by', '?')}{': ' + a['reason'] if a.get('reason') else ''})"
    for key, info in sorted(state.experiments.items()):
        yield (
            f"faults of {key!r} killed ({info.get('at', '?')} by {info.get('by', '?')}"
            f"{': ' + info['reason'] if info.get('reason') else ''})"
        )
    if state.all is None and not state.experiments:
        yield "no kills in force: faults follow the config"


# ---------------------------------------------------------------------- CLI
def _cmd_kill(args: argparse.Namespace) -> int:
    path, _, interval = _config_info(args.config, warn=False)
    if args.status:
        if args.experiment or args.all:
            raise FieldLabError("--status takes no EXPERIMENT or --all")
        _config_info(args.config)  # warns about a config that does not parse
        store = _store(path)
        try:
            state = _kill_state(store.read())
        finally:
            store.close()
    else:
        state = kill(args.config, args.experiment, all=args.all, reason=args.reason, force=args.force)
    print(f"state {'store' if '://' in path else 'file'}: {path}")
    for line in _iter_lines(state):
        print(line)
    if not args.status:
        print(f"every process reading {args.config} stops these faults within {interval:g} s (its kill check interval)")
    return 0


def _cmd_unkill(args: argparse.Namespace) -> int:
    path, _, interval = _config_info(args.config, warn=False)
    state = unkill(args.config, args.experiment, all=args.all)
    print(f"state {'store' if '://' in path else 'file'}: {path}")
    for line in _iter_lines(state):
        print(line)
    if args.experiment and state.all is not None:
        print("note: ALL faults are still killed; run `fieldlab unkill --all` to lift that")
    print(f"processes resume configured faults within {interval:g} s (faults still need [faults] enabled = true)")
    return 0


def add_parsers(subparsers: Any) -> None:
    """Register ``fieldlab kill`` and ``fieldlab unkill`` (called by :mod:`fieldlab.cli`)."""
    p = subparsers.add_parser("kill", help="stop fault injection for an experiment (or --all), in every process")
    p.add_argument("experiment", nargs="?", metavar="EXPERIMENT")
    p.add_argument("--all", action="store_true", help="stop every fault of every experiment")
    p.add_argument("--config", required=True, metavar="CONFIG", help="the config file the processes load")
    p.add_argument("--reason", help="why (recorded in the state file), e.g. an incident id")
    p.add_argument("--force", action="store_true", help="kill an experiment the config does not declare")
    p.add_argument("--status", action="store_true", help="only show what is killed")
    p.set_defaults(func=_cmd_kill)

    p = subparsers.add_parser("unkill", help="lift a fault kill switch (an experiment, or --all)")
    p.add_argument("experiment", nargs="?", metavar="EXPERIMENT")
    p.add_argument("--all", action="store_true", help="lift every kill")
    p.add_argument("--config", required=True, metavar="CONFIG")
    p.set_defaults(func=_cmd_unkill)
