"""The decisions: which variant to pause, when the environment is to blame, when the budget is spent.

Pure functions from counts (:mod:`fieldlab.control.budget`) and settings
(:mod:`fieldlab.control.settings`) to :class:`Verdict` s (one per variant, for
``--json`` and ``fieldlab status``) and :class:`~fieldlab.control.state.Decision` s
(what the state store records). The rules, in order:

1. **Too little evidence**: fewer than ``min_units`` units in the variant or in
   control -> ``insufficient``; nothing is decided about that variant.
2. **Guardrail SLOs** (``errors`` with ``error_slo``, ``latency`` with
   ``latency_slo``): a variant is harmful when, for some window pair, its burn
   rate is at or above the pair's threshold in both the long and the short
   window, **and** its bad-request rate is worse than control's with the
   always-valid confidence sequence (the lower end of the interval of variant
   minus control, over per-unit data since the start, is above zero). The
   ``alpha`` of the lab is split evenly over the SLIs and metrics that can pause
   a variant (:func:`per_test_alpha`), so together they stay within it.
   Harmful -> ``pause`` (or ``alert`` with ``action = "alert"``).
3. **Environment**: when control itself fires a window pair, the service is
   burning whatever the variant does: a variant that fires but is not shown
   worse gets ``environment`` (not blamed), and fault injection is halted
   lab-wide (cause ``environment``) until no control fires any more.
4. **Non-inferiority metrics**: a variant whose always-valid interval of the
   relative difference lies wholly beyond the margin on the bad side is paused
   (cause ``metric``).
5. **Experimentation budget**: when the excess errors of all variants reach
   ``experiment_share`` % of the service budget, fault injection halts (cause
   ``budget``) and the costliest variants -- those that together account for
   :data:`BUDGET_PAUSE_COVER` of the spend, costliest first -- are paused;
   when the spend falls below :data:`BUDGET_RECOVER_BELOW` of the budget, the
   controller lifts what the budget paused or halted (and nothing else).

A pause for a guardrail or metric stays until a person resumes it
(``fieldlab resume``); environment and budget actions lift themselves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .budget import ArmData, BudgetStatus, Interval, PairBurn, difference_interval, pair_burn, relative_interval
from .settings import ExperimentGuardrails, LabGuardrails
from .state import Decision, LabState

__all__ = [
    "ExperimentData",
    "Verdict",
    "ExperimentVerdict",
    "Round",
    "evaluate_experiment",
    "decide_round",
    "per_test_alpha",
    "OUTCOMES",
    "BUDGET_PAUSE_COVER",
    "BUDGET_RECOVER_BELOW",
]

#: What the guardrails concluded about one variant this round.
OUTCOMES = ("ok", "insufficient", "watch", "environment", "pause", "alert")
#: When the budget is spent, pause the costliest variants that together caused this share of the spend.
BUDGET_PAUSE_COVER = 0.8
#: Budget pauses and halts are lifted when the spend is back under this share of the budget.
BUDGET_RECOVER_BELOW = 0.9
_SLI_WORDS = {"errors": "error rate", "latency": "slow-request rate"}


@dataclass(frozen=True)
class ExperimentData:
    """One experiment's arms as the controller measured them; ``control`` names the control arm."""

    key: str
    control: str
    arms: Mapping[str, ArmData]


@dataclass(frozen=True)
class Verdict:
    """The guardrails' conclusion about one variant, with everything it rests on."""

    experiment: str
    variant: str
    outcome: str
    cause: str | None = None  # guardrail | metric, for pause and alert
    reason: str = ""
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "variant": self.variant,
            "outcome": self.outcome,
            "cause": self.cause,
            "reason": self.reason,
            "evidence": dict(self.evidence),
        }


@dataclass(frozen=True)
class ExperimentVerdict:
    """All verdicts of one experiment, and whether its control shows the environment burning."""

    experiment: str
    control: str
    verdicts: tuple[Verdict, ...]
    environment: bool = False
    environment_reason: str = ""
    control_evidence: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "control": self.control,
            "environment": self.environment,
            "environment_reason": self.environment_reason,
            "control_evidence": dict(self.control_evidence),
            "variants": [v.to_json() for v in self.verdicts],
        }


def _pct(x: float) -> str:
    return f"{100 * x:.3g} %"


def _sli_list(guard: ExperimentGuardrails) -> list[tuple[str, float]]:
    out = [("errors", guard.error_slo)]
    if guard.latency_slo is not None:
        out.append(("latency", guard.latency_slo.percent))
    return out


def _firing_words(p: PairBurn) -> str:
    return (
        f"{p.long_burn:.3g}x over {p.pair.long_text} and {p.short_burn:.3g}x over {p.pair.short_text} "
        f"(threshold {p.pair.burn_rate:g}x)"
    )


def _sli_evidence(
    sli: str,
    slo: float,
    pairs: Sequence[PairBurn],
    cpairs: Sequence[PairBurn],
    interval: Interval,
    worse: bool,
    guard: ExperimentGuardrails,
) -> dict[str, Any]:
    windows = []
    for p, c in zip(pairs, cpairs, strict=True):
        w = p.to_json()
        cj = c.to_json()
        w["control"] = {
            "long_burn_rate": cj["long"]["burn_rate"],
            "short_burn_rate": cj["short"]["burn_rate"],
            "firing": c.firing,
        }
        windows.append(w)
    out: dict[str, Any] = {
        "slo": slo,
        "budget": round(100.0 - slo, 6),
        "windows": windows,
        "interval": interval.to_json(),
        "worse_than_control": worse,
    }
    if sli == "latency" and guard.latency_slo is not None:
        out["threshold_ms"] = guard.latency_slo.ms
    return out


def per_test_alpha(guard: ExperimentGuardrails, lab: LabGuardrails) -> float:
    """The error level of each always-valid test of a variant: ``lab.alpha`` split evenly (Bonferroni) over
    the SLIs and metrics that can pause it, so all of them together pause an A/A variant at most
    ``alpha / 2`` of the time (each test is one-sided at half its two-sided level)."""
    return lab.alpha / (len(_sli_list(guard)) + len(guard.metrics))


def evaluate_experiment(data: ExperimentData, guard: ExperimentGuardrails, lab: LabGuardrails) -> ExperimentVerdict:
    """Verdicts for every non-control arm of ``data`` (rules 1-4 of the module docstring)."""
    control = data.arms.get(data.control, ArmData())
    slis = _sli_list(guard)
    control_pairs = {sli: [pair_burn(control, w, sli, slo) for w in lab.windows] for sli, slo in slis}
    env_fired = [(sli, p) for sli, ps in control_pairs.items() for p in ps if p.firing]
    environment = bool(env_fired) and control.units >= guard.min_units
    env_reason = ""
    if environment:
        sli, p = env_fired[0]
        env_reason = (
            f"control's {_SLI_WORDS[sli]} burns its budget {_firing_words(p)}: the environment, "
            "not a variant, is burning it"
        )
    control_evidence = {
        "units": control.units,
        "slis": {sli: [p.to_json() for p in ps] for sli, ps in control_pairs.items()},
    }
    verdicts = []
    for name in sorted(data.arms):
        if name == data.control:
            continue
        verdicts.append(_evaluate_variant(data, name, data.arms[name], control, control_pairs, guard, lab))
    return ExperimentVerdict(data.key, data.control, tuple(verdicts), environment, env_reason, control_evidence)


def _evaluate_variant(
    data: ExperimentData,
    name: str,
    arm: ArmData,
    control: ArmData,
    control_pairs: Mapping[str, Sequence[PairBurn]],
    guard: ExperimentGuardrails,
    lab: LabGuardrails,
) -> Verdict:
    alpha = per_test_alpha(guard, lab)
    evidence: dict[str, Any] = {
        "units": {"control": control.units, "variant": arm.units},
        "min_units": guard.min_units,
        "alpha": alpha,
        "slis": {},
        "metrics": {},
    }
    harmful: list[str] = []
    burning_unproven: list[str] = []
    control_fires = False
    for sli, slo in _sli_list(guard):
        pairs = [pair_burn(arm, w, sli, slo) for w in lab.windows]
        cpairs = control_pairs[sli]
        interval = difference_interval(control.rate(sli), arm.rate(sli), alpha)
        worse = interval.valid and interval.low > 0
        evidence["slis"][sli] = _sli_evidence(sli, slo, pairs, cpairs, interval, worse, guard)
        fired = [p for p in pairs if p.firing]
        control_fires = control_fires or any(c.firing for c in cpairs)
        if fired and worse:
            harmful.append(
                f"its {_SLI_WORDS[sli]} ({_pct(interval.variant)}) burns the {slo:g} % SLO "
                f"{_firing_words(fired[0])} and is worse than control's ({_pct(interval.control)}; "
                f"difference {100 * interval.low:+.3g} to {100 * interval.high:+.3g} points "
                f"at {1 - alpha:.2%})"
            )
        elif fired:
            burning_unproven.append(f"its {_SLI_WORDS[sli]} burns the {slo:g} % SLO {_firing_words(fired[0])}")
    inferior: list[str] = []
    for m in guard.metrics:
        c_m, v_m = control.metrics.get(m.name), arm.metrics.get(m.name)
        if c_m is None or v_m is None:
            evidence["metrics"][m.name] = {"margin": m.margin, "missing": True}
            continue
        rel = relative_interval(c_m, v_m, alpha)
        bound = m.margin / 100.0
        bad = rel.valid and (rel.high < bound if m.higher_is_better else rel.low > bound)
        evidence["metrics"][m.name] = {
            "kind": m.kind,
            "margin": m.margin,
            "higher_is_better": m.higher_is_better,
            "relative": rel.to_json(),
            "inferior": bad,
        }
        if bad:
            inferior.append(
                f"{m.name} is {_pct(rel.estimate)} relative to control (interval {_pct(rel.low)} to "
                f"{_pct(rel.high)}), wholly beyond the margin {m.margin:+g} %"
            )
    if control.units < guard.min_units or arm.units < guard.min_units:
        return Verdict(
            data.key,
            name,
            "insufficient",
            None,
            f"{arm.units} units in {name}, {control.units} in control; no decision below {guard.min_units} per arm",
            evidence,
        )
    act = "pause" if guard.action == "pause" else "alert"
    if harmful:
        return Verdict(data.key, name, act, "guardrail", "; ".join(harmful), evidence)
    if inferior:
        return Verdict(data.key, name, act, "metric", "; ".join(inferior), evidence)
    if burning_unproven and control_fires:
        return Verdict(
            data.key,
            name,
            "environment",
            None,
            "; ".join(burning_unproven) + ", but control burns as fast: the environment is blamed",
            evidence,
        )
    if burning_unproven:
        return Verdict(
            data.key, name, "watch", None, "; ".join(burning_unproven) + ", not yet shown worse than control", evidence
        )
    return Verdict(data.key, name, "ok", None, "within its guardrails", evidence)


@dataclass(frozen=True)
class Round:
    """One controller round: every experiment's verdicts, the budget, and the decisions to record."""

    at: str
    experiments: tuple[ExperimentVerdict, ...]
    budget: BudgetStatus | None
    decisions: tuple[Decision, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "experiments": [e.to_json() for e in self.experiments],
            "budget": self.budget.to_json() if self.budget is not None else None,
            "decisions": [d.to_json() for d in self.decisions],
        }


def decide_round(
    experiments: Sequence[ExperimentData],
    guards: Mapping[str, ExperimentGuardrails],
    lab: LabGuardrails,
    budget: BudgetStatus | None,
    state: LabState,
    *,
    at: str,
    by: str,
) -> Round:
    """Evaluate every experiment and turn the verdicts, the budget and the current ``state`` into decisions.

    Lifting decisions come before halting ones, so within one write a halt
    handed from one cause to another (environment -> budget) never gaps.
    """
    verdicts = []
    for data in experiments:
        guard = guards.get(data.key) or ExperimentGuardrails(error_slo=lab.service_slo, min_units=lab.min_units)
        verdicts.append(evaluate_experiment(data, guard, lab))
    lifts: list[Decision] = []
    acts: list[Decision] = []
    for ev in verdicts:
        for v in ev.verdicts:
            if v.outcome in ("pause", "alert"):
                acts.append(
                    Decision(v.outcome, v.experiment, v.variant, v.cause or "guardrail", v.reason, by, at, v.evidence)
                )
    env = [ev for ev in verdicts if ev.environment]
    if env:
        acts.append(
            Decision(
                "halt_faults",
                None,
                None,
                "environment",
                "; ".join(f"{ev.experiment}: {ev.environment_reason}" for ev in env),
                by,
                at,
                {ev.experiment: dict(ev.control_evidence) for ev in env},
            )
        )
    elif state.all is not None and state.all.cause == "environment":
        lifts.append(
            Decision("resume_faults", None, None, "environment", "no control burns its budget any more", by, at)
        )
    if budget is not None:
        lifts_b, acts_b = _budget_decisions(budget, verdicts, guards, lab, state, at=at, by=by)
        lifts += lifts_b
        acts += acts_b
    return Round(at, tuple(verdicts), budget, tuple(lifts + acts))


def _budget_decisions(
    budget: BudgetStatus,
    verdicts: Sequence[ExperimentVerdict],
    guards: Mapping[str, ExperimentGuardrails],
    lab: LabGuardrails,
    state: LabState,
    *,
    at: str,
    by: str,
) -> tuple[list[Decision], list[Decision]]:
    lifts: list[Decision] = []
    acts: list[Decision] = []
    summary = budget.to_json()
    if budget.exhausted:
        acts.append(
            Decision(
                "halt_faults",
                None,
                None,
                "budget",
                f"the experimentation budget is spent ({budget.spent:.4g} excess errors of "
                f"{budget.allowed:.4g} allowed)",
                by,
                at,
                summary,
            )
        )
        units = {(ev.experiment, v.variant): v.evidence.get("units", {}) for ev in verdicts for v in ev.verdicts}
        covered = 0.0
        for (exp, variant), excess in budget.spenders():
            if covered >= BUDGET_PAUSE_COVER * budget.spent:
                break
            covered += excess
            if variant is None:
                continue  # a sick canary: halting every fault has stopped it
            guard = guards.get(exp)
            min_units = guard.min_units if guard else lab.min_units
            u = units.get((exp, variant), {})
            if u and min(u.get("control", 0), u.get("variant", 0)) < min_units:
                continue  # no decision about a variant on too little evidence (faults are halted anyway)
            action = "alert" if guard is not None and guard.action == "alert" else "pause"
            acts.append(
                Decision(
                    action,
                    exp,
                    variant,
                    "budget",
                    f"costliest variant while the experimentation budget is spent: {excess:.4g} "
                    f"excess errors ({100 * excess / budget.spent:.3g} % of the spend)",
                    by,
                    at,
                    {**summary, "variant_excess": excess},
                )
            )
    elif budget.fraction < BUDGET_RECOVER_BELOW:
        if state.all is not None and state.all.cause == "budget":
            lifts.append(
                Decision(
                    "resume_faults",
                    None,
                    None,
                    "budget",
                    f"the experimentation budget recovered ({budget.fraction:.0%} used)",
                    by,
                    at,
                    summary,
                )
            )
        for table in (state.paused, state.alerts):
            for exp, marks in table.items():
                for variant, mark in marks.items():
                    if mark.cause == "budget":
                        lifts.append(
                            Decision(
                                "resume",
                                exp,
                                variant,
                                "budget",
                                f"the experimentation budget recovered ({budget.fraction:.0%} used)",
                                by,
                                at,
                                summary,
                            )
                        )
    return lifts, acts
