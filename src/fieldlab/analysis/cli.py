"""The ``fieldlab analyze`` and ``fieldlab balance`` subcommands.

Registered by :func:`add_parsers`; each command returns an exit code and turns
every expected failure into one line on stderr (no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["add_parsers", "cmd_analyze", "cmd_balance"]


def _fail(command: str, message: str) -> int:
    print(f"fieldlab {command}: {message}", file=sys.stderr)
    return 2


def _progress(args: argparse.Namespace):
    from .progress import progress_printer

    return progress_printer(bool(args.progress) or (sys.stderr.isatty() and not args.no_progress))


def cmd_analyze(args: argparse.Namespace) -> int:
    """``fieldlab analyze SOURCE...``: tables (default), ``--json`` and/or ``--html FILE``."""
    from ..errors import FieldLabError
    from .core import analyze
    from .report import render_json, render_text, write_html

    show = _progress(args)
    options = _analyze_options(args)
    try:
        result = analyze(args.sources, args.config, experiments=args.experiment, progress=show, **options)
    except (FieldLabError, ValueError) as exc:
        if show:
            sys.stderr.write("\n")
        return _fail("analyze", str(exc))
    except OSError as exc:
        return _fail("analyze", f"{exc.filename or ''}: {exc.strerror or exc}")
    if show:
        sys.stderr.write("\r" + " " * 100 + "\r")
    if args.config:  # the guardrails' decisions on the report's timeline (fieldlab.control.report)
        from ..control.report import add_decisions

        add_decisions(result, args.config, sources=args.sources, options=options)
    if args.html:
        try:
            write_html(result, args.html)
        except OSError as exc:
            return _fail("analyze", f"--html {args.html}: {exc.strerror or exc}; choose a writable path")
    if args.json:
        sys.stdout.write(render_json(result) + "\n")
    else:
        sys.stdout.write(render_text(result))
        if args.html:
            sys.stdout.write(f"HTML report written to {args.html}\n")
    return 0


def _analyze_options(args: argparse.Namespace) -> dict[str, Any]:
    """How ``analyze`` judges, from the flags: the headline and the paused periods share them."""
    return {
        "metrics": args.metric or (),
        "all_assigned": args.all_assigned,
        "sequential": not args.fixed_horizon,
        "alpha": args.alpha,
        "tuning": args.tuning,
        "engine": args.engine,
        "max_line_bytes": args.max_line_bytes,
        "min_units": args.min_units,
        "where": args.where or (),
        "since": getattr(args, "since", None),
        "until": getattr(args, "until", None),
    }


def cmd_balance(args: argparse.Namespace) -> int:
    """``fieldlab balance CONFIG EXPERIMENT SOURCE...``: an A/A check of a planned split on past data."""
    from ..errors import FieldLabError
    from .balance import balance, render_balance

    try:
        result = balance(
            args.config,
            args.experiment,
            args.sources,
            metrics=args.metric or (),
            salt=args.salt,
            alpha=args.alpha,
            tries=args.tries,
            engine=args.engine,
            max_line_bytes=args.max_line_bytes,
        )
    except (FieldLabError, ValueError) as exc:
        return _fail("balance", str(exc))
    except OSError as exc:
        return _fail("balance", f"{exc.filename or ''}: {exc.strerror or exc}")
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        sys.stdout.write(render_balance(result))
    return 0 if result["balanced"] else 1


def _byte_size(text: str) -> int:
    """``--max-line-bytes``: a whole number of bytes, or with a K/M/G suffix (binary: 16M = 16 MiB)."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    try:
        n = int(t[:-1] if scale > 1 else t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write e.g. 16M or 1048576") from None
    if n < 1024:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 1K")
    return n


def _max_line_arg(p: argparse.ArgumentParser) -> None:
    from .reader import MAX_LINE_BYTES

    p.add_argument(
        "--max-line-bytes",
        type=_byte_size,
        default=MAX_LINE_BYTES,
        metavar="SIZE",
        help="skip (and count) file lines longer than this, so memory never grows with one huge line "
        f"(default {MAX_LINE_BYTES >> 20}M; K/M/G suffixes)",
    )


def add_parsers(subparsers: Any) -> None:
    """Register ``analyze`` and ``balance`` on the main ``fieldlab`` parser."""
    p = subparsers.add_parser(
        "analyze",
        help="analyse experiments from trace data (OTLP JSON files or ClickHouse)",
        description="Analyse every experiment found on SERVER spans: sample-ratio check, error rate, latency, "
        "custom metrics, peek-safe intervals and a verdict per variant.",
    )
    p.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="OTLP JSON-lines file(s) (.gz ok), a directory, a glob, or clickhouse://user:pw@host:8123/db?table=otel_traces",
    )
    p.add_argument(
        "--config",
        help="lab config (weights for SRM, unit kinds, control, holdouts); without it weights "
        "are assumed equal and unit kinds inferred",
    )
    p.add_argument(
        "--metric",
        action="append",
        metavar="ATTR[=VALUE]",
        help="custom metric from a span attribute: ATTR = numeric mean per request, ATTR=VALUE = share "
        "of units with any such request (conversion); write --metric=-ATTR when lower is better. Repeatable.",
    )
    p.add_argument("--experiment", action="append", metavar="KEY", help="only these experiments (repeatable)")
    p.add_argument(
        "--where",
        action="append",
        metavar="ATTR=VALUE",
        help="only requests whose span attribute has this value, e.g. --where http.route=/checkout "
        "--where method=POST (route = http.route, path = url.path, method = http.request.method "
        "or the older http.method); repeatable, all must match",
    )
    p.add_argument(
        "--since",
        metavar="TIME",
        help="only requests that started at or after TIME: ISO-8601 (2026-12-04T20:00:00Z; no zone = UTC) "
        "or seconds since the epoch",
    )
    p.add_argument(
        "--until",
        metavar="TIME",
        help="only requests that started before TIME (the window is [since, until)); same formats as --since",
    )
    p.add_argument(
        "--all-assigned", action="store_true", help="intent-to-treat: every assigned unit, not only the exposed ones"
    )
    p.add_argument(
        "--fixed-horizon",
        action="store_true",
        help="fixed-horizon Welch intervals (valid only for a single look at a planned size)",
    )
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    p.add_argument(
        "--tuning",
        type=float,
        default=5000.0,
        help="confidence-sequence tuning parameter: the sample size where it is tightest (default 5000)",
    )
    p.add_argument(
        "--engine",
        choices=("auto", "chdb", "python"),
        default="auto",
        help="file reader: embedded ClickHouse (chdb, default when installed) or pure Python",
    )
    from .core import MIN_UNITS_PER_ARM

    p.add_argument(
        "--min-units",
        type=int,
        default=MIN_UNITS_PER_ARM,
        metavar="N",
        help="analysed units needed in every arm before any interval or verdict "
        f"(default {MIN_UNITS_PER_ARM}, at least 2)",
    )
    _max_line_arg(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--html", metavar="FILE", help="write a self-contained HTML report with plots")
    p.add_argument("--progress", action="store_true", help="show progress on stderr even when it is not a terminal")
    p.add_argument("--no-progress", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_analyze)

    b = subparsers.add_parser(
        "balance",
        help="before launch: check a planned split (or a new --salt) on past traffic (an A/A test)",
        description="Recompute which historical units would fall into each arm of EXPERIMENT and compare their "
        "past behaviour. Needs raw unit ids on the pre-period spans.",
    )
    b.add_argument("config", help="lab config holding the planned experiment")
    b.add_argument("experiment", help="experiment key")
    b.add_argument(
        "sources", nargs="+", metavar="SOURCE", help="pre-period OTLP JSON files/dirs/globs or a clickhouse:// URL"
    )
    b.add_argument("--metric", action="append", metavar="ATTR[=VALUE]", help="extra metric to balance (repeatable)")
    b.add_argument("--salt", help="check this salt instead of the configured one")
    b.add_argument(
        "--alpha", type=float, default=0.05, help="flag imbalance at this Holm-adjusted level (default 0.05)"
    )
    b.add_argument("--tries", type=int, default=50, help="salts to try when suggesting a replacement (default 50)")
    b.add_argument("--engine", choices=("auto", "chdb", "python"), default="auto", help=argparse.SUPPRESS)
    _max_line_arg(b)
    b.add_argument("--json", action="store_true", help="print the result as JSON")
    b.set_defaults(func=cmd_balance)
