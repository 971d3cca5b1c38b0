"""Benchmark: ``fieldlab analyze`` on a generated 1M-span OTLP JSON-lines file.

Measures, in one run and on the same file:

1. a plain ``json.loads`` loop that only counts spans per variant (the floor a
   naive reader cannot beat), against the full analysis (SRM, per-unit
   aggregates, quantiles, confidence sequences) with the default engine; the
   target is a ratio >= 5;
2. peak memory (``ru_maxrss`` of a fresh subprocess) of the analysis at two
   file sizes with the same unit population: it must not grow with the number
   of spans beyond the per-unit aggregates.

Usage::

    python benchmarks/bench_analyze.py [--spans 1000000] [--units 50000] [--engine auto] [--keep DIR]

The file imitates ``opentelemetry-exporter-otlp-json-file`` output byte for
byte in shape (one ``{"resourceSpans": ...}`` batch of 512 spans a line, kind
as an int, ``intValue`` as a string, a ``feature_flag.evaluation`` event).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

_RES = (
    '{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"shop"}},'
    '{"key":"telemetry.sdk.language","value":{"stringValue":"python"}}]},"scopeSpans":[{"scope":'
    '{"name":"fieldlab"},"spans":['
)
_SPAN = (
    '{{"traceId":"{tid}","spanId":"{sid}","flags":256,"name":"GET /products/{{id}}","kind":2,'
    '"startTimeUnixNano":"{st}","endTimeUnixNano":"{en}","attributes":['
    '{{"key":"http.request.method","value":{{"stringValue":"GET"}}}},'
    '{{"key":"http.route","value":{{"stringValue":"/products/{{id}}"}}}},'
    '{{"key":"url.path","value":{{"stringValue":"/products/{pid}"}}}},'
    '{{"key":"http.response.status_code","value":{{"intValue":"{status}"}}}},'
    '{{"key":"fieldlab.config.version","value":{{"stringValue":"c0ffee12"}}}},'
    '{{"key":"fieldlab.unit.user","value":{{"stringValue":"h1:{uid:016x}"}}}},'
    '{{"key":"fieldlab.variant.checkout","value":{{"stringValue":"{var}"}}}},'
    '{{"key":"fieldlab.exposed.checkout","value":{{"boolValue":true}}}}{extra}],'
    '"events":[{{"timeUnixNano":"{st}","name":"feature_flag.evaluation","attributes":['
    '{{"key":"feature_flag.key","value":{{"stringValue":"checkout"}}}},'
    '{{"key":"feature_flag.result.variant","value":{{"stringValue":"{var}"}}}}]}}],"status":{{{code}}}}}'
)
_CONV = ',{"key":"app.checkout.completed","value":{"boolValue":true}}'


def generate(path: str, n_spans: int, n_units: int, seed: int = 1, batch: int = 512) -> None:
    """Write ``n_spans`` SERVER spans of ``n_units`` users (half control, half treatment)."""
    rnd = random.Random(seed)
    t0 = 1_795_910_274_000_000_000
    with open(path, "w") as f:
        i = 0
        while i < n_spans:
            k = min(batch, n_spans - i)
            spans = []
            for j in range(k):
                u = rnd.randrange(n_units)
                st = t0 + (i + j) * 1_000_000
                err = rnd.random() < 0.01
                spans.append(
                    _SPAN.format(
                        tid=f"{rnd.getrandbits(128):032x}",
                        sid=f"{rnd.getrandbits(64):016x}",
                        st=st,
                        en=st + int(rnd.lognormvariate(3, 0.5) * 1e6),
                        pid=rnd.randrange(1000),
                        status=500 if err else 200,
                        uid=(u * 2654435761) % (1 << 64),
                        var="treatment" if u % 2 else "control",
                        extra=_CONV if rnd.random() < 0.05 else "",
                        code='"code":2' if err else "",
                    )
                )
            f.write(_RES + ",".join(spans) + "]}]}]}\n")
            i += k


def json_loads_loop(path: str) -> dict:
    """The baseline: parse every line with json.loads and count spans per variant, nothing else."""
    counts: dict = {}
    with open(path, "rb") as f:
        for line in f:
            doc = json.loads(line)
            for rs in doc["resourceSpans"]:
                for ss in rs["scopeSpans"]:
                    for sp in ss["spans"]:
                        for a in sp.get("attributes", ()):
                            if a["key"].startswith("fieldlab.variant."):
                                k = (a["key"], a["value"].get("stringValue"))
                                counts[k] = counts.get(k, 0) + 1
    return counts


def _analyze_child(path: str, engine: str) -> None:
    import resource

    from fieldlab.analysis import analyze

    t = time.perf_counter()
    res = analyze(path, engine=engine, metrics=["app.checkout.completed=true"])
    secs = time.perf_counter() - t
    e = res["experiments"]["checkout"]
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "seconds": secs,
                "maxrss_mb": ru.ru_maxrss / 1024,
                "cpu": ru.ru_utime + ru.ru_stime,
                "engine": res["engine"],
                "spans": res["spans"],
                "units": {v: s["units"] for v, s in e["variants"].items()},
                "requests": {v: s["requests"] for v, s in e["variants"].items()},
            }
        )
    )


def _run_child(path: str, engine: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", path, "--engine", engine], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def _baseline_child(path: str) -> None:
    import resource

    t = time.perf_counter()
    counts = json_loads_loop(path)
    secs = time.perf_counter() - t
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "seconds": secs,
                "maxrss_mb": ru.ru_maxrss / 1024,
                "cpu": ru.ru_utime + ru.ru_stime,
                "counts": {f"{k[0]}={k[1]}": v for k, v in counts.items()},
            }
        )
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spans", type=int, default=1_000_000)
    ap.add_argument("--units", type=int, default=50_000)
    ap.add_argument("--engine", default="auto", choices=("auto", "chdb", "python"))
    ap.add_argument("--keep", help="directory to keep the generated files in (reused when present)")
    ap.add_argument(
        "--repeat", type=int, default=2, help="runs of each side, alternating; the best of each is compared (default 2)"
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--baseline-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _analyze_child(args.child, args.engine)
        return 0
    if args.baseline_child:
        _baseline_child(args.baseline_child)
        return 0

    d = args.keep or tempfile.mkdtemp(prefix="fieldlab-bench-")
    os.makedirs(d, exist_ok=True)
    big = os.path.join(d, f"spans-{args.spans}.jsonl")
    small_n = args.spans // 4
    small = os.path.join(d, f"spans-{small_n}.jsonl")
    for path, n in ((big, args.spans), (small, small_n)):
        if not os.path.exists(path):
            t = time.perf_counter()
            generate(path, n, args.units)
            print(f"generated {n:,} spans ({os.path.getsize(path) / 1e6:,.0f} MB) in {time.perf_counter() - t:.1f} s")

    print(f"\n1) speed on {args.spans:,} spans, {args.units:,} users (side by side, same file, best of {args.repeat})")
    bases, fulls = [], []
    for _ in range(max(args.repeat, 1)):
        bases.append(
            json.loads(
                subprocess.run(
                    [sys.executable, __file__, "--baseline-child", big], check=True, capture_output=True, text=True
                )
                .stdout.strip()
                .splitlines()[-1]
            )
        )
        fulls.append(_run_child(big, args.engine))
    base = min(bases, key=lambda r: r["seconds"])
    full = min(fulls, key=lambda r: r["seconds"])
    print(
        f"   json.loads loop, counting spans per variant : {base['seconds']:8.2f} s wall, {base['cpu']:7.2f} s CPU"
        f"  (peak RSS {base['maxrss_mb']:,.0f} MB)"
    )
    print(
        f"   fieldlab analyze ({full['engine']}), full analysis  : {full['seconds']:8.2f} s wall, {full['cpu']:7.2f} s CPU"
        f"  (peak RSS {full['maxrss_mb']:,.0f} MB)"
    )
    print(
        "   all runs (wall s): baseline "
        + ", ".join(f"{r['seconds']:.1f}" for r in bases)
        + "; analyze "
        + ", ".join(f"{r['seconds']:.1f}" for r in fulls)
    )
    ratio = base["seconds"] / full["seconds"]
    print(
        f"   speed ratio (wall): {ratio:.1f}x  (target >= 5x: {'met' if ratio >= 5 else 'NOT met'}); "
        f"CPU-time ratio: {base['cpu'] / full['cpu']:.1f}x"
    )
    counted = {k.split("=", 1)[1]: v for k, v in base["counts"].items()}
    assert counted == full["requests"], (counted, full["requests"])
    print(f"   same per-variant request counts from both: {full['requests']}")

    print(f"\n2) peak memory against the number of spans (same {args.units:,} users)")
    small_r = _run_child(small, args.engine)
    growth = full["maxrss_mb"] / small_r["maxrss_mb"]
    print(f"   {small_n:>10,} spans: peak RSS {small_r['maxrss_mb']:8,.0f} MB")
    print(f"   {args.spans:>10,} spans: peak RSS {full['maxrss_mb']:8,.0f} MB")
    print(f"   4x the spans -> {growth:.2f}x the memory (bounded: {'yes' if growth < 1.5 else 'NO'})")
    if not args.keep:
        for p in (big, small):
            os.remove(p)
        os.rmdir(d)
    return 0


if __name__ == "__main__":
    sys.exit(main())
