"""One round of the sick canary: count each arm from the trace store, advance the search, write the state.

``CanaryController(canaries, source, store).run_round()`` does, per canary:

1. **Rails first.** A kill in the state store (``fieldlab kill <canary>``,
   ``fieldlab kill --all``, or the guardrails halting every fault, e.g. for a
   spent experimentation budget) stops the canary
   (:func:`fieldlab.control.canary.halt`) with the reason on record.
2. **Measure.** Per arm (the SERVER spans' ``fieldlab.canary.<key>``: ``control``
   or a dose label) since the canary started: requests, errors (span status
   error or HTTP >= 500), requests over the steady state's latency SLO, and bad
   requests (either). One SQL query where the source is ClickHouse or embedded
   ClickHouse (chdb) over span files; a streaming pure-Python twin over the
   analysis's own span reader otherwise. Spans are normalised by
   :mod:`fieldlab.analysis` (:func:`~fieldlab.analysis.sql.file_spans_sql`,
   :func:`~fieldlab.analysis.sql.otel_traces_spans_sql`,
   :meth:`~fieldlab.analysis.sources.FileSource.iter_spans`), so a request and an
   error are what ``fieldlab analyze`` counts.
3. **Decide** with :func:`fieldlab.control.canary.advance` (escalate, judge,
   bisect, reweigh; a control that breaks the SLO stops the canary).
4. **Write** the new :class:`~fieldlab.control.canary.CanaryState` under
   ``canaries.<key>`` of the lab state document in one atomic update; every
   process's poller follows it (:mod:`fieldlab.control.canary_runtime`).

:func:`status_of` turns a stored state into what ``fieldlab canary status``
prints: the dose-response table, the breaking point with its bracket, the
requests spent and the budget used.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .. import attributes as A
from ..analysis import sources as S
from ..analysis.clickhouse import query_chdb
from ..analysis.model import Span
from ..analysis.sql import file_spans_sql, otel_traces_spans_sql
from .canary import ArmCounts, CanaryState, advance, dose_response, halt, start
from .canary_config import CanaryConfig
from .state import LabState, StateFormatError, StateStore, decider_name, iso_time

__all__ = ["arm_counts_sql", "python_arm_counts", "measure_arms", "CanaryController", "status_of"]


def _lit(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def arm_counts_sql(spans_sql: str, key: str, latency_ms: float | None, since: float | None, now: float) -> str:
    """Per arm of canary ``key``: ``requests, errors, slow, bad`` over SERVER spans with ``since <= Ts <= now``."""
    attr = _lit(A.canary_attr(key))
    new, old = _lit(A.HTTP_STATUS_CODE), _lit(A.HTTP_STATUS_CODE_OLD)
    slow = f"Dur > {latency_ms * 1e6!r}" if latency_ms is not None else "0"
    since_sql = f" AND Ts >= {int(since * 1e9)}" if since is not None else ""
    rows = (
        f"SELECT Attrs[{attr}] AS arm, StatusError OR toInt64OrZero(if(Attrs[{new}] != '', Attrs[{new}], "
        f"Attrs[{old}])) >= 500 AS IsError, {slow} AS IsSlow FROM ({spans_sql}) "
        f"WHERE line_ok AND has_span AND IsServer AND Ts <= {int(now * 1e9)}{since_sql} AND Attrs[{attr}] != ''"
    )
    return (
        f"SELECT arm, count() AS requests, countIf(IsError) AS errors, countIf(IsSlow) AS slow, "
        f"countIf(IsError OR IsSlow) AS bad FROM ({rows}) GROUP BY arm ORDER BY arm"
    )


def python_arm_counts(
    spans: Iterable[Span], key: str, latency_ms: float | None, since: float | None, now: float
) -> dict[str, ArmCounts]:
    """The pure-Python twin of :func:`arm_counts_sql` over normalised spans."""
    attr = A.canary_attr(key)
    lo = int(since * 1e9) if since is not None else None
    hi = int(now * 1e9)
    thr = latency_ms * 1e6 if latency_ms is not None else None
    acc: dict[str, list[int]] = {}
    for ok, _tid, _sid, ts, dur, server, status_err, attrs in spans:
        arm = attrs.get(attr) if ok and server else None
        if not arm or ts > hi or (lo is not None and ts < lo):
            continue
        code = attrs.get(A.HTTP_STATUS_CODE) or attrs.get(A.HTTP_STATUS_CODE_OLD) or ""
        try:
            err = bool(status_err) or int(code) >= 500
        except ValueError:
            err = bool(status_err)
        slow = thr is not None and dur > thr
        c = acc.setdefault(arm, [0, 0, 0, 0])
        c[0] += 1
        c[1] += err
        c[2] += slow
        c[3] += err or slow
    return {arm: ArmCounts(r, e, s, b) for arm, (r, e, s, b) in acc.items()}


def measure_arms(
    source: S.Source, canary: CanaryConfig, since: float | None, now: float
) -> tuple[dict[str, ArmCounts], str]:
    """Each arm's cumulative counts from ``source``, and the engine that counted them."""
    latency = canary.spec.steady.latency_ms
    spec = S.QuerySpec()
    if isinstance(source, S.ClickHouseSource):
        spans_sql = otel_traces_spans_sql(source.table, source.where, spec)
        rows: list[dict[str, Any]] | None = source.run(arm_counts_sql(spans_sql, canary.key, latency, since, now))
        engine = "clickhouse"
    else:
        assert isinstance(source, S.FileSource)
        rows = None
        engine = "python"
        if source.engine == "chdb":
            try:
                rows = query_chdb(
                    arm_counts_sql(file_spans_sql(source.inputs(), spec), canary.key, latency, since, now)
                )
                engine = "chdb"
            except Exception as exc:
                if source.requested_engine != "auto":
                    raise S.SourceError(f"{source.description}: canary query failed: {exc}") from None
                engine = "python (chdb failed)"
        if rows is None:
            return python_arm_counts(source.iter_spans(), canary.key, latency, since, now), engine
    assert rows is not None
    return {
        str(r["arm"]): ArmCounts(int(r["requests"]), int(r["errors"]), int(r["slow"]), int(r["bad"])) for r in rows
    }, engine


def _halted_by(state: LabState, key: str) -> str | None:
    """Why the store halts this canary's faults (a kill of the canary or of everything), or None."""
    mark = state.killed.get(key) or state.all
    if mark is None:
        return None
    who = "every fault" if key not in state.killed else f"the canary {key}"
    why = f": {mark.reason}" if mark.reason else ""
    return f"faults halted for {who} by {mark.by} (cause {mark.cause}){why}"


class CanaryController:
    """Runs the canaries of a config, one round at a time (``fieldlab canary run`` loops over :meth:`run_round`).

    ``source``: what ``fieldlab analyze`` reads (span files or directories, a
    ``clickhouse://`` URL, or a :class:`~fieldlab.analysis.sources.Source`);
    ``store``: the lab state store the request processes follow.
    """

    def __init__(
        self,
        canaries: Sequence[CanaryConfig],
        source: Any,
        store: StateStore,
        *,
        engine: str = "auto",
        by: str | None = None,
    ) -> None:
        self.canaries = tuple(canaries)
        self.source_spec = source
        self.engine = engine
        self._source()  # a bad URL or path fails now, not at the first round
        self.store = store
        self.by = by or decider_name()
        self.last_engine = ""

    def _source(self) -> S.Source | None:
        """The span source, opened again each round (new span files appear as processes start); None while
        the given directories hold no span files yet."""
        return S.open_source_when_ready(self.source_spec, engine=self.engine)

    def _read(self) -> LabState:
        try:
            return self.store.read()
        except StateFormatError:
            return LabState()  # rewritten by this round's write

    def run_round(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        """One round of every canary; returns the documents written, by canary key."""
        now = time.time() if now is None else now
        lab_state = self._read()
        written: dict[str, dict[str, Any]] = {}
        for c in self.canaries:
            old = lab_state.canaries.get(c.key)
            st = CanaryState.from_dict(old) if isinstance(old, Mapping) else None
            started = float(old["started_at"]) if isinstance(old, Mapping) and "started_at" in old else now
            halted = _halted_by(lab_state, c.key)
            if st is None:
                st = start(c.spec)
            if halted is not None:
                st = halt(st, halted)
            elif not st.finished:
                source = self._source()
                counts: dict[str, ArmCounts] = {}
                if source is not None:
                    counts, self.last_engine = measure_arms(source, c, started, now)
                st = advance(c.spec, st, counts)
            doc = st.to_dict()
            doc.update(
                started_at=started,
                updated_at=iso_time(now),
                by=self.by,
                point=c.point,
                unit=c.unit,
                traffic=c.traffic,
                engine=self.last_engine,
            )
            written[c.key] = doc
        if written:

            def change(cur: LabState) -> LabState:
                return dataclasses.replace(
                    cur, seq=cur.seq + 1, updated_at=iso_time(now), canaries={**cur.canaries, **written}
                )

            self.store.update(change)
        return written


def status_of(canary: CanaryConfig, doc: Mapping[str, Any] | None) -> dict[str, Any]:
    """What ``fieldlab canary status`` shows of one canary: phase, breaking point and bracket, the
    dose-response table (each dose vs control, with always-valid intervals), requests spent and the
    budget used (bad requests of the doses, and those beyond control's rate)."""
    if not isinstance(doc, Mapping):
        return {
            "key": canary.key,
            "phase": "not started",
            "point": canary.point,
            "traffic": canary.traffic,
            "doses": list(canary.spec.doses),
        }
    st = CanaryState.from_dict(doc)
    return {
        "key": canary.key,
        "point": canary.point,
        "traffic": canary.traffic,
        "phase": st.phase,
        "outcome": st.outcome,
        "round": st.round,
        "updated_at": doc.get("updated_at"),
        "breaking_point_ms": st.breaking_point,
        "bracket": list(st.bracket),
        "requests_spent": st.requests_spent,
        "bad_spent": st.bad_spent,
        "excess_bad": round(st.excess_bad, 3),
        "weights": dict(st.weights),
        "weights_version": st.weights_version,
        "dose_response": dose_response(canary.spec, st),
        "history": [d.to_dict() for d in st.history[-20:]],
        "steady_state": canary.spec.steady.to_dict(),
    }
