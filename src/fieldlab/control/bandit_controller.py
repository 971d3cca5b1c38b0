"""The bandits' controller: measure each arm from the trace store, recompute the weights, publish the next version.

:func:`run_bandits` does, for every running ``kind = "bandit"`` experiment of a config:

1. **Version 0 on record.** A bandit the state store does not know yet gets its
   version 0 entry (the config's split, :func:`~fieldlab.control.bandit_config.initial_entry`):
   the ``interval`` clock starts there, and ``fieldlab status`` shows it.
2. **Due?** Nothing happens until ``interval`` has passed since the version in
   force was published (its ``at``).
3. **Measure** every due bandit in one aggregation of the source
   (:meth:`fieldlab.analysis.sources.Source.aggregate`, the analysis's own
   reader: SERVER spans, QA overrides and units seen in two arms left out,
   intent-to-treat through a guardrail pause), over all the data the source
   holds (every period). Per arm, per unit: a conversion (the unit has a request
   whose attribute equals ``value``), an error (the unit saw a failed request),
   a numeric attribute (the unit's mean over the requests carrying it) or the
   latency (the unit's mean request duration, ms).
4. **Weights** by :func:`~fieldlab.control.bandit.thompson_weights` with the
   table's ``floor`` and ``burn_in`` and a seed derived from the key and the new
   version (``hash32("<key>:<version>")``), so a replay of the same counts gives
   the same weights. During burn-in nothing is published.
5. **Publish** the next version in one atomic :meth:`~fieldlab.control.state.StateStore.update`
   (:func:`~fieldlab.control.bandit_config.next_entry`: sticky units open the
   next slice under the new weights; other units switch to them). An entry some
   other controller changed meanwhile is left as it is. Sticky enrolment that
   has reached the experiment's traffic cannot use new weights: they stay frozen
   (reported, not written).

A weights update is not a :class:`~fieldlab.control.state.Decision` (nothing is
paused); it goes under ``bandits.<key>`` of the state document, and every
process's Lab follows it within its poll interval. ``fieldlab watch`` calls
:func:`watch_bandits` each round; ``fieldlab status`` shows :func:`bandit_statuses`.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from .._hashing import hash32
from .bandit import ArmStats, BanditWeights, thompson_weights, to_basis_points
from .bandit_config import EntryError, check_entry, initial_entry, is_sticky, next_entry
from .state import LabState, StateFormatError, StateStore, iso_time

__all__ = [
    "BanditEvent",
    "bandit_experiments",
    "measure_bandits",
    "run_bandits",
    "watch_bandits",
    "bandit_statuses",
    "render_bandits",
    "seed_of",
]

#: What an event says: a version was written (``started``: version 0, ``updated``), nothing was written and why
#: (``waiting``: the interval has not passed; ``burn_in``; ``frozen``: sticky enrolment is complete;
#: ``conflict``: another writer changed the entry meanwhile), or a problem (``mismatch``, ``error``).
EVENT_ACTIONS = ("started", "updated", "waiting", "burn_in", "frozen", "conflict", "mismatch", "error")


@dataclass(frozen=True)
class BanditEvent:
    """What one round did with one bandit (see :data:`EVENT_ACTIONS`), with the weights and evidence."""

    experiment: str
    action: str
    version: int = 0
    arms: tuple[str, ...] = ()
    weights_bp: tuple[int, ...] = ()
    p_best: tuple[float, ...] | None = None
    units: tuple[int, ...] = ()
    means: tuple[float | None, ...] = ()
    reason: str = ""

    @property
    def notable(self) -> bool:
        """Worth a line in ``fieldlab watch``'s text output (a version written, frozen, or a problem)."""
        return self.action in ("started", "updated", "frozen", "conflict", "mismatch", "error")

    def line(self) -> str:
        """One line for a person: ``hero-banner: weights v3 control 20% bold 70% calm 10% (Thompson, P(best) bold 0.85)``."""
        weights = " ".join(f"{a} {w / 100:g}%" for a, w in zip(self.arms, self.weights_bp, strict=False))
        lead = ""
        if self.p_best:
            i = max(range(len(self.p_best)), key=lambda j: self.p_best[j])  # type: ignore[index]
            lead = f"P(best) {self.arms[i]} {self.p_best[i]:.2f}"
        if self.action == "updated":
            return f"{self.experiment}: weights v{self.version} {weights} (Thompson, {lead})"
        if self.action == "started":
            return f"{self.experiment}: weights v0 {weights} (the config's split, until the first update)"
        if self.action == "frozen":
            return f"{self.experiment}: weights v{self.version} kept: {self.reason}{'; ' + lead if lead else ''}"
        if self.action in ("burn_in", "waiting"):
            return f"{self.experiment}: weights v{self.version} kept ({self.reason})"
        return f"{self.experiment}: {self.action.upper()}: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "action": self.action,
            "version": self.version,
            "arms": list(self.arms),
            "weights_bp": list(self.weights_bp),
            "p_best": list(self.p_best) if self.p_best is not None else None,
            "units": list(self.units),
            "means": list(self.means),
            "reason": self.reason,
        }


def seed_of(key: str, version: int) -> int:
    """The Monte Carlo seed of version ``version`` of bandit ``key``: a replay of its counts gives its weights."""
    return hash32(f"{key}:{version}")


def bandit_experiments(experiments: Any) -> list[Any]:
    """The running ``kind = "bandit"`` experiments among ``experiments`` (a mapping or a list of Experiments)."""
    items = experiments.values() if isinstance(experiments, Mapping) else experiments
    return [e for e in items if getattr(e, "kind", "ab") == "bandit" and e.status == "running"]


def _epoch(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return _dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=_dt.timezone.utc).timestamp()
    except ValueError:
        return None


def _metric(exp: Any) -> Any:
    """The analysis metric that carries the bandit's decision metric, as ``fieldlab analyze`` reads it
    (:func:`fieldlab.analysis.bandits.decision_metric`); None for errors and latency, always measured."""
    from ..analysis.bandits import decision_metric
    from ..analysis.model import Metric

    m = decision_metric(exp, ())
    return m if isinstance(m, Metric) else None


def _arm(exp: Any, g: Any) -> ArmStats:
    """One arm's :class:`~fieldlab.control.bandit.ArmStats` from its per-unit aggregates (None: no units)."""
    import numpy as np

    if g is None or g.units == 0:
        return ArmStats(0)
    kind = exp.bandit.metric_kind
    if kind == "error":
        return ArmStats(g.units, int(np.count_nonzero(g.errors > 0)))
    if kind == "latency":  # the unit's mean request duration
        mask = g.requests > 0
        values = g.latency_sum_ms[mask] / g.requests[mask]
    else:
        name = _metric(exp).name
        if kind == "conversion":
            return ArmStats(g.units, int(np.count_nonzero(g.conversions[name] > 0)))
        counts = g.metric_counts[name]
        mask = counts > 0
        values = g.metric_sums[name][mask] / counts[mask]
    return ArmStats(int(mask.sum()), 0, float(values.sum()), float((values * values).sum()))


def measure_bandits(source: Any, experiments: Sequence[Any]) -> tuple[dict[str, list[ArmStats]], str]:
    """Each bandit's arms (in variant order) measured from ``source`` in one aggregation, and the engine used."""
    from ..analysis.model import QuerySpec

    metrics: dict[str, Any] = {}
    for e in experiments:
        m = _metric(e)
        if m is not None:
            metrics.setdefault(m.name, m)
    spec = QuerySpec(unit_kinds={e.key: e.unit for e in experiments}, metrics=tuple(metrics.values()))
    agg = source.aggregate(spec)
    out: dict[str, list[ArmStats]] = {}
    for e in experiments:
        data = agg.experiments.get(e.key)
        groups = data.variants if data is not None else {}
        out[e.key] = [_arm(e, groups.get(name)) for name in e.variant_names]
    return out, agg.engine


def _means(exp: Any, arms: Sequence[ArmStats]) -> tuple[float | None, ...]:
    kind = exp.bandit.thompson_kind
    return tuple(round(a.mean(kind), 6) if a.units else None for a in arms)


def run_bandits(
    experiments: Any,
    source: Any,
    store: StateStore,
    *,
    now: float | None = None,
    engine: str = "auto",
) -> list[BanditEvent]:
    """One round of every running bandit in ``experiments`` (see the module docstring); the events, by key order.

    ``source``: what ``fieldlab analyze`` reads (span files, directories, a ``clickhouse://`` URL or a
    :class:`~fieldlab.analysis.sources.Source`); ``now``: the round's time (epoch seconds; default the clock).
    """
    bandits = sorted(bandit_experiments(experiments), key=lambda e: e.key)
    if not bandits:
        return []
    now = time.time() if now is None else now
    try:
        current = store.read()
    except StateFormatError:
        current = LabState()  # a broken document is rewritten by this round's write
    events: dict[str, BanditEvent] = {}
    writes: dict[str, tuple[int | None, dict[str, Any]]] = {}  # key -> (version read, new entry)
    due: list[Any] = []
    for e in bandits:
        names = tuple(e.variant_names)
        entry = current.bandits.get(e.key)
        if entry is None:
            new = initial_entry(e, now)
            writes[e.key] = (None, new)
            events[e.key] = BanditEvent(e.key, "started", 0, names, tuple(new["weights_bp"]), reason=new["reason"])
            continue
        try:
            version, weights, _ = check_entry(entry, names, is_sticky(e.unit))
        except EntryError as exc:
            events[e.key] = BanditEvent(e.key, "mismatch", reason=f"the stored weights do not fit the config: {exc}")
            continue
        at = _epoch(entry.get("at"))
        if at is not None and now - at < e.bandit.interval:
            left = e.bandit.interval - (now - at)
            events[e.key] = BanditEvent(
                e.key, "waiting", version, names, weights, reason=f"next update due in {left:.0f} s"
            )
            continue
        due.append((e, entry, version, weights))
    if due:
        from ..analysis.sources import open_source_when_ready

        src = open_source_when_ready(source, engine)
        measured: dict[str, list[ArmStats]] = {}
        if src is not None:
            measured, _ = measure_bandits(src, [d[0] for d in due])
        for e, entry, version, weights in due:
            names = tuple(e.variant_names)
            cfg = e.bandit
            arms = measured.get(e.key) or [ArmStats(0) for _ in names]
            units = tuple(a.units for a in arms)
            means = _means(e, arms)
            res = thompson_weights(
                arms,
                kind=cfg.thompson_kind,
                higher_is_better=cfg.higher_is_better,
                seed=seed_of(e.key, version + 1),
                floor=cfg.floor_fraction,
                burn_in=cfg.burn_in,
            )
            if not res.updated:
                short = min(range(len(arms)), key=lambda i: units[i])
                events[e.key] = BanditEvent(
                    e.key,
                    "burn_in",
                    version,
                    names,
                    weights,
                    units=units,
                    means=means,
                    reason=f"burn-in: {names[short]} has {units[short]} units < {cfg.burn_in}",
                )
                continue
            bp = to_basis_points(res.weights, cfg.floor_fraction)
            assert res.p_best is not None
            lead = max(range(len(names)), key=lambda i: res.p_best[i])  # type: ignore[index]
            why = (
                f"Thompson sampling on {cfg.metric_kind} {cfg.metric} (seed {seed_of(e.key, version + 1)}): "
                f"{names[lead]} is best with probability {res.p_best[lead]:.3f}"
            )
            bw = BanditWeights(version + 1, bp, why, res.p_best)
            evidence = {"units": list(units), "means": list(means), "metric": cfg.metric, "kind": cfg.metric_kind}
            published = next_entry(e, entry, bw, now, evidence)
            if published is None:
                events[e.key] = BanditEvent(
                    e.key,
                    "frozen",
                    version,
                    names,
                    weights,
                    res.p_best,
                    units,
                    means,
                    f"sticky enrolment has opened the whole traffic ({e.traffic:g} %); new weights would reach no unit",
                )
                continue
            writes[e.key] = (version, published)
            events[e.key] = BanditEvent(e.key, "updated", bw.version, names, bp, res.p_best, units, means, bw.reason)
    if writes:
        applied: set[str] = set()

        def change(cur: LabState) -> LabState | None:
            applied.clear()
            table = dict(cur.bandits)
            for key, (read_version, new) in writes.items():
                held = table.get(key)
                held_version = held.get("version") if isinstance(held, Mapping) else None
                if held_version != read_version:
                    continue  # another controller published meanwhile: its version stands
                table[key] = new
                applied.add(key)
            if not applied:
                return None
            return dataclasses.replace(cur, seq=cur.seq + 1, updated_at=iso_time(now), bandits=table)

        store.update(change)
        for key in writes:
            if key not in applied:
                events[key] = BanditEvent(key, "conflict", reason="another writer changed the entry; nothing written")
    return [events[k] for k in sorted(events)]


def watch_bandits(state: Any, source: Any, store: StateStore, *, engine: str = "auto") -> list[BanditEvent]:
    """:func:`run_bandits` for ``fieldlab watch`` (``state``: the Lab's validated config); never raises:
    a failure is one ``error`` event, and the guardrail round goes on."""
    try:
        return run_bandits(state.experiments, source, store, engine=engine)
    except Exception as exc:
        return [BanditEvent("bandits", "error", reason=f"{type(exc).__name__}: {exc}")]


# ----------------------------------------------------------------------------- status


def bandit_statuses(state: Any, lab_state: LabState) -> list[dict[str, Any]]:
    """Each bandit of the config: the version in force, its weights and P(best), when it was published."""
    from .bandit_config import EntryError, view_of

    out = []
    for e in sorted(state.experiments.values(), key=lambda x: x.key):
        if getattr(e, "kind", "ab") != "bandit":
            continue
        entry = lab_state.bandits.get(e.key)
        problem = None
        try:
            view = view_of(e, entry)
        except EntryError as exc:
            problem, view = str(exc), view_of(e)
        row: dict[str, Any] = {
            "experiment": e.key,
            "status": e.status,
            "unit": e.unit,
            "sticky": is_sticky(e.unit),
            "metric": e.bandit.metric,
            "metric_kind": e.bandit.metric_kind,
            "version": view.version,
            "weights": {n: w / 100 for n, w in zip(view.names, view.weights_bp, strict=False)},
            "p_best": dict(zip(view.names, view.p_best, strict=False)) if view.p_best else None,
            "updated_at": view.at,
            "enrolled_percent": view.enrolled / 100,
            "periods": len(entry.get("periods") or ()) if isinstance(entry, Mapping) else 1,
            "reason": entry.get("reason") if isinstance(entry, Mapping) else "version 0: not published yet",
            "evidence": entry.get("evidence") if isinstance(entry, Mapping) else None,
            "problem": problem,
        }
        out.append(row)
    return out


def render_bandits(rows: Sequence[Mapping[str, Any]], out: IO[str]) -> None:
    """``fieldlab status``'s text for the bandits."""
    if not rows:
        return
    out.write("bandits:\n")
    for r in rows:
        weights = " ".join(f"{n} {w:g}%" for n, w in r["weights"].items())
        pb = r["p_best"]
        lead = ""
        if pb:
            best = max(pb, key=lambda n: pb[n])
            lead = f", P(best) {best} {pb[best]:.2f}"
        sticky = f", {r['enrolled_percent']:g} % of units enrolled" if r["sticky"] else ""
        out.write(
            f"  {r['experiment']}: v{r['version']} {weights}{lead} ({r['metric_kind']} {r['metric']}{sticky}; "
            f"updated {r['updated_at'] or 'never'})\n"
        )
        if r["problem"]:
            out.write(f"    stored weights not used: {r['problem']}\n")
