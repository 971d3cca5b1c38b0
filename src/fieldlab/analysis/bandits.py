"""Bandit experiments in ``fieldlab analyze``: every period analysed with its own allocation.

A bandit (``kind = "bandit"``) moves its split over time: the controller publishes weights versions, and
the SERVER span of each assignment carries the version that decided it (``fieldlab.bandit.<key>``; a span
without it belongs to period 0, the config's own split). When the split moves *and* the baseline moves
(weekday and weekend, a campaign), pooling every unit per arm compares arms whose units come from
different times: Simpson's paradox, up to a reversed sign. So, for a bandit:

* both engines give every unit its period in the one pass over the spans
  (:attr:`~.model.GroupData.period`: the lowest version among its requests that carry one, which is its
  enrolment period; period 0 when none does);
* the sample-ratio check runs per period against that period's own weights (the lab state store's
  ``bandits`` document, period 0 from the config), Bonferroni-corrected across the periods tested;
* each metric's effect is estimated within each period and the periods are combined
  (:func:`fieldlab.control.bandit.per_period_effect`, stratified by the period's units), with an
  always-valid or fixed-horizon interval like the rest of the analysis;
* when the data span two periods or more, the experiment's verdict comes from these per-period effects;
  the pooled comparisons stay in the result, labelled as biased.

Every metric is a mean of per-unit values here (a unit's error rate, its mean latency, whether it
converted, its mean of a numeric attribute): the combination needs per-unit sufficient statistics. For
request units this is exactly the main analysis's estimate. ``docs/statistics.md`` ("Analysing a bandit").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .model import ExperimentData, GroupData, Metric, parse_metric

__all__ = [
    "BANDIT_KIND",
    "PeriodWeights",
    "BanditPlan",
    "BanditPlanner",
    "read_bandit_states",
    "decision_metric",
    "unit_values",
]

#: The experiment kind of a bandit in the config (``kind = "bandit"``).
BANDIT_KIND = "bandit"
_POOLED_NOTE = (
    "bandit: the allocation changed between periods, so the pooled comparisons (all units of an arm "
    "together) are biased whenever the baseline changed too (Simpson's paradox); the verdict comes from "
    "the per-period effects, each period compared with its own weights"
)


def _get(obj: Any, name: str, default: Any = None) -> Any:
    """``obj.name`` or ``obj[name]`` (config objects and plain tables alike), else ``default``."""
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def read_bandit_states(lab: Any) -> tuple[dict[str, Mapping[str, Any]], str | None]:
    """The ``bandits`` part of the state store the lab's config names (``[lab] state``), by experiment key.

    Returns ``(states, note)``: ``{}`` without a config or a store; ``note`` says why a store could not be
    read (the analysis then goes on with the config's weights).
    """
    url = getattr(getattr(lab, "_state", None), "state_url", None) if lab is not None else None
    if url is None:
        return {}, None
    try:
        from ..control.state import open_store

        store = open_store(url)
        try:
            raw = store.read().bandits
        finally:
            store.close()
    except Exception as exc:  # the analysis stands on its own
        return {}, f"bandit weights unavailable ({exc}); period 0 uses the config's weights, later periods none"
    return {str(k): v for k, v in raw.items() if isinstance(v, Mapping)}, None


def decision_metric(cfg: Any, metrics: Sequence[Metric]) -> str | Metric:
    """The metric a bandit decides on: ``[experiments.bandit] metric`` and ``metric_kind`` of the config
    (``error`` -> ``error_rate``, ``latency`` -> ``latency_ms``, a conversion attribute converts on the
    table's ``value``, ``"true"`` by default, in its ``direction``); without one, the first ``--metric``, else ``latency_ms``. A ``--metric`` of the
    same name is used as given (its direction wins)."""
    b = _get(cfg, "bandit")
    name = _get(b, "metric")
    kind = str(_get(b, "metric_kind", "conversion") or "conversion")
    chosen: str | Metric
    if not name:
        return metrics[0] if metrics else "latency_ms"
    name = str(name)
    if kind == "error" or name == "error":
        return "error_rate"
    if kind == "latency" or name == "latency":
        return "latency_ms"
    higher = bool(_get(b, "higher_is_better", True))
    if kind == "numeric":
        chosen = Metric(name=name, attr=name, kind="mean", higher_is_better=higher)
    elif "=" in name:
        chosen = parse_metric(name)
    else:  # the table's own value (default "true") and direction, as the controller reads them
        value = str(_get(b, "value", "true"))
        chosen = Metric(name=f"{name}={value}", attr=name, kind="conversion", value=value, higher_is_better=higher)
    return next((m for m in metrics if m.name == chosen.name), chosen)


def _metric_name(m: str | Metric) -> str:
    return m if isinstance(m, str) else m.name


def _higher_is_better(m: str | Metric) -> bool:
    return m.higher_is_better if isinstance(m, Metric) else False


def _effect_kind(m: str | Metric) -> str:
    """The :func:`~fieldlab.control.bandit.per_period_effect` kind: 0/1 per unit, or a per-unit mean."""
    return "conversion" if isinstance(m, Metric) and m.kind == "conversion" else "numeric"


def unit_values(g: GroupData, m: str | Metric) -> tuple[Any, Any]:
    """``(values, mask)``: each unit's value of metric ``m`` and which units have one.

    ``error_rate``: the unit's errors / requests; ``latency_ms``: its mean latency; a conversion: 1 if it
    converted; a numeric attribute: its mean over the requests that carry it (units without one have none).
    """
    import numpy as np

    ok = np.ones(g.units, dtype=bool)
    if m == "error_rate":
        return g.errors / np.maximum(g.requests, 1), ok
    if m == "latency_ms":
        return g.latency_sum_ms / np.maximum(g.requests, 1), ok
    assert isinstance(m, Metric)
    if m.kind == "conversion":
        return g.conversions[m.name], ok
    n = g.metric_counts[m.name]
    return g.metric_sums[m.name] / np.maximum(n, 1), n > 0


def _periods_of(g: GroupData) -> Any:
    import numpy as np

    return g.period if g.period is not None else np.zeros(g.units, dtype=np.int64)


@dataclass(frozen=True)
class PeriodWeights:
    """One weights version: the split it put in force (basis points per arm; None when unknown) and when."""

    version: int
    weights_bp: Mapping[str, float] | None
    source: str
    at: str | None = None


@dataclass
class BanditPlan:
    """How one bandit experiment is analysed: its decision metric and the weights of each known period."""

    key: str
    metric: str | Metric
    declared: bool
    weights: dict[int, PeriodWeights]
    weights_source: str
    notes: list[str] = field(default_factory=list)
    #: the decision metric's per-period effect after each period, per treatment (set by :meth:`judge`)
    _timeline: dict[str, Any] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ sample ratio, per period

    def versions(self, groups: Mapping[str, GroupData]) -> list[int]:
        """Every period with units in ``groups`` or weights in the plan, in order."""
        import numpy as np

        seen: set[int] = set(self.weights)
        for g in groups.values():
            seen.update(int(x) for x in np.unique(_periods_of(g)))
        return sorted(seen)

    def sample_ratio(
        self, out: dict[str, Any], order: Sequence[str], assigned: Mapping[str, GroupData], opts: Any
    ) -> dict[str, Any]:
        """Per-period SRM of assigned units (and of exposed units for a trigger analysis); sets ``out["srm"]``
        to the combined check, ``out["bandit"]["periods"]`` to the per-period table; returns the combined check."""
        versions = self.versions(assigned)
        counts = {v: _count_by_period(assigned.get(v), versions) for v in order}
        rows = [self._period_row(k, i, order, counts) for i, k in enumerate(versions)]
        srm = self._combined_srm(rows, order, "units", "srm")
        srm["weights_assumed"] = self.weights_source.startswith("assumed")
        out["srm"] = srm
        out["weights_source"] = f"bandit: each period's own weights ({self.weights_source})"
        if not opts.all_assigned:
            exposed = {v: _count_by_period(_exposed(assigned.get(v)), versions) for v in order}
            for i, r in enumerate(rows):
                r["exposed_units"] = {v: exposed[v][i] for v in order}
            srm_exp = self._combined_srm(rows, order, "exposed_units", "srm_exposed")
            out["srm_exposed"] = srm_exp
            if srm_exp["mismatch"] and not srm["mismatch"]:
                out["notes"].append(
                    f"exposed units do not match their periods' weights in period(s) {srm_exp['mismatch_periods']} "
                    "(the variants read the assignment at different rates), so the trigger analysis may be "
                    "biased; compare with --all-assigned"
                )
        if srm["mismatch"]:
            out["notes"].append(
                f"bandit: sample ratio mismatch in period(s) {srm['mismatch_periods']} against each period's own "
                "weights: assignment or logging is broken in that period"
            )
        unknown = [r["version"] for r in rows if r["weights_bp"] is None and sum(r["units"].values())]
        if unknown:
            out["notes"].append(
                f"bandit: no weights known for period(s) {unknown} (not in the state store): their sample ratio "
                "is not checked; their effects still count"
            )
        out["bandit"] = {
            "metric": _metric_name(self.metric),
            "declared": self.declared,
            "weights_source": self.weights_source,
            "periods": rows,
            "notes": list(self.notes),
        }
        out["notes"].extend(self.notes)
        return srm

    def _period_row(self, k: int, i: int, order: Sequence[str], counts: Mapping[str, Any]) -> dict[str, Any]:
        pw = self.weights.get(k)
        bp = dict(pw.weights_bp) if pw is not None and pw.weights_bp is not None else None
        return {
            "version": k,
            "at": pw.at if pw is not None else None,
            "weights_bp": {v: _whole(bp.get(v, 0)) for v in order} if bp is not None else None,
            "weights_source": pw.source if pw is not None else "unknown",
            "units": {v: int(counts[v][i]) for v in order},
        }

    @staticmethod
    def _combined_srm(rows: list[dict[str, Any]], order: Sequence[str], what: str, into: str) -> dict[str, Any]:
        """:func:`~fieldlab.control.bandit.srm_by_period` over the periods with weights and units (Bonferroni
        across them); each row gets its own check under ``into``. The combined ``expected`` splits each period's
        units by its own weights (a period without weights counts as observed)."""
        from ..control.bandit import ArmStats, PeriodData, srm_by_period
        from .stats import SRM_ALPHA

        tested = [r for r in rows if r["weights_bp"] is not None and sum(r[what].values()) > 0]
        alpha = SRM_ALPHA / max(len(tested), 1)
        checks = srm_by_period(
            [
                PeriodData(tuple(float(r["weights_bp"][v]) for v in order), tuple(ArmStats(r[what][v]) for v in order))
                for r in tested
            ],
            alpha,
        )

        def split(r: Mapping[str, Any]) -> dict[str, float]:
            """The period's units split by its own weights (as observed without weights)."""
            w = r["weights_bp"]
            wsum = sum(w.values()) if w is not None else 0
            n = sum(r[what].values())
            return {v: n * w[v] / wsum if wsum > 0 else float(r[what][v]) for v in order}

        expected = {v: 0.0 for v in order}
        for r in rows:
            for v, x in split(r).items():
                expected[v] += x
        for r, c in zip(tested, checks, strict=True):
            c.pop("period", None)
            c["expected"] = split(r)
            r[into] = c
        ps = [c["p_value"] for c in checks if c["p_value"] is not None]
        return {
            "chi2": checks[0]["chi2"] if len(checks) == 1 else None,
            "p_value": min(1.0, min(ps) * len(tested)) if ps else None,
            "mismatch": any(c["mismatch"] for c in checks),
            "alpha": SRM_ALPHA,
            "per_period": True,
            "periods_tested": len(tested),
            "mismatch_periods": [r["version"] for r, c in zip(tested, checks, strict=True) if c["mismatch"]],
            "observed": {v: sum(r[what][v] for r in rows) for v in order},
            "expected": expected,
        }

    # ------------------------------------------------------------------ effects, per period, combined

    def judge(
        self, out: dict[str, Any], order: Sequence[str], control: str, groups: Mapping[str, GroupData], opts: Any
    ) -> None:
        """Per-period effects of every metric, combined; the naive pooled estimate beside them; and, when the
        data span two periods or more, the verdicts from the per-period effects."""
        from .core import GUARDRAILS, _overall_verdict

        b = out["bandit"]
        rows: list[dict[str, Any]] = b["periods"]
        versions = [r["version"] for r in rows]
        treatments = [v for v in order if v != control and v in groups]
        if control not in groups or not treatments:
            return
        arms = [control, *treatments]
        metrics: list[str | Metric] = []
        for m in (self.metric, *GUARDRAILS, *opts.metrics):
            if _metric_name(m) not in {_metric_name(x) for x in metrics}:
                metrics.append(m)
        by_metric = {_metric_name(m): self._effects(m, arms, groups, versions, rows, opts) for m in metrics}
        name = _metric_name(self.metric)
        b["metrics"] = by_metric
        b["effect"] = {v: {k: x for k, x in by_metric[name][v].items() if k != "pooled_naive"} for v in treatments}
        b["pooled_naive"] = {v: by_metric[name][v]["pooled_naive"] for v in treatments}
        with_data = [r["version"] for r in rows if sum(r["units"].values()) > 0]
        b["periods_with_data"] = with_data
        if len(with_data) < 2:
            b["note"] = "one period only: the allocation never changed, the pooled comparisons are unbiased"
            return
        b["note"] = _POOLED_NOTE
        out["notes"].append(_POOLED_NOTE)
        out["verdict_basis"] = "per-period effects (bandit)"
        out["timeline"] = self._timeline  # the interval after each period, not the pooled one
        for v in treatments:
            if out["verdicts"].get(v) in ("insufficient data", "invalid (SRM)"):
                continue
            out["verdicts"][v] = _judge_periods({n: c[v] for n, c in by_metric.items()}, self.metric, opts)
        out["verdict"] = _overall_verdict(out["verdicts"], bool(out["srm"].get("mismatch")))
        total = float(sum(out["srm"]["observed"].values())) or 1.0
        for v, s in out.get("variants", {}).items():
            s["expected_share"] = out["srm"]["expected"].get(v, 0.0) / total

    def _effects(
        self,
        m: str | Metric,
        arms: Sequence[str],
        groups: Mapping[str, GroupData],
        versions: Sequence[int],
        rows: list[dict[str, Any]],
        opts: Any,
    ) -> dict[str, dict[str, Any]]:
        """One metric: per treatment the stratified and inverse-variance effects, interval, p-value (Holm
        across treatments) and the pooled estimate; each period row gets the arms' means."""
        from ..control.bandit import PeriodData, per_period_effect, pooled_effect
        from .stats import holm

        kind = _effect_kind(m)
        stats = {v: _arm_stats_by_period(groups[v], m, versions, kind) for v in arms}
        periods = [PeriodData(tuple(1.0 for _ in arms), tuple(stats[v][i] for v in arms)) for i in range(len(versions))]
        name = _metric_name(m)
        for i, r in enumerate(rows):
            r.setdefault("means", {})[name] = {v: _f(stats[v][i].mean(kind)) for v in arms}
        treatments = list(arms[1:])
        ci_alpha = opts.alpha / max(len(treatments), 1)
        out: dict[str, dict[str, Any]] = {}
        for j, v in enumerate(treatments, start=1):
            eff = _combined(periods, j, kind, ci_alpha, opts)
            inv = per_period_effect(
                periods, treatment=j, control=0, kind=kind, method="inverse_variance", alpha=ci_alpha
            )
            out[v] = {
                **{k: x for k, x in eff.items() if k != "skipped"},
                "method": "stratified by period (each period's difference weighted by its share of units)",
                "interval": ("confidence sequence" if opts.sequential else "fixed-horizon normal")
                + (f", Bonferroni {1 - ci_alpha:.4g}" if len(treatments) > 1 else ""),
                "inverse_variance": {
                    "estimate": _f(inv["estimate"]),
                    "ci_low": _f(inv["ci_low"]),
                    "ci_high": _f(inv["ci_high"]),
                    "interval": "fixed-horizon normal",
                },
                "skipped_periods": [versions[k] for k in eff["skipped"]],
                "pooled_naive": {"estimate": _f(pooled_effect(periods, treatment=j, control=0, kind=kind))},
            }
            for i, r in enumerate(rows):
                d = stats[v][i].mean(kind) - stats[arms[0]][i].mean(kind)
                r.setdefault("differences", {}).setdefault(name, {})[v] = _f(d)
        raw = [out[v]["p_value"] for v in treatments]
        for v, p in zip(treatments, holm(raw) if len(treatments) > 1 else raw, strict=True):
            out[v]["p_value_adjusted"] = _f(p)
        if m is self.metric:
            self._timeline = {
                v: {
                    "metric": name,
                    "basis": "per-period effect over the periods so far",
                    "points": _cumulative(periods, j, kind, ci_alpha, opts, versions, opts.min_units),
                }
                for j, v in enumerate(treatments, start=1)
            }
        return out


def _combined(periods: Sequence[Any], j: int, kind: str, ci_alpha: float, opts: Any) -> dict[str, Any]:
    """Arm ``j`` against arm 0, stratified over ``periods``: estimate, interval (a confidence sequence over
    the units compared, or fixed-horizon normal, as ``opts.sequential`` says), p-value, units, skipped periods."""
    from statistics import NormalDist

    from ..control.bandit import per_period_effect
    from .stats import DEFAULT_TUNING, cs_halfwidth, sequential_p_value

    eff = per_period_effect(periods, treatment=j, control=0, kind=kind, alpha=ci_alpha)
    est, var = eff["estimate"], eff["variance"]
    n = sum(periods[p["period"]].arms[0].units + periods[p["period"]].arms[j].units for p in eff["periods"])
    lo = hi = p_value = None
    if est is not None and var is not None and var > 0 and math.isfinite(var):
        tuning = opts.tuning or DEFAULT_TUNING
        if opts.sequential:
            hw = float(cs_halfwidth(var, n, ci_alpha, tuning))
            p_value = float(sequential_p_value(est, var, n, tuning))
        else:
            hw = NormalDist().inv_cdf(1 - ci_alpha / 2) * math.sqrt(var)
            p_value = 2 * NormalDist().cdf(-abs(est) / math.sqrt(var))
        lo, hi = est - hw, est + hw
    return {
        "estimate": _f(est),
        "ci_low": _f(lo),
        "ci_high": _f(hi),
        "p_value": _f(p_value),
        "units": n,
        "skipped": eff["skipped"],
    }


def _cumulative(
    periods: Sequence[Any], j: int, kind: str, ci_alpha: float, opts: Any, versions: Sequence[int], min_units: int
) -> list[dict[str, Any]]:
    """The stratified effect after each period (the report's interval over time), once both arms have
    ``min_units`` units."""
    points = []
    for i in range(len(periods)):
        head = periods[: i + 1]
        if min(sum(p.arms[0].units for p in head), sum(p.arms[j].units for p in head)) < min_units:
            continue
        c = _combined(head, j, kind, ci_alpha, opts)
        if c["estimate"] is None:
            continue
        points.append(
            {
                "period": versions[i],
                "units": c["units"],
                "estimate": c["estimate"],
                "ci_low": c["ci_low"],
                "ci_high": c["ci_high"],
            }
        )
    return points


def _f(x: Any) -> Any:
    """A JSON-safe float (NaN/inf become None)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _whole(x: float) -> float | int:
    """Basis points as the integers they are (a fraction only if the store wrote one)."""
    return int(x) if float(x).is_integer() else float(x)


def _exposed(g: GroupData | None) -> GroupData | None:
    return g.select(g.exposed) if g is not None else None


def _count_by_period(g: GroupData | None, versions: Sequence[int]) -> list[int]:
    import numpy as np

    if g is None:
        return [0] * len(versions)
    p = _periods_of(g)
    return [int(np.count_nonzero(p == k)) for k in versions]


def _arm_stats_by_period(g: GroupData, m: str | Metric, versions: Sequence[int], kind: str) -> list[Any]:
    """One arm's :class:`~fieldlab.control.bandit.ArmStats` of metric ``m`` in each period."""
    import numpy as np

    from ..control.bandit import ArmStats

    values, has = unit_values(g, m)
    periods = _periods_of(g)
    out = []
    for k in versions:
        x = values[(periods == k) & has]
        if kind == "conversion":
            out.append(ArmStats(int(x.size), successes=int(np.count_nonzero(x > 0))))
        else:
            out.append(ArmStats(int(x.size), total=float(x.sum()), total_sq=float((x * x).sum())))
    return out


def _judge_periods(comps: Mapping[str, Mapping[str, Any]], decision: str | Metric, opts: Any) -> str:
    """A treatment's verdict from per-period effects: a guardrail worse first, then the decision metric and
    the ``--metric`` s (the order of :func:`~fieldlab.analysis.core._judge`)."""
    from .core import GUARDRAILS

    def significant(name: str) -> float:
        """The effect on ``name`` if it is significant, else 0."""
        c = comps.get(name) or {}
        p = c.get("p_value_adjusted")
        return float(c["estimate"]) if p is not None and p < opts.alpha and c.get("estimate") else 0.0

    for name in GUARDRAILS:
        if significant(name) > 0:
            return f"guardrail breached: {name} worse"
    primary = [(_metric_name(m), _higher_is_better(m)) for m in (decision, *opts.metrics)]
    for name, higher in primary:
        est = significant(name)
        if est != 0:
            return f"treatment {'better' if (est > 0) == higher else 'worse'} on {name}"
    return "keep running"


class BanditPlanner:
    """Which experiments of an analysis are bandits, their decision metrics, and their periods' weights.

    A bandit is an experiment of ``kind = "bandit"`` in the config, or one whose spans name a period
    beyond 0. The state store is read once, when the first bandit needs it.
    """

    def __init__(self, lab: Any, metrics: Sequence[Metric]) -> None:
        self.lab = lab
        self.metrics = tuple(metrics)
        self._states: dict[str, Mapping[str, Any]] | None = None
        self._note: str | None = None

    def declared(self) -> list[tuple[str, Any]]:
        """``(key, experiment)`` of the config's bandits."""
        if self.lab is None:
            return []
        return [(k, e) for k, e in self.lab.experiments.items() if _get(e, "kind", "ab") == BANDIT_KIND]

    def extra_metrics(self) -> tuple[Metric, ...]:
        """The config bandits' decision metrics the aggregation must compute beyond ``--metric``."""
        names = {m.name for m in self.metrics}
        out: list[Metric] = []
        for _, e in self.declared():
            m = decision_metric(e, self.metrics)
            if isinstance(m, Metric) and m.name not in names:
                names.add(m.name)
                out.append(m)
        return tuple(out)

    def states(self) -> dict[str, Mapping[str, Any]]:
        if self._states is None:
            self._states, self._note = read_bandit_states(self.lab)
        return self._states

    def plan(self, key: str, cfg: Any, data: ExperimentData | None) -> BanditPlan | None:
        """The plan of experiment ``key`` if it is a bandit, else None."""
        import numpy as np

        declared = _get(cfg, "kind", "ab") == BANDIT_KIND
        later = data is not None and any(
            g.period is not None and bool(np.any(g.period > 0)) for g in data.variants.values()
        )
        if not (declared or later):
            return None
        states = self.states()
        notes = [self._note] if self._note else []
        weights, source = _period_weights(states.get(key), cfg, data, notes)
        return BanditPlan(key, decision_metric(cfg, self.metrics), declared, weights, source, notes)


def _config_weights(cfg: Any, data: ExperimentData | None) -> tuple[dict[str, float], str]:
    """Period 0's split: the config's variant weights, else equal weights over the arms seen."""
    from ..control.bandit import to_basis_points

    if cfg is not None:
        names, source = list(cfg.weights), "config"
        raw = [float(cfg.weights[v]) for v in names]
    else:
        names, source = sorted(data.variants) if data is not None else [], "assumed equal (no config)"
        raw = [1.0] * len(names)
    return (dict(zip(names, map(float, to_basis_points(raw)), strict=True)) if names else {}), source


def _period_weights(
    doc: Mapping[str, Any] | None, cfg: Any, data: ExperimentData | None, notes: list[str]
) -> tuple[dict[int, PeriodWeights], str]:
    """Every known period's weights from the state document (``bandits.<key>``), period 0 from the config
    when the store lacks it; a malformed entry is skipped with a note."""
    base, base_source = _config_weights(cfg, data)
    out: dict[int, PeriodWeights] = {}
    if doc is not None:
        arms = [str(a) for a in (doc.get("arms") or (cfg.variant_names if cfg is not None else []))]
        entries = list(doc.get("periods") or [])
        if not entries and doc.get("weights_bp") is not None:  # only the weights in force are known
            entries = [{"version": doc.get("version", 0), "weights_bp": doc["weights_bp"], "at": doc.get("at")}]
        for p in entries:
            try:
                version = int(p["version"])
                bp = [float(x) for x in p["weights_bp"]]
                if len(bp) != len(arms) or sum(bp) <= 0 or min(bp) < 0:
                    raise ValueError(f"{len(bp)} weights for arms {arms}")
            except (KeyError, TypeError, ValueError) as exc:
                notes.append(f"bandit: a period in the state store was skipped ({exc})")
                continue
            at = p.get("at")
            out[version] = PeriodWeights(
                version, dict(zip(arms, bp, strict=True)), "state store", at if isinstance(at, str) else None
            )
    if 0 not in out:
        out[0] = PeriodWeights(0, base, base_source)
    source = "state store" if len(out) > 1 or out[0].source == "state store" else base_source
    if doc is None and source != "state store":
        source += ", no state store entry: later periods have no known weights"
    return out, source
