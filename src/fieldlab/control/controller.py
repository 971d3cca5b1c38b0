"""One controller round: measure every running variant from the trace store, decide, record.

``Controller(config, experiments, source, store).run_round()``:

1. **Measure.** One query per round reads, per experiment and variant, the
   counts of every trailing window the guardrails use (each window pair's long
   and short window, and the budget period) and the per-unit sufficient
   statistics since the data starts (errors, slow requests, guardrail metrics).
   A second query counts all SERVER spans of the service in the budget period.
   The work is pushed into the store: SQL over ``otel_traces`` for a
   ``clickhouse://`` source, the same SQL over OTLP JSON files with embedded
   ClickHouse (chdb); without chdb a streaming pure-Python twin computes the
   same numbers. Spans are normalised by the analysis's own readers
   (:func:`fieldlab.analysis.sql.file_spans_sql`,
   :func:`~fieldlab.analysis.sql.otel_traces_spans_sql`, :func:`fieldlab.analysis.reader.read_spans`), so a request is
   an error, a unit and a variant exactly as ``fieldlab analyze`` counts it:
   SERVER spans only, forced (QA override) requests and units seen in two
   variants left out.
2. **Decide** with :func:`fieldlab.control.guardrails.decide_round`.
3. **Record** the decisions and the round's report in the state store; every
   process polling it follows within its poll interval.

No CLI here yet: ``fieldlab watch`` will call :meth:`Controller.run_round` on
its interval.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import attributes as A
from ..analysis import sources as S
from ..analysis.clickhouse import query_chdb
from ..analysis.model import Span
from ..analysis.sql import file_spans_sql, otel_traces_spans_sql
from .budget import ArmData, BudgetStatus, Counts, Moments, budget_status, with_charges
from .guardrails import ExperimentData, Round, decide_round
from .settings import GuardrailMetric, GuardrailsConfig
from .state import Decision, LabState, StateFormatError, StateStore, decider_name, iso_time

__all__ = [
    "ExperimentSpec",
    "experiment_specs",
    "WindowQuery",
    "window_counts_sql",
    "service_totals_sql",
    "Measurement",
    "measure",
    "Controller",
    "canary_charges",
]


@dataclass(frozen=True)
class ExperimentSpec:
    """What the controller needs of an experiment's definition: its key, control arm and unit kind."""

    key: str
    control: str
    unit: str = "user"


def experiment_specs(experiments: Any) -> dict[str, ExperimentSpec]:
    """Specs from a config document (``{"experiments": [...]}``) or from objects with ``key``, ``control``
    and ``unit`` (``Lab.experiments.values()``). The control defaults to the first variant, as in the lab."""
    if isinstance(experiments, Mapping) and "experiments" in experiments:
        out = {}
        for e in experiments.get("experiments") or ():
            if not isinstance(e, Mapping) or not isinstance(e.get("key"), str):
                continue
            variants = e.get("variants") or []
            names = (
                list(variants)
                if isinstance(variants, Mapping)
                else [
                    v.get("name") if isinstance(v, Mapping) else (v[0] if isinstance(v, (list, tuple)) else v)
                    for v in variants
                ]
            )
            control = e.get("control") or (names[0] if names else "control")
            out[e["key"]] = ExperimentSpec(e["key"], str(control), str(e.get("unit", "user")))
        return out
    items = experiments.values() if isinstance(experiments, Mapping) else experiments
    return {e.key: ExperimentSpec(e.key, e.control, e.unit) for e in items}


@dataclass(frozen=True)
class WindowQuery:
    """What one round measures: the windows (seconds) ending at ``now`` (epoch seconds) per experiment."""

    now: float
    windows: tuple[float, ...]
    specs: Mapping[str, ExperimentSpec]
    latency_ms: Mapping[str, float] = field(default_factory=dict)
    metrics: Mapping[str, tuple[GuardrailMetric, ...]] = field(default_factory=dict)
    since: float | None = None

    def metric_list(self) -> list[tuple[str, GuardrailMetric]]:
        """Every (experiment, metric) pair, in a fixed order (the SQL's column numbering)."""
        return [(e, m) for e in sorted(self.metrics) for m in self.metrics[e]]

    def query_spec(self) -> S.QuerySpec:
        """The analysis reader's spec: keeps the metric attributes on the normalised spans."""
        seen: dict[str, S.Metric] = {}
        for _, m in self.metric_list():
            seen.setdefault(
                m.name,
                S.Metric(
                    m.name,
                    m.name,
                    "conversion" if m.kind == "conversion" else "mean",
                    m.value if m.kind == "conversion" else None,
                ),
            )
        return S.QuerySpec(unit_kinds={k: s.unit for k, s in self.specs.items()}, metrics=tuple(seen.values()))


def _lit(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _ns(seconds: float) -> int:
    return int(round(seconds * 1e9))


def window_counts_sql(spans_sql: str, q: WindowQuery) -> str:
    """Per (experiment, variant): unit count and per-unit moment sums since the start, and per window
    ``wu_i, wr_i, we_i, ws_i`` (units, requests, errors, slow requests in the trailing window ``q.windows[i]``).

    Metric ``j`` of :meth:`WindowQuery.metric_list`: a conversion gives ``mc_j``
    (converted units); a numeric metric ``mn_j`` (units with a value) and the
    moment sums ``my_j, mx_j, myy_j, mxx_j, mxy_j`` of value sums over counts.
    """
    vp = A.VARIANT_PREFIX
    now = _ns(q.now)
    keys = ", ".join(_lit(k) for k in sorted(q.specs)) or "''"
    unit_cases = []
    for k, spec in sorted(q.specs.items()):
        if spec.unit == "request":
            req = _lit(A.unit_attr("request"))
            unit_cases.append(f"exp = {_lit(k)}, if(Attrs[{req}] != '', Attrs[{req}], TraceId)")
        else:
            unit_cases.append(f"exp = {_lit(k)}, Attrs[{_lit(A.unit_attr(spec.unit))}]")
    unit = f"multiIf({', '.join(unit_cases)}, '')" if unit_cases else "''"
    thr = [f"exp = {_lit(k)}, {q.latency_ms[k] * 1e6!r}" for k in sorted(q.latency_ms)]
    slow = f"Dur > multiIf({', '.join(thr)}, inf)" if thr else "0"
    status_new, status_old = _lit(A.HTTP_STATUS_CODE), _lit(A.HTTP_STATUS_CODE_OLD)
    since = f" AND Ts >= {_ns(q.since)}" if q.since is not None else ""
    unit_aggs = ["count() AS r", "countIf(IsError) AS e", "countIf(IsSlow) AS s"]
    outer = [
        "count() AS n",
        "sum(r) AS sx",
        "sum(e) AS se",
        "sum(e * e) AS see",
        "sum(r * r) AS sxx",
        "sum(r * e) AS sxe",
        "sum(s) AS ss",
        "sum(s * s) AS sss",
        "sum(r * s) AS sxs",
    ]
    for i, w in enumerate(q.windows):
        cut = f"Ts > {now - _ns(w)}"
        unit_aggs.append(
            f"countIf({cut}) AS r_{i}, countIf(IsError AND {cut}) AS e_{i}, countIf(IsSlow AND {cut}) AS s_{i}"
        )
        outer.append(f"countIf(r_{i} > 0) AS wu_{i}, sum(r_{i}) AS wr_{i}, sum(e_{i}) AS we_{i}, sum(s_{i}) AS ws_{i}")
    for j, (exp, m) in enumerate(q.metric_list()):
        a = _lit(m.name)
        if m.kind == "conversion":
            unit_aggs.append(f"maxIf(Attrs[{a}] = {_lit(m.value)}, exp = {_lit(exp)}) AS c_{j}")
            outer.append(f"sum(c_{j}) AS mc_{j}")
        else:
            unit_aggs.append(
                f"sumIf(ifNull(toFloat64OrNull(Attrs[{a}]), 0), exp = {_lit(exp)}) AS v_{j}, "
                f"countIf(toFloat64OrNull(Attrs[{a}]) IS NOT NULL AND exp = {_lit(exp)}) AS k_{j}"
            )
            outer.append(
                f"countIf(k_{j} > 0) AS mn_{j}, sum(v_{j}) AS my_{j}, sum(k_{j}) AS mx_{j}, "
                f"sum(v_{j} * v_{j}) AS myy_{j}, sum(k_{j} * k_{j}) AS mxx_{j}, sum(v_{j} * k_{j}) AS mxy_{j}"
            )
    spans = (
        f"SELECT *, arrayFilter(k -> startsWith(k, {_lit(vp)}), mapKeys(Attrs)) AS vkeys FROM ({spans_sql}) "
        f"WHERE line_ok AND has_span AND IsServer AND Ts <= {now}{since}"
    )
    rows = (
        # intent-to-treat, as the analysis: served control during a pause (fieldlab.guardrail.<key>), counted
        # in the variant the unit was assigned
        f"SELECT substring(vk, {len(vp) + 1}) AS exp, if(Attrs[concat({_lit(A.GUARDRAIL_PREFIX)}, exp)] != '', "
        f"Attrs[concat({_lit(A.GUARDRAIL_PREFIX)}, exp)], Attrs[vk]) AS variant, {unit} AS unit, Ts, Attrs, "
        f"StatusError OR toInt64OrZero(if(Attrs[{status_new}] != '', Attrs[{status_new}], Attrs[{status_old}])) >= 500 "
        f"AS IsError, {slow} AS IsSlow FROM ({spans}) ARRAY JOIN vkeys AS vk "
        f"WHERE exp IN ({keys}) AND Attrs[concat({_lit(A.FORCED_PREFIX)}, exp)] != 'true'"
    )
    per_unit = (
        f"SELECT exp, unit, any(variant) AS uvariant, uniqExact(variant) AS nv, {', '.join(unit_aggs)} "
        f"FROM ({rows}) WHERE unit != '' GROUP BY exp, unit"
    )
    return (
        f"SELECT exp, uvariant AS variant, {', '.join(outer)} FROM ({per_unit}) WHERE nv = 1 "
        "GROUP BY exp, uvariant ORDER BY exp, uvariant"
    )


def service_totals_sql(spans_sql: str, now: float, period: float) -> str:
    """All SERVER spans of the service in the trailing ``period``: requests, errors, the first timestamp (ns)."""
    status_new, status_old = _lit(A.HTTP_STATUS_CODE), _lit(A.HTTP_STATUS_CODE_OLD)
    return (
        "SELECT count() AS requests, countIf(StatusError OR toInt64OrZero(if(Attrs["
        + status_new
        + "] != '', Attrs["
        + status_new
        + "], Attrs["
        + status_old
        + "])) >= 500) AS errors, min(Ts) AS first_ts "
        f"FROM ({spans_sql}) WHERE line_ok AND has_span AND IsServer AND Ts <= {_ns(now)} "
        f"AND Ts > {_ns(now) - _ns(period)}"
    )


# ----------------------------------------------------------------------------- the pure-Python twin


def _python_rows(spans: Iterable[Span], q: WindowQuery, period: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """What the two SQL queries return, computed from :class:`~fieldlab.analysis.model.Span` s."""
    vp, now = A.VARIANT_PREFIX, _ns(q.now)
    cuts = [now - _ns(w) for w in q.windows]
    since = _ns(q.since) if q.since is not None else None
    mlist = q.metric_list()
    nw = len(q.windows)
    units: dict[tuple[str, str], list[Any]] = {}
    service = {"requests": 0, "errors": 0, "first_ts": 0}
    period_cut = now - _ns(period)
    for ok, tid, _span_id, ts, dur, server, status_err, attrs in spans:
        if not (ok and server) or ts > now:
            continue
        code = attrs.get(A.HTTP_STATUS_CODE) or attrs.get(A.HTTP_STATUS_CODE_OLD) or ""
        try:
            is_err = bool(status_err) or int(code) >= 500
        except ValueError:
            is_err = bool(status_err)
        if ts > period_cut:
            service["requests"] += 1
            service["errors"] += is_err
            service["first_ts"] = ts if not service["first_ts"] else min(service["first_ts"], ts)
        if since is not None and ts < since:
            continue
        for k in attrs:
            if not k.startswith(vp):
                continue
            exp = k[len(vp) :]
            spec = q.specs.get(exp)
            if spec is None or attrs.get(A.forced_attr(exp)) == "true":
                continue
            uid = (
                (attrs.get(A.unit_attr("request")) or tid)
                if spec.unit == "request"
                else attrs.get(A.unit_attr(spec.unit), "")
            )
            if not uid:
                continue
            thr = q.latency_ms.get(exp)
            is_slow = thr is not None and dur > thr * 1e6
            u = units.get((exp, uid))
            if u is None:
                u = units[(exp, uid)] = [
                    set(),
                    0,
                    0,
                    0,
                    [0] * nw,
                    [0] * nw,
                    [0] * nw,
                    [0.0] * len(mlist),
                    [0] * len(mlist),
                ]
            u[0].add(attrs.get(A.guardrail_attr(exp)) or attrs[k])  # intent-to-treat through a pause
            u[1] += 1
            u[2] += is_err
            u[3] += is_slow
            for i, cut in enumerate(cuts):
                if ts > cut:
                    u[4][i] += 1
                    u[5][i] += is_err
                    u[6][i] += is_slow
            for j, (mexp, m) in enumerate(mlist):
                if mexp != exp:
                    continue
                raw = attrs.get(m.name, "")
                if m.kind == "conversion":
                    u[7][j] = max(u[7][j], 1.0 if raw == m.value else 0.0)
                else:
                    try:
                        val = float(raw)
                    except ValueError:
                        continue
                    if not math.isnan(val):
                        u[7][j] += val
                        u[8][j] += 1
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for (exp, _), u in units.items():
        if len(u[0]) != 1:
            continue
        g = groups.setdefault((exp, next(iter(u[0]))), {"exp": exp, "variant": next(iter(u[0]))})
        r, e, s = u[1], u[2], u[3]
        for key, val in (
            ("n", 1),
            ("sx", r),
            ("se", e),
            ("see", e * e),
            ("sxx", r * r),
            ("sxe", r * e),
            ("ss", s),
            ("sss", s * s),
            ("sxs", r * s),
        ):
            g[key] = g.get(key, 0) + val
        for i in range(nw):
            g[f"wu_{i}"] = g.get(f"wu_{i}", 0) + (u[4][i] > 0)
            g[f"wr_{i}"] = g.get(f"wr_{i}", 0) + u[4][i]
            g[f"we_{i}"] = g.get(f"we_{i}", 0) + u[5][i]
            g[f"ws_{i}"] = g.get(f"ws_{i}", 0) + u[6][i]
        for j, (_, m) in enumerate(mlist):
            v, k = u[7][j], u[8][j]
            if m.kind == "conversion":
                g[f"mc_{j}"] = g.get(f"mc_{j}", 0) + v
                continue
            for key, val in (
                (f"mn_{j}", k > 0),
                (f"my_{j}", v),
                (f"mx_{j}", k),
                (f"myy_{j}", v * v),
                (f"mxx_{j}", k * k),
                (f"mxy_{j}", v * k),
            ):
                g[key] = g.get(key, 0) + val
    return [groups[k] for k in sorted(groups)], service


# ----------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Measurement:
    """One round's measurements: the experiments' arms and the budget, and how they were read."""

    experiments: tuple[ExperimentData, ...]
    budget: BudgetStatus
    engine: str
    seconds: float


def _arm_from_row(r: Mapping[str, Any], q: WindowQuery, exp: str) -> ArmData:
    f = {k: float(v) for k, v in r.items() if k not in ("exp", "variant")}
    n = int(f.get("n", 0))
    windows = {
        w: Counts(
            int(f.get(f"wu_{i}", 0)), int(f.get(f"wr_{i}", 0)), int(f.get(f"we_{i}", 0)), int(f.get(f"ws_{i}", 0))
        )
        for i, w in enumerate(q.windows)
    }
    errors = Moments(n, f.get("se", 0.0), f.get("sx", 0.0), f.get("see", 0.0), f.get("sxx", 0.0), f.get("sxe", 0.0))
    slow = Moments(n, f.get("ss", 0.0), f.get("sx", 0.0), f.get("sss", 0.0), f.get("sxx", 0.0), f.get("sxs", 0.0))
    metrics = {}
    for j, (mexp, m) in enumerate(q.metric_list()):
        if mexp != exp:
            continue
        if m.kind == "conversion":
            c = f.get(f"mc_{j}", 0.0)
            metrics[m.name] = Moments(n, c, float(n), c, float(n), c)  # y in {0, 1}, x = 1
        else:
            metrics[m.name] = Moments(
                int(f.get(f"mn_{j}", 0)),
                f.get(f"my_{j}", 0.0),
                f.get(f"mx_{j}", 0.0),
                f.get(f"myy_{j}", 0.0),
                f.get(f"mxx_{j}", 0.0),
                f.get(f"mxy_{j}", 0.0),
            )
    return ArmData(windows, errors, slow, metrics)


def _run_sql(source: S.Source, sql_of: Any) -> list[dict[str, Any]]:
    """Run ``sql_of(spans_sql)`` on a chdb file source or a ClickHouse source."""
    if isinstance(source, S.ClickHouseSource):
        return source.run(sql_of(otel_traces_spans_sql(source.table, source.where, sql_of.spec)))
    assert isinstance(source, S.FileSource)
    return query_chdb(sql_of(file_spans_sql(source.inputs(), sql_of.spec)))


class _Sql:
    """A SQL builder bound to a query spec (so ``_run_sql`` can build the matching span reader)."""

    def __init__(self, spec: S.QuerySpec, build: Any) -> None:
        self.spec, self.build = spec, build

    def __call__(self, spans_sql: str) -> str:
        return str(self.build(spans_sql))


def measure(source: S.Source, q: WindowQuery, config: GuardrailsConfig) -> Measurement:
    """Query ``source`` for ``q`` and the service totals; the budget over ``config.lab.budget_period``."""
    t0 = time.perf_counter()
    period = config.lab.budget_period
    spec = q.query_spec()
    use_sql = isinstance(source, S.ClickHouseSource) or (isinstance(source, S.FileSource) and source.engine == "chdb")
    engine = "clickhouse" if isinstance(source, S.ClickHouseSource) else ("chdb" if use_sql else "python")
    rows: list[dict[str, Any]] | None = None
    service: Mapping[str, Any] = {}
    if use_sql:
        try:
            rows = _run_sql(source, _Sql(spec, lambda s: window_counts_sql(s, q)))
            service = _run_sql(source, _Sql(spec, lambda s: service_totals_sql(s, q.now, period)))[0]
        except Exception as exc:
            if isinstance(source, S.ClickHouseSource) or getattr(source, "requested_engine", "") != "auto":
                first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
                raise S.SourceError(f"{source.description}: guardrail query failed: {first}") from None
            rows, engine = None, "python (chdb failed)"
    if rows is None:
        assert isinstance(source, S.FileSource)
        rows, service = _python_rows(source.iter_spans(), q, period)
    by_exp: dict[str, dict[str, ArmData]] = {}
    for r in rows:
        exp, variant = str(r["exp"]), str(r["variant"])
        by_exp.setdefault(exp, {})[variant] = _arm_from_row(r, q, exp)
    experiments = tuple(ExperimentData(k, q.specs[k].control, arms) for k, arms in sorted(by_exp.items()))
    first_ts = int(service.get("first_ts") or 0)
    observed = (q.now - first_ts / 1e9) if first_ts else 0.0
    try:
        bi = q.windows.index(period)
    except ValueError:
        bi = -1
    arms = {
        e.key: {v: a.window(q.windows[bi]) if bi >= 0 else Counts() for v, a in e.arms.items()} for e in experiments
    }
    budget = budget_status(
        config.lab,
        Counts(0, int(service.get("requests") or 0), int(service.get("errors") or 0), 0),
        observed,
        arms,
        {e.key: e.control for e in experiments},
    )
    return Measurement(experiments, budget, engine, time.perf_counter() - t0)


def canary_charges(state: LabState, now: float, period: float) -> dict[str, float]:
    """The sick canaries' charge on the experimentation budget, by canary key: the bad requests (errors or
    over the latency SLO) of their doses beyond their control's rate, for canaries started within the last
    ``period`` (a canary runs for hours, so its whole spend is charged). A document that cannot be read
    charges nothing and is reported by ``fieldlab canary status``."""
    from .canary import CanaryState

    out: dict[str, float] = {}
    for key, doc in state.canaries.items():
        try:
            if now - float(doc.get("started_at", now)) > period:
                continue
            out[key] = CanaryState.from_dict(doc).excess_bad
        except Exception:
            continue
    return out


class Controller:
    """Measures, decides and records, one round at a time (``fieldlab watch`` loops over :meth:`run_round`).

    ``experiments``: :class:`ExperimentSpec` s by key (see :func:`experiment_specs`);
    ``source``: what ``fieldlab analyze`` reads (paths, a ``clickhouse://`` URL or a
    :class:`fieldlab.analysis.sources.Source`); ``store``: the state store to write.
    """

    def __init__(
        self,
        config: GuardrailsConfig,
        experiments: Mapping[str, ExperimentSpec],
        source: Any,
        store: StateStore,
        *,
        engine: str = "auto",
        by: str | None = None,
    ) -> None:
        self.config = config
        self.specs = dict(experiments)
        self.source = S.open_source(source, engine=engine)
        self.store = store
        self.by = by or decider_name()
        #: The decisions of the last round that changed the state (a pause in force is decided again every
        #: round while the variant burns, and not written again).
        self.applied: list[Decision] = []

    def query(self, now: float) -> WindowQuery:
        lab = self.config.lab
        windows = tuple(sorted({w.long for w in lab.windows} | {w.short for w in lab.windows} | {lab.budget_period}))
        guards = self.config.experiments
        latency = {k: g.latency_slo.ms for k, g in guards.items() if g.latency_slo is not None and k in self.specs}
        metrics = {k: g.metrics for k, g in guards.items() if g.metrics and k in self.specs}
        return WindowQuery(now, windows, self.specs, latency, metrics)

    def run_round(self, now: float | None = None, *, record: bool = True) -> Round:
        """One round; with ``record`` the decisions and the report go to the store. Returns the round."""
        live = now is None
        now = time.time() if now is None else now
        m = measure(self.source, self.query(now), self.config)
        try:
            state = self.store.read()
        except StateFormatError:
            state = LabState()  # a broken document is rewritten by this round's write
        at = iso_time(time.time() if live else now)  # when decided: after the measurement, which takes a while
        budget = with_charges(m.budget, canary_charges(state, now, self.config.lab.budget_period))
        rnd = decide_round(m.experiments, self.config.experiments, self.config.lab, budget, state, at=at, by=self.by)
        if record:
            report = rnd.to_json()
            report["engine"], report["query_seconds"] = m.engine, round(m.seconds, 3)
            report["data_until"] = iso_time(now)
            _, self.applied = self.store.record(rnd.decisions, report=report, at=at, by=self.by)
        else:
            self.applied = []
        return rnd
