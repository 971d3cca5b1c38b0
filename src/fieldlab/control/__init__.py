"""Control loops that act on production by themselves: guardrails, the sick canary, bandits.

* :mod:`fieldlab.control.canary` -- the sick canary: a latency-dose search for the
  breaking point (escalation, always-valid decisions, log-dose bisection, an
  information-seeking allocation) and the per-trace dose choice;
* :mod:`fieldlab.control.bandit` -- Thompson sampling for ``kind = "bandit"``
  experiments, sticky enrolment slices for ``user`` units, and per-period analysis.

Nothing here is imported by ``import fieldlab``; numpy/scipy are imported lazily
by the functions that compute statistics.
"""

from __future__ import annotations

__all__: list[str] = []
