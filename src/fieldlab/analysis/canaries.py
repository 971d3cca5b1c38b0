"""The sick canaries in ``fieldlab analyze``: each canary's dose-response from the spans, with its search's state.

For every ``[[canaries]]`` of the config, the SERVER spans' ``fieldlab.canary.<key>``
give each arm's requests, errors and slow requests (the controller's own count,
:func:`fieldlab.control.canary_controller.measure_arms`, over all the data);
:func:`fieldlab.control.canary.dose_response` turns them into the table
(each dose against the canary's control, with always-valid intervals). When the
lab state file holds the canary's search, its statuses, breaking point and
bracket are added, so the report says what the controller decided.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["analyze_canaries"]


def analyze_canaries(
    sources: Any, lab: Any, *, engine: str = "auto", max_line_bytes: int | None = None
) -> dict[str, dict[str, Any]]:
    """``result["canaries"]``: per canary key, point, dose-response rows, breaking point and bracket (or None)."""
    canaries = getattr(getattr(lab, "_state", None), "canaries", ()) if lab is not None else ()
    if not canaries:
        return {}
    from .sources import Source, open_source

    kw = {"max_line_bytes": max_line_bytes} if max_line_bytes is not None else {}
    source = sources if isinstance(sources, Source) else open_source(sources, engine=engine, **kw)
    from ..control.canary import CONTROL, CanaryState, DoseArm, dose_of, dose_response
    from ..control.canary_controller import measure_arms
    from ..control.state import StateStoreError, open_store

    stored: Mapping[str, Any] = {}
    url = lab._state.state_url
    if url is not None:
        try:
            stored = open_store(url).read().canaries
        except StateStoreError:
            stored = {}
    out: dict[str, dict[str, Any]] = {}
    for c in canaries:
        counts, _ = measure_arms(source, c, None, 4e9)  # every span up to the year 2096
        doc = stored.get(c.key)
        searched = CanaryState.from_dict(doc) if isinstance(doc, Mapping) else None
        status = {a.label: (a.status, a.reason) for a in searched.arms} if searched else {}
        st = CanaryState(key=c.key)
        if CONTROL in counts:
            st.control = counts[CONTROL]
        for label, n in counts.items():
            dose = dose_of(label)
            if dose is None:
                continue
            s, why = status.get(label, ("observed", ""))
            st.arms.append(
                DoseArm(
                    dose=dose,
                    status=s,
                    requests=n.requests,
                    errors=n.errors,
                    slow=n.slow,
                    bad=n.bad_requests,
                    reason=why,
                )
            )
        st.arms.sort(key=lambda a: a.dose)
        out[c.key] = {
            "point": c.point,
            "traffic": c.traffic,
            "steady_state": c.spec.steady.to_dict(),
            "dose_response": dose_response(c.spec, st) if counts else [],
            "phase": searched.phase if searched else None,
            "breaking_point_ms": searched.breaking_point if searched else None,
            "bracket": list(searched.bracket) if searched else None,
            "requests_spent": st.requests_spent,
            "bad_spent": st.bad_spent,
        }
    return out
