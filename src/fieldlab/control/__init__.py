"""Control loops that act on production by themselves: guardrails, the sick canary, bandits.

* :mod:`fieldlab.control.settings` -- the ``[guardrails]`` and ``[experiments.guardrails]``
  tables, parsed and validated into frozen dataclasses;
* :mod:`fieldlab.control.budget` -- burn rates, the always-valid comparison against
  control, and the experimentation budget (pure functions);
* :mod:`fieldlab.control.guardrails` -- one experiment's decisions from its window counts;
* :mod:`fieldlab.control.state` -- the state store every process polls (a JSON file or
  Redis) and the request-side :class:`~fieldlab.control.state.StatePoller`;
* :mod:`fieldlab.control.controller` -- one controller round: query, decide, write;
* :mod:`fieldlab.control.canary` -- the sick canary: a latency-dose search for the
  breaking point (escalation, always-valid decisions, log-dose bisection, an
  information-seeking allocation) and the per-trace dose choice;
* :mod:`fieldlab.control.bandit` -- Thompson sampling for ``kind = "bandit"``
  experiments, sticky enrolment slices for ``user`` units, and per-period analysis;
* :mod:`fieldlab.control.bandit_config` -- the ``[experiments.bandit]`` table and the
  assignment table of a published weights version (every process);
* :mod:`fieldlab.control.bandit_controller` -- measure the arms, publish the next weights
  version (called by ``fieldlab watch``).

Nothing here is imported by ``import fieldlab``; the request path only ever needs
:mod:`fieldlab.control.state` (no numpy, no framework), and numpy/scipy are imported
lazily by the functions that compute statistics. See ``docs/guardrails.md``,
``docs/canary.md`` and ``docs/bandits.md``.
"""

from __future__ import annotations

__all__: list[str] = []
