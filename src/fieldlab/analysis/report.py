"""Reports of an :func:`~fieldlab.analysis.analyze` result: a terminal table, JSON and a self-contained HTML page.

The HTML page draws its own inline SVG (no scripts, no CDN, no matplotlib):
latency distribution per variant, the primary metric's confidence interval
over time, and unit counts against the expected weights.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["render_text", "render_json", "render_html", "write_html"]

_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")


def _num(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, int):
        return f"{x:,}"
    if x != 0 and (abs(x) < 10**-(digits) or abs(x) >= 1e6):
        return f"{x:.{digits}g}"
    return f"{x:.{digits}f}" if abs(x) < 100 else f"{x:,.1f}"


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * x:.3f}%"


def _p(x: Any) -> str:
    if x is None:
        return "p=-"
    return "p<0.001" if x < 0.001 else f"p={x:.3f}"


def _fmt_metric(name: str, x: Any) -> str:
    return _pct(x) if name == "error_rate" or "=" in name else _num(x)


def _skipped_extra(result: Mapping[str, Any]) -> str:
    """``, N over-long lines skipped, M damaged file(s) read in part`` when there were any."""
    out = ""
    if result.get("long_lines"):
        out += f", {result['long_lines']} over-long lines skipped"
    if result.get("damaged_files"):
        out += f", {len(result['damaged_files'])} damaged file(s) read in part"
    return out


def render_text(result: Mapping[str, Any]) -> str:
    """A plain-text report: one block per experiment, invalid experiments say so before any effect."""
    lines: list[str] = []
    m = result["method"]
    skipped = f"{result['malformed_lines']} malformed lines skipped{_skipped_extra(result)}"
    lines.append(
        f"fieldlab analyze: {result['source']} ({result['engine']}, {result['spans']:,} spans, "
        f"{result['server_spans']:,} server spans, {skipped})"
    )
    lines.append(f"method: {m['description']}; alpha {m['alpha']}; population: {m['population']}")
    for note in result.get("notes", []):
        lines.append(f"note: {note}")
    if not result["experiments"]:
        lines.append("no experiments found: no SERVER span carries a fieldlab.variant.<key> attribute")
    for key, e in result["experiments"].items():
        lines.append("")
        lines.append(f"== {key}  (unit: {e['unit']}, {e['unit_source']}; control: {e['control']})")
        lines.append(f"   verdict: {e['verdict'].upper() if e['verdict'].startswith('invalid') else e['verdict']}")
        if e.get("why"):
            lines.append(f"   why: {e['why']}")
        srm = e.get("srm") or {}
        if srm.get("p_value") is not None:
            obs = " / ".join(f"{v} {n:,}" for v, n in srm["observed"].items())
            exp = " / ".join(f"{_num(x, 1)}" for x in srm["expected"].values())
            state = "MISMATCH" if srm["mismatch"] else "ok"
            lines.append(
                f"   sample ratio: {state} ({_p(srm['p_value'])}, threshold {srm['alpha']}); assigned units "
                f"{obs}; expected {exp} ({e['weights_source']})"
            )
        for note in e.get("notes", []):
            lines.append(f"   note: {note}")
        if not e["variants"]:
            continue
        mnames = list(next(iter(e["variants"].values()))["metrics"])
        head = [
            "variant",
            "units",
            "requests",
            "exposed req",
            "errors",
            "err rate",
            "mean ms",
            "p50 ms",
            "p90 ms",
            "p99 ms",
        ] + mnames
        rows = [head]
        for v, s in e["variants"].items():
            lat = s["latency_ms"]
            rows.append(
                [
                    v,
                    _num(s["units"]),
                    _num(s["requests"]),
                    _num(s.get("exposed_requests")),
                    _num(s["errors"]),
                    _pct(s["error_rate"]),
                    _num(lat["mean"], 2),
                    _num(lat["p50"], 2),
                    _num(lat["p90"], 2),
                    _num(lat["p99"], 2),
                ]
                + [_fmt_metric(n, s["metrics"].get(n)) for n in mnames]
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        for i, r in enumerate(rows):
            lines.append(
                "   "
                + "  ".join(
                    c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths, strict=False))
                )
            )
            if i == 0:
                lines.append("   " + "  ".join("-" * w for w in widths))
        pop = next(iter(e["variants"].values()))["latency_ms"].get("population")
        if pop:
            lines.append(
                f"   requests, errors, latency mean and percentiles: {pop}; exposed req: the requests "
                "that read the variant"
            )
        lines += _bandit_lines(e)
        if e["verdict"].startswith("invalid"):
            lines.append("   effects are not shown: fix the sample ratio mismatch first")
            continue
        if e.get("verdict_basis") and e.get("comparisons"):
            lines.append("   pooled comparisons (all periods together: biased for a bandit, shown for reference):")
        namew = max([len(n) for comps in e.get("comparisons", {}).values() for n in comps] + [12])
        for v, comps in e.get("comparisons", {}).items():
            lines.append(f"   {v} vs {e['control']}:  {_pooled_or_verdict(e, v)}")
            for name, c in comps.items():
                est, lo, hi = c.get("estimate"), c.get("ci_low"), c.get("ci_high")
                f = (lambda x: _pct(x)) if name == "error_rate" or "=" in name else (lambda x: _num(x, 3))
                rel = f" ({100 * c['relative']:+.1f}%)" if c.get("relative") is not None else ""
                extra = f"; {_latency_tests(c)}" if name == "latency_ms" and _latency_tests(c) else ""
                sign = "+" if est is not None and est > 0 else ""
                lines.append(
                    f"     {name:<{namew}}  {sign}{f(est)}{rel}  CI [{f(lo)}, {f(hi)}]  "
                    f"{_p(c.get('p_value_adjusted', c.get('p_value')))}{extra}"
                )
                if c.get("why"):
                    lines[-1] += f"  ({c['why']})"
        lines += _period_lines(e)
        hg = e.get("holdout_groups") or {}
        for h, s in hg.items():
            if s:
                lines.append(
                    f"   holdout {h}: {s['units']:,} units, {s['requests']:,} requests, "
                    f"error rate {_pct(s['error_rate'])}, p50 {_num(s['latency_ms']['p50'], 2)} ms"
                )
    for h, s in result.get("holdouts", {}).items():
        if not any(h in (e.get("holdout_groups") or {}) for e in result["experiments"].values()):
            lines.append(
                f"holdout {h}: {s['units']:,} units, {s['requests']:,} requests, error rate "
                f"{_pct(s['error_rate'])}, p50 {_num(s['latency_ms']['p50'], 2)} ms"
            )
    lines += _canary_lines(result.get("canaries") or {})
    return "\n".join(lines) + "\n"


def _bandit_table(e: Mapping[str, Any]) -> list[list[str]]:
    """A bandit's periods as table rows (header first): weights, units, SRM, the decision metric per arm."""
    b = e["bandit"]
    arms = list(e["srm"].get("observed") or {})
    name = b["metric"]
    # under SRM no effect is shown, the per-period differences neither
    treatments = [] if e["verdict"].startswith("invalid") else [v for v in arms if v != e["control"]]
    head = ["period", "since", "weights", "units", "sample ratio", f"{name} per arm"] + [
        f"{v} - {e['control']}" for v in treatments
    ]
    rows = [head]
    for p in b["periods"]:
        w = p.get("weights_bp")
        wsum = sum(w.values()) if w else 0
        srm = p.get("srm")
        means = (p.get("means") or {}).get(name) or {}
        diffs = (p.get("differences") or {}).get(name) or {}
        rows.append(
            [
                str(p["version"]),
                p.get("at") or "-",
                "/".join(f"{100 * w[v] / wsum:.1f}%" for v in arms) if w and wsum else "unknown",
                "/".join(f"{p['units'].get(v, 0):,}" for v in arms),
                ("MISMATCH " if srm["mismatch"] else "ok ") + _p(srm["p_value"]) if srm else "not checked",
                "/".join(_fmt_metric(name, means.get(v)) for v in arms),
            ]
            + [("+" if (diffs.get(v) or 0) > 0 else "") + _fmt_metric(name, diffs.get(v)) for v in treatments]
        )
    return rows


#: Periods of a bandit the terminal table shows (the latest).
_BANDIT_TEXT_PERIODS = 20


def _bandit_lines(e: Mapping[str, Any]) -> list[str]:
    """A bandit's per-period table and its per-period effects (with the naive pooled estimate beside)."""
    b = e.get("bandit")
    if not b:
        return []
    arms = "/".join(e["srm"].get("observed") or {})
    lines = [
        f"   bandit: {len(b['periods'])} period(s), decision metric {b['metric']}; weights from "
        f"{b['weights_source']}; per arm: {arms}"
    ]
    rows = _bandit_table(e)
    if len(rows) > _BANDIT_TEXT_PERIODS + 1:  # a long bandit: its latest periods (every one in --json and --html)
        lines.append(f"     ({len(rows) - 1 - _BANDIT_TEXT_PERIODS} earlier period(s) in --json and --html)")
        rows = [rows[0], *rows[-_BANDIT_TEXT_PERIODS:]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, r in enumerate(rows):
        lines.append(
            "     "
            + "  ".join(c.ljust(w) if j < 2 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths, strict=True)))
        )
        if i == 0:
            lines.append("     " + "  ".join("-" * w for w in widths))
    if e["verdict"].startswith("invalid"):
        return lines
    metrics = b.get("metrics") or {}
    namew = max([len(n) for n in metrics] + [12])
    for v in next(iter(metrics.values()), {}):
        verdict = f":  {e['verdicts'].get(v, '')}" if e.get("verdict_basis") else ""
        lines.append(f"   {v} vs {e['control']}, per period (stratified){verdict}")
        for name, per in metrics.items():
            c = per[v]
            f = (lambda x: _pct(x)) if name == "error_rate" or "=" in name else (lambda x: _num(x, 3))
            est = c.get("estimate")
            sign = "+" if est is not None and est > 0 else ""
            naive = (c.get("pooled_naive") or {}).get("estimate")
            lines.append(
                f"     {name:<{namew}}  {sign}{f(est)}  CI [{f(c.get('ci_low'))}, {f(c.get('ci_high'))}]  "
                f"{_p(c.get('p_value_adjusted'))}; pooled (naive) {f(naive)}"
            )
    return lines


def _pooled_or_verdict(e: Mapping[str, Any], v: str) -> str:
    """A treatment's verdict beside its comparisons; for a bandit judged per period, the pooled comparisons
    are labelled instead (the verdict is on the per-period lines)."""
    return "pooled (the verdict is per period, above)" if e.get("verdict_basis") else e["verdicts"].get(v, "")


def _canary_lines(canaries: Mapping[str, Any]) -> list[str]:
    """The sick canaries: breaking point and bracket, then each dose's rates against control."""
    lines: list[str] = []
    for key, c in canaries.items():
        bp, br = c.get("breaking_point_ms"), c.get("bracket")
        found = (
            f"breaking point {bp:.1f} ms (bracket {br[0]:g}-{br[1]:g} ms)"
            if bp is not None and br and br[1] is not None
            else f"search {c.get('phase') or 'not in the state file'}"
        )
        lines.append(
            f"canary {key} at {c['point']}: {found}; {c['requests_spent']:,} requests, "
            f"{c['bad_spent']:,} bad in the doses"
        )
        for r in c.get("dose_response", []):
            vs = r.get("vs_control") or {}
            diff = (
                f"  bad vs control {100 * vs['estimate']:+.2f} pts CI [{100 * vs['ci_low']:+.2f}, "
                f"{100 * vs['ci_high']:+.2f}]"
                if vs.get("ci_low") is not None
                else ""
            )
            lines.append(
                f"   {r['arm']:>9} {r['status']:<8} {r['requests']:>7,} req  errors {_pct(r['error_rate'])}  "
                f"slow {_pct(r['slow_rate'])}{diff}"
            )
    return lines


def _dose_response_svg(key: str, c: Mapping[str, Any]) -> str:
    """Bad-request rate per dose with its always-valid interval, the control's rate and the SLO allowance."""
    # doses with a handful of requests (opened, then implied by a neighbour) would only stretch the axis
    rows = [
        r
        for r in c.get("dose_response", [])
        if r["arm"] != "control" and r.get("bad_rate") is not None and r["requests"] >= 20
    ]
    if not rows:
        return "<p>No dosed requests in the data.</p>"
    control = next((r for r in c["dose_response"] if r["arm"] == "control"), None)
    base = (control or {}).get("bad_rate") or 0.0
    xs = [r["dose_ms"] for r in rows]
    ys = [r["bad_rate"] for r in rows]
    lo = [
        max(0.0, base + r["vs_control"]["ci_low"]) if (r.get("vs_control") or {}).get("ci_low") is not None else y
        for r, y in zip(rows, ys, strict=True)
    ]
    hi = [
        min(1.0, base + r["vs_control"]["ci_high"]) if (r.get("vs_control") or {}).get("ci_high") is not None else y
        for r, y in zip(rows, ys, strict=True)
    ]
    allowance = (100.0 - float(c.get("steady_state", {}).get("error_slo", 99.5))) / 100.0
    ymax = max(max(ys), allowance, base, 1e-3) * 2.5
    hi = [min(h, ymax) for h in hi]
    p = _Plot(f"Dose-response: {key}", "injected latency (ms, log scale)", "bad requests (errors or slow)")
    p.frame(min(xs) / 1.3, max(xs) * 1.3, 0, ymax, logx=True)
    if len(xs) > 1:
        p.band(xs, lo, hi, "#1f77b433")
    p.line(xs, ys, _COLORS[0])
    p.line([min(xs) / 1.3, max(xs) * 1.3], [allowance, allowance], "#b00", 1, "4 3")
    p.line([min(xs) / 1.3, max(xs) * 1.3], [base, base], "#777", 1, "2 2")
    bp = c.get("breaking_point_ms")
    if bp is not None:
        p.line([bp, bp], [0, ymax], "#070", 1.5, "6 3")
    p.legend(
        [("bad rate per dose", _COLORS[0]), ("SLO allowance", "#b00"), ("control", "#777")]
        + ([(f"breaking point {bp:.0f} ms", "#070")] if bp is not None else [])
    )
    xt = [x for x in (10, 20, 25, 50, 100, 200, 400, 800, 1600, 3200) if min(xs) / 1.3 <= x <= max(xs) * 1.3]
    return p.render(xt, _ticks(0, ymax), xfmt=lambda v: f"{v:g}", yfmt=lambda v: f"{100 * v:.1f}%")


def _latency_tests(c: Mapping[str, Any]) -> str:
    """The rank test and the percentile differences of a latency comparison, as the terminal and the HTML
    page both show them ("" when there are none)."""
    if c.get("rank_p_value") is None:
        return ""
    qd = c.get("quantile_differences") or {}
    return (
        f"Mann-Whitney (one look) {_p(c['rank_p_value'])}; p50/p90/p99 diff "
        + "/".join(_num(qd.get(q), 2) for q in ("p50", "p90", "p99"))
        + " ms"
    )


def render_json(result: Mapping[str, Any]) -> str:
    return json.dumps(result, indent=2, sort_keys=False, allow_nan=False)


# --------------------------------------------------------------------------- SVG


def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


class _Plot:
    """A minimal SVG line/bar plot with linear or log-10 x axis."""

    def __init__(self, title: str, xlabel: str, ylabel: str, w: int = 640, h: int = 280) -> None:
        self.title, self.xlabel, self.ylabel, self.w, self.h = title, xlabel, ylabel, w, h
        self.ml, self.mr, self.mt, self.mb = 64, 150, 30, 44
        self.items: list[str] = []

    def frame(self, x0: float, x1: float, y0: float, y1: float, logx: bool = False) -> None:
        if x1 <= x0:
            x1 = x0 + 1
        if y1 <= y0:
            y1 = y0 + 1
        self.x0, self.x1, self.y0, self.y1, self.logx = x0, x1, y0, y1, logx

    def X(self, x: float) -> float:
        pw = self.w - self.ml - self.mr
        if self.logx:
            x, a, b = math.log10(max(x, 1e-12)), math.log10(self.x0), math.log10(self.x1)
        else:
            a, b = self.x0, self.x1
        return self.ml + pw * (x - a) / (b - a)

    def Y(self, y: float) -> float:
        ph = self.h - self.mt - self.mb
        return self.mt + ph * (1 - (y - self.y0) / (self.y1 - self.y0))

    def line(self, xs: Sequence[float], ys: Sequence[float], color: str, width: float = 2, dash: str = "") -> None:
        pts = " ".join(f"{self.X(x):.1f},{self.Y(y):.1f}" for x, y in zip(xs, ys, strict=False))
        d = f' stroke-dasharray="{dash}"' if dash else ""
        self.items.append(f'<polyline fill="none" stroke="{color}" stroke-width="{width}"{d} points="{pts}"/>')

    def band(self, xs: Sequence[float], lo: Sequence[float], hi: Sequence[float], color: str) -> None:
        pts = [f"{self.X(x):.1f},{self.Y(y):.1f}" for x, y in zip(xs, hi, strict=False)]
        pts += [f"{self.X(x):.1f},{self.Y(y):.1f}" for x, y in zip(reversed(xs), reversed(lo), strict=False)]
        self.items.append(f'<polygon fill="{color}" fill-opacity="0.2" stroke="none" points="{" ".join(pts)}"/>')

    def rect(self, x: float, y: float, w: float, h: float, color: str) -> None:
        self.items.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="{color}"/>')

    def text(self, x: float, y: float, s: str, anchor: str = "start", size: int = 11, color: str = "#333") -> None:
        self.items.append(
            f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="{color}">{_e(s)}</text>'
        )

    def legend(self, entries: Sequence[tuple[str, str]]) -> None:
        x = self.w - self.mr + 12
        for i, (label, color) in enumerate(entries):
            y = self.mt + 14 + 18 * i
            self.rect(x, y - 9, 12, 10, color)
            self.text(x + 18, y, label)

    def render(
        self, xticks: Sequence[float], yticks: Sequence[float], xfmt=lambda v: f"{v:g}", yfmt=lambda v: f"{v:g}"
    ) -> str:
        axes = []
        bx0, bx1 = self.ml, self.w - self.mr
        by0, by1 = self.mt, self.h - self.mb
        axes.append(
            f'<rect x="{bx0}" y="{by0}" width="{bx1 - bx0}" height="{by1 - by0}" fill="#fafafa" stroke="#ccc"/>'
        )
        for t in xticks:
            x = self.X(t)
            if bx0 - 0.5 <= x <= bx1 + 0.5:
                axes.append(f'<line x1="{x:.1f}" y1="{by0}" x2="{x:.1f}" y2="{by1}" stroke="#eee"/>')
                axes.append(
                    f'<text x="{x:.1f}" y="{by1 + 15}" font-size="10" text-anchor="middle" fill="#555">{_e(xfmt(t))}</text>'
                )
        for t in yticks:
            y = self.Y(t)
            if by0 - 0.5 <= y <= by1 + 0.5:
                axes.append(f'<line x1="{bx0}" y1="{y:.1f}" x2="{bx1}" y2="{y:.1f}" stroke="#eee"/>')
                axes.append(
                    f'<text x="{bx0 - 6}" y="{y + 3:.1f}" font-size="10" text-anchor="end" fill="#555">{_e(yfmt(t))}</text>'
                )
        axes.append(
            f'<text x="{(bx0 + bx1) / 2}" y="{self.h - 8}" font-size="11" text-anchor="middle">{_e(self.xlabel)}</text>'
        )
        axes.append(
            f'<text x="14" y="{(by0 + by1) / 2}" font-size="11" text-anchor="middle" '
            f'transform="rotate(-90 14 {(by0 + by1) / 2})">{_e(self.ylabel)}</text>'
        )
        axes.append(f'<text x="{bx0}" y="18" font-size="13" font-weight="bold">{_e(self.title)}</text>')
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.w}" height="{self.h}" '
            f'viewBox="0 0 {self.w} {self.h}" role="img" aria-label="{_e(self.title)}">'
            + "".join(axes)
            + "".join(self.items)
            + "</svg>"
        )


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 1)]


def _latency_svg(e: Mapping[str, Any]) -> str:
    hists = e.get("histograms") or {}
    series = [(v, h) for v, h in hists.items() if h["counts"]]
    if not series:
        return "<p>No latency data.</p>"
    p = _Plot("Latency distribution per variant", "latency (ms, log scale)", "share of requests per bin group")
    # coarsen to 40 bins per decade-ish groups of 5 for a readable curve
    curves = []
    for v, h in series:
        total = sum(h["counts"]) or 1
        groups: dict[int, float] = {}
        for x, c in zip(h["bins_ms"], h["counts"], strict=False):
            k = int(math.floor(math.log10(max(x, 1e-9)) * 40))
            groups[k] = groups.get(k, 0.0) + c / total
        ks = sorted(groups)
        curves.append((v, [10 ** ((k + 0.5) / 40) for k in ks], [groups[k] for k in ks]))
    xmin = min(min(c[1]) for c in curves)
    xmax = max(max(c[1]) for c in curves)
    ymax = max(max(c[2]) for c in curves) * 1.1
    p.frame(xmin / 1.2, xmax * 1.2, 0, ymax, logx=True)
    for i, (_, xs, ys) in enumerate(curves):
        p.line(xs, ys, _COLORS[i % len(_COLORS)])
    p.legend([(v, _COLORS[i % len(_COLORS)]) for i, (v, _, _) in enumerate(curves)])
    lo, hi = math.floor(math.log10(xmin / 1.2)), math.ceil(math.log10(xmax * 1.2))
    xt = [10.0**k * m for k in range(lo, hi + 1) for m in (1, 2, 5)]
    return p.render(xt, _ticks(0, ymax), xfmt=lambda v: f"{v:g}", yfmt=lambda v: f"{100 * v:.1f}%")


def _timeline_svg(e: Mapping[str, Any]) -> str:
    tl = e.get("timeline") or {}
    series = [(v, t) for v, t in tl.items() if t["points"]]
    if not series:
        return "<p>Not enough data for an interval over time.</p>"
    metric = series[0][1]["metric"]
    p = _Plot(
        f"{metric}: treatment - control, interval at each look", "units analysed so far", f"difference in {metric}"
    )
    allx = [pt["units"] for _, t in series for pt in t["points"]]
    ys = [
        y
        for _, t in series
        for pt in t["points"]
        for y in (pt["ci_low"], pt["ci_high"], pt["estimate"])
        if y is not None
    ]
    ylo, yhi = min(ys + [0.0]), max(ys + [0.0])
    pad = (yhi - ylo) * 0.08 or 1e-6
    p.frame(0, max(allx) * 1.02, ylo - pad, yhi + pad)
    p.line([0, max(allx) * 1.02], [0, 0], "#888", 1, "4 3")
    for i, (_v, t) in enumerate(series):
        pts = [pt for pt in t["points"] if pt["ci_low"] is not None and pt["ci_high"] is not None]
        color = _COLORS[(i + 1) % len(_COLORS)]
        if pts:
            xs = [pt["units"] for pt in pts]
            p.band(xs, [pt["ci_low"] for pt in pts], [pt["ci_high"] for pt in pts], color)
            p.line(xs, [pt["estimate"] for pt in pts], color)
    skipped = _decision_markers(p, e, series)
    p.legend([(f"{v} - {e['control']}", _COLORS[(i + 1) % len(_COLORS)]) for i, (v, _) in enumerate(series)])
    return p.render(
        _ticks(0, max(allx)), _ticks(ylo - pad, yhi + pad), xfmt=lambda v: f"{v:,.0f}", yfmt=lambda v: f"{v:.3g}"
    ) + "".join(f"<p class='decision-skipped'><em>{_e(n)}</em></p>" for n in skipped)


#: The decisions drawn on the timeline, and their short labels.
_MARKED = {
    "pause": "paused",
    "resume": "resumed",
    "alert": "alert",
    "halt_faults": "faults halted",
    "resume_faults": "faults resumed",
}


def _decision_label(d: Mapping[str, Any]) -> str:
    """``paused one-page``, ``resumed`` (every variant), ``faults halted``."""
    what = _MARKED.get(str(d.get("action")), str(d.get("action")))
    return f"{what} {d['variant']}" if d.get("variant") else what


def _decision_markers(p: _Plot, e: Mapping[str, Any], series: Sequence[tuple[str, Any]]) -> list[str]:
    """A vertical marker per guardrail decision of the experiment (``e["decisions"]``, with ``t`` in seconds
    since the epoch), placed by time: its ``t`` interpolated between the looks' times to their unit counts
    (the variant's own series when it is plotted, else the first). Returns a note per decision outside the
    plotted range (not drawn)."""
    decisions = [d for d in e.get("decisions") or () if d.get("action") in _MARKED]
    skipped: list[str] = []
    by_variant = dict(series)
    placed = 0
    for d in sorted(decisions, key=lambda d: (d.get("t") is None, d.get("t") or 0.0)):
        label = _decision_label(d)
        pts = [pt for pt in (by_variant.get(d.get("variant")) or series[0][1])["points"] if pt.get("t") is not None]
        t = d.get("t")
        if t is None or not pts or not pts[0]["t"] <= t <= pts[-1]["t"]:
            skipped.append(
                f"decision {label} at {d.get('at') or '?'} is outside the plotted range "
                f"({_when(pts[0]['t']) if pts else '?'} to {_when(pts[-1]['t']) if pts else '?'}): not marked"
            )
            continue
        units = _interpolate(t, [pt["t"] for pt in pts], [float(pt["units"]) for pt in pts])
        x = p.X(units)
        y0, y1 = p.mt, p.h - p.mb
        p.items.append(
            f'<line class="decision" data-action="{_e(d.get("action"))}" data-t="{t:.3f}" '
            f'x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y1}" stroke="#b00" stroke-width="1.5" stroke-dasharray="3 2"/>'
        )
        ty = y0 + 12 + 12 * (placed % 3)  # staggered, so close decisions stay readable
        # in the right half the label goes left of its line, clear of the legend
        right = x > (p.ml + p.w - p.mr) / 2
        p.items.append(
            f'<text class="decision-label" x="{x - 3 if right else x + 3:.1f}" y="{ty:.1f}" font-size="10" '
            f'text-anchor="{"end" if right else "start"}" fill="#b00">{_e(label)}</text>'
        )
        placed += 1
    return skipped


def _interpolate(t: float, ts: Sequence[float], ys: Sequence[float]) -> float:
    """``ys`` at ``t``, linear between the neighbouring ``ts`` (sorted, ``t`` within them)."""
    for i in range(1, len(ts)):
        if t <= ts[i]:
            span = ts[i] - ts[i - 1]
            return ys[i] if span <= 0 else ys[i - 1] + (ys[i] - ys[i - 1]) * (t - ts[i - 1]) / span
    return ys[-1]


def _when(t: float | None) -> str:
    """Seconds since the epoch as an ISO-8601 UTC time to the second (``-`` for an open bound)."""
    if t is None:
        return "-"
    import datetime as dt

    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _period_table(e: Mapping[str, Any]) -> list[list[str]]:
    """The paused periods as table rows, one per period and treatment (header first); [] without periods."""
    periods = e.get("periods") or []
    if not periods:
        return []
    names: list[str] = []
    for pr in periods:
        for cs in (pr.get("comparisons") or {}).values():
            names += [n for n in cs if n not in names]
    rows = [["period", "from", "to", "variant", "units", "control units", "served control"] + names + ["verdict"]]
    control = e.get("control", "")
    for pr in periods:
        vs = pr.get("variants") or {}
        ctrl_units = (vs.get(control) or {}).get("units")
        treatments = [v for v in vs if v != control] or [""]
        for v in treatments:
            s = vs.get(v) or {}
            comp = (pr.get("comparisons") or {}).get(v) or {}
            cells = []
            for n in names:
                c = comp.get(n) or {}
                f = _pct if n == "error_rate" or "=" in n else (lambda x: _num(x, 3))
                est = c.get("estimate")
                cells.append(
                    "-"
                    if est is None
                    else f"{'+' if est > 0 else ''}{f(est)} [{f(c.get('ci_low'))}, {f(c.get('ci_high'))}]"
                )
            rows.append(
                [
                    pr["label"],
                    _when(pr.get("since")),
                    _when(pr.get("until")),
                    v or "-",
                    _num(s.get("units")),
                    _num(ctrl_units),
                    _num(s.get("served_control_requests")),
                ]
                + cells
                + [(pr.get("verdicts") or {}).get(v) or pr.get("verdict", "")]
            )
    return rows


def _period_lines(e: Mapping[str, Any]) -> list[str]:
    """The paused periods as a compact terminal table (difference to control [interval] per metric)."""
    rows = _period_table(e)
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "   periods (split at guardrail pauses and resumes; requests that started in each; the verdict "
        "above is intent-to-treat over the whole run):"
    ]
    for i, r in enumerate(rows):
        lines.append(
            "     "
            + "  ".join(
                c.ljust(w) if j < 4 or j == len(r) - 1 else c.rjust(w)
                for j, (c, w) in enumerate(zip(r, widths, strict=True))
            ).rstrip()
        )
        if i == 0:
            lines.append("     " + "  ".join("-" * w for w in widths))
    return lines


def _periods_html(e: Mapping[str, Any]) -> str:
    """The paused periods as an HTML table ('' without periods)."""
    rows = _period_table(e)
    if not rows:
        return ""
    head = "".join(f"<th>{_e(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return (
        "<h3>Paused periods</h3><p>Split at the guardrail pauses and resumes; each period compares the requests "
        "that started in it. The verdict above is intent-to-treat over the whole run.</p>"
        f"<table class='periods'><tr>{head}</tr>{body}</table>"
    )


def _bandit_weights_svg(e: Mapping[str, Any]) -> str:
    """Each arm's weight per period (a step per weights version); periods of unknown weights are gaps."""
    periods = [p for p in e["bandit"]["periods"] if p.get("weights_bp")]
    if not periods:
        return ""
    arms = list(periods[0]["weights_bp"])
    versions = [p["version"] for p in periods]
    p = _Plot("Bandit weights per period", "weights version (period)", "share of the experiment's traffic")
    x1 = max(versions) + 1
    p.frame(min(versions), x1, 0, 1)
    for i, arm in enumerate(arms):
        xs: list[float] = []
        ys: list[float] = []
        for j, row in enumerate(periods):
            w = row["weights_bp"]
            share = w.get(arm, 0) / (sum(w.values()) or 1)
            end = periods[j + 1]["version"] if j + 1 < len(periods) else x1
            xs += [row["version"], end]
            ys += [share, share]
        p.line(xs, ys, _COLORS[i % len(_COLORS)])
    p.legend([(a, _COLORS[i % len(_COLORS)]) for i, a in enumerate(arms)])
    step = max(1, math.ceil(len(range(min(versions), x1 + 1)) / 12))
    return p.render(
        list(range(min(versions), x1 + 1, step)),
        [0, 0.25, 0.5, 0.75, 1.0],
        xfmt=lambda v: f"{v:g}",
        yfmt=lambda v: f"{100 * v:.0f}%",
    )


def _bandit_html(e: Mapping[str, Any]) -> str:
    """A bandit's per-period table, its per-period effects and the weights plot."""
    b = e.get("bandit")
    if not b:
        return ""
    rows = _bandit_table(e)
    parts = [
        f"<h3>Bandit: per period</h3><p>Decision metric {_e(b['metric'])}; weights from {_e(b['weights_source'])}; "
        f"per arm: {_e('/'.join(e['srm'].get('observed') or {}))}.</p><table class='bandit-periods'><tr>"
        + "".join(f"<th>{_e(c)}</th>" for c in rows[0])
        + "</tr>"
    ]
    for r in rows[1:]:
        bad = r[4].startswith("MISMATCH")
        parts.append(
            "<tr>"
            + "".join(f"<td{' class=bad' if bad and i == 4 else ''}>{_e(c)}</td>" for i, c in enumerate(r))
            + "</tr>"
        )
    parts.append("</table>")
    if b.get("metrics") and not e["verdict"].startswith("invalid"):
        parts.append(
            "<table class='bandit-effects'><tr><th>comparison</th><th>metric</th><th>per-period effect</th>"
            "<th>interval</th><th>p (adjusted)</th><th>pooled (naive)</th></tr>"
        )
        for name, per in b["metrics"].items():
            f = _pct if name == "error_rate" or "=" in name else (lambda x: _num(x, 3))
            for v, c in per.items():
                parts.append(
                    f"<tr><td>{_e(v)} vs {_e(e['control'])}</td><td>{_e(name)}</td><td>{_e(f(c.get('estimate')))}</td>"
                    f"<td>[{_e(f(c.get('ci_low')))}, {_e(f(c.get('ci_high')))}]</td>"
                    f"<td>{_e(_p(c.get('p_value_adjusted')))}</td>"
                    f"<td>{_e(f((c.get('pooled_naive') or {}).get('estimate')))}</td></tr>"
                )
        parts.append("</table>")
    if b.get("note") and b["note"] not in e.get("notes", ()):
        parts.append(f"<p><em>{_e(b['note'])}</em></p>")
    parts.append(_bandit_weights_svg(e))
    return "".join(parts)


def _units_svg(e: Mapping[str, Any]) -> str:
    srm = e.get("srm") or {}
    obs, exp = srm.get("observed") or {}, srm.get("expected") or {}
    if not obs:
        return "<p>No units.</p>"
    names = list(obs)
    ymax = max([float(obs[v]) for v in names] + [float(exp.get(v) or 0) for v in names]) * 1.15 or 1
    p = _Plot("Assigned units against the expected split", "variant", "units")
    p.frame(0, len(names), 0, ymax)
    pw = (p.w - p.ml - p.mr) / len(names)
    for i, v in enumerate(names):
        x = p.ml + pw * i + pw * 0.2
        y = p.Y(obs[v])
        p.rect(x, y, pw * 0.6, p.Y(0) - y, _COLORS[i % len(_COLORS)])
        if exp.get(v) is not None:
            ye = p.Y(exp[v])
            p.items.append(
                f'<line x1="{x - 6:.1f}" y1="{ye:.1f}" x2="{x + pw * 0.6 + 6:.1f}" y2="{ye:.1f}" '
                'stroke="#000" stroke-width="2" stroke-dasharray="5 3"/>'
            )
        p.text(x + pw * 0.3, p.h - p.mb + 15, v, anchor="middle")
        p.text(x + pw * 0.3, y - 4, f"{obs[v]:,}", anchor="middle", size=10)
    p.legend([("expected (dashed)", "#000")])
    return p.render([], _ticks(0, ymax), yfmt=lambda v: f"{v:,.0f}")


def render_html(result: Mapping[str, Any]) -> str:
    """A self-contained HTML report (inline CSS and SVG only)."""
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>fieldlab analysis</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}"
        "th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
        ".bad{color:#b00;font-weight:bold}.ok{color:#070}.verdict{font-size:1.2em}pre{background:#f6f6f6;padding:1em}"
        "</style></head><body>"
    ]
    m = result["method"]
    parts.append(
        f"<h1>fieldlab analysis</h1><p>Source: {_e(result['source'])} ({_e(result['engine'])}), "
        f"{result['spans']:,} spans, {result['malformed_lines']} malformed lines skipped"
        f"{_skipped_extra(result)}.<br>"
        f"Method: {_e(m['description'])}; alpha {m['alpha']}; population: {_e(m['population'])}.</p>"
    )
    for n in result.get("notes", []):
        parts.append(f"<p><em>Note: {_e(n)}</em></p>")
    for key, e in result["experiments"].items():
        invalid = e["verdict"].startswith("invalid") or e["verdict"].startswith("guardrail")
        parts.append(
            f"<h2>{_e(key)}</h2><p class='verdict {'bad' if invalid else 'ok'}'>Verdict: {_e(e['verdict'])}</p>"
        )
        if e.get("why"):
            parts.append(f"<p>Why: {_e(e['why'])}</p>")
        parts.append(
            f"<p>Unit: {_e(e['unit'])} ({_e(e['unit_source'])}); control: {_e(e['control'])}; "
            f"weights: {_e(e['weights_source'])}.</p>"
        )
        srm = e.get("srm") or {}
        if srm.get("p_value") is not None:
            parts.append(
                f"<p>Sample ratio check: <span class='{'bad' if srm['mismatch'] else 'ok'}'>"
                f"{'MISMATCH' if srm['mismatch'] else 'ok'}</span> (p = {srm['p_value']:.3g}, threshold {srm['alpha']}).</p>"
            )
        for n in e.get("notes", []):
            parts.append(f"<p><em>{_e(n)}</em></p>")
        if e["variants"]:
            mnames = list(next(iter(e["variants"].values()))["metrics"])
            parts.append(
                "<table class='variants'><tr><th>variant</th><th>units</th><th>requests</th>"
                "<th>exposed requests</th><th>errors</th><th>error rate</th>"
                "<th>mean ms</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th>"
                + "".join(f"<th>{_e(n)}</th>" for n in mnames)
                + "</tr>"
            )
            for v, s in e["variants"].items():
                lat = s["latency_ms"]
                parts.append(
                    f"<tr><td>{_e(v)}</td><td>{s['units']:,}</td><td>{s['requests']:,}</td>"
                    f"<td>{_num(s.get('exposed_requests'))}</td><td>{s['errors']:,}</td>"
                    f"<td>{_pct(s['error_rate'])}</td><td>{_num(lat['mean'], 2)}</td><td>{_num(lat['p50'], 2)}</td>"
                    f"<td>{_num(lat['p90'], 2)}</td><td>{_num(lat['p99'], 2)}</td>"
                    + "".join(f"<td>{_e(_fmt_metric(n, s['metrics'].get(n)))}</td>" for n in mnames)
                    + "</tr>"
                )
            parts.append("</table>")
            pop = next(iter(e["variants"].values()))["latency_ms"].get("population")
            if pop:
                parts.append(
                    f"<p>Requests, errors, latency mean and percentiles: {_e(pop)}; exposed requests: the "
                    "requests that read the variant.</p>"
                )
        parts.append(_units_svg(e))
        parts.append(_bandit_html(e))
        if e.get("verdict_basis") and e.get("comparisons") and not e["verdict"].startswith("invalid"):
            parts.append("<p>Pooled comparisons (all periods together: biased for a bandit, shown for reference):</p>")
        if not e["verdict"].startswith("invalid") and e.get("comparisons"):
            parts.append(
                "<table class='comparisons'><tr><th>comparison</th><th>metric</th><th>difference</th>"
                "<th>interval</th><th>p (adjusted)</th><th>verdict</th><th>latency distribution</th></tr>"
            )
            for v, comps in e["comparisons"].items():
                for name, c in comps.items():
                    f = _pct if name == "error_rate" or "=" in name else (lambda x: _num(x, 3))
                    parts.append(
                        f"<tr><td>{_e(v)} vs {_e(e['control'])}</td><td>{_e(name)}</td><td>{_e(f(c.get('estimate')))}</td>"
                        f"<td>[{_e(f(c.get('ci_low')))}, {_e(f(c.get('ci_high')))}]</td>"
                        f"<td>{_e(_p(c.get('p_value_adjusted')))}</td><td>{_e(_pooled_or_verdict(e, v))}</td>"
                        f"<td class='latency-tests'>{_e(_latency_tests(c) if name == 'latency_ms' else '')}"
                        "</td></tr>"
                    )
            parts.append("</table>")
            parts.append(_periods_html(e))
            parts.append(_timeline_svg(e))
        elif e["verdict"].startswith("invalid"):
            parts.append(
                "<p class='bad'>Effects are not shown: the sample ratio mismatch makes them untrustworthy.</p>"
            )
        parts.append(_latency_svg(e))
    if result.get("holdouts"):
        parts.append(
            "<h2>Holdouts</h2><table><tr><th>holdout</th><th>units</th><th>requests</th><th>error rate</th><th>p50 ms</th></tr>"
        )
        for h, s in result["holdouts"].items():
            parts.append(
                f"<tr><td>{_e(h)}</td><td>{s['units']:,}</td><td>{s['requests']:,}</td><td>{_pct(s['error_rate'])}</td>"
                f"<td>{_num(s['latency_ms']['p50'], 2)}</td></tr>"
            )
        parts.append("</table>")
    for key, c in (result.get("canaries") or {}).items():
        parts.append(f"<h2>Canary {_e(key)}</h2><pre>{_e(chr(10).join(_canary_lines({key: c})))}</pre>")
        parts.append(_dose_response_svg(key, c))
    parts.append("</body></html>\n")
    return "".join(parts)


def write_html(result: Mapping[str, Any], path: str | os.PathLike[str]) -> str:
    """Write :func:`render_html` to ``path``; returns the path."""
    path = os.fspath(path)
    with open(path, "w", encoding="utf-8") as f:
        f.write(render_html(result))
    return path
