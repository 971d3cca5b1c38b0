"""Vectorised A/A and power simulations for the statistics tests and ``docs/statistics.md``.

Run ``python tests/analysis/simulations.py`` to print the table the docs quote.

Each simulated experiment adds ``block`` units per arm before each of ``looks``
looks; only running sums are kept, so 1000 experiments x 20 looks take a second.
Two metric shapes: a per-unit mean (normal values) and a clustered ratio metric
(errors per request in a user-randomised experiment: units make 1+Poisson(3)
requests and each unit has its own error probability), the case where treating
requests as independent would be wrong.
"""

from __future__ import annotations

import numpy as np
from scipy import stats as st

from fieldlab.analysis.stats import cs_halfwidth

__all__ = ["simulate", "theory_power_fixed", "theory_power_sequential_final"]


def _arm(rng, reps, block, kind, effect):
    if kind == "mean":
        y = rng.normal(effect, 1.0, size=(reps, block))
        x = np.ones_like(y)
    else:  # clustered ratio: errors per request
        x = 1.0 + rng.poisson(3.0, size=(reps, block))
        p = np.clip(rng.beta(0.3, 5.7, size=(reps, block)) + effect, 0, 1)  # mean 5 % error rate, varying by unit
        y = rng.binomial(x.astype(np.int64), p).astype(float)
    return y, x


def simulate(reps=1000, looks=20, block=100, kind="mean", effect=0.0, alpha=0.05, tuning=5000.0, seed=1):
    """Reject rates: sequential (any look / final look), naive z at any look, fixed z at the final look,
    and request-level naive (ignores clustering) at the final look."""
    rng = np.random.default_rng(seed)
    sums = {arm: np.zeros((reps, 5)) for arm in ("c", "t")}  # sy, sx, syy, sxx, sxy
    req = {arm: np.zeros((reps, 2)) for arm in ("c", "t")}  # request-level successes / requests
    seq_any = np.zeros(reps, bool)
    naive_any = np.zeros(reps, bool)
    z = st.norm.ppf(1 - alpha / 2)
    for k in range(1, looks + 1):
        n = k * block
        est, var = {}, {}
        for arm, eff in (("c", 0.0), ("t", effect)):
            y, x = _arm(rng, reps, block, kind, eff)
            s = sums[arm]
            s += np.stack([y.sum(1), x.sum(1), (y * y).sum(1), (x * x).sum(1), (x * y).sum(1)], axis=1)
            req[arm] += np.stack([y.sum(1), x.sum(1)], axis=1)
            ybar, xbar = s[:, 0] / n, s[:, 1] / n
            r = s[:, 0] / s[:, 1]
            syy = (s[:, 2] - n * ybar**2) / (n - 1)
            sxx = (s[:, 3] - n * xbar**2) / (n - 1)
            sxy = (s[:, 4] - n * xbar * ybar) / (n - 1)
            est[arm] = r
            var[arm] = np.maximum(syy - 2 * r * sxy + r * r * sxx, 0) / (n * xbar * xbar)
        d = est["t"] - est["c"]
        v = var["t"] + var["c"]
        seq_final = np.abs(d) > cs_halfwidth(v, 2 * n, alpha, tuning)
        seq_any |= seq_final
        naive_final = np.abs(d) > z * np.sqrt(v)
        naive_any |= naive_final
    pc, pt = req["c"][:, 0] / req["c"][:, 1], req["t"][:, 0] / req["t"][:, 1]
    if kind == "ratio":  # binomial test on requests as if independent
        vr = pc * (1 - pc) / req["c"][:, 1] + pt * (1 - pt) / req["t"][:, 1]
        request_level = np.abs(pt - pc) > z * np.sqrt(vr)
    else:
        request_level = naive_final
    return {
        "sequential_any_look": seq_any.mean(),
        "sequential_final_look": seq_final.mean(),
        "naive_any_look": naive_any.mean(),
        "fixed_final_look": naive_final.mean(),
        "request_level_final": request_level.mean(),
        "reps": reps,
        "looks": looks,
        "units_per_arm": looks * block,
    }


def theory_power_fixed(effect, sd, n_per_arm, alpha=0.05):
    se = sd * np.sqrt(2.0 / n_per_arm)
    z = st.norm.ppf(1 - alpha / 2)
    return float(st.norm.cdf(effect / se - z) + st.norm.cdf(-effect / se - z))


def theory_power_sequential_final(effect, sd, n_per_arm, alpha=0.05, tuning=5000.0):
    """P(the final-look confidence sequence excludes 0): a normal tail at the sequence's critical value."""
    se = sd * np.sqrt(2.0 / n_per_arm)
    c = float(cs_halfwidth(se * se, 2 * n_per_arm, alpha, tuning)) / se
    return float(st.norm.cdf(effect / se - c) + st.norm.cdf(-effect / se - c))


if __name__ == "__main__":  # pragma: no cover - prints the docs table
    for kind in ("mean", "ratio"):
        r = simulate(kind=kind)
        print(kind, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
    eff = (st.norm.ppf(0.975) + st.norm.ppf(0.8)) * np.sqrt(2 / 2000)
    r = simulate(effect=eff, seed=5)
    print("power fixed: theory", round(theory_power_fixed(eff, 1, 2000), 4), "measured", r["fixed_final_look"])
    eff2 = 0.12
    r2 = simulate(effect=eff2, seed=6)
    print(
        "power seq final: theory",
        round(theory_power_sequential_final(eff2, 1, 2000), 4),
        "measured",
        r2["sequential_final_look"],
        "any look",
        r2["sequential_any_look"],
    )
