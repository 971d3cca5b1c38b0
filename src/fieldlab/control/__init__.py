"""Guardrails: the closed loop that pauses a harmful variant by itself, inside the error budget.

* :mod:`fieldlab.control.settings` -- the ``[guardrails]`` and ``[experiments.guardrails]``
  tables, parsed and validated into frozen dataclasses;
* :mod:`fieldlab.control.budget` -- burn rates, the always-valid comparison against
  control, and the experimentation budget (pure functions);
* :mod:`fieldlab.control.guardrails` -- one experiment's decisions from its window counts;
* :mod:`fieldlab.control.state` -- the state store every process polls (a JSON file or
  Redis) and the request-side :class:`~fieldlab.control.state.StatePoller`;
* :mod:`fieldlab.control.controller` -- one controller round: query, decide, write.

Nothing here is imported by ``import fieldlab``; the request path only ever needs
:mod:`fieldlab.control.state` (no numpy, no framework). See ``docs/guardrails.md``.
"""

from __future__ import annotations

__all__: list[str] = []
