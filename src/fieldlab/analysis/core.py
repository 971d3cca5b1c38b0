"""``analyze()``: from spans to verdicts, as one JSON-ready dict.

Order of judgement, per experiment: sample-ratio check first (an experiment
with SRM is invalid and no effect is read from it), then guardrails (error rate
and mean latency per request must not get worse), then the primary metrics.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Mapping, Sequence

from .sources import (MAX_LINE_BYTES, Aggregates, GroupData, Metric, QuerySpec, Source, SourceError, hist_value_ms,
                      open_source, parse_metric)

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


def _variant_summary(g: GroupData, assigned: GroupData, metrics: Sequence[Metric], exposed_hist: bool,
                     population: str) -> dict[str, Any]:
    """Counts, error rate, latency and metrics of ``g``; mean and percentiles describe the same requests:
    all requests of the units in ``g`` (``hist_exposed`` holds exactly the exposed units' requests)."""
    from .stats import hist_quantiles

    requests = float(g.requests.sum())
    errors = float(g.errors.sum())
    hist = g.hist_exposed if exposed_hist else g.hist_all
    p50, p90, p99 = hist_quantiles(g.hist_bins, hist, _QS, hist_value_ms)
    out: dict[str, Any] = {
        "units": g.units, "assigned_units": assigned.units, "requests": int(requests), "errors": int(errors),
        "error_rate": _f(errors / requests) if requests else None,
        "latency_ms": {"population": population,
                       "mean": _f(g.latency_sum_ms.sum() / requests) if requests else None,
                       "p50": _f(p50), "p90": _f(p90), "p99": _f(p99)},
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


def analyze(sources: Any, config: Any = None, *, metrics: Sequence[str | Metric] = (), all_assigned: bool = False,
            sequential: bool = True, alpha: float = 0.05, tuning: float = 5000.0, engine: str = "auto",
            experiments: Sequence[str] | None = None, progress: Callable[[str], None] | bool | None = None,
            looks: int = 20, max_line_bytes: int = MAX_LINE_BYTES,
            min_units: int = MIN_UNITS_PER_ARM) -> dict[str, Any]:
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
    """
    import numpy as np

    from .stats import DEFAULT_TUNING, SRM_ALPHA, compare, holm, rank_test, srm_test

    if not 0 < alpha < 1:
        raise SourceError(f"alpha {alpha} is outside (0, 1); use e.g. 0.05")
    if not isinstance(min_units, int) or min_units < 2:
        raise SourceError(f"min_units {min_units!r}: give a whole number of at least 2 (default {MIN_UNITS_PER_ARM})")
    lab = load_config(config)
    mlist = tuple(m if isinstance(m, Metric) else parse_metric(m) for m in metrics)
    names = [m.name for m in mlist]
    if len(set(names)) != len(names) or set(names) & set(GUARDRAILS):
        raise SourceError(f"--metric: duplicate or reserved metric names in {names}; give each metric once "
                          f"and do not reuse {', '.join(GUARDRAILS)}")
    unit_kinds = {k: e.unit for k, e in lab.experiments.items()} if lab is not None else {}
    coverage = {h.key: tuple(h.experiments) for h in lab.holdouts.values()} if lab is not None else {}
    src = open_source(sources, engine=engine, max_line_bytes=max_line_bytes) \
        if not isinstance(sources, Source) else sources
    show = progress if callable(progress) else None
    agg: Aggregates = src.aggregate(QuerySpec(unit_kinds=unit_kinds, metrics=mlist, holdout_experiments=coverage), show)

    method = ("always-valid confidence sequence (asymptotic, tuning parameter "
              f"{tuning:g}); safe to look at any time") if sequential else \
        "fixed-horizon Welch t interval: valid only if you look once, at the planned sample size"
    result: dict[str, Any] = {
        "fieldlab_analysis": RESULT_VERSION,
        "source": agg.source, "engine": agg.engine, "seconds": round(agg.seconds, 3),
        "spans": agg.spans, "server_spans": agg.server_spans, "malformed_lines": agg.malformed_lines,
        "long_lines": agg.long_lines, "damaged_files": list(agg.damaged_files),
        "method": {"sequential": sequential, "description": method, "alpha": alpha, "srm_alpha": SRM_ALPHA,
                   "tuning": tuning if sequential else None,
                   "population": "all assigned units (intent-to-treat)" if all_assigned else
                   "exposed units (trigger analysis: units whose code read the variant)",
                   "latency_population": LATENCY_ITT if all_assigned else LATENCY_TRIGGER,
                   "min_units_per_arm": min_units,
                   "metrics": ["error_rate", "latency_ms"] + names},
        "notes": [], "experiments": {}, "holdouts": {},
    }
    if agg.malformed_lines:
        result["notes"].append(f"{agg.malformed_lines} malformed line(s) skipped")
    if agg.long_lines:
        result["notes"].append(f"{agg.long_lines} line(s) longer than the {_size(max_line_bytes)} line cap skipped "
                               "(raise it with --max-line-bytes)")
    for d in agg.damaged_files:
        result["notes"].append(f"damaged file read up to the damage: {d}")
    if lab is None:
        result["notes"].append("no --config: weights assumed equal for the SRM check; unit kind inferred per span "
                               "(user if present, else visitor, else session, else the trace id = request)")
    wanted = set(experiments) if experiments else None
    if wanted and lab is not None:
        unknown = wanted - set(lab.experiments) - set(agg.experiments)
        if unknown:
            raise SourceError(f"--experiment {sorted(unknown)}: not in the config nor in the data; "
                              f"known: {sorted(set(lab.experiments) | set(agg.experiments))}")
    keys = sorted(set(agg.experiments) | (set(lab.experiments) if lab is not None else set()))
    for key in keys:
        if wanted and key not in wanted:
            continue
        data = agg.experiments.get(key)
        cfg = lab.experiments.get(key) if lab is not None else None
        notes: list[str] = []
        if cfg is not None:
            order = list(cfg.variant_names)
            extra = sorted(set(data.variants) - set(order)) if data else []
            if extra:
                notes.append(f"variants not in the config seen in the data: {extra}")
            control = cfg.control
            weights = {v: float(cfg.weights.get(v, 0)) for v in order + extra}
            order += extra
            unit_kind, unit_source = cfg.unit, "config"
        else:
            order = sorted(data.variants) if data else []
            control = "control" if "control" in order else (order[0] if order else "")
            order = [v for v in order if v == control] + [v for v in order if v != control]
            if order and control != "control":
                notes.append(f"no variant named 'control'; using {control!r} as the control")
            weights = {v: 1.0 for v in order}
            kinds = data.unit_kinds if data else []
            unit_kind = kinds[0] if len(kinds) == 1 else "/".join(kinds) or "unknown"
            unit_source = "inferred"
        exp_out: dict[str, Any] = {
            "unit": unit_kind, "unit_source": unit_source, "control": control,
            "weights": {v: weights[v] for v in order},
            "weights_source": "config" if cfg is not None else (
                "assumed equal (no --config)" if lab is None else "assumed equal (experiment not in the config)"),
            "forced_requests_excluded": data.forced_requests if data else 0,
            "multi_variant_units_excluded": data.multi_variant_units if data else 0,
            "verdict": "keep running", "verdicts": {}, "srm": {}, "effects_valid": True, "variants": {},
            "comparisons": {},
            "timeline": {}, "histograms": {}, "notes": notes,
        }
        result["experiments"][key] = exp_out
        if data is None or not data.variants:
            exp_out["verdict"] = "no data"
            notes.append("no spans carry this experiment")
            continue
        if data.multi_variant_units:
            notes.append(f"{data.multi_variant_units} unit(s) seen in more than one variant were excluded")
        groups: dict[str, GroupData] = {}
        assigned: dict[str, GroupData] = {}
        for v in order:
            g = data.variants.get(v)
            if g is None:
                continue
            assigned[v] = g
            groups[v] = g if all_assigned else g.select(g.exposed)
        # 1. sample-ratio mismatch on assigned units
        observed = [assigned[v].units if v in assigned else 0 for v in order]
        srm = srm_test(observed, [weights[v] for v in order])
        total = sum(observed)
        wsum = sum(weights.values()) or 1.0
        srm.update(observed={v: o for v, o in zip(order, observed)},
                   expected={v: _f(total * weights[v] / wsum) for v in order},
                   weights_assumed=cfg is None)
        exp_out["srm"] = srm
        if not all_assigned:
            exposed_counts = [int(assigned[v].exposed.sum()) if v in assigned else 0 for v in order]
            srm_exp = srm_test(exposed_counts, [weights[v] for v in order])
            srm_exp["observed"] = dict(zip(order, exposed_counts))
            exp_out["srm_exposed"] = srm_exp
            if srm_exp["mismatch"] and not srm["mismatch"]:
                notes.append(f"exposed units do not match the weights (p = {srm_exp['p_value']:.2g}): the variants "
                             "read the assignment at different rates, so the trigger analysis may be biased; "
                             "compare with --all-assigned")
        for v in order:
            if v in groups:
                exp_out["variants"][v] = _variant_summary(groups[v], assigned[v], mlist, not all_assigned,
                                                          LATENCY_ITT if all_assigned else LATENCY_TRIGGER)
                exp_out["variants"][v]["expected_share"] = _f(weights[v] / wsum)
                exp_out["histograms"][v] = _hist_for_report(groups[v], not all_assigned)
        treatments = [v for v in order if v != control and v in groups]
        if srm["mismatch"]:
            notes.append(f"sample ratio mismatch (p = {srm['p_value']:.2g} < {SRM_ALPHA}): assignment or logging "
                         "is broken; effects are not trustworthy (the terminal and HTML reports do not show them)")
        ctrl_units = groups[control].units if control in groups else 0
        if ctrl_units < min_units:
            why = f"{ctrl_units} unit(s) in control {control!r}; at least {min_units} per arm needed"
            notes.append(f"insufficient data: {why}; no interval or verdict yet")
            state = "invalid (SRM)" if srm["mismatch"] else "insufficient data"
            exp_out["verdicts"] = {v: state for v in treatments}
            exp_out["verdict"] = state
            exp_out["why"] = why
            exp_out["effects_valid"] = not srm["mismatch"]
            continue
        thin = {v: groups[v].units for v in treatments if groups[v].units < min_units}
        whys = [f"{n} unit(s) in {v!r}; at least {min_units} per arm needed" for v, n in thin.items()]
        if whys:
            notes.append("insufficient data: " + "; ".join(whys) + "; no interval or verdict for "
                         + ", ".join(repr(v) for v in thin))
        # 2. comparisons against control
        k = max(len(treatments), 1)
        ci_alpha = alpha / k  # Bonferroni intervals to go with Holm p-values
        mnames: list[Any] = list(GUARDRAILS) + list(mlist)
        comps: dict[str, dict[str, Any]] = {v: {} for v in treatments}
        ctrl = groups[control]
        ctrl_lat = ctrl.latency_sum_ms / np.maximum(ctrl.requests, 1)
        for m in mnames:
            name = m if isinstance(m, str) else m.name
            ce = _metric_estimate(ctrl, m)
            for v in treatments:
                c = compare(ce, _metric_estimate(groups[v], m), alpha=ci_alpha, sequential=sequential,
                            tuning=tuning or DEFAULT_TUNING)
                if v in thin:  # a point estimate only
                    c.update(ci_low=None, ci_high=None, p_value=None,
                             why=f"{thin[v]} unit(s) in {v!r}; at least {min_units} per arm needed")
                comps[v][name] = {kk: (vv if isinstance(vv, str) else _f(vv)) for kk, vv in c.items()}
            adj = holm([comps[v][name]["p_value"] for v in treatments]) if k > 1 else \
                [comps[v][name]["p_value"] for v in treatments]
            for v, p in zip(treatments, adj):
                comps[v][name]["p_value_adjusted"] = _f(p)
                comps[v][name]["interval"] = ("confidence sequence" if sequential else "fixed-horizon") + \
                    (f", Bonferroni {1 - ci_alpha:.4g}" if k > 1 else "")
        for v in treatments:
            g = groups[v]
            lat = g.latency_sum_ms / np.maximum(g.requests, 1)
            comps[v]["latency_ms"]["rank_p_value"] = _f(rank_test(ctrl_lat, lat))
            cq, tq = exp_out["variants"][control]["latency_ms"], exp_out["variants"][v]["latency_ms"]
            comps[v]["latency_ms"]["quantile_differences"] = {
                q: _f(tq[q] - cq[q]) if tq[q] is not None and cq[q] is not None else None for q in ("p50", "p90", "p99")}
            exp_out["verdicts"][v] = "insufficient data" if v in thin else _judge(comps[v], mlist, alpha)
        exp_out["comparisons"] = comps
        exp_out["effects_valid"] = not srm["mismatch"]
        if whys:
            exp_out["why"] = "; ".join(whys)
        vs = exp_out["verdicts"]
        if srm["mismatch"]:
            exp_out["verdicts"] = {v: "invalid (SRM)" for v in treatments}
            exp_out["verdict"] = "invalid (SRM)"
        elif len(vs) == 1:
            exp_out["verdict"] = next(iter(vs.values()))
        elif vs:
            worst = [s for s in vs.values() if s.startswith("guardrail")]
            if worst:
                exp_out["verdict"] = worst[0]
            elif len(set(vs.values())) == 1:
                exp_out["verdict"] = next(iter(vs.values()))
            else:
                exp_out["verdict"] = "; ".join(f"{v}: {s}" for v, s in vs.items())
        # 3. the primary metric's interval over time (for the report)
        primary = mlist[0] if mlist else "error_rate"
        pname = primary if isinstance(primary, str) else primary.name
        times = np.concatenate([g.first_seen for g in groups.values()])
        if times.size and looks > 0:
            cuts = np.quantile(times, np.linspace(0, 1, looks + 1)[1:])
            for v in treatments:
                series = []
                for t in cuts:
                    cg, tg = ctrl.select(ctrl.first_seen <= t), groups[v].select(groups[v].first_seen <= t)
                    if cg.units < min_units or tg.units < min_units:
                        continue
                    c = compare(_metric_estimate(cg, primary), _metric_estimate(tg, primary), alpha=ci_alpha,
                                sequential=sequential, tuning=tuning or DEFAULT_TUNING)
                    series.append({"t": _f(t), "units": cg.units + tg.units, "estimate": _f(c["estimate"]),
                                   "ci_low": _f(c["ci_low"]), "ci_high": _f(c["ci_high"])})
                exp_out["timeline"][v] = {"metric": pname, "points": series}
    # holdouts: their own group
    covered: dict[str, list[str]] = {}
    if lab is not None:
        for h in getattr(lab, "holdouts", {}).values():
            for e in h.experiments:
                covered.setdefault(e, []).append(h.key)
    for hkey, g in sorted(agg.holdouts.items()):
        summary = _variant_summary(g, g, mlist, False, LATENCY_HOLDOUT)
        summary["experiments"] = sorted(e for e, hs in covered.items() if hkey in hs)
        result["holdouts"][hkey] = summary
    for e, hs in covered.items():
        if e in result["experiments"]:
            result["experiments"][e]["holdout_groups"] = {h: result["holdouts"].get(h) for h in hs}
    return _clean(result)


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
