"""fieldlab's cost per request with no server and no sockets: the low-noise companion of bench_frameworks.

The same hello-world apps as ``bench_frameworks.py`` (OTel SDK, the framework's
instrumentation, a batch span processor feeding an exporter that drops spans;
with or without fieldlab and its running experiments) are called directly: a
WSGI ``app(environ, start_response)`` or an ASGI ``await app(scope, receive,
send)`` in a loop. Each configuration lives in its own process (fieldlab
installs a span processor on the global tracer provider, so two modes cannot
share one). The parent asks the processes in turn, order alternating, to run a
batch of requests and report the CPU time it took (``time.process_time``: every
thread of the process, the span processor's included). The per-request cost is
the median over batches; b/a is taken batch by batch (adjacent in time, so
machine drift cancels) and its median reported, with a2/a from a second,
identical OTel-only process as the noise floor.

    python benchmarks/bench_request_path.py [--batch 2000] [--rounds 15] [--frameworks flask,starlette]

``--instructions`` counts instead of timing: every configuration runs once under
valgrind's callgrind (install valgrind), which counts the CPU instructions the
measured requests execute (only those: collection is switched on around them).
The count does not move with the machine's load, so it resolves differences
the timings cannot on a shared machine; it does not see cache misses or branch
mispredictions, so it is a lower bound of the cost, not a time. Span export is
held back during the count (a long batch delay), identically in (a) and (b).

    python benchmarks/bench_request_path.py --instructions [--requests 300]

Diagnostics: BENCH_GC_DISABLE=1 turns the garbage collector off after the
warm-up in every process, BENCH_GC_FREEZE=1 freezes the warmed heap instead;
either shows how much of the difference is collection work.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FRAMEWORKS = ("flask", "django", "starlette", "fastapi")
MODES = ("otel", "otel+fieldlab", "otel-control")
ASGI = {"starlette", "fastapi"}


def _driver(framework: str, mode: str) -> Any:
    """A function running ``n`` requests against the app of ``framework``/``mode``."""
    sys.path.insert(0, str(HERE))
    import bench_frameworks as bf

    users = bf.USERS
    app = bf.make_app(framework, mode)
    if framework not in ASGI:
        base = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/",
            "SCRIPT_NAME": "",
            "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_HOST": "127.0.0.1:8000",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }

        def start_response(status: str, headers: list, exc_info: Any = None) -> None:
            if not status.startswith("200"):
                raise RuntimeError(status)

        def run(n: int, offset: int) -> None:
            for i in range(n):
                env = dict(base)
                env["HTTP_X_USER_ID"] = f"user-{(offset + i) % users + 1}"
                env["wsgi.input"] = io.BytesIO(b"")
                body = app(env, start_response)
                for _ in body:
                    pass
                close = getattr(body, "close", None)
                if close is not None:
                    close()

        return run

    loop = asyncio.new_event_loop()

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start" and message["status"] != 200:
            raise RuntimeError(message["status"])

    async def batch(n: int, offset: int) -> None:
        for i in range(n):
            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "GET",
                "scheme": "http",
                "path": "/",
                "raw_path": b"/",
                "query_string": b"",
                "root_path": "",
                "headers": [(b"host", b"127.0.0.1:8000"), (b"x-user-id", f"user-{(offset + i) % users + 1}".encode())],
                "client": ("127.0.0.1", 50000),
                "server": ("127.0.0.1", 8000),
            }
            await app(scope, receive, send)

    def run_async(n: int, offset: int) -> None:
        loop.run_until_complete(batch(n, offset))

    return run_async


def child(framework: str, mode: str) -> None:
    """Serve "n offset" lines on stdin with the CPU seconds each batch took."""
    run = _driver(framework, mode)
    run(bench_users(), 0)  # warm-up: every user once, like a server that has been up a while
    if os.environ.get("BENCH_GC_DISABLE"):
        import gc

        gc.disable()
    if os.environ.get("BENCH_GC_FREEZE"):
        import gc

        gc.collect()
        gc.freeze()
    print("ready", flush=True)
    for line in sys.stdin:
        n, offset = (int(x) for x in line.split())
        t0 = time.process_time()
        run(n, offset)
        print(f"{time.process_time() - t0:.9f}", flush=True)


def count_child(framework: str, mode: str, n: int) -> None:
    """Warm up, then run ``n`` requests inside ``sys.call_tracing``: the one call callgrind collects in."""
    run = _driver(framework, mode)
    run(bench_users(), 0)
    import gc

    gc.collect()
    sys.call_tracing(run, (n, 0))


def instructions(frameworks: list[str], n: int) -> int:
    """Instructions per request of (a) and (b) per framework, counted by callgrind, two at a time."""
    import re
    import shutil
    import tempfile

    if shutil.which("valgrind") is None:
        print("--instructions needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    env = {
        **os.environ,
        "PYTHONHASHSEED": "0",
        "OTEL_BSP_SCHEDULE_DELAY": "100000000",
        "OTEL_BSP_MAX_QUEUE_SIZE": "1000000",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "1000000",
    }
    jobs = [(f, m) for f in frameworks for m in MODES[:2]]
    counts: dict[tuple[str, str], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(0, len(jobs), 2):
            running = []
            for f, m in jobs[i : i + 2]:
                log = Path(tmp) / f"{f}-{m}.log"
                cmd = [
                    "valgrind",
                    "--tool=callgrind",
                    "--cache-sim=no",
                    "--toggle-collect=sys_call_tracing",
                    f"--callgrind-out-file={Path(tmp) / f'{f}-{m}.out'}",
                    sys.executable,
                    __file__,
                    "--count",
                    f,
                    m,
                    str(n),
                ]
                running.append(
                    ((f, m), log, subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w")))
                )
            for key, log, proc in running:
                proc.wait()
                found = re.search(r"Collected : (\d+)", log.read_text())
                if proc.returncode != 0 or not found:
                    raise SystemExit(f"{key[0]}/{key[1]} failed under valgrind:\n{log.read_text()[-2000:]}")
                counts[key] = int(found.group(1)) / n
                print(f"  {key[0]}/{key[1]}: {counts[key]:,.0f} instructions per request", file=sys.stderr)
    print(f"\n{'framework':<10} {'(a) otel':>12} {'(b) +fieldlab':>14} {'fieldlab':>10} {'b/a':>7}")
    print(f"{'':<10} {'instr/req':>12} {'instr/req':>14} {'instr/req':>10} {'':>7}")
    print("-" * 58)
    for f in frameworks:
        a, b = counts[(f, MODES[0])], counts[(f, MODES[1])]
        print(f"{f:<10} {a:>12,.0f} {b:>14,.0f} {b - a:>10,.0f} {a / b:>7.3f}")
    print(f"\nb/a: instructions per request of (a) over (b), {n} requests after warm-up, counted by callgrind.")
    return 0


def bench_users() -> int:
    sys.path.insert(0, str(HERE))
    import bench_frameworks as bf

    return bf.USERS


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=2000, help="requests per batch (default 2000)")
    p.add_argument("--rounds", type=int, default=15, help="interleaved batches per configuration (default 15)")
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    p.add_argument("--experiments", type=int, default=10, help="running experiments in (b) (default 10)")
    p.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions per request under callgrind instead of timing (needs valgrind)",
    )
    p.add_argument("--count", nargs=3, metavar=("FRAMEWORK", "MODE", "N"), help=argparse.SUPPRESS)
    p.add_argument("--requests", type=int, default=300, help="requests counted per configuration with --instructions")
    p.add_argument("--child", nargs=2, metavar=("FRAMEWORK", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ["BENCH_EXPERIMENTS"] = str(args.experiments)
    if args.child:
        child(*args.child)
        return 0
    if args.count:
        count_child(args.count[0], args.count[1], int(args.count[2]))
        return 0
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    if args.instructions:
        return instructions(frameworks, args.requests)
    procs = {}
    for f in frameworks:
        for m in MODES:
            procs[(f, m)] = subprocess.Popen(
                [sys.executable, __file__, "--child", f, m],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                bufsize=1,
            )
    try:
        for key, proc in procs.items():
            line = proc.stdout.readline().strip()  # type: ignore[union-attr]
            if line != "ready":
                raise SystemExit(f"{key[0]}/{key[1]} did not start")
        cost: dict[tuple[str, str], list[float]] = {k: [] for k in procs}
        ratios: dict[tuple[str, str], list[float]] = {k: [] for k in procs}
        print(
            f"{args.batch} requests per batch x {args.rounds} interleaved rounds; "
            f"{args.experiments} running experiments",
            file=sys.stderr,
        )
        for r in range(args.rounds):
            for f in frameworks:
                order = list(MODES) if r % 2 == 0 else list(MODES)[::-1]
                took = {}
                for m in order:
                    proc = procs[(f, m)]
                    proc.stdin.write(f"{args.batch} {r * args.batch}\n")  # type: ignore[union-attr]
                    proc.stdin.flush()  # type: ignore[union-attr]
                    took[m] = float(proc.stdout.readline())  # type: ignore[union-attr]
                for m in MODES:
                    cost[(f, m)].append(took[m] / args.batch)
                    ratios[(f, m)].append(took["otel"] / took[m])  # throughput ratio = inverse cost ratio
            print(f"  round {r + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        for proc in procs.values():
            proc.stdin.close()  # type: ignore[union-attr]
            proc.wait(timeout=30)
    print(f"\n{'framework':<10} {'(a) otel':>10} {'(b) +fieldlab':>14} {'fieldlab':>10} {'b/a':>7} {'a2/a':>7}")
    print(f"{'':<10} {'us/request':>10} {'us/request':>14} {'us/request':>10} {'median':>7} {'median':>7}")
    print("-" * 64)
    for f in frameworks:
        a, b = (statistics.median(cost[(f, m)]) * 1e6 for m in MODES[:2])
        ba = statistics.median(ratios[(f, "otel+fieldlab")])
        a2a = statistics.median(ratios[(f, "otel-control")])
        print(f"{f:<10} {a:>10.1f} {b:>14.1f} {b - a:>10.1f} {ba:>7.3f} {a2a:>7.3f}")
    print("\nb/a and a2/a are requests per CPU-second relative to (a), median of per-round ratios.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
