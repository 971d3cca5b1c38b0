"""What a request pays to follow the guardrail state, with the store up, hung and gone.

A request process reads the lab state through :class:`fieldlab.control.state.StatePoller`:
a background thread polls the store (here a real ``redis-server`` on
127.0.0.1, polled every 50 ms to make the most of the background work) and the
request reads an in-memory snapshot. This script measures that read -- "is
this variant paused?" -- and, side by side in the same loop, a plain
``frozenset`` membership test (the floor: what any in-memory flag costs),
in four phases:

1. ``up``: Redis answers every poll;
2. ``frozen``: Redis is stopped with SIGSTOP, so the poller thread blocks in a
   socket read until its timeout (the worst case for a lost store);
3. ``killed``: Redis is gone, every poll fails to connect;
4. ``back``: Redis restarted on the same port, polling has resumed.

It prints p50/p99/max of each read in nanoseconds and the added p99 over the
floor (the issue's budget: under 1 ms). Reads are timed one at a time with
``perf_counter_ns``, so the figures include the timer's own ~50-100 ns; the
maxima are scheduling (a preempted thread, a GIL hand-over) and show in the
floor as well.

    python benchmarks/bench_state_poller.py [--reads 200000] [--interval 0.05]
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from fieldlab.control.state import Decision, RedisStore, StatePoller


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_redis(port: int, workdir: str) -> subprocess.Popen[bytes]:
    exe = shutil.which("redis-server")
    if exe is None:
        sys.exit("redis-server is not installed (Debian: apt-get install -y redis-server)")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.02)
    proc.kill()
    sys.exit("redis-server did not start")


def _timed(fn: Callable[[], object], n: int) -> list[int]:
    clock = time.perf_counter_ns
    out = [0] * n
    for i in range(n):
        t0 = clock()
        fn()
        out[i] = clock() - t0
    out.sort()
    return out


def _row(name: str, reads: list[int], floor: list[int]) -> str:
    def q(xs: list[int], p: float) -> int:
        return xs[min(len(xs) - 1, int(len(xs) * p))]

    return (
        f"{name:8s} poller read p50 {q(reads, 0.5):6d}  p99 {q(reads, 0.99):6d}  max {reads[-1]:9d}   "
        f"floor p50 {q(floor, 0.5):5d}  p99 {q(floor, 0.99):5d}  max {floor[-1]:9d}   "
        f"added p99 {q(reads, 0.99) - q(floor, 0.99):6d} ns"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reads", type=int, default=200_000)
    ap.add_argument("--interval", type=float, default=0.05, help="poll interval, seconds")
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="fieldlab-bench-")
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    proc = _start_redis(port, workdir)
    poller = None
    try:
        RedisStore(url).record([Decision("pause", "checkout", "one-page", "guardrail", by="bench")])
        poller = StatePoller(RedisStore(url, timeout=0.5), interval=args.interval).start()
        floor_set = frozenset({("checkout", "one-page")})

        def read() -> object:
            return poller.is_paused("checkout", "one-page")  # type: ignore[union-attr]

        def floor() -> object:
            return ("checkout", "one-page") in floor_set

        half = args.reads // 2
        print(
            f"redis-server on 127.0.0.1:{port}, poll interval {args.interval:g} s, socket timeout 0.5 s, "
            f"{args.reads} reads per phase"
        )
        results = {}
        results["up"] = (_timed(read, half) + _timed(read, half), _timed(floor, half) + _timed(floor, half))
        proc.send_signal(signal.SIGSTOP)
        time.sleep(0.2)
        results["frozen"] = (_timed(read, half) + _timed(read, half), _timed(floor, half) + _timed(floor, half))
        status_frozen = poller.status
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait()
        time.sleep(3 * args.interval)
        results["killed"] = (_timed(read, half) + _timed(read, half), _timed(floor, half) + _timed(floor, half))
        status_killed, still_paused = poller.status, read()
        proc = _start_redis(port, workdir)
        deadline = time.monotonic() + 5
        while poller.status != "ok" and time.monotonic() < deadline:
            time.sleep(0.01)
        results["back"] = (_timed(read, half) + _timed(read, half), _timed(floor, half) + _timed(floor, half))
        for name, (r, f) in results.items():
            print(_row(name, sorted(r), sorted(f)))
        print(
            f"status while frozen: {status_frozen}; while killed: {status_killed} (last state kept: paused = "
            f"{still_paused}); after restart: {poller.status}"
        )
    finally:
        if poller is not None:
            poller.stop()
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
