"""Requests per second of a hello-world app per framework: OTel only vs OTel + fieldlab (10 running experiments).

Each framework runs under its real server on 127.0.0.1 (gunicorn gthread for
Flask and Django, uvicorn for Starlette and FastAPI), one process each, with
the OpenTelemetry SDK, the framework's instrumentation and a batch span
processor feeding an exporter that drops spans (so disk speed is not measured).
The load generator is ``wrk`` when installed (a Lua script gives every request
its own user id), else a Python client with keep-alive threads. Configurations
are measured interleaved in several short rounds (the order alternating) and
the median is reported; ``--together`` loads them at the same time instead. A
second OTel-only server (a2) runs as a control: a2/a shows how far this
machine's noise alone moves the ratio.

Two numbers per configuration: wall-clock requests per second, and requests
per CPU-second of the server process (its user+system time from /proc over the
same window). On a shared machine the wall-clock rate swings with other load;
the CPU-normalised rate measures the server's own cost per request, so the
b/a ratio is taken from it (both are printed), round by round: a, b and a2 run
back to back within a round, so slow drift of the machine cancels in their
ratio, and the median over rounds is reported with its quartiles. With two or
more CPUs the servers are pinned to one half and the load generator to the
other, and every server runs with the same PYTHONHASHSEED.

    python benchmarks/bench_frameworks.py [--seconds 1] [--rounds 11] [--frameworks flask,django,starlette,fastapi]

The same file is the app module the servers import (``BENCH_APP``/``BENCH_MODE`` env vars).
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FRAMEWORKS = ("flask", "django", "starlette", "fastapi")
#: (a) OTel only, (b) OTel + fieldlab, and (a') a second OTel-only server: a'/a shows the noise floor.
MODES = ("otel", "otel+fieldlab", "otel-control")
EXPERIMENTS = int(os.environ.get("BENCH_EXPERIMENTS", "10"))


# ----------------------------------------------------------------------------- the apps (server side)
#: Distinct users the load generator draws from (a returning-user population).
USERS = 2000


def _lab() -> Any:
    """10 running experiments, warmed like a long-running process.

    A Lab builds each bucket's Assignment on first use; a fresh process pays
    that on its first ~10^5 requests. Evaluating the user population once
    measures the steady state instead of the warm-up.
    """
    from fieldlab import Experiment, Lab

    lab = Lab([Experiment(f"exp-{i}", {"control": 1, "treatment": 1}) for i in range(EXPERIMENTS)])
    for i in range(1, USERS + 1):
        lab.assign_all({"user": f"user-{i}"})
    return lab


def _otel() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class DropExporter(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(DropExporter()))
    trace.set_tracer_provider(provider)


UNITS = {"user": "header:X-User-Id"}


def make_app(framework: str, mode: str) -> Any:
    """The hello-world app of ``framework``; with fieldlab it reads one variant per request."""
    _otel()
    with_fieldlab = mode == "otel+fieldlab"
    import fieldlab

    if framework == "flask":
        from flask import Flask
        from opentelemetry.instrumentation.flask import FlaskInstrumentor

        app = Flask("bench")

        @app.get("/")
        def hello() -> str:
            return f"hello {fieldlab.variant('exp-0', 'none')}"

        FlaskInstrumentor().instrument_app(app)
        if with_fieldlab:
            from fieldlab.adapters.flask import FieldLab

            FieldLab(app, lab=_lab(), units=UNITS)
        return app
    if framework == "django":
        import django
        from django.conf import settings
        from django.http import HttpResponse
        from django.urls import path

        def hello_view(request: Any) -> HttpResponse:
            return HttpResponse(f"hello {fieldlab.variant('exp-0', 'none')}")

        sys.modules[__name__].urlpatterns = [path("", hello_view)]  # type: ignore[attr-defined]
        settings.configure(
            DEBUG=False,
            SECRET_KEY="bench",
            ALLOWED_HOSTS=["*"],
            ROOT_URLCONF=__name__,
            INSTALLED_APPS=[],
            DATABASES={},
            USE_TZ=True,
            MIDDLEWARE=["fieldlab.adapters.django.FieldLabMiddleware"] if with_fieldlab else [],
            FIELDLAB={"lab": _lab(), "units": UNITS},
        )
        django.setup()
        from opentelemetry.instrumentation.django import DjangoInstrumentor

        DjangoInstrumentor().instrument()
        from django.core.wsgi import get_wsgi_application

        return get_wsgi_application()
    if framework == "starlette":
        from opentelemetry.instrumentation.starlette import StarletteInstrumentor
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        async def hello_async(request: Any) -> PlainTextResponse:
            return PlainTextResponse(f"hello {fieldlab.variant('exp-0', 'none')}")

        sapp = Starlette(routes=[Route("/", hello_async)])
        if with_fieldlab:
            from fieldlab.adapters.starlette import FieldLabMiddleware

            sapp.add_middleware(FieldLabMiddleware, lab=_lab(), units=UNITS)
        StarletteInstrumentor.instrument_app(sapp)
        return sapp
    if framework == "fastapi":
        from fastapi import FastAPI
        from fastapi.responses import PlainTextResponse as FastText
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        fapp = FastAPI()

        @fapp.get("/", response_class=FastText)
        async def hello_fast() -> str:
            return f"hello {fieldlab.variant('exp-0', 'none')}"

        if with_fieldlab:
            from fieldlab.adapters.fastapi import FieldLabMiddleware as FastMiddleware

            fapp.add_middleware(FastMiddleware, lab=_lab(), units=UNITS)
        FastAPIInstrumentor.instrument_app(fapp)
        return fapp
    raise SystemExit(f"unknown framework {framework!r}; use one of {', '.join(FRAMEWORKS)}")


if os.environ.get("BENCH_APP"):
    app = make_app(os.environ["BENCH_APP"], os.environ.get("BENCH_MODE", "otel"))


# ----------------------------------------------------------------------------- the harness (client side)
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, framework: str, mode: str) -> None:
        self.framework, self.mode = framework, mode
        self.port = _free_port()
        # One hash seed for every server: string hashing then lays dicts out alike in a, b and a2,
        # so a2/a measures the machine, not a lucky or unlucky seed.
        env = {**os.environ, "BENCH_APP": framework, "BENCH_MODE": mode, "PYTHONHASHSEED": "0"}
        if framework in ("flask", "django"):
            cmd = [
                sys.executable,
                "-m",
                "gunicorn",
                "-k",
                "gthread",
                "-w",
                "1",
                "--threads",
                "8",
                "--keep-alive",
                "30",
                "-b",
                f"127.0.0.1:{self.port}",
                "--chdir",
                str(HERE),
                "--log-level",
                "warning",
                "bench_frameworks:app",
            ]
        else:
            cmd = [
                sys.executable,
                "-m",
                "uvicorn",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--app-dir",
                str(HERE),
                "--log-level",
                "warning",
                "--no-access-log",
                "bench_frameworks:app",
            ]
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_pin(SERVER_CPUS),
        )

    def wait(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(
                    f"{self.framework}/{self.mode} server died: {self.proc.stderr.read().decode()[-2000:]}"
                )  # type: ignore[union-attr]
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                c.request("GET", "/", headers={"X-User-Id": "warmup"})
                if c.getresponse().status == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise SystemExit(f"{self.framework}/{self.mode} server did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def _cpus() -> tuple[set[int], set[int]]:
    """(server CPUs, load-generator CPUs): split the machine so the two never compete for a core."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(), set()
    if len(cpus) < 2:
        return set(), set()
    half = len(cpus) // 2
    return set(cpus[half:]), set(cpus[:half])


SERVER_CPUS, CLIENT_CPUS = _cpus()


def _pin(cpus: set[int]) -> Any:
    """A preexec_fn pinning the child to ``cpus`` (no-op when the machine cannot be split)."""
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


_LUA = """
request = function()
  return wrk.format("GET", "/", {["X-User-Id"] = "user-" .. math.random(1, USERS)})
end
"""
#: Warm-up: every user of the population once, in turn (a server that has been up for a while has seen them).
_LUA_WARMUP = """
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/", {["X-User-Id"] = "user-" .. ((counter % USERS) + 1)})
end
"""


def cpu_seconds(pgid: int) -> float:
    """User+system CPU seconds of every process in process group ``pgid`` (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after "(comm)": state ppid pgrp ... utime(11) stime(12)
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def _wrk_command(port: int, seconds: float, connections: int, lua: str) -> list[str]:
    return ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", lua, f"http://127.0.0.1:{port}/"]


def _wrk_requests(out: str) -> int:
    for line in out.splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[1] == "requests" and parts[2] == "in":
            return int(parts[0])
    raise RuntimeError(f"cannot read wrk output:\n{out}")


def load_wrk(port: int, seconds: float, connections: int, lua: str) -> int:
    """Completed requests of one wrk run."""
    out = subprocess.run(
        _wrk_command(port, seconds, connections, lua),
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=_pin(CLIENT_CPUS),
    ).stdout
    return _wrk_requests(out)


def load_wrk_together(ports: list[int], seconds: float, connections: int, lua: str) -> list[int]:
    """One wrk per port, all at once: the servers share the same moment of machine load."""
    procs = [
        subprocess.Popen(
            _wrk_command(p, seconds, connections, lua), stdout=subprocess.PIPE, text=True, preexec_fn=_pin(CLIENT_CPUS)
        )
        for p in ports
    ]
    return [_wrk_requests(proc.communicate()[0]) for proc in procs]


def load_python_together(ports: list[int], seconds: float, connections: int) -> list[int]:
    results = [0] * len(ports)

    def run(i: int) -> None:
        results[i] = load_python(ports[i], seconds, connections)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(ports))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def load_python(port: int, seconds: float, connections: int) -> int:
    """A keep-alive HTTP/1.1 client per thread; counts completed 200 responses."""
    stop = time.monotonic() + seconds
    counts = [0] * connections

    def worker(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        n = 0
        while time.monotonic() < stop:
            try:
                conn.request("GET", "/", headers={"X-User-Id": f"user-{(i * 7919 + n) % USERS + 1}"})
                r = conn.getresponse()
                r.read()
                if r.status == 200:
                    counts[i] += 1
            except (OSError, http.client.HTTPException):
                conn.close()
            n += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts)


def main() -> int:
    global EXPERIMENTS
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=1.0, help="length of one measurement (default 1)")
    p.add_argument("--rounds", type=int, default=11, help="interleaved rounds; the median is reported (default 11)")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--warmup", type=float, default=4.0, help="seconds of warm-up per server, cycling through the users")
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    p.add_argument("--experiments", type=int, default=EXPERIMENTS, help="running experiments in (b) (default 10)")
    p.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument(
        "--together",
        action="store_true",
        help="load a, b and a2 at the same time (default: one after the other, interleaved, order alternating)",
    )
    args = p.parse_args()
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    os.environ["BENCH_EXPERIMENTS"] = str(args.experiments)  # the servers read it
    EXPERIMENTS = args.experiments
    use_wrk = args.client == "wrk" or (args.client == "auto" and shutil.which("wrk") is not None)
    if args.client == "wrk" and not shutil.which("wrk"):
        raise SystemExit("wrk is not installed; use --client python (or apt-get install wrk)")
    lua = warm_lua = None
    if use_wrk:
        fd, lua = tempfile.mkstemp(suffix=".lua")
        os.write(fd, _LUA.replace("USERS", str(USERS)).encode())
        os.close(fd)
        fd, warm_lua = tempfile.mkstemp(suffix=".lua")
        os.write(fd, _LUA_WARMUP.replace("USERS", str(USERS)).encode())
        os.close(fd)
    if CLIENT_CPUS:
        os.sched_setaffinity(0, CLIENT_CPUS)  # this process drives the python client; the servers get their own CPUs
    servers = {(f, m): Server(f, m) for f in frameworks for m in MODES}
    wall: dict[tuple[str, str], list[float]] = {k: [] for k in servers}
    per_cpu: dict[tuple[str, str], list[float]] = {k: [] for k in servers}
    #: per round: b/a and a2/a per CPU-second, from measurements taken back to back (drift cancels)
    paired: dict[tuple[str, str], list[float]] = {k: [] for k in servers}
    try:
        for s in servers.values():
            s.wait()
        print(
            f"load generator: {'wrk' if use_wrk else 'python keep-alive threads'}, {args.connections} connections, "
            f"{args.seconds:g} s x {args.rounds} rounds, {'a, b and a2 loaded at the same time' if args.together else 'interleaved one after the other'}; "
            f"{EXPERIMENTS} running experiments, {USERS} users",
            file=sys.stderr,
        )
        for r in range(args.rounds):
            for f in frameworks:
                pair = [servers[(f, m)] for m in MODES]  # a, b and the control a2
                if r == 0:  # warm-up once: each user of the population, like a server that has been up a while
                    for srv in pair:
                        if use_wrk:
                            load_wrk(srv.port, args.warmup, 2, warm_lua)  # type: ignore[arg-type]
                        else:
                            load_python(srv.port, args.warmup, 1)
                if not args.together:
                    counts, elapsed_each, cpu_each = [], [], []
                    for srv in pair if r % 2 == 0 else pair[::-1]:
                        cpu0, t0 = cpu_seconds(srv.proc.pid), time.monotonic()
                        n = (
                            load_wrk(srv.port, args.seconds, args.connections, lua)
                            if use_wrk  # type: ignore[arg-type]
                            else load_python(srv.port, args.seconds, args.connections)
                        )
                        counts.append(n)
                        elapsed_each.append(time.monotonic() - t0)
                        cpu_each.append(cpu_seconds(srv.proc.pid) - cpu0)
                    if r % 2:
                        counts, elapsed_each, cpu_each = counts[::-1], elapsed_each[::-1], cpu_each[::-1]
                else:
                    cpu0 = [cpu_seconds(srv.proc.pid) for srv in pair]
                    t0 = time.monotonic()
                    ports = [srv.port for srv in pair]
                    counts = (
                        load_wrk_together(ports, args.seconds, args.connections, lua)
                        if use_wrk  # type: ignore[arg-type]
                        else load_python_together(ports, args.seconds, args.connections)
                    )
                    elapsed = time.monotonic() - t0
                    elapsed_each = [elapsed] * len(pair)
                    cpu_each = [cpu_seconds(srv.proc.pid) - c for srv, c in zip(pair, cpu0, strict=False)]
                rates = [n / cpu if cpu > 0 else float("nan") for n, cpu in zip(counts, cpu_each, strict=False)]
                for m, n, el, cpu, rate in zip(MODES, counts, elapsed_each, cpu_each, rates, strict=False):
                    wall[(f, m)].append(n / el)
                    per_cpu[(f, m)].append(rate)
                    paired[(f, m)].append(rate / rates[0])
                    print(
                        f"  round {r + 1}: {f:<10} {m:<14} {n / el:8.0f} req/s  {n / max(cpu, 1e-9):8.0f} req/CPU-s",
                        file=sys.stderr,
                    )
    finally:
        for s in servers.values():
            s.stop()
        for path in (lua, warm_lua):
            if path:
                os.unlink(path)
    print(f"\n{'':<20} {'requests per second (wall)':^27}   {'requests per CPU-second':^45}")
    print(
        f"{'framework':<10} {'server':<9} {'(a) otel':>9} {'(b) +fl':>8} {'b/a':>6}   "
        f"{'(a) otel':>9} {'(b) +fl':>8} {'b/a':>6} {'quartiles':>11} {'a2/a':>6}"
    )
    print("-" * 100)
    worst = 1.0
    for f in frameworks:
        a, b = (statistics.median(wall[(f, m)]) for m in MODES[:2])
        ca, cb = (statistics.median(per_cpu[(f, m)]) for m in MODES[:2])
        ratios = paired[(f, "otel+fieldlab")]
        ba = statistics.median(ratios)
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ba, ba, ba]
        a2a = statistics.median(paired[(f, "otel-control")])
        worst = min(worst, ba)
        server = "gunicorn" if f in ("flask", "django") else "uvicorn"
        print(
            f"{f:<10} {server:<9} {a:>9.0f} {b:>8.0f} {b / a:>6.3f}   "
            f"{ca:>9.0f} {cb:>8.0f} {ba:>6.3f} {q[0]:>5.3f}-{q[2]:<5.3f} {a2a:>6.3f}"
        )
    print(
        f"\nworst b/a (per CPU-second): {worst:.3f} (target >= 0.95). b/a and a2/a are medians of per-round "
        "ratios\n(a, b and a2 measured back to back, order alternating); a2 is a second, identical OTel-only "
        "server,\nso a2/a is what this machine's noise alone does to the ratio. "
        f"Servers pinned to CPUs {sorted(SERVER_CPUS) or 'any'}, load generator to {sorted(CLIENT_CPUS) or 'any'}."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
