"""``analyze()``: from spans to verdicts, as one JSON-ready dict.

Order of judgement, per experiment: sample-ratio check first (an experiment
with SRM is invalid and no effect is read from it), then guardrails (error rate
and mean latency per request must not get worse), then the primary metrics.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .model import (
    Aggregates,
    ExperimentData,
    Filter,
    GroupData,
    Metric,
    QuerySpec,
    SourceError,
    TimeWindow,
    hist_value_ms,
    parse_metric,
    parse_where,
    time_window,
)
from .reader import MAX_LINE_BYTES
from .sources import Source, open_source

__all__ = ["analyze", "load_config", "GUARDRAILS", "RESULT_VERSION", "MIN_UNITS_PER_ARM"]

RESULT_VERSION = 1
#: Built-in metrics; both are guardrails (lower is better).
GUARDRAILS = ("error_rate", "latency_ms")
_QS = (0.5, 0.9, 0.99)
#: The requests the latency mean and percentiles describe (named in the JSON and the table).
LATENCY_TRIGGER = "all requests of exposed units"
LATENCY_ITT = "all requests of assigned units"
LATENCY_HOLDOUT = "all requests of held-out units"
#: Fewer analysed units than this in the control or a treatment: no interval, no p-value, no verdict
#: ("insufficient data"). The intervals are asymptotic (normal approximation over units); below a few
#: dozen units per arm their coverage is not to be trusted, whatever the data look like. docs/statistics.md.
MIN_UNITS_PER_ARM = 30


def _size(n: int) -> str:
    return f"{n / 1048576:g} MiB" if n % 1048576 == 0 else f"{n:,} bytes"


def load_config(config: Any) -> Any:
    """A :class:`fieldlab.Lab` from a path, or the Lab itself (None stays None)."""
    if config is None:
        return None
    if hasattr(config, "experiments"):
        return config
    from ..lab import Lab

    path = os.fspath(config)
    if not os.path.exists(path):
        raise SourceError(f"{path}: config file not found; pass the lab config (TOML/JSON) with --config")
    return Lab.from_file(path, reload_interval=0)


def _f(x: Any) -> Any:
    """A JSON-safe float (NaN/inf become None)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _metric_estimate(g: GroupData, metric: str | Metric) -> Any:
    from .stats import ratio_estimate

    if metric == "error_rate":
        return ratio_estimate(g.errors, g.requests, proportion=True)
    if metric == "latency_ms":
        return ratio_estimate(g.latency_sum_ms, g.requests)
    assert isinstance(metric, Metric)
    if metric.kind == "conversion":
        return ratio_estimate(g.conversions[metric.name], proportion=True)
    return ratio_estimate(g.metric_sums[metric.name], g.metric_counts[metric.name])


def _variant_summary(
    g: GroupData, assigned: GroupData, metrics: Sequence[Metric], exposed_hist: bool, population: str
) -> dict[str, Any]:
    """Counts, error rate, latency and metrics of ``g``; mean and percentiles describe the same requests:
    all requests of the units in ``g`` (``hist_exposed`` holds exactly the exposed units' requests)."""
    from .stats import hist_quantiles

    requests = float(g.requests.sum())
    errors = float(g.errors.sum())
    hist = g.hist_exposed if exposed_hist else g.hist_all
    p50, p90, p99 = hist_quantiles(g.hist_bins, hist, _QS, hist_value_ms)
    out: dict[str, Any] = {
        "units": g.units,
        "assigned_units": assigned.units,
        "requests": int(requests),
        "exposed_requests": int(g.exposed_requests.sum()) if g.exposed_requests is not None else None,
        # requests served control while the variant was paused (fieldlab.guardrail.<key>), counted here (ITT)
        "served_control_requests": int(g.guarded_requests.sum()) if g.guarded_requests is not None else None,
        "errors": int(errors),
        "error_rate": _f(errors / requests) if requests else None,
        "latency_ms": {
            "population": population,
            "mean": _f(g.latency_sum_ms.sum() / requests) if requests else None,
            "p50": _f(p50),
            "p90": _f(p90),
            "p99": _f(p99),
        },
        "metrics": {},
    }
    for m in metrics:
        out["metrics"][m.name] = _f(_metric_estimate(g, m).value) if g.units else None
    return out


def _hist_for_report(g: GroupData, exposed_hist: bool) -> dict[str, list]:
    hist = g.hist_exposed if exposed_hist else g.hist_all
    keep = hist > 0
    return {"bins_ms": [_f(v) for v in hist_value_ms(g.hist_bins[keep])], "counts": [int(c) for c in hist[keep]]}


def _judge(comps: Mapping[str, Any], metrics: Sequence[Metric], alpha: float) -> str:
    """A verdict in words from one treatment's comparisons."""
    for name in GUARDRAILS:
        c = comps.get(name) or {}
        if c.get("p_value_adjusted") is not None and c["p_value_adjusted"] < alpha and c["estimate"] > 0:
            return f"guardrail breached: {name} worse"
    primary = [(m.name, m.higher_is_better) for m in metrics] or [(g, False) for g in GUARDRAILS]
    for name, higher in primary:
        c = comps.get(name) or {}
        if c.get("p_value_adjusted") is not None and c["p_value_adjusted"] < alpha and c["estimate"] != 0:
            better = (c["estimate"] > 0) == higher
            return f"treatment {'better' if better else 'worse'} on {name}"
    return "keep running"


@dataclass(frozen=True)
class _Options:
    """How every experiment is judged (the keyword arguments of :func:`analyze`, checked)."""

    metrics: tuple[Metric, ...]
    filters: tuple[Filter, ...]
    all_assigned: bool
    sequential: bool
    alpha: float
    tuning: float
    looks: int
    min_units: int
    #: ``--since`` / ``--until`` (None: every span)
    window: TimeWindow | None = None

    @property
    def latency_population(self) -> str:
        return LATENCY_ITT if self.all_assigned else LATENCY_TRIGGER


@dataclass
class _Arms:
    """An experiment's arms as the analysis sees them: order (control first), weights and unit kind."""

    order: list[str]
    control: str
    weights: dict[str, float]
    unit_kind: str
    unit_source: str


def analyze(
    sources: Any,
    config: Any = None,
    *,
    metrics: Sequence[str | Metric] = (),
    all_assigned: bool = False,
    sequential: bool = True,
    alpha: float = 0.05,
    tuning: float = 5000.0,
    engine: str = "auto",
    experiments: Sequence[str] | None = None,
    progress: Callable[[str], None] | bool | None = None,
    looks: int = 20,
    max_line_bytes: int = MAX_LINE_BYTES,
    min_units: int = MIN_UNITS_PER_ARM,
    where: Sequence[str | Filter] = (),
    since: Any = None,
    until: Any = None,
) -> dict[str, Any]:
    """Analyse every experiment found in ``sources``; returns the ``--json`` structure.

    ``sources``: file paths, directories, globs, a ``clickhouse://`` URL, or a
    :class:`~fieldlab.analysis.sources.Source`. ``config``: a config path or a
    :class:`fieldlab.Lab` (weights for the SRM check, unit kinds, control,
    holdouts); without it weights are assumed equal and unit kinds inferred,
    and the result says so. ``sequential=False`` gives labelled fixed-horizon
    intervals. ``all_assigned=True`` is intent-to-treat instead of the
    default trigger analysis (exposed units only). ``max_line_bytes``: longer
    lines of a file are skipped and counted. ``min_units``: fewer analysed
    units in an arm give no interval and no verdict (``insufficient data``).
    ``where``: ``ATTR=VALUE`` filters (:func:`~fieldlab.analysis.model.parse_where`), e.g.
    ``["http.route=/checkout", "method=POST"]``: only requests that match all of them are analysed.
    ``since`` / ``until``: only requests that started in ``[since, until)`` are read; each is seconds since
    the epoch, an ISO-8601 timestamp (no zone = UTC) or an aware ``datetime`` (:func:`~.model.parse_time`).
    """
    opts = _options(metrics, where, all_assigned, sequential, alpha, tuning, looks, min_units)
    opts = _with_window(opts, since, until)
    lab = load_config(config)
    from .bandits import BanditPlanner  # bandits: each period with its own weights (analysis.bandits)

    bandits = BanditPlanner(lab, opts.metrics)
    agg = _aggregate(sources, lab, opts, engine, max_line_bytes, progress, bandits.extra_metrics())
    result = _result_header(agg, lab, opts, max_line_bytes)
    for key in _experiment_keys(agg, lab, experiments):
        cfg = lab.experiments.get(key) if lab is not None else None
        data = agg.experiments.get(key)
        result["experiments"][key] = _analyze_experiment(data, cfg, lab is None, opts, bandits.plan(key, cfg, data))
    _add_holdouts(result, agg, lab, opts)
    if lab is not None and getattr(lab._state, "canaries", None):  # the sick canaries' dose-response
        from .canaries import analyze_canaries

        result["canaries"] = analyze_canaries(sources, lab, engine=engine, max_line_bytes=max_line_bytes)
    return _clean(result)


def _options(
    metrics: Sequence[str | Metric],
    where: Sequence[str | Filter],
    all_assigned: bool,
    sequential: bool,
    alpha: float,
    tuning: float,
    looks: int,
    min_units: int,
) -> _Options:
    """The checked options; a bad value is a SourceError that names the argument and the fix."""
    if not 0 < alpha < 1:
        raise SourceError(f"alpha {alpha} is outside (0, 1); use e.g. 0.05")
    if not isinstance(min_units, int) or min_units < 2:
        raise SourceError(f"min_units {min_units!r}: give a whole number of at least 2 (default {MIN_UNITS_PER_ARM})")
    mlist = tuple(m if isinstance(m, Metric) else parse_metric(m) for m in metrics)
    names = [m.name for m in mlist]
    if len(set(names)) != len(names) or set(names) & set(GUARDRAILS):
        raise SourceError(
            f"--metric: duplicate or reserved metric names in {names}; give each metric once "
            f"and do not reuse {', '.join(GUARDRAILS)}"
        )
    filters = tuple(f if isinstance(f, Filter) else parse_where(f) for f in where)
    return _Options(mlist, filters, all_assigned, sequential, alpha, tuning, looks, min_units)


def _with_window(opts: _Options, since: Any, until: Any) -> _Options:
    """``opts`` with the ``since`` / ``until`` window (checked: a bad time is a SourceError naming the flag)."""
    from dataclasses import replace

    try:
        window = time_window(since, until)
    except ValueError as exc:
        raise SourceError(str(exc)) from None
    return replace(opts, window=window)


def _aggregate(
    sources: Any,
    lab: Any,
    opts: _Options,
    engine: str,
    max_line_bytes: int,
    progress: Callable[[str], None] | bool | None,
    extra_metrics: Sequence[Metric] = (),
) -> Aggregates:
    """Read the sources once: per-unit aggregates of every experiment and holdout (``extra_metrics``: computed
    too, e.g. a bandit's decision metric, though not reported for every experiment)."""
    unit_kinds = {k: e.unit for k, e in lab.experiments.items()} if lab is not None else {}
    coverage = {h.key: tuple(h.experiments) for h in lab.holdouts.values()} if lab is not None else {}
    src = sources if isinstance(sources, Source) else open_source(sources, engine=engine, max_line_bytes=max_line_bytes)
    metrics = (*opts.metrics, *extra_metrics)
    spec = QuerySpec(
        unit_kinds=unit_kinds,
        metrics=metrics,
        holdout_experiments=coverage,
        filters=opts.filters,
        window=opts.window,
    )
    return src.aggregate(spec, progress if callable(progress) else None)


def _result_header(agg: Aggregates, lab: Any, opts: _Options, max_line_bytes: int) -> dict[str, Any]:
    """The result without experiments: what was read, how it is judged, and notes on the reading."""
    from .stats import SRM_ALPHA

    method = (
        (f"always-valid confidence sequence (asymptotic, tuning parameter {opts.tuning:g}); safe to look at any time")
        if opts.sequential
        else "fixed-horizon Welch t interval: valid only if you look once, at the planned sample size"
    )
    notes: list[str] = []
    if agg.malformed_lines:
        notes.append(f"{agg.malformed_lines} malformed line(s) skipped")
    if agg.long_lines:
        notes.append(
            f"{agg.long_lines} line(s) longer than the {_size(max_line_bytes)} line cap skipped "
            "(raise it with --max-line-bytes)"
        )
    notes += [f"damaged file read up to the damage: {d}" for d in agg.damaged_files]
    if opts.filters:
        notes.append(
            "only requests with "
            + " and ".join(f"{f.name} = {f.value!r}" for f in opts.filters)
            + " are analysed (--where)"
        )
    if opts.window is not None:
        notes.append(f"only requests that started in {opts.window} are read (--since / --until)")
    if lab is None:
        notes.append(
            "no --config: weights assumed equal for the SRM check; unit kind inferred per span "
            "(user if present, else visitor, else session, else the trace id = request)"
        )
    return {
        "fieldlab_analysis": RESULT_VERSION,
        "source": agg.source,
        "engine": agg.engine,
        "seconds": round(agg.seconds, 3),
        "spans": agg.spans,
        "server_spans": agg.server_spans,
        "malformed_lines": agg.malformed_lines,
        "long_lines": agg.long_lines,
        "damaged_files": list(agg.damaged_files),
        "method": {
            "sequential": opts.sequential,
            "description": method,
            "alpha": opts.alpha,
            "srm_alpha": SRM_ALPHA,
            "tuning": opts.tuning if opts.sequential else None,
            "population": "all assigned units (intent-to-treat)"
            if opts.all_assigned
            else "exposed units (trigger analysis: units whose code read the variant)",
            "latency_population": opts.latency_population,
            "min_units_per_arm": opts.min_units,
            "metrics": ["error_rate", "latency_ms"] + [m.name for m in opts.metrics],
            "filters": [str(f) for f in opts.filters],
            "since": opts.window.since if opts.window else None,
            "until": opts.window.until if opts.window else None,
        },
        "notes": notes,
        "experiments": {},
        "holdouts": {},
    }


def _experiment_keys(agg: Aggregates, lab: Any, experiments: Sequence[str] | None) -> list[str]:
    """The experiments to report, sorted: those in the data or the config, narrowed to ``--experiment``."""
    wanted = set(experiments) if experiments else None
    known = set(agg.experiments) | (set(lab.experiments) if lab is not None else set())
    if wanted and lab is not None:
        unknown = wanted - known
        if unknown:
            raise SourceError(
                f"--experiment {sorted(unknown)}: not in the config nor in the data; known: {sorted(known)}"
            )
    return sorted(k for k in known if not wanted or k in wanted)


def _arms(data: ExperimentData | None, cfg: Any, notes: list[str]) -> _Arms:
    """Arms from the config when it has the experiment, else from the data (control = ``control`` or the first)."""
    if cfg is not None:
        order = list(cfg.variant_names)
        extra = sorted(set(data.variants) - set(order)) if data else []
        if extra:
            notes.append(f"variants not in the config seen in the data: {extra}")
        weights = {v: float(cfg.weights.get(v, 0)) for v in order + extra}
        return _Arms(order + extra, cfg.control, weights, cfg.unit, "config")
    order = sorted(data.variants) if data else []
    control = "control" if "control" in order else (order[0] if order else "")
    order = [v for v in order if v == control] + [v for v in order if v != control]
    if order and control != "control":
        notes.append(f"no variant named 'control'; using {control!r} as the control")
    kinds = data.unit_kinds if data else []
    unit_kind = kinds[0] if len(kinds) == 1 else "/".join(kinds) or "unknown"
    return _Arms(order, control, {v: 1.0 for v in order}, unit_kind, "inferred")


def _analyze_experiment(
    data: ExperimentData | None, cfg: Any, no_config: bool, opts: _Options, bandit: Any = None
) -> dict[str, Any]:
    """One experiment's part of the result: SRM first, then per-variant summaries, comparisons and verdicts.
    ``bandit`` (an :class:`~.bandits.BanditPlan`): SRM per period, and the verdict from per-period effects."""
    notes: list[str] = []
    arms = _arms(data, cfg, notes)
    out: dict[str, Any] = {
        "unit": arms.unit_kind,
        "unit_source": arms.unit_source,
        "control": arms.control,
        "weights": {v: arms.weights[v] for v in arms.order},
        "weights_source": "config"
        if cfg is not None
        else ("assumed equal (no --config)" if no_config else "assumed equal (experiment not in the config)"),
        "forced_requests_excluded": data.forced_requests if data else 0,
        "multi_variant_units_excluded": data.multi_variant_units if data else 0,
        "verdict": "keep running",
        "verdicts": {},
        "srm": {},
        "effects_valid": True,
        "variants": {},
        "comparisons": {},
        "timeline": {},
        "histograms": {},
        "notes": notes,
    }
    if data is None or not data.variants:
        out["verdict"] = "no data"
        notes.append("no spans carry this experiment")
        return out
    if data.multi_variant_units:
        notes.append(f"{data.multi_variant_units} unit(s) seen in more than one variant were excluded")
    assigned = {v: data.variants[v] for v in arms.order if v in data.variants}
    groups = {v: g if opts.all_assigned else g.select(g.exposed) for v, g in assigned.items()}
    # 1. sample-ratio mismatch on assigned units (a bandit's: per period, against each period's weights)
    if bandit is None:
        srm = _sample_ratio(out, arms, assigned, cfg is None, opts)
    else:
        srm = bandit.sample_ratio(out, arms.order, assigned, opts)
    _add_summaries(out, arms, groups, assigned, opts)
    # 2. comparisons against control, verdicts; 3. the primary metric's interval over time (for the report)
    _judge_treatments(out, arms, groups, srm, opts)
    if bandit is not None:
        bandit.judge(out, arms.order, arms.control, groups, opts)
    return out


def _add_summaries(
    out: dict[str, Any], arms: _Arms, groups: Mapping[str, GroupData], assigned: Mapping[str, GroupData], opts: _Options
) -> None:
    """Counts, error rate, latency and metrics per variant, and the latency histograms for the report."""
    wsum = sum(arms.weights.values()) or 1.0
    for v in arms.order:
        if v in groups:
            out["variants"][v] = _variant_summary(
                groups[v], assigned[v], opts.metrics, not opts.all_assigned, opts.latency_population
            )
            out["variants"][v]["expected_share"] = _f(arms.weights[v] / wsum)
            out["histograms"][v] = _hist_for_report(groups[v], not opts.all_assigned)


def _judge_treatments(
    out: dict[str, Any], arms: _Arms, groups: Mapping[str, GroupData], srm: Mapping[str, Any], opts: _Options
) -> None:
    """Comparisons, verdicts and the timeline; none when the control has too few units, none trusted under SRM."""
    from .stats import SRM_ALPHA

    notes = out["notes"]
    treatments = [v for v in arms.order if v != arms.control and v in groups]
    if srm["mismatch"]:
        notes.append(
            f"sample ratio mismatch (p = {srm['p_value']:.2g} < {SRM_ALPHA}): assignment or logging "
            "is broken; effects are not trustworthy (the terminal and HTML reports do not show them)"
        )
    ctrl_units = groups[arms.control].units if arms.control in groups else 0
    if ctrl_units < opts.min_units:
        why = f"{ctrl_units} unit(s) in control {arms.control!r}; at least {opts.min_units} per arm needed"
        notes.append(f"insufficient data: {why}; no interval or verdict yet")
        state = "invalid (SRM)" if srm["mismatch"] else "insufficient data"
        out.update(verdicts={v: state for v in treatments}, verdict=state, why=why, effects_valid=not srm["mismatch"])
        return
    thin = {v: groups[v].units for v in treatments if groups[v].units < opts.min_units}
    whys = [f"{n} unit(s) in {v!r}; at least {opts.min_units} per arm needed" for v, n in thin.items()]
    if whys:
        notes.append(
            "insufficient data: " + "; ".join(whys) + "; no interval or verdict for " + ", ".join(repr(v) for v in thin)
        )
    comps = _comparisons(groups, arms.control, treatments, thin, opts)
    _add_latency_distribution_tests(comps, groups, arms.control, out["variants"])
    for v in treatments:
        out["verdicts"][v] = "insufficient data" if v in thin else _judge(comps[v], opts.metrics, opts.alpha)
    out["comparisons"] = comps
    out["effects_valid"] = not srm["mismatch"]
    if whys:
        out["why"] = "; ".join(whys)
    if srm["mismatch"]:
        out["verdicts"] = {v: "invalid (SRM)" for v in treatments}
    out["verdict"] = _overall_verdict(out["verdicts"], srm["mismatch"])
    out["timeline"] = _timeline(groups, arms.control, treatments, opts)


def _sample_ratio(
    out: dict[str, Any], arms: _Arms, assigned: Mapping[str, GroupData], weights_assumed: bool, opts: _Options
) -> dict[str, Any]:
    """The SRM test on assigned units (``out["srm"]``) and, for a trigger analysis, on exposed units."""
    from .stats import srm_test

    order, weights = arms.order, arms.weights
    observed = [assigned[v].units if v in assigned else 0 for v in order]
    srm = srm_test(observed, [weights[v] for v in order])
    total = sum(observed)
    wsum = sum(weights.values()) or 1.0
    srm.update(
        observed={v: o for v, o in zip(order, observed, strict=False)},
        expected={v: _f(total * weights[v] / wsum) for v in order},
        weights_assumed=weights_assumed,
    )
    out["srm"] = srm
    if not opts.all_assigned:
        exposed_counts = [int(assigned[v].exposed.sum()) if v in assigned else 0 for v in order]
        srm_exp = srm_test(exposed_counts, [weights[v] for v in order])
        srm_exp["observed"] = dict(zip(order, exposed_counts, strict=False))
        out["srm_exposed"] = srm_exp
        if srm_exp["mismatch"] and not srm["mismatch"]:
            out["notes"].append(
                f"exposed units do not match the weights (p = {srm_exp['p_value']:.2g}): the variants "
                "read the assignment at different rates, so the trigger analysis may be biased; "
                "compare with --all-assigned"
            )
    return srm


def _interval_alpha(treatments: Sequence[str], alpha: float) -> float:
    """Bonferroni intervals to go with Holm p-values."""
    return alpha / max(len(treatments), 1)


def _comparisons(
    groups: Mapping[str, GroupData], control: str, treatments: list[str], thin: Mapping[str, int], opts: _Options
) -> dict[str, dict[str, Any]]:
    """Treatment vs control on every metric; Holm-adjusted p-values across treatments, Bonferroni intervals.
    A thin arm (fewer than ``min_units`` units) gets a point estimate only."""
    from .stats import DEFAULT_TUNING, compare, holm

    k = max(len(treatments), 1)
    ci_alpha = _interval_alpha(treatments, opts.alpha)
    comps: dict[str, dict[str, Any]] = {v: {} for v in treatments}
    ctrl = groups[control]
    every: list[str | Metric] = [*GUARDRAILS, *opts.metrics]
    for m in every:
        name = m if isinstance(m, str) else m.name
        ce = _metric_estimate(ctrl, m)
        for v in treatments:
            c = compare(
                ce,
                _metric_estimate(groups[v], m),
                alpha=ci_alpha,
                sequential=opts.sequential,
                tuning=opts.tuning or DEFAULT_TUNING,
            )
            if v in thin:  # a point estimate only
                c.update(
                    ci_low=None,
                    ci_high=None,
                    p_value=None,
                    why=f"{thin[v]} unit(s) in {v!r}; at least {opts.min_units} per arm needed",
                )
            comps[v][name] = {kk: (vv if isinstance(vv, str) else _f(vv)) for kk, vv in c.items()}
        raw = [comps[v][name]["p_value"] for v in treatments]
        for v, p in zip(treatments, holm(raw) if k > 1 else raw, strict=False):
            comps[v][name]["p_value_adjusted"] = _f(p)
            comps[v][name]["interval"] = ("confidence sequence" if opts.sequential else "fixed-horizon") + (
                f", Bonferroni {1 - ci_alpha:.4g}" if k > 1 else ""
            )
    return comps


def _add_latency_distribution_tests(
    comps: dict[str, dict[str, Any]], groups: Mapping[str, GroupData], control: str, summaries: Mapping[str, Any]
) -> None:
    """Per treatment: the rank test of per-unit mean latency and the p50/p90/p99 differences."""
    import numpy as np

    from .stats import rank_test

    ctrl = groups[control]
    ctrl_lat = ctrl.latency_sum_ms / np.maximum(ctrl.requests, 1)
    cq = summaries[control]["latency_ms"]
    for v, comp in comps.items():
        g = groups[v]
        comp["latency_ms"]["rank_p_value"] = _f(rank_test(ctrl_lat, g.latency_sum_ms / np.maximum(g.requests, 1)))
        tq = summaries[v]["latency_ms"]
        comp["latency_ms"]["quantile_differences"] = {
            q: _f(tq[q] - cq[q]) if tq[q] is not None and cq[q] is not None else None for q in ("p50", "p90", "p99")
        }


def _overall_verdict(verdicts: Mapping[str, str], srm_mismatch: bool) -> str:
    """One verdict for the experiment: SRM first, then a breached guardrail, then the treatments' verdicts."""
    if srm_mismatch:
        return "invalid (SRM)"
    if len(verdicts) == 1:
        return next(iter(verdicts.values()))
    if not verdicts:
        return "keep running"
    worst = [s for s in verdicts.values() if s.startswith("guardrail")]
    if worst:
        return worst[0]
    if len(set(verdicts.values())) == 1:
        return next(iter(verdicts.values()))
    return "; ".join(f"{v}: {s}" for v, s in verdicts.items())


def _timeline(groups: Mapping[str, GroupData], control: str, treatments: list[str], opts: _Options) -> dict[str, Any]:
    """The primary metric's interval at ``looks`` points in time (units by first sighting), per treatment."""
    import numpy as np

    from .stats import DEFAULT_TUNING, compare

    # latency by default: every request has one, while the error rate is often zero throughout
    primary: str | Metric = opts.metrics[0] if opts.metrics else "latency_ms"
    pname = primary if isinstance(primary, str) else primary.name
    times = np.concatenate([g.first_seen for g in groups.values()])
    if not times.size or opts.looks <= 0:
        return {}
    ci_alpha = _interval_alpha(treatments, opts.alpha)
    ctrl = groups[control]
    cuts = np.quantile(times, np.linspace(0, 1, opts.looks + 1)[1:])
    timeline: dict[str, Any] = {}
    for v in treatments:
        series = []
        for t in cuts:
            cg, tg = ctrl.select(ctrl.first_seen <= t), groups[v].select(groups[v].first_seen <= t)
            if cg.units < opts.min_units or tg.units < opts.min_units:
                continue
            c = compare(
                _metric_estimate(cg, primary),
                _metric_estimate(tg, primary),
                alpha=ci_alpha,
                sequential=opts.sequential,
                tuning=opts.tuning or DEFAULT_TUNING,
            )
            series.append(
                {
                    "t": _f(t),
                    "units": cg.units + tg.units,
                    "estimate": _f(c["estimate"]),
                    "ci_low": _f(c["ci_low"]),
                    "ci_high": _f(c["ci_high"]),
                }
            )
        timeline[v] = {"metric": pname, "points": series}
    return timeline


def _add_holdouts(result: dict[str, Any], agg: Aggregates, lab: Any, opts: _Options) -> None:
    """Each holdout group on its own, and under each experiment it covers."""
    covered: dict[str, list[str]] = {}
    if lab is not None:
        for h in getattr(lab, "holdouts", {}).values():
            for e in h.experiments:
                covered.setdefault(e, []).append(h.key)
    for hkey, g in sorted(agg.holdouts.items()):
        summary = _variant_summary(g, g, opts.metrics, False, LATENCY_HOLDOUT)
        summary["experiments"] = sorted(e for e, hs in covered.items() if hkey in hs)
        result["holdouts"][hkey] = summary
    for e, hs in covered.items():
        if e in result["experiments"]:
            result["experiments"][e]["holdout_groups"] = {h: result["holdouts"].get(h) for h in hs}


def _clean(x: Any) -> Any:
    """Plain JSON types only: numpy scalars become Python numbers, NaN/inf become None."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if hasattr(x, "item") and not isinstance(x, (int, float)):
        x = x.item()
    if isinstance(x, bool) or isinstance(x, int):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    return x
