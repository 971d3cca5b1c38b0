"""The ``fieldlab`` command: validate, assign, token, segment, and the commands other parts add.

Errors are one clear line on stderr and a non-zero exit, never a traceback.
Subcommands that live with their feature (analysis, demo, kill switch) register
themselves through an ``add_parsers(subparsers)`` function in their module.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from ._units import is_unit_text
from .errors import ConfigError, FieldLabError

__all__ = ["main", "build_parser", "EXTRAS", "missing_extra_message"]

# Modules that add their own subcommands; each has add_parsers(subparsers).
_PLUGINS = (
    "fieldlab.analysis.cli",
    "fieldlab.demo",
    "fieldlab.killswitch",
    "fieldlab.control.cli",
    "fieldlab.control.canary_cli",
)


class CommandError(FieldLabError):
    """A user-facing CLI failure: printed as one line, exit code 2."""


#: Optional dependency (top-level module) -> the extra that installs it.
EXTRAS = {
    "numpy": "analysis",
    "scipy": "analysis",
    "chdb": "analysis",
    "clickhouse_connect": "clickhouse",
    "yaml": "yaml",
    "redis": "redis",
    "opentelemetry": "otel",
}


def missing_extra_message(exc: ImportError) -> str:
    """One line for a missing optional dependency: what is missing and the extra that installs it."""
    name = (exc.name or "").split(".")[0]
    extra = EXTRAS.get(name)
    if extra is None:
        return f"{exc}; install the missing package"
    return f"this command needs {name}, which is not installed: pip install 'fieldlab[{extra}]'"


def _load_lab(path: str, **kw: Any):
    from .lab import Lab

    return Lab.from_file(path, reload_interval=0, **kw)


def _cmd_validate(args: argparse.Namespace) -> int:
    lab = _load_lab(args.config)
    n = len(lab.experiments)
    print(
        f"{args.config}: valid, config version {lab.version}: {n} experiment{'s' * (n != 1)}, "
        f"{len(lab.layers)} layer(s), {len(lab.holdouts)} holdout(s)"
    )
    for exp in lab.experiments.values():
        ranges = ", ".join(f"{name} [{lo}, {hi})" for name, (lo, hi) in exp.ranges().items())
        extra = (
            f" layer {exp.layer} [{exp.layer_range[0] / 100:g}%, {exp.layer_range[1] / 100:g}%)" if exp.layer else ""
        )
        if exp.kind == "bandit":
            from .control.bandit_config import view_of
            from .control.settings import format_duration

            ranges = ", ".join(f"{name} [{lo}, {hi})" for lo, hi, name, _ in view_of(exp).ranges())
            b = exp.bandit
            extra += (
                f" bandit on {b.metric_kind} {b.metric} every {format_duration(b.interval)}, floor {b.floor:g}%, "
                f"burn-in {b.burn_in}{f', slices of {b.slice:g}%' if b.slice else ''}; version 0"
            )
        print(f"  {exp.key}: {exp.status}, unit {exp.unit}, traffic {exp.traffic:g}%{extra}: {ranges}")
    plan = lab._state.fault_plan
    if plan.radius:
        from .faults import blast_radius

        radius = blast_radius(lab)
        parts = ", ".join(f"{name} {share:.2f}%" for name, share in radius["variants"].items())
        print(
            f"  faults: {'enabled' if plan.enabled else 'disabled (set [faults] enabled = true)'}; "
            f"blast radius {radius['total']:.2f}% of a {radius['cap']:g}% cap ({parts})"
        )
    g = lab._state.guardrails.lab
    pairs = ", ".join(f"{w.name} at {w.burn_rate:g}x" for w in g.windows)
    print(
        f"  guardrails: service SLO {g.service_slo:g} %, windows {pairs}, {g.min_units} units per arm; "
        f"state {lab._state.state_url or '(none)'}"
    )
    return 0


def _parse_attrs(pairs: Sequence[str]) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    for pair in pairs or ():
        if "=" not in pair:
            raise CommandError(f"--attr {pair!r}: expected key=value, e.g. --attr country=DE")
        k, v = pair.split("=", 1)
        try:
            attrs[k] = json.loads(v) if v[:1] in "0123456789-[{" or v in ("true", "false", "null") else v
        except ValueError:
            attrs[k] = v
    return attrs


def _check_unit(uid: str, where: str) -> str:
    """``uid`` if it is text with a UTF-8 form; else a CommandError (bytes that are not UTF-8 have no bucket)."""
    if not is_unit_text(uid):
        shown = uid.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise CommandError(
            f"{where}: unit id '{shown}' is not valid UTF-8, so it has no bucket; pass the id as UTF-8 text"
        )
    return uid


def _cmd_assign(args: argparse.Namespace) -> int:
    lab = _load_lab(args.config)
    attrs = _parse_attrs(args.attr)
    unit = _check_unit(args.unit, "--unit")
    units = {kind: unit for kind in {e.unit for e in lab.experiments.values()}}
    for kind_unit in args.unit_kind or ():
        if "=" not in kind_unit:
            raise CommandError(f"--unit-kind {kind_unit!r}: expected kind=id, e.g. --unit-kind session=s-42")
        kind, uid = kind_unit.split("=", 1)
        units[kind] = _check_unit(uid, f"--unit-kind {kind}")
    tokens = args.override or ()
    results = lab.assign_all(units, attrs, overrides=tokens if tokens else None)
    keys = [args.experiment] if args.experiment else list(results)
    for key in keys:
        if key not in results:
            raise CommandError(f"unknown experiment {key!r}; the config has {', '.join(sorted(results))}")
        a = results[key]
        if args.json:
            print(json.dumps(a.to_dict(), ensure_ascii=False))
        else:
            extra = f" (holdout {a.holdout})" if a.holdout else ""
            bucket = "-" if a.bucket is None else a.bucket
            print(f"{key:32} {a.variant or '-':16} bucket {bucket!s:>5}  {a.reason}{extra}")
    return 0


def _cmd_token(args: argparse.Namespace) -> int:
    from .overrides import parse_duration

    lab = _load_lab(args.config)
    if lab.secret is None:
        env = lab.settings.get("secret_env", "FIELDLAB_SECRET")
        raise CommandError(f"no secret: set the environment variable {env} (lab.secret_env) to sign override tokens")
    try:
        token = lab.make_token(args.experiment, args.variant, parse_duration(args.ttl))
    except ConfigError as exc:  # the library names its arguments; the command names its flags
        raise ConfigError(f"--{exc.path}", exc.problem, exc.fix) from None
    print(token)
    return 0


def _cmd_segment(args: argparse.Namespace) -> int:
    from .sql import clickhouse_expression

    lab = _load_lab(args.config)
    if args.experiment not in lab.experiments:
        raise CommandError(
            f"unknown experiment {args.experiment!r}; the config has {', '.join(sorted(lab.experiments))}"
        )
    exp = lab.experiments[args.experiment]
    if args.sql:
        if exp.targeting:
            print(
                f"note: {exp.key} has targeting, which SQL over unit ids cannot reproduce; "
                "the expression covers status, holdouts, layer and traffic",
                file=sys.stderr,
            )
        print(clickhouse_expression(lab, exp.key, args.sql))
        return 0
    if not args.units:
        raise CommandError("segment needs --units FILE (one unit id a line, - for stdin) or --sql COLUMN")
    # Bytes in, strict UTF-8 per line: the ids are hashed as the UTF-8 text they are, and a
    # file that is not UTF-8 is one clear error naming the line, never a traceback.
    name = "<stdin>" if args.units == "-" else args.units
    stream = sys.stdin.buffer if args.units == "-" else open(args.units, "rb")
    with stream:
        out = sys.stdout
        for number, raw in enumerate(stream, 1):
            try:
                uid = raw.decode("utf-8-sig" if number == 1 else "utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                raise CommandError(
                    f"{name}: line {number}: not valid UTF-8 text ({exc.reason} at byte {exc.start}); "
                    "save the units file as UTF-8"
                ) from None
            if not uid:
                continue
            _check_unit(uid, f"--units {args.units} line {number}")
            a = lab.assign(exp.key, uid)
            out.write(f"{uid}\t{a.variant if a.variant is not None else ''}\n")
    return 0


_skipped: dict[str, str] = {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fieldlab", description="Deterministic experiments in production, measured from your traces."
    )
    parser.add_argument("--version", action="version", version=f"fieldlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("validate", help="check a config file and show each experiment's bucket ranges")
    p.add_argument("config")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("assign", help="show the variants a unit gets")
    p.add_argument("config")
    p.add_argument("--unit", required=True, help="unit id (used for every unit kind unless --unit-kind says otherwise)")
    p.add_argument("--unit-kind", action="append", metavar="KIND=ID", help="a unit id for one kind, e.g. session=s-42")
    p.add_argument("--attr", action="append", metavar="K=V", help="a targeting attribute (repeatable)")
    p.add_argument("--experiment", help="only this experiment")
    p.add_argument("--override", action="append", metavar="TOKEN", help="a signed override token")
    p.add_argument("--json", action="store_true", help="one JSON object per experiment")
    p.set_defaults(func=_cmd_assign)

    p = sub.add_parser("token", help="make a signed, expiring QA override token")
    p.add_argument("config")
    p.add_argument("--experiment", required=True)
    p.add_argument("--variant", required=True)
    p.add_argument("--ttl", default="1h", help="lifetime, e.g. 30m, 1h, 7d (default 1h)")
    p.set_defaults(func=_cmd_token)

    p = sub.add_parser("segment", help="list units' variants, or print ClickHouse SQL that recomputes them")
    p.add_argument("config")
    p.add_argument("experiment")
    p.add_argument("--units", metavar="FILE", help="one unit id a line (- for stdin); prints id<TAB>variant")
    p.add_argument("--sql", metavar="COLUMN", help="print a ClickHouse expression over COLUMN")
    p.set_defaults(func=_cmd_segment)

    for name in _PLUGINS:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            # A part whose optional dependencies are missing leaves its commands out
            # rather than breaking every other command.
            _skipped[name] = str(exc)
            continue
        module.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        for name, why in _skipped.items():
            if not name.endswith((".demo", ".killswitch")) or "No module named 'fieldlab." not in why:
                print(f"note: commands of {name} are unavailable: {why}", file=sys.stderr)
        return 2
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a reader that went away shows up here, not at interpreter exit
        return code
    except BrokenPipeError:  # before OSError, its base class: `fieldlab segment ... | head -1`
        return _stdout_closed()
    except ImportError as exc:  # an optional dependency a command needs (numpy for analyze, ...)
        print(f"fieldlab {args.command}: {missing_extra_message(exc)}", file=sys.stderr)
        return 2
    except FieldLabError as exc:
        print(f"fieldlab {args.command}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"fieldlab {args.command}: {exc.filename or ''}: {exc.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _stdout_closed() -> int:
    """The reader of our output closed it (``| head``): stop quietly, exit 0, as ripgrep does.

    stdout is pointed at /dev/null first, so the interpreter's final flush of
    what is still buffered cannot fail with a second BrokenPipeError.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a real file (e.g. captured): nothing will flush to it
        pass
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
