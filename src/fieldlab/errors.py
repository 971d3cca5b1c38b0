"""Exceptions fieldlab raises, all at start-up or from explicit calls, never into a request."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["FieldLabError", "ConfigError", "suggest_names"]


class FieldLabError(Exception):
    """Base class of fieldlab's own errors."""


class ConfigError(FieldLabError, ValueError):
    """A configuration is invalid.

    The message always names where (file and field path), what is wrong, and
    how to fix it, e.g.
    ``lab.toml: experiments[1].traffic: 150 is outside 0-100; use a percentage from 0 to 100``.
    """

    def __init__(self, path: str, problem: str, fix: str, *, source: str | None = None) -> None:
        self.source = source
        self.path = path
        self.problem = problem
        self.fix = fix
        where = f"{source}: {path}" if source else path
        super().__init__(f"{where}: {problem}; {fix}")

    def with_source(self, source: str) -> ConfigError:
        return ConfigError(self.path, self.problem, self.fix, source=source)


def suggest_names(unknown: Sequence[Any], valid: Iterable[str], what: str) -> str:
    """The fix for misspelt names: the closest valid name of each, then the valid ones.

    >>> suggest_names(["trafic"], ["key", "traffic", "variants"], "an experiment's fields")
    "did you mean 'traffic'? (an experiment's fields: key, traffic, variants)"
    """
    names = sorted(valid)
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(str(name), names, n=1)
        if close:
            hints.append(f"{close[0]!r}" if len(unknown) == 1 else f"{close[0]!r} for {name!r}")
    listed = f"{what}: {', '.join(names)}"
    return f"did you mean {', '.join(hints)}? ({listed})" if hints else f"use only {listed}"
