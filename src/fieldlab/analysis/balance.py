"""Balance check before launch: an A/A test of a planned split on pre-period traffic.

A salt is a random draw; now and then it splits heavy users (or users with a
high error rate) unevenly, and the experiment starts with a built-in
difference. ``balance()`` recomputes, with fieldlab's own assignment, which
historical units would land in each arm of the planned experiment (or with a
new ``salt``), compares their past behaviour -- requests per unit, error rate,
mean latency and any ``--metric`` -- and, when some difference is significant
after Holm correction, tries other salts and suggests the first that passes.

It needs the *raw* unit ids on the pre-period spans: fieldlab's default keyed
hash (``h1:...``) cannot be re-bucketed under another salt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .. import attributes as A
from ..errors import FieldLabError
from .sources import MAX_LINE_BYTES, Metric, SourceError, open_source, parse_metric

__all__ = ["balance", "render_balance", "HashedUnitsError"]


class HashedUnitsError(FieldLabError):
    """The spans carry hashed unit ids, which cannot be re-assigned under a new salt."""


def _utf8(unit: str) -> bool:
    try:
        unit.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _hashable(ids: list[str], mat: Any) -> tuple[list[str], Any, int]:
    """The units whose id is valid UTF-8 text, and how many were left out.

    The assignment contract hashes the UTF-8 bytes of a unit id; an id holding a lone surrogate (a store's
    non-UTF-8 bytes, or a ``\\udXXX`` escape) has no such bytes, and MurmurHash3's C code must never be
    handed one (it crashed the process). Such a unit would never get a variant in production either, so
    it is skipped and counted, not re-bucketed.
    """
    keep = [i for i, u in enumerate(ids) if _utf8(u)]
    if len(keep) == len(ids):
        return ids, mat, 0
    return [ids[i] for i in keep], mat[keep], len(ids) - len(keep)


def _collect(source: Any, kind: str, metrics: Sequence[Metric]) -> tuple[list[str], Any]:
    """Per-unit pre-period totals (aggregated in the store); refuses hashed unit ids."""
    ids, mat, _ = _collect_counted(source, kind, metrics)
    return ids, mat


def _collect_counted(source: Any, kind: str, metrics: Sequence[Metric]) -> tuple[list[str], Any, int]:
    """:func:`_collect`, plus the count of ids that are not UTF-8 text (skipped)."""
    ids, mat, hashed = source.unit_totals(kind, metrics)
    ids, mat, skipped = _hashable(ids, mat)
    if hashed:
        raise HashedUnitsError(
            f"the spans carry hashed unit ids ({A.unit_attr(kind)} = {hashed[:12]}...), which cannot be re-bucketed "
            'under a planned salt; record units raw for the pre-period (unit_ids = "raw" in [lab]) '
            "or pass a source whose spans carry raw ids"
        )
    if not ids:
        raise SourceError(
            f"no SERVER spans with a {A.unit_attr(kind)} unit id in the source; the experiment's unit "
            f"kind is {kind!r}: record that unit on the pre-period spans"
        )
    return ids, mat, skipped


def _planned_lab(lab: Any, key: str, salt: str) -> Any:
    """The lab with experiment ``key`` running under ``salt`` (drafts are planned experiments)."""
    from ..experiments import Experiment
    from ..lab import Lab

    exps = []
    for e in lab.experiments.values():
        if e.key == key:
            d = e.to_dict()
            d.pop("key")
            d["salt"], d["status"] = salt, "running"
            d.pop("winner", None)
            d.pop("targeting", None)  # targeting reads request attributes the spans do not hold
            e = Experiment(key, **d)
        exps.append(e)
    return Lab(exps, lab.layers.values(), lab.holdouts.values())


def _check(
    lab: Any, key: str, salt: str, ids: list[str], mat: Any, metrics: Sequence[Metric], alpha: float
) -> dict[str, Any]:
    import numpy as np

    from .stats import compare, holm, ratio_estimate, srm_test

    planned = _planned_lab(lab, key, salt)
    exp = planned.experiments[key]
    arms = np.asarray([planned.assign(key, u).variant or "" for u in ids])
    names = exp.variant_names
    out: dict[str, Any] = {"salt": salt, "variants": {}, "comparisons": {}}
    counts = [int((arms == v).sum()) for v in names]
    out["srm"] = srm_test(counts, [exp.weights[v] for v in names])
    for v, n in zip(names, counts, strict=False):
        out["variants"][v] = {"units": n}
    defs: list[tuple[str, int, int | None]] = [
        ("requests_per_unit", 0, None),
        ("error_rate", 1, 0),
        ("latency_ms", 2, 0),
    ]
    for i, m in enumerate(metrics):
        defs.append((m.name, 3 + 2 * i, None if m.kind == "conversion" else 4 + 2 * i))
    ctrl = mat[arms == exp.control]
    tests: list[tuple[str, str, dict[str, Any]]] = []
    for v in names:
        if v == exp.control:
            continue
        trt = mat[arms == v]
        out["comparisons"][v] = {}
        for name, num, den in defs:
            ce = ratio_estimate(ctrl[:, num], None if den is None else ctrl[:, den])
            te = ratio_estimate(trt[:, num], None if den is None else trt[:, den])
            c = compare(ce, te, alpha=alpha, sequential=False)
            out["comparisons"][v][name] = {
                k: (x if x is None or isinstance(x, str) else float(x)) for k, x in c.items()
            }
            tests.append((v, name, out["comparisons"][v][name]))
    adj = holm([t[2]["p_value"] for t in tests])
    worst = []
    for (v, name, c), p in zip(tests, adj, strict=False):
        c["p_value_adjusted"] = p
        if p is not None and p < alpha:
            worst.append(f"{v}: {name} (adjusted p = {p:.3g})")
    out["imbalanced"] = worst
    out["balanced"] = not worst and not out["srm"]["mismatch"]
    out["min_adjusted_p"] = min((p for p in adj if p is not None), default=None)
    return out


def balance(
    config: Any,
    experiment: str,
    sources: Any,
    *,
    metrics: Sequence[str | Metric] = (),
    salt: str | None = None,
    alpha: float = 0.05,
    tries: int = 50,
    engine: str = "auto",
    max_line_bytes: int = MAX_LINE_BYTES,
) -> dict[str, Any]:
    """Check the planned split of ``experiment`` on pre-period spans; suggest a salt when it fails.

    Returns ``{"experiment", "unit", "salt", "balanced", "check": {...}, "suggested_salt", "tried": [...]}``.
    """
    from .core import load_config

    lab = load_config(config)
    if lab is None:
        raise SourceError("balance needs the lab config that holds the planned experiment")
    if experiment not in lab.experiments:
        raise SourceError(f"experiment {experiment!r} is not in the config; known: {sorted(lab.experiments)}")
    exp = lab.experiments[experiment]
    mlist = tuple(m if isinstance(m, Metric) else parse_metric(m) for m in metrics)
    src = open_source(sources, engine=engine, max_line_bytes=max_line_bytes)
    ids, mat, skipped = _collect_counted(src, exp.unit, mlist)
    base_salt = salt or exp.salt
    check = _check(lab, experiment, base_salt, ids, mat, mlist, alpha)
    thin = {v: s["units"] for v, s in check["variants"].items() if s["units"] < 2}
    if thin:
        raise SourceError(
            f"too few pre-period units fall into {experiment!r} to compare its arms ({thin} of "
            f"{len(ids)} units); use a longer pre-period or check the experiment's traffic"
        )
    result: dict[str, Any] = {
        "experiment": experiment,
        "unit": exp.unit,
        "units": len(ids),
        "salt": base_salt,
        "alpha": alpha,
        "balanced": check["balanced"],
        "check": check,
        "suggested_salt": None,
        "tried": [],
        "skipped_units": skipped,
        "notes": ["targeting rules are not applied: every pre-period unit is considered"] if exp.targeting else [],
    }
    if skipped:
        result["notes"].append(
            f"{skipped} unit id(s) that are not valid UTF-8 text skipped (no variant can be computed for them)"
        )
    read = getattr(src, "last_read", None) or {}
    result["long_lines"], result["damaged_files"] = read.get("long", 0), list(read.get("damaged", ()))
    if result["long_lines"]:
        result["notes"].append(f"{result['long_lines']} over-long line(s) skipped (raise --max-line-bytes)")
    for d in result["damaged_files"]:
        result["notes"].append(f"damaged file read up to the damage: {d}")
    if not check["balanced"]:
        for i in range(1, max(tries, 0) + 1):
            cand = f"{base_salt}-{i}"
            c = _check(lab, experiment, cand, ids, mat, mlist, alpha)
            result["tried"].append({"salt": cand, "balanced": c["balanced"], "min_adjusted_p": c["min_adjusted_p"]})
            if c["balanced"]:
                result["suggested_salt"] = cand
                result["suggested_check"] = c
                break
    return result


def render_balance(result: Mapping[str, Any]) -> str:
    c = result["check"]
    lines = [
        f"balance check of {result['experiment']} (unit {result['unit']}, {result['units']:,} pre-period units, "
        f"salt {result['salt']!r}): {'BALANCED' if result['balanced'] else 'IMBALANCED'}"
    ]
    lines.append(
        "   units per arm: "
        + ", ".join(f"{v} {s['units']:,}" for v, s in c["variants"].items())
        + (f"; split p = {c['srm']['p_value']:.3g}" if c["srm"].get("p_value") is not None else "")
    )
    for v, comps in c["comparisons"].items():
        for name, x in comps.items():
            est, padj = x.get("estimate"), x.get("p_value_adjusted")
            est_s = "-" if est is None else f"{est:+.4g}"
            p_s = "-" if padj is None else f"{padj:.3g}"
            lines.append(f"   {v} - control  {name:<24} {est_s:>12}  adjusted p = {p_s}")
    for n in result.get("notes", []):
        lines.append(f"   note: {n}")
    if not result["balanced"]:
        lines.append("   imbalanced: " + "; ".join(c["imbalanced"] or ["unit counts do not match the weights"]))
        if result["suggested_salt"]:
            lines.append(f"   suggestion: use salt = {result['suggested_salt']!r} (passes the same check)")
        else:
            lines.append(f"   no balanced salt found in {len(result['tried'])} tries; try --tries with more")
    return "\n".join(lines) + "\n"
