"""``fieldlab canary run`` and ``fieldlab canary status``: the sick canary's controller loop and its report.

``fieldlab canary run CONFIG SOURCE [--once] [--interval S] [--json]`` runs a
round of every ``[[canaries]]`` of CONFIG every interval (counting the arms in
SOURCE, the span files or ``clickhouse://`` table ``fieldlab analyze`` reads)
until every canary is finished, or until SIGTERM/SIGINT, which end it after the
round in progress (the state store always holds a whole round).
``fieldlab canary status CONFIG [--json]`` shows each canary from the state
store: phase, breaking point with its bracket, the dose-response table,
requests spent and budget used.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from ..errors import FieldLabError

__all__ = ["add_parsers", "load", "render_status", "round_json", "round_lines", "round_summary", "unfinished"]


def load(config: str) -> tuple[Any, Any]:
    """The config's canaries and the state store its processes follow (``[lab] state``)."""
    import os

    from ..lab import Lab
    from .state import open_store

    if not os.path.isfile(config):
        raise FieldLabError(f"no config file at {config}; pass the file the processes load")
    state, _ = Lab._load(config)
    if not state.canaries:
        raise FieldLabError(f"{config} has no [[canaries]]; add one (see docs/canary.md)")
    if state.state_url is None:
        raise FieldLabError(f"{config} names no state store for the canaries; set [lab] state")
    return state.canaries, open_store(state.state_url)


def _pct(x: Any) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x * 100:.2f}%"


def render_status(statuses: Sequence[Mapping[str, Any]], out: TextIO) -> None:
    """The people's view of :func:`fieldlab.control.canary_controller.status_of` results."""
    for s in statuses:
        out.write(f"canary {s['key']} at {s['point']} ({s['traffic']:g}% of units): {s['phase']}")
        if s.get("outcome"):
            out.write(f" ({s['outcome']})")
        out.write("\n")
        if "dose_response" not in s:
            out.write(f"  doses {s['doses']}; no round yet (run `fieldlab canary run`)\n")
            continue
        bp, (lo, hi) = s["breaking_point_ms"], s["bracket"]
        if bp is not None:
            out.write(f"  breaking point: {bp:.1f} ms (bracket {lo:g} ms safe .. {hi:g} ms broken)\n")
        else:
            out.write(f"  bracket so far: {lo:g} ms safe .. {'?' if hi is None else f'{hi:g} ms'} broken\n")
        out.write(
            f"  requests spent {s['requests_spent']:,}; budget used: {s['bad_spent']:,} bad requests in the "
            f"doses, {s['excess_bad']:g} beyond control's rate; round {s['round']}\n"
        )
        out.write(
            f"  {'arm':>9}  {'status':<8} {'requests':>8} {'errors':>7} {'slow':>7}  "
            f"{'bad - control (always-valid)':<30} {'P(breaks)':>9}\n"
        )
        for r in s["dose_response"]:
            vs = r.get("vs_control")
            diff = (
                f"{vs['estimate'] * 100:+.2f} pts [{vs['ci_low'] * 100:+.2f}, {vs['ci_high'] * 100:+.2f}]"
                if vs and vs.get("ci_low") is not None
                else ""
            )
            pb = "" if r.get("p_breaks") is None else f"{r['p_breaks']:.2f}"
            out.write(
                f"  {r['arm']:>9}  {r['status']:<8} {r['requests']:>8,} {_pct(r['error_rate']):>7} "
                f"{_pct(r['slow_rate']):>7}  {diff:<30} {pb:>9}\n"
            )
        if s.get("weights"):
            out.write("  weights: " + ", ".join(f"{k} {v:.0%}" for k, v in s["weights"].items()) + "\n")
        for h in s.get("history", [])[-5:]:
            out.write(f"  round {h['round']}: {h['action']}: {h['reason']}\n")


def _statuses(canaries: Any, store: Any) -> list[dict[str, Any]]:
    from .canary_controller import status_of

    docs = store.read().canaries
    return [status_of(c, docs.get(c.key)) for c in canaries]


def _cmd_status(args: argparse.Namespace) -> int:
    canaries, store = load(args.config)
    statuses = _statuses(canaries, store)
    if args.json:
        print(json.dumps({"state": store.description, "canaries": statuses}, indent=1, default=str))
    else:
        print(f"state: {store.description}")
        render_status(statuses, sys.stdout)
    return 0


_JSON_FIELDS = ("phase", "round", "outcome", "breaking_point", "bracket", "weights", "requests_spent", "bad_spent")


def round_json(written: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The ``--json`` view of a canary round: per canary, its phase, bracket, weights and spending."""
    return {k: {x: d.get(x) for x in _JSON_FIELDS} for k, d in written.items()}


def round_lines(written: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per decision a canary round made (escalate, refine, stop...), for people."""
    return [
        f"{k} round {h['round']}: {h['action']}: {h['reason']}"
        for k, d in written.items()
        for h in d.get("history", [])
        if h.get("round") == d.get("round")
    ]


def round_summary(written: Mapping[str, Mapping[str, Any]]) -> str:
    """The canaries of a round in a few words (for the round line of ``fieldlab watch``)."""
    parts = []
    for k, d in written.items():
        doses = [a for a in d.get("weights") or {} if a != "control"]
        on = f", on {' '.join(doses)}" if doses else ""
        bp = d.get("breaking_point")
        found = f", breaking point {bp:g} ms" if isinstance(bp, (int, float)) else ""
        parts.append(f"{k} {d.get('phase')}{on}{found}")
    return "canary " + "; ".join(parts) if parts else ""


def unfinished(canaries: Sequence[Any], store: Any) -> list[Any]:
    """The canaries ``fieldlab watch`` still has to run: not yet finished in the store (a finished canary
    is left as it is, so the store is not rewritten every round for nothing)."""
    docs = store.read().canaries
    return [c for c in canaries if not (isinstance(docs.get(c.key), Mapping) and docs[c.key].get("phase") in _FINISHED)]


_FINISHED = ("done", "stopped")


def _cmd_run(args: argparse.Namespace) -> int:
    from .canary_controller import CanaryController

    canaries, store = load(args.config)
    ctl = CanaryController(canaries, args.source, store, engine=args.engine)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            t0 = time.monotonic()
            written = ctl.run_round()
            if args.json:
                print(json.dumps(round_json(written), default=str), flush=True)
            else:
                for line in round_lines(written):
                    print(line, flush=True)
            done = all(d.get("phase") in _FINISHED for d in written.values())
            if args.once or done or stop.is_set():
                break
            stop.wait(max(0.0, args.interval - (time.monotonic() - t0)))
            if stop.is_set():
                break
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if not args.json:
        render_status(_statuses(canaries, store), sys.stdout)
    return 0


def add_parsers(subparsers: Any) -> None:
    """Register ``fieldlab canary run|status`` (called by :mod:`fieldlab.cli`)."""
    p = subparsers.add_parser("canary", help="the sick canary: find the latency a service breaks at")
    sub = p.add_subparsers(dest="canary_command", metavar="run|status")
    sub.required = True
    r = sub.add_parser("run", help="run the canaries' controller: count arms in SOURCE, decide, publish doses")
    r.add_argument("config", metavar="CONFIG")
    r.add_argument(
        "source",
        metavar="SOURCE",
        nargs="+",
        help="span files/directories (OTLP JSON lines) or a clickhouse:// URL, as for analyze",
    )
    r.add_argument("--once", action="store_true", help="one round, then exit")
    r.add_argument("--interval", type=float, default=10.0, help="seconds between rounds (default 10)")
    r.add_argument("--engine", default="auto", choices=("auto", "chdb", "python"))
    r.add_argument("--json", action="store_true", help="one JSON line per round")
    r.set_defaults(func=_cmd_run)
    s = sub.add_parser("status", help="each canary's dose-response, breaking point and budget used")
    s.add_argument("config", metavar="CONFIG")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_status)
