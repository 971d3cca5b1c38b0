"""Exceptions fieldlab raises, all at start-up or from explicit calls, never into a request."""

from __future__ import annotations

__all__ = ["FieldLabError", "ConfigError"]


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

    def with_source(self, source: str) -> "ConfigError":
        return ConfigError(self.path, self.problem, self.fix, source=source)
