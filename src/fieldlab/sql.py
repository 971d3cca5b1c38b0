"""SQL that reproduces an experiment's assignment inside a database.

The expression follows the assignment contract exactly (``murmurHash3_32`` in
ClickHouse is the same unsigned MurmurHash3 x86 32-bit, seed 0), so analysts can
segment any table of unit ids without calling Python. It covers status,
holdouts, the layer and traffic; targeting depends on request attributes that a
column of unit ids does not have, and overrides are per request. A ``kind = "bandit"``
experiment's expression is that of the weights version in force in the Lab (its
state store's, read when the expression is made): rerun it after a new version.
"""

from __future__ import annotations

from .lab import Lab

__all__ = ["clickhouse_expression", "quote"]


def quote(text: str) -> str:
    """A ClickHouse string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _bucket(salt: str, unit_sql: str) -> str:
    return f"(murmurHash3_32(concat({quote(salt + ':')}, {unit_sql})) % 10000)"


def clickhouse_expression(lab: Lab, key: str, column: str) -> str:
    """A ClickHouse expression giving the variant (or NULL) of ``key`` for the unit id in ``column``."""
    exp = lab.experiments[key]
    if exp.status == "concluded":
        return f"{quote(exp.winner)}"  # type: ignore[arg-type]
    if exp.status != "running":
        return "CAST(NULL AS Nullable(String))"
    unit = f"toString({column})"
    branches = [f"isNull({column}) OR {unit} = ''", "NULL"]
    for h in lab.holdouts.values():
        if key in h.experiments and h.threshold > 0:
            branches += [f"{_bucket(h.salt, unit)} < {h.threshold}", "NULL"]
    if exp.layer is not None:
        layer = lab.layers[exp.layer]
        lo, hi = exp.layer_range  # type: ignore[misc]
        branches += [f"NOT ({_bucket(layer.salt, unit)} BETWEEN {lo} AND {hi - 1})", "NULL"]
    b = _bucket(exp.salt, unit)
    if exp.kind == "bandit":  # the weights version in force in ``lab``: each period's ranges
        for lo, hi, name, _period in lab.bandit_views[key].ranges():
            branches += [f"{b} BETWEEN {lo} AND {hi - 1}", quote(name)]
    else:
        for name, (lo, hi) in exp.ranges().items():
            if hi > lo:
                branches += [f"{b} BETWEEN {lo} AND {hi - 1}", quote(name)]
    branches.append("NULL")
    return "multiIf(" + ", ".join(branches) + ")"
