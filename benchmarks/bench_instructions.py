"""The measure of record for the request path: instructions per request under callgrind, fieldlab against its peers.

Timings on a shared 2-core machine move by 5-10 % between runs; counted
instructions do not move with the machine's load. This script counts, under
valgrind's callgrind, the CPU instructions of N in-process requests (a WSGI
``app(environ, start_response)`` call for Flask, an ``await app(scope, receive,
send)`` for Starlette; no server, no sockets) to a hello-world app with the
OpenTelemetry SDK (a ``TracerProvider`` whose ``SimpleSpanProcessor`` hands
every span to an exporter that drops it, so no thread and no queue) and the
framework's OpenTelemetry instrumentation. There are E running experiments
(``exp-0`` ... , two variants, 100 % traffic, unit ``user`` from the
``X-User-Id`` header) and the view reads three of them. Five arms:

(a) ``otel``: OpenTelemetry only; the view's three reads return a constant.
(b) ``fieldlab``: fieldlab wired as the README shows it (``FieldLab(app, lab=lab,
    units=...)``, ``app.add_middleware(FieldLabMiddleware, lab=lab, units=...)``);
    the view calls ``fieldlab.variant()`` three times.
(c) ``floor``: a bare middleware that writes exactly what (b) writes on the
    server span (the same ``fieldlab.*`` attributes, one ``feature_flag.evaluation``
    event per read with the same attributes) through the public span API
    (``set_attributes`` at the start, ``set_attribute`` + ``add_event`` per read),
    looked up from a table recorded from (b) beforehand: no assignment work.
    The script checks that (c) writes the same attributes and events as (b).
(d) ``openfeature``: ``openfeature-sdk`` with its in-memory provider (each flag
    splits 50/50 on MurmurHash3 of key and targeting key, the cheapest honest
    split) and the ``TracingHook`` of ``openfeature-hooks-opentelemetry``; a
    middleware evaluates the E flags per request (the hook adds one event per
    evaluation to the server span), the view reads three of the results.
(e) ``growthbook``: GrowthBook 4 with a local features dict (no network), one
    ``GrowthBook`` instance per request as its README prescribes for web
    frameworks, ``destroy()`` at the end; a middleware evaluates the E features,
    ``on_experiment_viewed`` adds a ``feature_flag.evaluation`` event to the
    server span, the view reads three of the results.

Users: ``returning`` cycles through 20 users; ``new`` sends a fresh user id on
every request. Every process, whatever its arm, first runs the same warm-up (the
20 returning users, then 100 fresh ids), then collects garbage, then runs the N
counted requests inside ``sys.call_tracing``, the one call callgrind collects in
(``--toggle-collect``): start-up and warm-up are not counted. One process per
arm, framework and kind of user (fieldlab and OpenFeature install global state).

Printed per framework and kind of user: instructions per request of (a)-(e), what
each of (b)-(e) adds over (a), and the ratios of the issue's targets (fieldlab's
added cost at most 1.5x the floor's, 1/5 of OpenFeature's, 1/20 of GrowthBook's);
then the growth of fieldlab's cost per extra running experiment for new users,
(b with 40 experiments - b with 10) / 30 (target at most 2k instructions), and
the floor's growth measured the same way (what the public span API alone costs
per extra variant attribute). Start-up and warm-up run uninstrumented
(``--instr-atstart=no``; ``callgrind_control`` switches instrumentation on just
before the counted call, else the job is counted again instrumented throughout).
Callgrind counts instructions, not cache misses or branch mispredictions: a
load-independent measure of work, not a time.

    python benchmarks/bench_instructions.py [--requests 200] [--frameworks flask,starlette] [--json]

Needs valgrind (Debian: ``apt-get install valgrind``) and ``pip install 'fieldlab[bench]'``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import gc
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

FRAMEWORKS = ("flask", "starlette")
ARMS = ("otel", "fieldlab", "floor", "openfeature", "growthbook")
LETTERS = dict(zip(ARMS, "abcde", strict=False))
KINDS = ("returning", "new")
READS = ("exp-0", "exp-1", "exp-2")
RETURNING = [f"user-{i}" for i in range(1, 21)]
WARM_NEW = 100
GROWTH_EXPERIMENTS = 40
EVENT = "feature_flag.evaluation"
#: Exit status of a counting child whose callgrind_control call failed: counted again, instrumented from the start.
INSTR_FAILED = 3


# ----------------------------------------------------------------------------- the request sequence
def user_ids(kind: str, n: int) -> list[str]:
    """The warm-up ids followed by the ``n`` counted ids: the same in every arm."""
    warm = RETURNING + [f"warm-{i}" for i in range(WARM_NEW)]
    if kind == "returning":
        return warm + [RETURNING[i % len(RETURNING)] for i in range(n)]
    return warm + [f"new-{i}" for i in range(n)]


def warmup_count() -> int:
    return len(RETURNING) + WARM_NEW


# ----------------------------------------------------------------------------- per-request state of (c), (d), (e)
#: What the middleware of (c), (d) or (e) hands to the view's reads: (span, record) or the evaluated results.
_STATE: contextvars.ContextVar[Any] = contextvars.ContextVar("bench_state")


def _otel(exporter: Any = None) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class DropExporter(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter or DropExporter()))
    trace.set_tracer_provider(provider)


def _keys(experiments: int) -> list[str]:
    return [f"exp-{i}" for i in range(experiments)]


def _lab(experiments: int) -> Any:
    from fieldlab import Lab

    return Lab.from_dict(
        {
            "experiments": [
                {"key": key, "unit": "user", "traffic": 100, "variants": [{"name": "control"}, {"name": "treatment"}]}
                for key in _keys(experiments)
            ]
        }
    )


class Arm:
    """One arm's request hooks: ``begin(user_id)`` before the view, ``read(key)`` in it, ``end()`` after."""

    begin: Callable[[str | None], Any] | None = None
    end: Callable[[Any], None] | None = None

    def read(self, key: str) -> str:
        return "control"


class FloorArm(Arm):
    """(c): what fieldlab writes, replayed from a table recorded from (b), through the public span API."""

    def __init__(self, table_file: str) -> None:
        from opentelemetry import trace

        self.table = json.loads(Path(table_file).read_text())
        get_span = trace.get_current_span

        def begin(uid: str | None) -> Any:
            rec = self.table[uid]
            span = get_span()
            span.set_attributes(rec["start"])
            return _STATE.set((span, rec["reads"]))

        self.begin = begin
        self.end = _STATE.reset

    def read(self, key: str) -> str:
        span, reads = _STATE.get()
        exposed, variant, event = reads[key]
        span.set_attribute(exposed, True)
        span.add_event(EVENT, event)
        return str(variant)


class OpenFeatureArm(Arm):
    """(d): OpenFeature's in-memory provider with a 50/50 split and the OpenTelemetry TracingHook."""

    def __init__(self, experiments: int) -> None:
        import mmh3
        from openfeature import api
        from openfeature.contrib.hook.opentelemetry import TracingHook
        from openfeature.evaluation_context import EvaluationContext
        from openfeature.flag_evaluation import FlagResolutionDetails, Reason
        from openfeature.provider.in_memory_provider import (
            InMemoryFlag,
            InMemoryProvider,
        )

        def splitter(key: str) -> Callable[[Any, Any], Any]:
            prefix = key + ":"

            def split(flag: Any, ctx: Any) -> Any:
                variant = (
                    "control"
                    if mmh3.hash(prefix + (ctx.targeting_key or ""), 0, signed=False) % 10000 < 5000
                    else "treatment"
                )
                return FlagResolutionDetails(value=flag.variants[variant], variant=variant, reason=Reason.SPLIT)

            return split

        keys = _keys(experiments)
        flags = {
            key: InMemoryFlag(
                "control", {"control": "control", "treatment": "treatment"}, context_evaluator=splitter(key)
            )
            for key in keys
        }
        api.set_provider_and_wait(InMemoryProvider(flags))
        api.add_hooks([TracingHook()])
        client = api.get_client()
        evaluate = client.get_string_value

        def begin(uid: str | None) -> Any:
            ctx = EvaluationContext(targeting_key=uid)
            return _STATE.set({key: evaluate(key, "control", ctx) for key in keys})

        self.begin = begin
        self.end = _STATE.reset

    def read(self, key: str) -> str:
        return str(_STATE.get()[key])


class GrowthBookArm(Arm):
    """(e): GrowthBook 4, one instance per request over a local features dict, exposures as span events."""

    def __init__(self, experiments: int) -> None:
        from growthbook import GrowthBook
        from opentelemetry import trace

        keys = _keys(experiments)
        features = {
            key: {
                "defaultValue": "control",
                "rules": [
                    {
                        "key": key,
                        "variations": ["control", "treatment"],
                        "weights": [0.5, 0.5],
                        "coverage": 1.0,
                        "hashAttribute": "id",
                    }
                ],
            }
            for key in keys
        }
        get_span = trace.get_current_span

        def viewed(experiment: Any, result: Any, user_context: Any = None) -> None:
            get_span().add_event(
                EVENT,
                {
                    "feature_flag.key": experiment.key,
                    "feature_flag.result.variant": str(result.value),
                    "feature_flag.context.id": str(result.hashValue),
                    "feature_flag.provider.name": "growthbook",
                },
            )

        def begin(uid: str | None) -> Any:
            gb = GrowthBook(attributes={"id": uid}, features=features, on_experiment_viewed=viewed)
            return gb, _STATE.set({key: gb.get_feature_value(key, "control") for key in keys})

        def end(token: Any) -> None:
            gb, state = token
            _STATE.reset(state)
            gb.destroy()

        self.begin = begin
        self.end = end

    def read(self, key: str) -> str:
        return str(_STATE.get()[key])


def make_arm(arm: str, experiments: int, table: str | None) -> Arm:
    if arm == "floor":
        if table is None:
            raise SystemExit("the floor arm needs the table recorded from the fieldlab arm")
        return FloorArm(table)
    if arm == "openfeature":
        return OpenFeatureArm(experiments)
    if arm == "growthbook":
        return GrowthBookArm(experiments)
    return Arm()


# ----------------------------------------------------------------------------- the apps
def make_app(framework: str, arm: str, experiments: int, table: str | None, exporter: Any = None) -> Any:
    """The hello-world app of ``framework`` wired for ``arm``; its view reads three experiments."""
    _otel(exporter)
    hooks = make_arm(arm, experiments, table)
    read: Callable[[str], Any] = hooks.read
    if arm == "fieldlab":
        import fieldlab

        def read_fieldlab(key: str) -> Any:
            return fieldlab.variant(key, default="control")

        read = read_fieldlab
    units = {"user": "header:X-User-Id"}
    if framework == "flask":
        import flask
        from opentelemetry.instrumentation.flask import FlaskInstrumentor

        app = flask.Flask("bench")

        @app.get("/")
        def hello() -> str:
            return f"hello {read(READS[0])} {read(READS[1])} {read(READS[2])}"

        FlaskInstrumentor().instrument_app(app)
        if arm == "fieldlab":
            from fieldlab.adapters.flask import FieldLab

            FieldLab(app, lab=_lab(experiments), units=units)
        elif hooks.begin is not None:
            begin, end = hooks.begin, hooks.end

            def before() -> None:
                flask.g.bench_token = begin(flask.request.headers.get("X-User-Id"))

            def teardown(exc: BaseException | None) -> None:
                end(flask.g.bench_token)  # type: ignore[misc]

            app.before_request(before)
            app.teardown_request(teardown)
        return app
    if framework == "starlette":
        from opentelemetry.instrumentation.starlette import StarletteInstrumentor
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        async def hello_async(request: Any) -> PlainTextResponse:
            return PlainTextResponse(f"hello {read(READS[0])} {read(READS[1])} {read(READS[2])}")

        sapp = Starlette(routes=[Route("/", hello_async)])
        if arm == "fieldlab":
            from fieldlab.adapters.starlette import FieldLabMiddleware

            sapp.add_middleware(FieldLabMiddleware, lab=_lab(experiments), units=units)  # type: ignore[arg-type, unused-ignore]
        elif hooks.begin is not None:
            sapp.add_middleware(_asgi_middleware(hooks))
        StarletteInstrumentor.instrument_app(sapp)
        return sapp
    raise SystemExit(f"unknown framework {framework!r}; use one of {', '.join(FRAMEWORKS)}")


def _asgi_middleware(hooks: Arm) -> Any:
    """A pure ASGI middleware class running ``hooks.begin``/``end`` around each HTTP request."""
    begin, end = hooks.begin, hooks.end

    class Middleware:
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await self.app(scope, receive, send)
                return
            uid = None
            for name, value in scope["headers"]:
                if name == b"x-user-id":
                    uid = value.decode("latin-1")
                    break
            token = begin(uid)  # type: ignore[misc]
            try:
                await self.app(scope, receive, send)
            finally:
                end(token)  # type: ignore[misc]

    return Middleware


def driver(framework: str, app: Any) -> Callable[[list[str]], None]:
    """A function sending one GET / per user id in the list, in process."""
    if framework == "flask":
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

        def run(users: list[str]) -> None:
            for uid in users:
                env = dict(base)
                env["HTTP_X_USER_ID"] = uid
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

    async def batch(users: list[str]) -> None:
        for uid in users:
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
                "headers": [(b"host", b"127.0.0.1:8000"), (b"x-user-id", uid.encode())],
                "client": ("127.0.0.1", 50000),
                "server": ("127.0.0.1", 8000),
            }
            await app(scope, receive, send)

    def run_async(users: list[str]) -> None:
        loop.run_until_complete(batch(users))

    return run_async


# ----------------------------------------------------------------------------- children
def count_child(framework: str, arm: str, kind: str, n: int, experiments: int, table: str | None) -> None:
    """Warm up, then run the ``n`` counted requests inside ``sys.call_tracing``: the one call callgrind collects in."""
    run = driver(framework, make_app(framework, arm, experiments, table))
    users = user_ids(kind, n)
    w = warmup_count()
    run(users[:w])
    gc.collect()
    if os.environ.get("BENCH_INSTR_ON"):
        # Started with --instr-atstart=no: start-up and warm-up ran uninstrumented (about 5x faster);
        # switch instrumentation on now. The count is the same either way: only sys.call_tracing is collected.
        done = subprocess.run(
            ["callgrind_control", "--instr=on", str(os.getpid())], check=False, capture_output=True, text=True
        )
        if done.returncode != 0:
            print(f"callgrind_control failed: {done.stdout}{done.stderr}", file=sys.stderr)
            sys.exit(INSTR_FAILED)
    sys.call_tracing(run, (users[w:],))


def spans_child(framework: str, arm: str, kind: str, n: int, experiments: int, table: str | None) -> None:
    """Run the same requests with an in-memory exporter; print each request's user id, attributes and events as JSON."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
        InMemorySpanExporter,
    )
    from opentelemetry.trace import SpanKind

    exporter = InMemorySpanExporter()
    run = driver(framework, make_app(framework, arm, experiments, table, exporter))
    users = user_ids(kind, n)
    run(users)
    servers = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    if len(servers) != len(users):
        raise SystemExit(f"{framework}/{arm}: {len(servers)} server spans for {len(users)} requests")
    out = [
        {
            "user": uid,
            "attributes": {k: v for k, v in (s.attributes or {}).items() if k.startswith("fieldlab.")},
            "events": [[e.name, dict(e.attributes or {})] for e in s.events],
        }
        for uid, s in zip(users, servers, strict=False)
    ]
    json.dump(out, sys.stdout)


# ----------------------------------------------------------------------------- parent
def _spans(framework: str, arm: str, kind: str, n: int, experiments: int, table: str | None = None) -> list[dict]:
    cmd = [sys.executable, __file__, "--spans", framework, arm, kind, str(n), str(experiments)]
    if table:
        cmd.append(table)
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    if done.returncode != 0:
        raise SystemExit(f"{framework}/{arm}/{kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def floor_table(framework: str, kind: str, n: int, experiments: int, path: Path) -> None:
    """Record what fieldlab writes per user (b), make (c) replay it, and check that (c) wrote the same."""
    recorded = _spans(framework, "fieldlab", kind, n, experiments)
    table: dict[str, Any] = {}
    for req in recorded:
        attrs = req["attributes"]
        events = [attributes for name, attributes in req["events"] if name == EVENT]
        if len(events) != len(READS):
            raise SystemExit(f"{framework}/fieldlab: {len(events)} {EVENT} events for {len(READS)} reads")
        reads = {}
        for key, event in zip(READS, events, strict=False):
            exposed = [name for name in attrs if name.startswith("fieldlab.exposed.") and name.endswith("." + key)]
            if len(exposed) != 1 or event.get("feature_flag.key") != key:
                raise SystemExit(f"{framework}/fieldlab: cannot tell the exposure of {key} from {attrs} {event}")
            reads[key] = [exposed[0], event.get("feature_flag.result.variant", "control"), event]
        start = {k: v for k, v in attrs.items() if not k.startswith("fieldlab.exposed.")}
        table[req["user"]] = {"start": start, "reads": reads}
    path.write_text(json.dumps(table))
    replayed = _spans(framework, "floor", kind, n, experiments, str(path))
    for b, c in zip(recorded, replayed, strict=False):
        if b != c:
            raise SystemExit(f"{framework}: the floor wrote {c}\nbut fieldlab wrote {b}")


def check_peer(framework: str, arm: str, kind: str, experiments: int) -> None:
    """(d) and (e) must record one evaluation event per flag on the server span."""
    for req in _spans(framework, arm, kind, 3, experiments)[-3:]:
        keys = sorted(a.get("feature_flag.key", "") for name, a in req["events"] if name == EVENT)
        if keys != sorted(_keys(experiments)):
            raise SystemExit(f"{framework}/{arm}: expected one {EVENT} event per flag, got {req['events']}")


def count(
    jobs: list[tuple[str, str, str, int]], n: int, tables: dict[tuple[str, str, int], Path], parallel: int, tmp: Path
) -> dict[tuple[str, str, str, int], float]:
    """Instructions per counted request of each (framework, arm, kind, experiments), under callgrind."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    counts: dict[tuple[str, str, str, int], float] = {}
    pending = list(jobs)
    from_start: set[tuple[str, str, str, int]] = set()
    running: list[tuple[tuple[str, str, str, int], Path, subprocess.Popen, float]] = []
    while pending or running:
        while pending and len(running) < parallel:
            job = pending.pop(0)
            framework, arm, kind, experiments = job
            name = f"{framework}-{arm}-{kind}-{experiments}"
            log = tmp / f"{name}.log"
            late = job not in from_start
            cmd = [
                "valgrind",
                "--tool=callgrind",
                "--cache-sim=no",
                "--toggle-collect=sys_call_tracing",
                *(["--instr-atstart=no"] if late else []),
                f"--callgrind-out-file={tmp / (name + '.out')}",
                sys.executable,
                __file__,
                "--count",
                framework,
                arm,
                kind,
                str(n),
                str(experiments),
            ]
            if arm == "floor":
                cmd.append(str(tables[(framework, kind, experiments)]))
            with log.open("w") as err:
                proc = subprocess.Popen(
                    cmd, env={**env, "BENCH_INSTR_ON": "1" if late else ""}, stdout=subprocess.DEVNULL, stderr=err
                )
            running.append((job, log, proc, time.monotonic()))
        time.sleep(0.2)
        for item in list(running):
            job, log, proc, started = item
            if proc.poll() is None:
                continue
            running.remove(item)
            if proc.returncode == INSTR_FAILED and job not in from_start:
                print(
                    f"  {'/'.join(map(str, job))}: callgrind_control failed, counting again instrumented from "
                    "the start (slower)",
                    file=sys.stderr,
                )
                from_start.add(job)
                pending.append(job)
                continue
            found = re.search(r"Collected : (\d+)", log.read_text())
            if proc.returncode != 0 or not found:
                raise SystemExit(f"{'/'.join(map(str, job))} failed under valgrind:\n{log.read_text()[-3000:]}")
            counts[job] = int(found.group(1)) / n
            print(
                f"  {job[0]}/{job[1]}/{job[2]}/{job[3]} experiments: {counts[job]:,.0f} instructions per request"
                f" ({time.monotonic() - started:.0f} s)",
                file=sys.stderr,
            )
    return counts


def report(
    counts: dict[tuple[str, str, str, int], float], frameworks: list[str], n: int, experiments: int
) -> dict[str, Any]:
    results: dict[str, Any] = {
        "requests": n,
        "experiments": experiments,
        "reads": len(READS),
        "growth_experiments": GROWTH_EXPERIMENTS,
        "frameworks": {},
    }
    for f in frameworks:
        per_kind: dict[str, Any] = {}
        for kind in KINDS:
            instr = {arm: counts[(f, arm, kind, experiments)] for arm in ARMS}
            added = {arm: instr[arm] - instr["otel"] for arm in ARMS[1:]}
            b = added["fieldlab"]
            ratios = {
                "fieldlab/floor": b / added["floor"] if added["floor"] else None,
                "fieldlab/openfeature": b / added["openfeature"] if added["openfeature"] else None,
                "fieldlab/growthbook": b / added["growthbook"] if added["growthbook"] else None,
            }
            per_kind[kind] = {"instructions": instr, "added": added, "ratios": ratios}
        per_kind["growth_per_experiment_new_users"] = {
            arm: (counts[(f, arm, "new", GROWTH_EXPERIMENTS)] - counts[(f, arm, "new", experiments)])
            / (GROWTH_EXPERIMENTS - experiments)
            for arm in ("fieldlab", "floor")
        }
        results["frameworks"][f] = per_kind
    return results


def print_table(results: dict[str, Any]) -> None:
    k = 1000.0
    print(
        f"\nInstructions per request under callgrind ({results['requests']} counted requests per process, "
        f"{results['experiments']} running experiments, {results['reads']} read per request), in thousands"
    )
    head = f"{'framework':<10} {'users':<10}" + "".join(f" {LETTERS[a] + ') ' + a:>14}" for a in ARMS)
    print(head)
    print("-" * len(head))
    for f, per_kind in results["frameworks"].items():
        for kind in KINDS:
            row = per_kind[kind]
            print(f"{f:<10} {kind:<10}" + "".join(f" {row['instructions'][a] / k:>14,.1f}" for a in ARMS))
            print(f"{'':<10} {'  added':<10} {'':>14}" + "".join(f" {row['added'][a] / k:>+14,.1f}" for a in ARMS[1:]))
    print(f"\n{'framework':<10} {'users':<10} {'b/c added':>11} {'b/d added':>11} {'b/e added':>11}")
    print(f"{'':<10} {'target':<10} {'<= 1.5':>11} {'<= 0.2':>11} {'<= 0.05':>11}")
    print("-" * 56)
    for f, per_kind in results["frameworks"].items():
        for kind in KINDS:
            r = per_kind[kind]["ratios"]
            cells = "".join(
                f" {v:>11.3f}" if v is not None else f" {'-':>11}"
                for v in (r["fieldlab/floor"], r["fieldlab/openfeature"], r["fieldlab/growthbook"])
            )
            print(f"{f:<10} {kind:<10}{cells}")
    print(
        f"\nGrowth per extra running experiment, new users: (x at {results['growth_experiments']} - x at "
        f"{results['experiments']}) / {results['growth_experiments'] - results['experiments']} "
        f"instructions; target for fieldlab (b) <= 2,000; the floor (c) for comparison"
    )
    for f, per_kind in results["frameworks"].items():
        g = per_kind["growth_per_experiment_new_users"]
        print(f"  {f:<10} b) fieldlab {g['fieldlab']:>8,.0f}    c) floor {g['floor']:>8,.0f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=200, help="counted requests per process (default 200)")
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="comma-separated: flask,starlette")
    p.add_argument("--experiments", type=int, default=10, help="running experiments (default 10)")
    p.add_argument("--parallel", type=int, default=2, help="callgrind processes at a time (default 2)")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    p.add_argument("--count", nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--spans", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    for mode, child in (("count", count_child), ("spans", spans_child)):
        argv = getattr(args, mode)
        if argv:
            framework, arm, kind, n, experiments = argv[:5]
            child(framework, arm, kind, int(n), int(experiments), argv[5] if len(argv) > 5 else None)
            return 0
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    unknown = sorted(set(frameworks) - set(FRAMEWORKS))
    if unknown:
        p.error(f"--frameworks: unknown {', '.join(unknown)}; use some of {', '.join(FRAMEWORKS)}")
    if args.experiments < len(READS) or args.experiments >= GROWTH_EXPERIMENTS:
        p.error(f"--experiments: must be between {len(READS)} and {GROWTH_EXPERIMENTS - 1}")
    if shutil.which("valgrind") is None:
        print("bench_instructions needs valgrind (Debian/Ubuntu: apt-get install valgrind)", file=sys.stderr)
        return 2
    n, e = args.requests, args.experiments
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        tables: dict[tuple[str, str, int], Path] = {}
        print("recording what fieldlab writes and checking every arm's spans ...", file=sys.stderr)
        for f in frameworks:
            for kind, experiments in [(kind, e) for kind in KINDS] + [("new", GROWTH_EXPERIMENTS)]:
                path = tables[(f, kind, experiments)] = tmp / f"{f}-{kind}-{experiments}.json"
                floor_table(f, kind, n, experiments, path)
            for arm in ("openfeature", "growthbook"):
                check_peer(f, arm, "new", e)
        jobs = [(f, arm, kind, e) for f in frameworks for kind in KINDS for arm in ARMS]
        jobs += [(f, arm, "new", GROWTH_EXPERIMENTS) for f in frameworks for arm in ("fieldlab", "floor")]
        print(f"counting {len(jobs)} processes under callgrind, {args.parallel} at a time ...", file=sys.stderr)
        results = report(count(jobs, n, tables, args.parallel, tmp), frameworks, n, e)
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
    else:
        print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
