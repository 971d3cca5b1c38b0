"""The guardrail decisions on an analysis report's timeline.

:func:`add_decisions` reads the decision history of the state store a config
names and adds it to a :func:`fieldlab.analysis.analyze` result: each
experiment gets a ``decisions`` list (for ``--json``) and one note per decision
(shown by the text and HTML reports), lab-wide decisions (faults halted
everywhere) become notes of the whole report. Units keep being counted by the
variant of their first assignment; requests served control during a pause
carry ``fieldlab.guardrail.<experiment>`` and are named in the notes.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

__all__ = ["add_decisions", "decision_words"]

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


def add_decisions(result: MutableMapping[str, Any], config: str) -> int:
    """Add the decisions recorded for ``config``'s experiments to ``result``; returns how many. Never raises:
    a store that cannot be read becomes a note of the report."""
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
        if e is not None:
            if d.action == "pause" and d.experiment not in itt:
                itt.add(d.experiment)
                e.setdefault("notes", []).append(
                    "intent-to-treat: while a variant was paused its units were served control (spans carry "
                    f"fieldlab.guardrail.{d.experiment}); they still count in the variant they were assigned"
                )
            e.setdefault("notes", []).append(line)
            e.setdefault("decisions", []).append({k: v for k, v in d.to_json().items() if k != "evidence"})
            n += 1
        elif d.experiment is None:
            result.setdefault("notes", []).append(line)
            result.setdefault("decisions", []).append({k: v for k, v in d.to_json().items() if k != "evidence"})
            n += 1
    return n
