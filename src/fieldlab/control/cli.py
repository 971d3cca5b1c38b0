"""``fieldlab watch``, ``fieldlab status`` and ``fieldlab resume``: the guardrail controller and its operators.

* ``fieldlab watch CONFIG SOURCE... [--interval S] [--once] [--json]`` runs the
  controller: every interval it measures each running variant from SOURCE (what
  ``fieldlab analyze`` reads), decides, and records the decisions in the state
  store the config names, which every process follows. One line per round
  (rewritten in place on a terminal while nothing changes), one line per
  decision; ``--json`` prints one JSON object per round with every verdict and
  its evidence. SIGTERM or SIGINT ends it cleanly after the round in progress.
  The config is re-read every round; a bad new config keeps the last good one.
  The config's ``[[canaries]]`` run in the same loop, one canary round per
  round until each is finished (``fieldlab canary run`` runs them alone, for a
  game day); their decisions print as ``canary ...`` lines, and ``--json``
  rounds carry them under ``canaries``.
* ``fieldlab status CONFIG [--json]``: per experiment and variant, running,
  paused (or alerted) or killed, the burn rates of the controller's last round
  per window, the experimentation budget used, and the last decision and who
  made it.
* ``fieldlab resume CONFIG EXPERIMENT [--variant V]`` lifts a pause, logged in
  the store's history like ``fieldlab kill``.

Errors are one line on stderr and exit code 2 (through :func:`fieldlab.cli.main`).
"""

from __future__ import annotations

import argparse
import getpass
import json
import signal
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

from ..errors import FieldLabError
from .canary_cli import round_json, round_lines, round_summary, unfinished
from .state import iso_time

__all__ = ["add_parsers", "cmd_watch", "cmd_status", "cmd_resume"]


def _load(config: str) -> Any:
    """The validated configuration of ``config`` (the Lab's own loader: the same checks, no process state)."""
    import os

    from ..lab import Lab

    if not os.path.isfile(config):
        raise FieldLabError(f"no config file at {config}; pass the file the processes load")
    state, _ = Lab._load(config)
    return state


def _store(state: Any, config: str) -> Any:
    from .state import open_store

    if state.state_url is None:
        raise FieldLabError(f"{config} names no state store; set [lab] state")
    return open_store(state.state_url)


def _specs(state: Any) -> dict[str, Any]:
    from .controller import ExperimentSpec

    return {
        e.key: ExperimentSpec(e.key, e.control, e.unit)
        for e in state.experiments.values()
        if e.status == "running" and len(e.variants) > 1
    }


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


# ----------------------------------------------------------------------------- watch


def _round_line(n: int, rnd: Any, seconds: float) -> str:
    counts: dict[str, int] = {}
    for ev in rnd.experiments:
        for v in ev.verdicts:
            counts[v.outcome] = counts.get(v.outcome, 0) + 1
    parts = ", ".join(
        f"{k} {counts[k]}" for k in ("ok", "insufficient", "watch", "environment", "pause", "alert") if counts.get(k)
    )
    env = [ev.experiment for ev in rnd.experiments if ev.environment]
    budget = f"; budget {100 * rnd.budget.fraction:.3g} % used" if rnd.budget is not None else ""
    stamp = time.strftime("%H:%M:%S")
    return (
        f"{stamp} round {n}: {sum(counts.values())} variant(s): {parts or 'none running'}{budget}"
        f"{'; ENVIRONMENT burning in ' + ', '.join(env) if env else ''} ({seconds:.2f} s)"
    )


def _decision_line(d: Any) -> str:
    what = f"{d.experiment}/{d.variant}" if d.variant else (d.experiment or "all experiments")
    words = {
        "pause": "PAUSED",
        "resume": "resumed",
        "alert": "ALERT",
        "halt_faults": "faults HALTED",
        "resume_faults": "faults resumed",
    }[d.action]
    return f"  {words} {what} ({d.cause}): {d.reason}"


def cmd_watch(args: argparse.Namespace) -> int:
    """The controller loop (see the module docstring)."""
    from .bandit_controller import watch_bandits
    from .controller import Controller

    if not args.interval > 0:
        raise FieldLabError(f"--interval {args.interval:g}: give a positive number of seconds, e.g. 60")
    state = _load(args.config)
    store = _store(state, args.config)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    out = sys.stdout
    live = out.isatty() and not args.json
    n = 0
    try:
        if not args.json:
            print(
                f"fieldlab watch: {len(_specs(state))} running experiment(s)"
                + (f" and {len(state.canaries)} sick canary(ies)" if state.canaries else "")
                + f" of {args.config}, decisions to "
                f"{store.description}, every {args.interval:g} s (Ctrl-C or SIGTERM to stop)",
                flush=True,
            )
        while not stop.is_set():
            n += 1
            t0 = time.monotonic()
            try:
                new = _load(args.config)
                if new.state_url != state.state_url:
                    store.close()
                    store = _store(new, args.config)
                state = new
            except FieldLabError as exc:
                print(f"fieldlab watch: keeping the last good config: {exc}", file=sys.stderr, flush=True)
            try:
                ctl = Controller(state.guardrails, _specs(state), args.sources, store, engine=args.engine)
                rnd = ctl.run_round()
                bandits = watch_bandits(state, args.sources, store, engine=args.engine)  # weights, not decisions
            except Exception as exc:  # a long-lived process: report the round, try again at the next one
                print(f"fieldlab watch: round {n} failed: {exc}", file=sys.stderr, flush=True)
                if args.once:
                    return 2
            else:
                canaries, failed = _canary_round(state, args.sources, store, args.engine, n)
                seconds = time.monotonic() - t0
                if args.json:
                    doc = rnd.to_json()
                    doc["round"], doc["seconds"] = n, round(seconds, 3)
                    doc["applied"] = [d.to_json() for d in ctl.applied]  # what changed the state this round
                    if canaries:
                        doc["canaries"] = round_json(canaries)
                    doc["bandits"] = [b.to_json() for b in bandits]
                    out.write(json.dumps(doc, ensure_ascii=False, default=str) + "\n")
                else:
                    line = _round_line(n, rnd, seconds)
                    if canaries:
                        line += "; " + round_summary(canaries)
                    news = [_decision_line(d) for d in ctl.applied]
                    news += [f"  {b.line()}" for b in bandits if b.notable]
                    news += ["  canary " + x for x in round_lines(canaries)]
                    if news or not live:
                        out.write(("\r\033[K" if live else "") + line + "\n")
                        out.write("".join(x + "\n" for x in news))
                    else:
                        out.write("\r\033[K" + line)
                out.flush()
                if failed and args.once:
                    return 2
            if args.once:
                break
            stop.wait(max(0.0, args.interval - (time.monotonic() - t0)))
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        store.close()
    if live:
        out.write("\n")
    if not args.json and not args.once:
        print(f"fieldlab watch: stopped after {n} round(s)", flush=True)
    return 0


def _canary_round(state: Any, sources: Any, store: Any, engine: str, n: int) -> tuple[dict[str, Any], bool]:
    """One round of the config's unfinished sick canaries (docs/canary.md): the documents written, and
    whether the round failed (reported on stderr; the guardrails' round stands on its own)."""
    if not state.canaries:
        return {}, False
    from .canary_controller import CanaryController

    try:
        todo = unfinished(state.canaries, store)
        if not todo:
            return {}, False
        return CanaryController(todo, sources, store, engine=engine).run_round(), False
    except Exception as exc:
        print(f"fieldlab watch: canary round {n} failed: {exc}", file=sys.stderr, flush=True)
        return {}, True


# ----------------------------------------------------------------------------- status


def _variant_rows(state: Any, lab_state: Any) -> list[dict[str, Any]]:
    report = lab_state.report or {}
    verdicts: dict[tuple[str, str], Mapping[str, Any]] = {}
    for ev in report.get("experiments") or ():
        for v in ev.get("variants") or ():
            verdicts[(ev.get("experiment"), v.get("variant"))] = v
    budget = report.get("budget") or {}
    excess = budget.get("variants") or {}
    last: dict[tuple[str | None, str | None], Any] = {}
    for d in lab_state.history:
        last[(d.experiment, d.variant)] = d
    rows = []
    for e in state.experiments.values():
        for v in e.variants:
            key = (e.key, v.name)
            pause = lab_state.paused.get(e.key, {}).get(v.name)
            alert = lab_state.alerts.get(e.key, {}).get(v.name)
            if e.status != "running":
                status = e.status
            elif pause is not None:
                status = "paused"
            else:
                status = "running"
            killed = lab_state.all is not None or e.key in lab_state.killed
            verdict = verdicts.get(key) or {}
            windows = []
            for sli, ev in ((verdict.get("evidence") or {}).get("slis") or {}).items():
                for w in ev.get("windows") or ():
                    windows.append(
                        {
                            "sli": sli,
                            "pair": w.get("pair"),
                            "threshold": w.get("threshold"),
                            "long": w["long"]["burn_rate"],
                            "short": w["short"]["burn_rate"],
                            "firing": w.get("firing"),
                        }
                    )
            decision = last.get(key) or last.get((e.key, None))
            rows.append(
                {
                    "experiment": e.key,
                    "variant": v.name,
                    "control": v.name == e.control,
                    "state": status,
                    "faults_killed": killed,
                    "alert": alert.to_json() if alert else None,
                    "paused": pause.to_json() if pause else None,
                    "outcome": verdict.get("outcome"),
                    "burn_rates": windows,
                    "budget_excess": excess.get(f"{e.key}/{v.name}"),
                    "last_decision": (
                        {
                            "action": decision.action,
                            "cause": decision.cause,
                            "by": decision.by,
                            "at": decision.at,
                            "reason": decision.reason,
                        }
                        if decision
                        else None
                    ),
                }
            )
    return rows


def cmd_status(args: argparse.Namespace) -> int:
    """Per experiment and variant: state, burn rates, budget, last decision (see the module docstring)."""
    state = _load(args.config)
    store = _store(state, args.config)
    try:
        lab_state = store.read()
    finally:
        store.close()
    rows = _variant_rows(state, lab_state)
    canaries = _canary_statuses(state, lab_state)
    from .bandit_controller import bandit_statuses, render_bandits

    bandits = bandit_statuses(state, lab_state)
    report = lab_state.report or {}
    budget = report.get("budget") or {}
    halt = lab_state.all.to_json() if lab_state.all is not None else None
    if args.json:
        print(
            json.dumps(
                {
                    "store": store.description,
                    "seq": lab_state.seq,
                    "updated_at": lab_state.updated_at,
                    "last_round": report.get("at"),
                    "faults_halted": halt,
                    "killed": {k: m.to_json() for k, m in lab_state.killed.items()},
                    "budget": budget or None,
                    "variants": rows,
                    "canaries": canaries,
                    "bandits": bandits,
                },
                ensure_ascii=False,
                default=str,
            )
        )
        return 0
    print(f"state: {store.description} (seq {lab_state.seq}, updated {lab_state.updated_at or 'never'})")
    print(f"controller's last round: {report.get('at') or 'none yet (run fieldlab watch)'}")
    if halt:
        print(
            f"ALL faults halted ({halt.get('cause')}, {halt.get('at')} by {halt.get('by')}): {halt.get('reason', '')}"
        )
    if budget:
        print(
            f"experimentation budget: {100 * (budget.get('used') or 0):.3g} % used ({budget.get('spent')} of "
            f"{budget.get('allowed')} excess errors allowed over {budget.get('period')})"
        )
        per = budget.get("experiments") or {}
        for k, x in per.items():
            share = 100 * x / budget["allowed"] if budget.get("allowed") else 0.0
            print(f"  {k}: {x} excess errors ({share:.3g} % of the allowance)")
    current = None
    for r in rows:
        if r["experiment"] != current:
            current = r["experiment"]
            print(f"{current}:")
        tags = [r["state"]] + (["faults killed"] if r["faults_killed"] else []) + (["alert"] if r["alert"] else [])
        burns = ", ".join(
            f"{w['sli']} {w['pair']} {w['long']:.3g}x/{w['short']:.3g}x{' FIRING' if w['firing'] else ''}"
            for w in r["burn_rates"]
        )
        line = f"  {r['variant']:16} {' + '.join(tags):24}"
        if r["control"]:
            line += " (control)"
        if r["outcome"]:
            line += f" last round: {r['outcome']}"
        if burns:
            line += f"; burn {burns}"
        print(line)
        d = r["last_decision"]
        if d:
            print(
                f"  {'':16} last decision: {d['action']} ({d['cause']}) {d['at']} by {d['by']}"
                f"{': ' + d['reason'] if d['reason'] else ''}"
            )
    render_bandits(bandits, sys.stdout)
    if canaries:
        from .canary_cli import render_status

        render_status(canaries, sys.stdout)
    return 0


def _canary_statuses(state: Any, lab_state: Any) -> list[dict[str, Any]]:
    """The sick canaries' dose-response, breaking point and budget, as ``fieldlab canary status`` shows them."""
    if not state.canaries:
        return []
    from .canary_controller import status_of

    return [status_of(c, lab_state.canaries.get(c.key)) for c in state.canaries]


# ----------------------------------------------------------------------------- resume


def cmd_resume(args: argparse.Namespace) -> int:
    """Lift a pause (a variant, or every paused variant of the experiment); logged in the state's history."""
    from .state import Decision

    state = _load(args.config)
    exp = state.experiments.get(args.experiment)
    if exp is None and not args.force:
        raise FieldLabError(
            f"unknown experiment {args.experiment!r} in {args.config} (it has "
            f"{', '.join(sorted(state.experiments)) or 'none'}); check the key, or pass --force"
        )
    if args.variant is not None and exp is not None and args.variant not in exp.variant_names and not args.force:
        raise FieldLabError(
            f"unknown variant {args.variant!r} of {args.experiment!r} (it has "
            f"{', '.join(exp.variant_names)}); check the name, or pass --force"
        )
    store = _store(state, args.config)
    try:
        before = store.read().paused.get(args.experiment, {})
        new, applied = store.record(
            [Decision("resume", args.experiment, args.variant, "operator", args.reason or "", _user(), iso_time())]
        )
    finally:
        store.close()
    if not applied:
        what = f"{args.experiment}/{args.variant}" if args.variant else f"any variant of {args.experiment}"
        print(f"nothing to resume: {what} is not paused")
        return 0
    lifted = sorted(set(before) - set(new.paused.get(args.experiment, {})))
    print(
        f"resumed {', '.join(f'{args.experiment}/{v}' for v in lifted)} (by {applied[0].by}, seq {new.seq}"
        f"{': ' + args.reason if args.reason else ''})"
    )
    print(
        f"every process following {store.description} serves them again within "
        f"{state.state_poll_interval:g} s; the controller pauses them again if they still burn their budget"
    )
    return 0


def add_parsers(subparsers: Any) -> None:
    """Register ``fieldlab watch``, ``status`` and ``resume`` (called by :mod:`fieldlab.cli`)."""
    p = subparsers.add_parser("watch", help="run the guardrail controller: pause variants that burn the budget")
    p.add_argument("config", metavar="CONFIG")
    p.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="OTLP JSON-lines files, directories or globs, or a clickhouse:// URL",
    )
    p.add_argument("--interval", type=float, default=60.0, metavar="SECONDS", help="seconds between rounds (60)")
    p.add_argument("--once", action="store_true", help="run one round and exit")
    p.add_argument("--json", action="store_true", help="one JSON object per round, with every verdict's evidence")
    p.add_argument(
        "--engine",
        choices=("auto", "chdb", "python"),
        default="auto",
        help="how to read files: embedded ClickHouse (chdb) or the Python reader",
    )
    p.set_defaults(func=cmd_watch)

    p = subparsers.add_parser("status", help="guardrail state: paused, killed, burn rates, budget, decisions")
    p.add_argument("config", metavar="CONFIG")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = subparsers.add_parser("resume", help="lift a guardrail pause (logged like kill)")
    p.add_argument("config", metavar="CONFIG")
    p.add_argument("experiment", metavar="EXPERIMENT")
    p.add_argument("--variant", metavar="V", help="only this variant (default: every paused variant)")
    p.add_argument("--reason", help="why (recorded in the state's history), e.g. an incident id")
    p.add_argument("--force", action="store_true", help="resume an experiment or variant the config does not declare")
    p.set_defaults(func=cmd_resume)
