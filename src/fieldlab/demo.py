"""``fieldlab demo``: run an example shop under a real server, drive simulated visitors, count from the spans.

What it does, with no external service:

1. starts ``example_apps/<app>`` on 127.0.0.1 (gunicorn for Flask and Django,
   uvicorn for FastAPI) on a free port, with spans written by the OpenTelemetry
   SDK to OTLP JSON lines files in ``<out>/spans/``;
2. drives simulated visitors (catalog, searches, checkout, orders; some logged
   in, some anonymous, people come back) with a progress line on stderr;
3. stops the server (which flushes the spans), reads the files back and prints
   per experiment and variant the requests, distinct units, exposed requests
   and orders;
4. runs ``fieldlab.analysis.analyze`` on the spans and writes
   ``<out>/report.html`` when the analysis part is installed;
5. the guardrail scene (:mod:`fieldlab.control.scene`, skipped with
   ``--no-guardrails``): the shop again, with a rollout whose variant fails
   20 % of its requests under load; the controller pauses it within seconds,
   visible in the terminal and in ``<out>/guardrails/report-guardrails.html``.
"""

from __future__ import annotations

import argparse
import glob
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

from . import attributes as A
from .analysis.model import Span
from .analysis.reader import detect_compression, read_spans
from .errors import FieldLabError

__all__ = ["add_parsers", "run_demo", "read_server_spans", "count_variants", "find_examples", "APPS"]

#: app name -> (server, module:attribute inside example_apps)
APPS = {
    "flask": ("gunicorn", "flask_shop:app"),
    "django": ("gunicorn", "django_shop:application"),
    "django-asgi": ("uvicorn", "django_shop:asgi_application"),
    "fastapi": ("uvicorn", "starlette_shop:app"),
}
_QUERIES = [
    "warm jacket",
    "running shoes",
    "rain",
    "hiking socks",
    "camp tent",
    "summer",
    "wool hat",
    "backpack",
    "sport watch",
    "shoe",
    "bottle",
    "winter boots",
]


def find_examples(explicit: str | None = None) -> Path:
    """The ``example_apps`` directory: ``--examples``, ``./example_apps``, or the one next to this source tree."""
    candidates = (
        [Path(explicit)]
        if explicit
        else [Path.cwd() / "example_apps", Path(__file__).resolve().parents[2] / "example_apps"]
    )
    for c in candidates:
        if (c / "shop_core.py").is_file() and (c / "shop.toml").is_file():
            return c.resolve()
    raise FieldLabError(
        "cannot find example_apps/ (with shop_core.py and shop.toml); run the demo from the "
        "fieldlab source tree or pass --examples PATH"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_command(server: str, target: str, examples: Path, port: int, workers: int) -> list[str]:
    if server == "gunicorn":
        return [
            sys.executable,
            "-m",
            "gunicorn",
            "-w",
            str(workers),
            "-b",
            f"127.0.0.1:{port}",
            "--chdir",
            str(examples),
            "--log-level",
            "warning",
            "--graceful-timeout",
            "5",
            target,
        ]
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--app-dir",
        str(examples),
        "--log-level",
        "warning",
        "--no-access-log",
        target,
    ]


def _check_installed(server: str, app: str) -> None:
    import importlib.util

    needed = [
        server,
        "opentelemetry.sdk",
        "opentelemetry.exporter.otlp.json.file",
        {"flask": "flask", "django": "django", "django-asgi": "django", "fastapi": "fastapi"}[app],
    ]
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise FieldLabError(
            f"the demo needs {', '.join(missing)}; install them with "
            f"pip install 'fieldlab[otel,{app.split('-')[0]}]' {server}"
        )


class _Server:
    def __init__(
        self,
        app: str,
        examples: Path,
        spans_dir: Path,
        workers: int,
        log: Path,
        config: Path | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.server, target = APPS[app]
        self.port = _free_port()
        env = {
            **os.environ,
            "FIELDLAB_SPANS_DIR": str(spans_dir),
            "FIELDLAB_CONFIG": str(config or examples / "shop.toml"),
        }
        for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
            env.pop(name, None)  # the demo reads its own file back
        self.log = log
        with open(log, "wb") as fh:
            cmd = _server_command(self.server, target, examples, self.port, workers)
            self.proc = subprocess.Popen(
                cmd[:-1] + list(extra_args) + cmd[-1:],
                env=env,
                cwd=str(examples),
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise FieldLabError(f"the {self.server} server exited during start-up:\n{self.log.read_text()[-2000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    conn.close()
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise FieldLabError(f"the {self.server} server did not answer within {timeout:.0f} s; see {self.log}")

    def stop(self) -> None:
        """Stop gracefully so batched spans are flushed (uvicorn: SIGINT, since it re-raises SIGTERM past atexit)."""
        if self.proc.poll() is not None:
            return
        sig = signal.SIGINT if self.server == "uvicorn" else signal.SIGTERM
        try:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=15)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=5)


class _Visitor:
    """One browser: a keep-alive connection, the fieldlab visitor cookie, maybe a logged-in user."""

    def __init__(self, port: int, user: str | None, rng: random.Random) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.user = user
        self.rng = rng
        self.cookie: str | None = None
        self.requests = 0
        self.errors = 0

    def call(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Accept": "application/json"}
        if self.user:
            headers["X-User-Id"] = self.user
        if self.cookie:
            headers["Cookie"] = self.cookie
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        for attempt in (0, 1):
            try:
                self.conn.request(method, path, body=data, headers=headers)
                resp = self.conn.getresponse()
                raw = resp.read()
                break
            except (OSError, http.client.HTTPException):
                self.conn.close()  # reconnect once (a worker may have closed the keep-alive)
                if attempt:
                    self.errors += 1
                    return None
        self.requests += 1
        set_cookie = resp.getheader("Set-Cookie")
        if set_cookie and set_cookie.startswith("fieldlab_visitor="):
            self.cookie = set_cookie.split(";", 1)[0]
        if resp.status >= 400:
            self.errors += resp.status >= 500
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return None

    def browse(self) -> None:
        rng = self.rng
        catalog = self.call("GET", "/") or {}
        badges = any("badge" in p for p in catalog.get("products", []))
        found: list[Any] = []
        for _ in range(rng.randint(1, 3)):
            q = rng.choice(_QUERIES).replace(" ", "+")
            found = (self.call("GET", f"/search?q={q}") or {}).get("results", []) or found
        if not self.user or not found or rng.random() > 0.45 + 0.1 * badges:
            return
        flow = self.call("GET", "/checkout") or {}
        convert = 0.62 if flow.get("layout") == "one-page" else 0.5
        if rng.random() < convert:
            items = [p["id"] for p in found[: rng.randint(1, 2)]]
            self.call("POST", "/orders", {"items": items})
        self.conn.close()


def _progress(done: int, total: int, requests: int, started: float, stream: TextIO) -> None:
    width = 30
    filled = int(width * done / max(total, 1))
    rate = requests / max(time.monotonic() - started, 1e-6)
    stream.write(
        f"\r  [{'#' * filled}{'.' * (width - filled)}] {done}/{total} visitors, {requests} requests ({rate:.0f}/s)"
    )
    stream.flush()


def drive(
    port: int, visitors: int, concurrency: int, seed: int, stream: TextIO, stop: threading.Event | None = None
) -> tuple[int, int]:
    """Simulate ``visitors`` browsing sessions (the rest skipped once ``stop`` is set); returns (requests, server
    errors)."""
    rng = random.Random(seed)
    pool = max(1, int(visitors * 0.6))
    plans = [
        (f"demo-user-{rng.randrange(pool)}" if rng.random() < 0.75 else None, rng.randrange(2**32))
        for _ in range(visitors)
    ]
    lock = threading.Lock()
    totals = {"done": 0, "requests": 0, "errors": 0}
    started = time.monotonic()

    def one(plan: tuple[str | None, int]) -> None:
        if stop is not None and stop.is_set():
            return
        v = _Visitor(port, plan[0], random.Random(plan[1]))
        try:
            v.browse()
        finally:
            with lock:
                totals["done"] += 1
                totals["requests"] += v.requests
                totals["errors"] += v.errors
                if totals["done"] % 10 == 0 or totals["done"] == visitors:
                    _progress(totals["done"], visitors, totals["requests"], started, stream)

    with ThreadPoolExecutor(max_workers=concurrency) as ex:
        list(ex.map(one, plans))
    stream.write("\n")
    return totals["requests"], totals["errors"]


def read_server_spans(paths: Iterable[str | os.PathLike[str]]) -> list[Span]:
    """SERVER spans of OTLP JSON-lines files (plain or gzip), read by the analysis's own reader.

    :func:`fieldlab.analysis.reader.read_spans` reads them, so the demo's counts and ``fieldlab analyze`` see
    the same spans: unusable lines skipped, attribute values as text (``"true"``, ``"200"``), and a span
    written twice (an exporter's retry) counted once, by its trace and span id.
    """
    files = [(os.fspath(p), detect_compression(os.fspath(p))) for p in paths]
    seen: set[tuple[str, str]] = set()
    out: list[Span] = []
    for span in read_spans(files):
        if not (span.line_ok and span.is_server):
            continue
        if span.trace_id and span.span_id:
            if (span.trace_id, span.span_id) in seen:
                continue
            seen.add((span.trace_id, span.span_id))
        out.append(span)
    return out


def count_variants(spans: Iterable[Span], unit_kinds: dict[str, str]) -> dict[str, dict[str, dict[str, int]]]:
    """experiment -> variant -> {requests, units, exposed, orders}, from the spans alone."""
    counts: dict[str, dict[str, dict[str, Any]]] = {}
    for s in spans:
        attrs = s.attrs
        route = attrs.get(A.HTTP_ROUTE) or attrs.get("url.path") or ""
        is_order = "orders" in route and (attrs.get(A.HTTP_STATUS_CODE) or attrs.get(A.HTTP_STATUS_CODE_OLD)) == "200"
        for key, value in attrs.items():
            if not key.startswith(A.VARIANT_PREFIX):
                continue
            exp = key[len(A.VARIANT_PREFIX) :]
            row = counts.setdefault(exp, {}).setdefault(
                value, {"requests": 0, "units": set(), "exposed": 0, "orders": 0}
            )
            row["requests"] += 1
            unit = attrs.get(A.unit_attr(unit_kinds.get(exp, "user")))
            if unit:
                row["units"].add(unit)
            row["exposed"] += attrs.get(A.exposed_attr(exp)) == "true"
            row["orders"] += is_order
    return {
        exp: {v: {**row, "units": len(row["units"])} for v, row in sorted(variants.items())}
        for exp, variants in sorted(counts.items())
    }


def _print_table(counts: dict[str, dict[str, dict[str, int]]], holdouts: dict[str, int], out: TextIO) -> None:
    out.write(f"\n{'experiment':<20} {'variant':<16} {'requests':>9} {'units':>7} {'exposed':>8} {'orders':>7}\n")
    out.write("-" * 72 + "\n")
    for exp, variants in counts.items():
        for i, (name, row) in enumerate(variants.items()):
            out.write(
                f"{exp if i == 0 else '':<20} {name:<16} {row['requests']:>9} {row['units']:>7} "
                f"{row['exposed']:>8} {row['orders']:>7}\n"
            )
    for h, n in sorted(holdouts.items()):
        out.write(f"{'holdout ' + h:<37} {n:>9} requests held out\n")


def run_demo(
    app: str = "flask",
    visitors: int = 600,
    concurrency: int = 8,
    out_dir: str = "fieldlab-demo",
    seed: int = 1,
    workers: int = 2,
    examples: str | None = None,
    analyze: bool = True,
    stream: TextIO | None = None,
    guardrails: bool = False,
) -> dict[str, Any]:
    """Run the whole demo; returns the counts (also printed)."""
    out = sys.stdout
    err = stream or sys.stderr
    if app not in APPS:
        raise FieldLabError(f"--app {app!r}: choose one of {', '.join(APPS)}")
    if visitors < 1 or concurrency < 1:
        raise FieldLabError("--visitors and --concurrency must be at least 1")
    server_kind, target = APPS[app]
    _check_installed(server_kind, app)
    examples_dir = find_examples(examples)
    out_path = Path(out_dir).resolve()
    spans_dir = out_path / "spans"
    spans_dir.mkdir(parents=True, exist_ok=True)
    for old in spans_dir.glob("*.jsonl"):
        old.unlink()  # counts describe this run only
    from .lab import Lab

    lab = Lab.from_file(examples_dir / "shop.toml", reload_interval=0)
    t0 = time.monotonic()
    err.write(f"fieldlab demo: starting the {app} shop under {server_kind} ({target}) ...\n")
    server = _Server(app, examples_dir, spans_dir, workers, out_path / "server.log")
    try:
        server.wait_ready()
        err.write(f"  listening on http://127.0.0.1:{server.port}; {visitors} visitors, {concurrency} at a time\n")
        requests_made, errors = drive(server.port, visitors, concurrency, seed, err)
    finally:
        server.stop()
    files = sorted(glob.glob(str(spans_dir / "*.jsonl")))
    spans = read_server_spans(files)
    unit_kinds = {k: e.unit for k, e in lab.experiments.items()}
    counts = count_variants(spans, unit_kinds)
    holdouts: dict[str, int] = {}
    for s in spans:
        for key, value in s.attrs.items():
            if key.startswith(A.HOLDOUT_PREFIX) and value == "true":
                h = key[len(A.HOLDOUT_PREFIX) :]
                holdouts[h] = holdouts.get(h, 0) + 1
    out.write(
        f"\n{requests_made} requests ({errors} server errors), {len(spans)} server spans read back from "
        f"{len(files)} file(s) in {spans_dir} (config {lab.version})\n"
    )
    _print_table(counts, holdouts, out)
    result: dict[str, Any] = {
        "requests": requests_made,
        "errors": errors,
        "server_spans": len(spans),
        "counts": counts,
        "holdouts": holdouts,
        "spans_dir": str(spans_dir),
    }
    if analyze:
        result["report"] = _analyze(spans_dir, examples_dir / "shop.toml", out_path / "report.html", out, err)
    if guardrails:  # the guardrail scene (fieldlab.control.scene): a variant goes bad, the controller pauses it
        from .control.scene import run_scene

        result["guardrails"] = run_scene(
            app,
            examples_dir,
            out_path,
            workers=workers,
            concurrency=concurrency,
            seed=seed + 1,
            out=out,
            err=err,
            analyze=analyze,
        )
    out.write(f"\ndone in {time.monotonic() - t0:.1f} s. Spans: {spans_dir}\n")
    out.flush()
    return result


def _analyze(spans_dir: Path, config: Path, html: Path, out: TextIO, err: TextIO) -> str | None:
    try:
        from .analysis import analyze, render_text, write_html
    except ImportError:
        err.write("(fieldlab.analysis is not installed: skipping the report)\n")
        return None
    try:
        result = analyze([str(spans_dir)], config=str(config))
        write_html(result, html)
        try:
            out.write("\n" + render_text(result) + "\n")
        except Exception:
            pass
        out.write(f"\nreport: {html}\n")
        return str(html)
    except Exception as exc:  # the demo's counts stand on their own
        err.write(f"(analysis failed: {exc!r}; the counts above come straight from the spans)\n")
        return None


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.canary:  # the sick canary against the shop (fieldlab.control.canary_demo)
        from .control.canary_demo import run_canary_demo

        run_canary_demo(args.out, examples=args.examples, workers=args.workers, as_json=args.json)
        return 0
    run_demo(
        app=args.app,
        visitors=args.visitors,
        concurrency=args.concurrency,
        out_dir=args.out,
        seed=args.seed,
        workers=args.workers,
        examples=args.examples,
        analyze=not args.no_analysis,
        guardrails=not args.no_guardrails,
    )
    return 0


def add_parsers(subparsers: Any) -> None:
    """Register ``fieldlab demo`` with the CLI."""
    p = subparsers.add_parser(
        "demo", help="run an example shop on 127.0.0.1, simulate visitors, count variants from the spans"
    )
    p.add_argument("--app", choices=sorted(APPS), default="flask", help="which example shop (default flask)")
    p.add_argument("--visitors", type=int, default=600, help="simulated browsing sessions (default 600)")
    p.add_argument("--concurrency", type=int, default=8, help="visitors at a time (default 8)")
    p.add_argument("--workers", type=int, default=2, help="gunicorn worker processes (default 2)")
    p.add_argument("--out", default="fieldlab-demo", help="output directory (default ./fieldlab-demo)")
    p.add_argument("--seed", type=int, default=1, help="seed of the simulated visitors")
    p.add_argument("--examples", help="path of example_apps/ (default: found next to the source tree)")
    p.add_argument("--no-analysis", action="store_true", help="skip fieldlab.analysis and report.html")
    p.add_argument(
        "--no-guardrails",
        action="store_true",
        help="skip the guardrail scene (a variant goes bad, the controller pauses it)",
    )
    p.add_argument(
        "--canary",
        action="store_true",
        help="run the sick canary against the shop: find the inventory latency at which checkout breaks",
    )
    p.add_argument("--json", action="store_true", help="with --canary: the result as JSON (breaking_point_ms, bracket)")
    p.set_defaults(func=_cmd_demo)
