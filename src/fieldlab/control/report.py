"""The guardrail decisions on an analysis report's timeline.

:func:`add_decisions` reads the decision history of the state store a config
names and adds it to a :func:`fieldlab.analysis.analyze` result: each
experiment gets a ``decisions`` list (for ``--json``) and one note per decision
(shown by the text and HTML reports), lab-wide decisions (faults halted
everywhere) become notes of the whole report. Units keep being counted by the
variant of their first assignment; requests served control during a pause
carry ``fieldlab.guardrail.<experiment>`` and are named in the notes.

Given the sources and the analysis options as well, it keeps paused periods
apart: :func:`pause_periods` splits each paused experiment's life at its
pauses and resumes, and :func:`fieldlab.analysis.periods.analyze_periods`
compares the variants within each period (``periods`` of the experiment).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

from .. import attributes as A

__all__ = ["add_decisions", "decision_words", "decision_ns", "pause_periods"]

_WORDS = {
    "pause": "paused",
    "resume": "resumed",
    "alert": "alert on",
    "halt_faults": "faults halted for",
    "resume_faults": "faults resumed for",
}


def decision_words(d: Any) -> str:
    """One decision as a line of the report: when, what, why, who."""
    what = f"{d.experiment}/{d.variant}" if d.variant else (d.experiment or "every experiment")
    reason = f": {d.reason}" if d.reason else ""
    return f"guardrail decision {d.at}: {_WORDS.get(d.action, d.action)} {what} ({d.cause}, by {d.by}){reason}"


def decision_ns(d: Any) -> int | None:
    """When a decision was made, in nanoseconds since the epoch (None when its time is not readable)."""
    from ..analysis.model import parse_time

    try:
        return parse_time(d.at, "at") if d.at and d.at != "?" else None
    except ValueError:
        return None


def _paused_words(variants: Iterable[str]) -> str:
    return "paused " + ", ".join(sorted(variants))


def pause_periods(history: Iterable[Any]) -> dict[str, list[Any]]:
    """Per experiment that had a pause, its life split at each pause and resume that changed which of its
    variants were paused (:class:`~fieldlab.analysis.periods.Period` s, oldest first): ``before``, ``paused
    <variant>``, ``after resume``. The history is replayed with the store's own rules
    (:func:`~fieldlab.control.state.apply_decision`), so a resume of every variant, or one that may not
    lift a pause, splits as it acted. Decisions without a readable time are skipped."""
    from ..analysis.periods import Period
    from .state import LabState, apply_decision

    state = LabState()
    changes: dict[str, list[tuple[int, frozenset[str], str]]] = {}
    for d in history:
        if d.action not in ("pause", "resume") or not d.experiment:
            continue
        before = frozenset(state.paused.get(d.experiment, {}))
        state, changed = apply_decision(state, d, d.seq)
        after = frozenset(state.paused.get(d.experiment, {}))
        t = decision_ns(d)
        if changed and after != before and t is not None:
            changes.setdefault(d.experiment, []).append((t, after, decision_words(d)))
    out: dict[str, list[Any]] = {}
    for key, cs in changes.items():
        cs.sort(key=lambda c: c[0])
        merged: list[tuple[int, frozenset[str], str]] = []
        for c in cs:  # decisions of one write share a time: the last state of that instant holds
            if merged and merged[-1][0] == c[0]:
                merged[-1] = (c[0], c[1], merged[-1][2] + "; " + c[2])
            else:
                merged.append(c)
        periods = []
        seen: dict[str, int] = {}
        bounds: list[tuple[int | None, frozenset[str], str]] = [(None, frozenset(), ""), *merged]
        for i, (start, paused, words) in enumerate(bounds):
            end = bounds[i + 1][0] if i + 1 < len(bounds) else None
            label = _paused_words(paused) if paused else ("before" if i == 0 else "after resume")
            seen[label] = seen.get(label, 0) + 1
            if seen[label] > 1:
                label += f" ({seen[label]})"
            periods.append(Period(label, start, end, tuple(sorted(paused)), words))
        out[key] = periods
    return out


def add_decisions(
    result: MutableMapping[str, Any],
    config: str,
    *,
    sources: Any = None,
    options: Mapping[str, Any] | None = None,
) -> int:
    """Add the decisions recorded for ``config``'s experiments to ``result``; returns how many. Never raises:
    a store that cannot be read becomes a note of the report.

    With ``sources`` (and the ``options`` the result was analysed with, :func:`fieldlab.analysis.analyze`'s
    keyword arguments), every experiment in ``result`` that had a pause also gets ``periods``: the
    comparison within each period its pauses and resumes delimit (one aggregation per period)."""
    try:
        from ..lab import Lab
        from .state import open_store

        state, _ = Lab._load(config)
        if state.state_url is None:
            return 0
        store = open_store(state.state_url)
        try:
            history = store.read().history
        finally:
            store.close()
    except Exception as exc:  # the analysis stands on its own
        result.setdefault("notes", []).append(f"guardrail decisions unavailable: {exc}")
        return 0
    experiments = result.get("experiments") or {}
    n = 0
    itt = set()
    for d in history:
        line = decision_words(d)
        e = experiments.get(d.experiment) if d.experiment else None
        if e is not None and d.experiment:
            if d.action == "pause" and d.experiment not in itt:
                itt.add(d.experiment)
                e.setdefault("notes", []).append(
                    "intent-to-treat: while a variant was paused its units were served control (spans carry "
                    f"{A.guardrail_attr(d.experiment)}); they still count in the variant they were assigned"
                )
            e.setdefault("notes", []).append(line)
            e.setdefault("decisions", []).append(_decision_json(d))
            n += 1
        elif d.experiment is None:
            result.setdefault("notes", []).append(line)
            result.setdefault("decisions", []).append(_decision_json(d))
            n += 1
    if sources is not None:
        _add_periods(result, config, sources, history, options or {})
    return n


def _decision_json(d: Any) -> dict[str, Any]:
    """A decision for the report: its record without the evidence, and ``t`` (seconds since the epoch, for
    the timeline; None when its time is not readable)."""
    t = decision_ns(d)
    out = {k: v for k, v in d.to_json().items() if k != "evidence"}
    out["t"] = None if t is None else t / 1e9
    return out


def _add_periods(
    result: MutableMapping[str, Any], config: str, sources: Any, history: Iterable[Any], options: Mapping[str, Any]
) -> None:
    """``periods`` and a note for each experiment of ``result`` that had a pause; a failure is a note."""
    from ..analysis.periods import analyze_periods, period_note

    experiments = result.get("experiments") or {}
    periods = {k: p for k, p in pause_periods(history).items() if k in experiments}
    if not periods:
        return
    try:
        found = analyze_periods(sources, config, periods, **options)
    except Exception as exc:  # the headline analysis stands on its own
        result.setdefault("notes", []).append(f"paused periods not analysed: {exc}")
        return
    for key, rows in found.items():
        experiments[key]["periods"] = rows
        experiments[key].setdefault("notes", []).append(period_note(key, rows))
