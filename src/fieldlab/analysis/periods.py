"""Paused periods kept apart: the comparison of each treatment against control within each period of an
experiment's life that a guardrail pause or resume delimits.

A pause changes what a variant's units get: control, with ``fieldlab.guardrail.<key>`` = the paused variant
on the span. The headline analysis stays intent-to-treat over the whole run (a unit counts in the variant it
was assigned, paused or not), which dilutes the variant's effect towards zero. :func:`analyze_periods` adds,
per period (before the pause, while a variant is paused, after the resume), the same comparison computed on
the requests that started in that period only: the effect of the variant while it was served, and, while
paused, what its control-served units did (about no difference, unless something else changed).

Each period is one run of the analysis's own aggregation with a ``[since, until)`` window
(:class:`~.model.TimeWindow`), so both engines (SQL on ClickHouse or chdb, and the Python twin) compute it
as they compute the headline. Which periods an experiment had is the caller's business: the guardrail
decisions of the lab state store are turned into :class:`Period` s by
:func:`fieldlab.control.report.pause_periods`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .. import attributes as A
from .model import Aggregates, TimeWindow

__all__ = ["Period", "analyze_periods", "period_note"]


@dataclass(frozen=True)
class Period:
    """A stretch of an experiment's life with one set of paused variants.

    ``label``: ``before``, ``paused one-page``, ``after resume`` (a repeat gets `` (2)``). Bounds are integer
    nanoseconds since the epoch, half-open ``[since_ns, until_ns)``, None = open. ``opened_by``: the words of
    the decision that started the period ("" for the first).
    """

    label: str
    since_ns: int | None
    until_ns: int | None
    paused: tuple[str, ...] = ()
    opened_by: str = ""

    def within(self, outer: TimeWindow | None) -> TimeWindow | None:
        """This period's window cut to ``outer`` (the user's ``--since`` / ``--until``); None when empty."""
        lo, hi = self.since_ns, self.until_ns
        if outer is not None:
            if outer.since_ns is not None:
                lo = outer.since_ns if lo is None else max(lo, outer.since_ns)
            if outer.until_ns is not None:
                hi = outer.until_ns if hi is None else min(hi, outer.until_ns)
        if lo is not None and hi is not None and hi <= lo:
            return None
        return TimeWindow(lo, hi)


#: What a period keeps of a comparison (the rest is in the headline's ``comparisons``).
_COMPARISON_KEYS = ("estimate", "ci_low", "ci_high", "relative", "p_value_adjusted", "why")


def analyze_periods(
    sources: Any,
    config: Any,
    periods: Mapping[str, Sequence[Period]],
    *,
    metrics: Sequence[Any] = (),
    all_assigned: bool = False,
    sequential: bool = True,
    alpha: float = 0.05,
    tuning: float = 5000.0,
    engine: str = "auto",
    max_line_bytes: int | None = None,
    min_units: int | None = None,
    where: Sequence[Any] = (),
    since: Any = None,
    until: Any = None,
    progress: Callable[[str], None] | bool | None = None,
    looks: int = 0,
) -> dict[str, list[dict[str, Any]]]:
    """Per experiment of ``periods``, one entry per period: its window, paused variants, units and requests
    per variant (and how many requests were served control by the pause), the comparisons of every
    treatment against control on the primary metrics (error rate, latency, the custom metrics) with
    intervals, and a verdict. Takes :func:`~.core.analyze`'s options (the same metrics, filters and
    population as the headline; ``since`` / ``until`` cut every period; ``looks`` is accepted and unused: a
    period has no interval over time). One aggregation per distinct window.
    """
    from .core import MIN_UNITS_PER_ARM, _aggregate, _analyze_experiment, _clean, _options, _with_window, load_config
    from .reader import MAX_LINE_BYTES

    opts = _options(
        metrics,
        where,
        all_assigned,
        sequential,
        alpha,
        tuning,
        0,  # no interval over time inside a period
        MIN_UNITS_PER_ARM if min_units is None else min_units,
    )
    opts = _with_window(opts, since, until)
    lab = load_config(config)
    line_cap = MAX_LINE_BYTES if max_line_bytes is None else max_line_bytes
    cache: dict[tuple[int | None, int | None], Aggregates] = {}
    out: dict[str, list[dict[str, Any]]] = {}
    for key, plist in periods.items():
        cfg = lab.experiments.get(key) if lab is not None else None
        rows = []
        for p in plist:
            window = p.within(opts.window)
            row: dict[str, Any] = {
                "label": p.label,
                "since": None if p.since_ns is None else p.since_ns / 1e9,
                "until": None if p.until_ns is None else p.until_ns / 1e9,
                "paused": list(p.paused),
                "opened_by": p.opened_by,
            }
            if window is None:
                row.update(verdict="no data", notes=["outside the --since / --until window"], variants={})
                rows.append(row)
                continue
            wkey = (window.since_ns, window.until_ns)
            if wkey not in cache:
                cache[wkey] = _aggregate(sources, lab, replace(opts, window=window), engine, line_cap, progress)
            part = _analyze_experiment(cache[wkey].experiments.get(key), cfg, lab is None, opts)
            row.update(_period_row(part))
            rows.append(row)
        out[key] = _clean(rows)
    return out


def _period_row(part: Mapping[str, Any]) -> dict[str, Any]:
    """The compact part of one experiment's analysis that a period shows."""
    variants = {
        v: {
            "units": s["units"],
            "assigned_units": s["assigned_units"],
            "requests": s["requests"],
            "served_control_requests": s.get("served_control_requests", 0),
            "error_rate": s["error_rate"],
            "latency_ms": s["latency_ms"]["mean"],
            "metrics": dict(s["metrics"]),
        }
        for v, s in part["variants"].items()
    }
    comps = {
        v: {name: {k: c.get(k) for k in _COMPARISON_KEYS if k in c} for name, c in cs.items()}
        for v, cs in (part.get("comparisons") or {}).items()
    }
    srm = part.get("srm") or {}
    row: dict[str, Any] = {
        "verdict": part["verdict"],
        "verdicts": dict(part.get("verdicts") or {}),
        "srm_p_value": srm.get("p_value"),
        "srm_mismatch": bool(srm.get("mismatch")),
        "variants": variants,
        "served_control_requests": sum(s["served_control_requests"] or 0 for s in variants.values()),
        "comparisons": comps,
    }
    if part.get("why"):
        row["why"] = part["why"]
    return row


def period_note(key: str, rows: Sequence[Mapping[str, Any]]) -> str:
    """The experiment's note on its periods: which one the pause changed, what it measures, and that the
    headline stays intent-to-treat."""
    paused = [r for r in rows if r.get("paused")]
    names = ", ".join(f"'{r['label']}'" for r in paused) or "none"
    served = sum(int(r.get("served_control_requests") or 0) for r in paused)
    return (
        f"periods: the pause changed {names}: there the paused variant's units were served control "
        f"({served:,} request(s) with {A.guardrail_attr(key)}), so that period measures control-served units, "
        "not the variant; 'before' measures the variant as it was served. The headline verdict is "
        "intent-to-treat over the whole run"
    )
