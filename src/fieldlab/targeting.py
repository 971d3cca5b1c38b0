"""Declarative targeting: data in the config, compiled once at load, never code.

A condition is a mapping. Leaves compare one attribute::

    {"attr": "country", "op": "in", "value": ["DE", "FR"]}
    {"attr": "app_version", "op": "semver_gte", "value": "2.3.0"}
    {"attr": "beta", "op": "exists"}

and groups combine them: ``{"all": [...]}``, ``{"any": [...]}``, ``{"not": {...}}``.

A missing attribute never matches a comparison (only ``not_exists``), so an
unknown visitor is left out rather than let in by accident.

The ``regex`` operator runs on the client's input (paths, headers) on the
request path, so it uses RE2 (package ``google-re2``), whose matching time is
linear in the input: a pattern like ``^/(a+)+$`` cannot backtrack
catastrophically. RE2 has no backreferences or lookaround; such a pattern is
refused at load with a ConfigError. Without RE2 installed, a config using
``regex`` is refused rather than matched with a backtracking engine.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from .errors import ConfigError

try:
    import re2 as _re2  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - google-re2 is a core dependency; a platform without a wheel
    _re2 = None

__all__ = ["compile_condition", "OPERATORS", "MAX_REGEX_LENGTH", "MAX_REGEX_SUBJECT", "Predicate"]

Predicate = Callable[[Mapping[str, Any]], bool]

#: Longest pattern the ``regex`` operator accepts.
MAX_REGEX_LENGTH = 256
#: Longest value the ``regex`` operator searches; a longer one does not match (it is never cut short,
#: which could make it match a pattern the whole value does not).
MAX_REGEX_SUBJECT = 65536
_MISSING = object()

_SEMVER = re.compile(
    r"^v?(0|[1-9]\d*)(?:\.(0|[1-9]\d*))?(?:\.(0|[1-9]\d*))?(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$"
)


def parse_semver(text: str) -> tuple | None:
    """A sortable key for a semantic version (``1.2``, ``1.2.3-rc.1``), or None."""
    m = _SEMVER.match(str(text).strip())
    if not m:
        return None
    major, minor, patch, pre = m.groups()
    core = (int(major), int(minor or 0), int(patch or 0))
    if pre is None:
        return core + ((1,),)  # a release sorts after all its pre-releases
    ids = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return core + ((0,) + ids,)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _cmp_numeric(test: Callable[[float, float], bool]) -> Callable[[Any, Any], bool]:
    def run(actual: Any, expected: float) -> bool:
        a = _number(actual)
        return a is not None and test(a, expected)

    return run


def _cmp_semver(test: Callable[[tuple, tuple], bool]) -> Callable[[Any, Any], bool]:
    def run(actual: Any, expected: tuple) -> bool:
        a = parse_semver(actual) if isinstance(actual, str) else None
        return a is not None and test(a, expected)

    return run


def _eq(actual: Any, expected: Any) -> bool:
    return actual == expected or (not isinstance(actual, str) and str(actual) == expected)


_COMPARATORS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": _eq,
    "ne": lambda a, e: not _eq(a, e),
    "in": lambda a, e: a in e or str(a) in e,
    "not_in": lambda a, e: not (a in e or str(a) in e),
    "contains": lambda a, e: isinstance(a, (str, list, tuple, set, frozenset)) and e in a,
    "gt": _cmp_numeric(lambda a, e: a > e),
    "gte": _cmp_numeric(lambda a, e: a >= e),
    "lt": _cmp_numeric(lambda a, e: a < e),
    "lte": _cmp_numeric(lambda a, e: a <= e),
    "semver_eq": _cmp_semver(lambda a, e: a == e),
    "semver_gt": _cmp_semver(lambda a, e: a > e),
    "semver_gte": _cmp_semver(lambda a, e: a >= e),
    "semver_lt": _cmp_semver(lambda a, e: a < e),
    "semver_lte": _cmp_semver(lambda a, e: a <= e),
    "regex": lambda a, e: isinstance(a, str) and len(a) <= MAX_REGEX_SUBJECT and e.search(a) is not None,
}

#: Every operator a leaf condition may use.
OPERATORS = frozenset(_COMPARATORS) | {"exists", "not_exists"}


def compile_condition(spec: Any, path: str = "targeting") -> Predicate:
    """Compile a condition into a predicate over an attribute mapping.

    Raises :class:`ConfigError` naming ``path`` for anything malformed, so a
    bad rule is caught at load, never during a request.
    """
    if not isinstance(spec, Mapping):
        raise ConfigError(
            path,
            f"expected a table/object, got {type(spec).__name__}",
            'write a condition like {attr = "country", op = "eq", value = "DE"}',
        )
    groups = [k for k in ("all", "any", "not") if k in spec]
    if groups:
        if len(spec) != 1:
            raise ConfigError(
                path,
                f"a group ({groups[0]}) cannot have other keys {sorted(set(spec) - {groups[0]})}",
                "put each condition in its own table inside the group",
            )
        kind = groups[0]
        if kind == "not":
            inner = compile_condition(spec["not"], f"{path}.not")
            return lambda attrs: not inner(attrs)
        items = spec[kind]
        if not isinstance(items, (list, tuple)) or not items:
            raise ConfigError(
                f"{path}.{kind}",
                "expected a non-empty list of conditions",
                f"list one or more conditions under {kind!r}",
            )
        parts = tuple(compile_condition(c, f"{path}.{kind}[{i}]") for i, c in enumerate(items))
        if kind == "all":
            return lambda attrs: all(p(attrs) for p in parts)
        return lambda attrs: any(p(attrs) for p in parts)

    unknown_keys = set(spec) - {"attr", "op", "value"}
    if unknown_keys:
        raise ConfigError(
            path,
            f"unknown keys {sorted(unknown_keys)}",
            "a condition has 'attr', 'op' and 'value', or is a group 'all'/'any'/'not'",
        )
    attr = spec.get("attr")
    if not isinstance(attr, str) or not attr:
        raise ConfigError(
            f"{path}.attr", "missing or not a string", 'name the attribute to test, e.g. attr = "country"'
        )
    op = spec.get("op", "eq")
    if op not in OPERATORS:
        raise ConfigError(f"{path}.op", f"unknown operator {op!r}", f"use one of {', '.join(sorted(OPERATORS))}")
    if op == "exists":
        return lambda attrs: attrs.get(attr, _MISSING) is not _MISSING
    if op == "not_exists":
        return lambda attrs: attrs.get(attr, _MISSING) is _MISSING
    if "value" not in spec:
        raise ConfigError(f"{path}.value", f"operator {op!r} needs a value", "add value = ...")
    expected = _prepare(op, spec["value"], f"{path}.value")
    compare = _COMPARATORS[op]

    def leaf(attrs: Mapping[str, Any]) -> bool:
        actual = attrs.get(attr, _MISSING)
        if actual is _MISSING or actual is None:
            return False
        try:
            return bool(compare(actual, expected))
        except Exception:
            return False

    return leaf


def _prepare(op: str, value: Any, path: str) -> Any:
    if op in ("in", "not_in"):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, f"operator {op!r} needs a list", 'write value = ["a", "b"]')
        return frozenset(v if isinstance(v, str) else str(v) for v in value) | frozenset(
            v for v in value if isinstance(v, (int, float)) and not isinstance(v, bool)
        )
    if op in ("gt", "gte", "lt", "lte"):
        n = _number(value)
        if n is None:
            raise ConfigError(path, f"operator {op!r} needs a number, got {value!r}", "write a number, e.g. value = 18")
        return n
    if op.startswith("semver_"):
        key = parse_semver(value) if isinstance(value, str) else None
        if key is None:
            raise ConfigError(path, f"{value!r} is not a semantic version", 'write a version like "2.3.0"')
        return key
    if op == "regex":
        if not isinstance(value, str):
            raise ConfigError(path, "a regex must be a string", 'write value = "^/shop/"')
        if len(value) > MAX_REGEX_LENGTH:
            raise ConfigError(
                path,
                f"regex is {len(value)} characters, over the limit of {MAX_REGEX_LENGTH}",
                "shorten the pattern or use 'in'/'eq'",
            )
        return _compile_linear(value, path)
    if op in ("eq", "ne") and not isinstance(value, (str, int, float, bool)):
        raise ConfigError(
            path, f"operator {op!r} compares one scalar, got {type(value).__name__}", "use 'in' for lists"
        )
    return value


def _compile_linear(pattern: str, path: str) -> Any:
    """Compile ``pattern`` with RE2 (linear-time matching); a ConfigError when it is not valid RE2 syntax."""
    if _re2 is None:
        raise ConfigError(
            path,
            "the regex operator needs RE2 (package google-re2), which is not installed",
            "pip install google-re2, or use 'eq', 'in' or 'contains'",
        )
    options = _re2.Options()
    options.log_errors = False  # the error goes into the ConfigError, not to stderr
    try:
        return _re2.compile(pattern, options)
    except _re2.error as exc:  # bad syntax, or a feature RE2 leaves out
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ConfigError(
            path,
            f"regex does not compile as RE2: {reason}",
            "fix the pattern; RE2 has no backreferences (\\1) or lookaround ((?=...), (?<=...)), "
            "which keeps matching linear in the input",
        ) from None
