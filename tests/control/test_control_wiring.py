"""The guardrails wired into the product: config, the Lab following its state store, faults, kill, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from redis_kit import free_port

import fieldlab
from fieldlab import Experiment, Lab, context, faults, killswitch, telemetry
from fieldlab import attributes as A
from fieldlab._assignment import GUARDRAIL, REASONS
from fieldlab.cli import main
from fieldlab.control.state import Decision, JsonFileStore, RedisStore
from fieldlab.errors import ConfigError

FAST = 0.02  # state_poll_interval of these tests


def _lab(tmp_path: Path, **settings: Any) -> Lab:
    exp = Experiment(
        "checkout",
        {"control": 1, "bad": 1, "aa": 1},
        guardrails={"error_slo": 99.5},
        faults={"bad": [{"point": "db.query", "latency_ms": 1}]},
    )
    return Lab(
        [exp],
        secret="s",
        faults={"enabled": True, "max_blast_radius": 50},
        settings={"state": str(tmp_path / "state.json"), "state_poll_interval": FAST, **settings},
    )


def _unit(lab: Lab, variant: str) -> str:
    return next(f"u{i}" for i in range(10_000) if lab.assign("checkout", f"u{i}").variant == variant)


def _pause(store: Any, variant: str = "bad", action: str = "pause") -> None:
    store.record(
        [Decision(action, "checkout", variant, "guardrail" if action == "pause" else "operator", "test", "tester")]
    )


def _wait(cond: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# ----------------------------------------------------------------------------- config


TOML = """
[lab]
state = "run/state.json"
[guardrails]
service_slo = 99.9
windows = [{ long = "30s", short = "5s", burn_rate = 10 }]
[[experiments]]
key = "checkout"
variants = [{ name = "control" }, { name = "one-page" }]
[experiments.guardrails]
error_slo = 99.5
latency_slo = { ms = 800, percent = 99 }
action = "alert"
"""


def test_the_guardrail_tables_and_lab_state_are_accepted_in_a_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "lab.toml"
    cfg.write_text(TOML)
    lab = Lab.from_file(cfg)
    g = lab._state.guardrails
    assert g.lab.service_slo == 99.9 and g.lab.windows[0].long == 30 and g.lab.windows[0].short == 5
    assert g.experiments["checkout"].error_slo == 99.5 and g.experiments["checkout"].action == "alert"
    assert lab._state.state_url == str(tmp_path / "run" / "state.json")
    assert lab.kill_state_file == str(tmp_path / "run" / "state.json")  # the kill switch's file is the store
    other = tmp_path / "other.toml"
    other.write_text(TOML.replace("error_slo = 99.5", "error_slo = 99.6"))
    assert Lab.from_file(other).version != lab.version


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        (("burn_rate = 10 }", 'burn_rate = 10, lon = "1h" }'), "guardrails.windows[0].lon"),
        (('short = "5s"', 'short = "30s"'), "guardrails.windows[0].short"),
        (("error_slo = 99.5", "error_slo = 100"), "experiments[0].guardrails.error_slo"),
        (("error_slo = 99.5", "eror_slo = 99.5"), "experiments[0].guardrails.eror_slo"),
        (("service_slo = 99.9", "service_slo = 99.9\nshare = 3"), "guardrails.share"),
        (('state = "run/state.json"', 'state = "ftp://x/y"'), "lab.state"),
        (('state = "run/state.json"', 'state = "a.json"\nstate_file = "b.json"'), "lab.state"),
        (('state = "run/state.json"', "state_poll_interval = 0"), "lab.state_poll_interval"),
        (('action = "alert"', 'action = "stop"'), "experiments[0].guardrails.action"),
    ],
)
def test_guardrail_config_mistakes_are_config_errors_naming_the_field(
    tmp_path: Path, patch: tuple[str, str], field: str
) -> None:
    cfg = tmp_path / "lab.toml"
    assert patch[0] in TOML
    cfg.write_text(TOML.replace(*patch))
    with pytest.raises(ConfigError) as err:
        Lab.from_file(cfg)
    assert str(err.value).split(": ")[1].startswith(field) or f"{field}:" in str(err.value), str(err.value)


def test_experiment_guardrails_must_be_a_table() -> None:
    with pytest.raises(ConfigError, match=r"experiments\[0\]\.guardrails"):
        Lab.from_dict({"experiments": [{"key": "a", "variants": [{"name": "c"}, {"name": "t"}], "guardrails": 3}]})


# ----------------------------------------------------------------------------- the Lab follows its store


def test_guardrail_is_a_reason_of_the_contract() -> None:
    assert GUARDRAIL == "guardrail" and GUARDRAIL in REASONS and GUARDRAIL in A.OTEL_REASONS


def test_a_paused_variant_s_units_get_control_with_reason_guardrail(tmp_path: Path) -> None:
    lab = _lab(tmp_path)
    bad, aa = _unit(lab, "bad"), _unit(lab, "aa")
    before = lab.assign("checkout", bad)
    assert not lab.paused_variants  # nothing paused: the hot path is the plain one
    store = JsonFileStore(str(tmp_path / "state.json"))
    _pause(store)
    _wait(lambda: lab.paused_variants.get("checkout") == frozenset({"bad"}))
    a = lab.assign("checkout", bad)
    assert (a.variant, a.reason, a.paused, a.bucket) == ("control", GUARDRAIL, "bad", before.bucket)
    assert a.in_experiment and a.to_dict()["paused"] == "bad"
    assert lab.assign_all({"user": bad})["checkout"] == a
    assert lab.assign("checkout", aa).variant == "aa"  # another variant: untouched
    token = lab.make_token("checkout", "bad", 60)
    assert lab.assign("checkout", bad, overrides=[token]).variant == "bad"  # a signed QA override still works

    _pause(store, action="resume")
    _wait(lambda: not lab.paused_variants)
    assert lab.assign("checkout", bad) == before and before.reason == "split" and not lab.paused_variants


def test_the_span_records_control_and_the_paused_variant(tmp_path: Path) -> None:
    lab = _lab(tmp_path)
    bad = _unit(lab, "bad")
    _pause(JsonFileStore(str(tmp_path / "state.json")))
    _wait(lambda: bool(lab.paused_variants))
    attrs = telemetry.Recorder(lab).base_attributes(context.start(lab, {"user": bad}))
    assert attrs[A.variant_attr("checkout")] == "control" and attrs[A.guardrail_attr("checkout")] == "bad"


def test_faults_of_a_paused_variant_stop_even_for_a_forced_unit(tmp_path: Path) -> None:
    lab = _lab(tmp_path)
    bad = _unit(lab, "bad")
    token = lab.make_token("checkout", "bad", 60)

    @fieldlab.fault_point("db.query")
    def query() -> str:
        return "rows"

    def injected() -> bool:
        ctx = context.start(
            lab, {"user": bad}, trace_id="0af7651916cd43dd8448eb211c80319c", overrides=lab.verify_overrides([token])
        )
        tok = context.bind(ctx)
        try:
            query()
        finally:
            context.reset(tok)
        return ctx.fault_injected

    assert injected()
    _pause(JsonFileStore(str(tmp_path / "state.json")))
    _wait(lambda: bool(lab.paused_variants))
    skipped = faults.stats()["skipped_paused"]
    assert not injected() and faults.stats()["skipped_paused"] == skipped + 1


def test_a_redis_store_that_was_never_readable_halts_every_fault(tmp_path: Path) -> None:
    lab = _lab(tmp_path, state=f"redis://127.0.0.1:{free_port()}/0")
    assert lab.kill_state_file is None
    snap = lab.state_snapshot
    assert snap.status == "error" and snap.faults_halted("checkout")


def test_kill_and_resume_reach_a_lab_following_redis_and_keep_the_pauses(
    tmp_path: Path, redis_server: Any, capsys: Any
) -> None:
    cfg = tmp_path / "lab.toml"
    cfg.write_text(
        f'[lab]\nstate = "{redis_server.url}"\nstate_poll_interval = {FAST}\n'
        '[[experiments]]\nkey = "checkout"\nvariants = [{ name = "control" }, { name = "bad" }]\n'
    )
    lab = Lab.from_file(cfg)
    lab.assign("checkout", "warm-up")  # starts the poller
    store = RedisStore(redis_server.url)
    _pause(store)
    assert main(["kill", "checkout", "--config", str(cfg), "--reason", "INC-7"]) == 0
    state = store.read()
    assert state.is_paused("checkout", "bad") and "checkout" in state.killed  # the kill kept the pause
    assert [d.action for d in state.history] == ["pause", "halt_faults"] and state.history[-1].reason == "INC-7"
    _wait(lambda: lab.state_snapshot.faults_halted("checkout") and bool(lab.paused_variants))

    assert main(["resume", str(cfg), "checkout", "--variant", "bad", "--reason", "fixed"]) == 0
    assert "resumed checkout/bad" in capsys.readouterr().out
    _wait(lambda: not lab.paused_variants)
    state = store.read()
    assert state.history[-1].action == "resume" and state.history[-1].cause == "operator"
    assert "checkout" in state.killed  # resuming a variant does not lift a kill
    assert main(["unkill", "checkout", "--config", str(cfg)]) == 0
    _wait(lambda: not lab.state_snapshot.faults_halted("checkout"))
    store.close()


def test_kill_keeps_the_guardrails_pauses_and_history_in_a_state_file(tmp_path: Path) -> None:
    cfg = tmp_path / "lab.toml"
    cfg.write_text('[[experiments]]\nkey = "checkout"\nvariants = [{ name = "control" }, { name = "bad" }]\n')
    store = JsonFileStore(str(cfg) + ".state.json")
    _pause(store)
    killswitch.kill(str(cfg), "checkout", reason="INC-1")
    killswitch.unkill(str(cfg), "checkout")
    state = store.read()
    assert state.is_paused("checkout", "bad")
    assert [d.action for d in state.history] == ["pause", "halt_faults", "resume_faults"]
    doc = json.loads((tmp_path / "lab.toml.state.json").read_text())
    assert doc["paused"]["checkout"]["bad"]["cause"] == "guardrail"


# ----------------------------------------------------------------------------- CLI


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fieldlab.cli", *args], capture_output=True, text=True, timeout=120)


def test_resume_refuses_an_unknown_experiment_or_variant_in_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "lab.toml"
    cfg.write_text(TOML)
    for args, words in (
        (("chekout",), "unknown experiment 'chekout'"),
        (("checkout", "--variant", "two-page"), "unknown variant 'two-page'"),
    ):
        out = _cli("resume", str(cfg), *args)
        assert out.returncode == 2 and words in out.stderr and out.stderr.count("\n") == 1, out.stderr
    out = _cli("resume", str(cfg), "checkout")
    assert out.returncode == 0 and "nothing to resume" in out.stdout


def test_watch_and_status_report_one_line_errors(tmp_path: Path) -> None:
    cfg = tmp_path / "lab.toml"
    cfg.write_text(TOML)
    out = _cli("watch", str(cfg), str(tmp_path / "nowhere"), "--once")
    assert out.returncode == 2 and "no such file or directory" in out.stderr and "Traceback" not in out.stderr
    out = _cli("watch", str(cfg), str(tmp_path), "--interval", "0")
    assert out.returncode == 2 and "--interval" in out.stderr and out.stderr.count("\n") == 1
    out = _cli("status", str(tmp_path / "missing.toml"))
    assert out.returncode == 2 and "no config file" in out.stderr
    out = _cli("status", str(cfg), "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["variants"][1]["state"] == "running"


def test_watch_once_pauses_a_burning_variant_and_status_shows_it(tmp_path: Path) -> None:
    from span_kit import traffic, write_spans

    cfg = tmp_path / "lab.toml"
    cfg.write_text(TOML.replace('action = "alert"', 'action = "pause"').replace("\nlatency_slo", "\n#"))
    now = time.time()
    spans = write_spans(
        str(tmp_path / "traces.jsonl"),
        traffic(
            "checkout",
            now,
            units={"control": 300, "one-page": 300},
            error_rate={"control": 0.001, "one-page": 0.1},
            span_hours=25 / 3600,
        ),
    )
    out = _cli("watch", str(cfg), spans, "--once", "--json")
    assert out.returncode == 0, out.stderr
    rnd = json.loads(out.stdout)
    assert [(d["action"], d["variant"]) for d in rnd["decisions"]] == [("pause", "one-page")]
    status = _cli("status", str(cfg))
    assert status.returncode == 0
    line = next(x for x in status.stdout.splitlines() if x.strip().startswith("one-page"))
    assert "paused" in line and "FIRING" in line
    assert "last decision: pause (guardrail)" in status.stdout and "fieldlab-controller@" in status.stdout


def test_a_reload_that_changes_the_state_store_follows_the_new_one(tmp_path: Path) -> None:
    cfg = tmp_path / "lab.toml"
    body = '[[experiments]]\nkey = "checkout"\nvariants = [{ name = "control" }, { name = "bad" }]\n'
    cfg.write_text(f'[lab]\nstate = "a.json"\nstate_poll_interval = {FAST}\n' + body)
    lab = Lab.from_file(cfg, reload_interval=0)
    lab.assign("checkout", "warm-up")
    _pause(JsonFileStore(str(tmp_path / "b.json")))
    assert not lab.paused_variants
    cfg.write_text(f'[lab]\nstate = "b.json"\nstate_poll_interval = {FAST}\n' + body)
    assert lab.reload()
    _wait(lambda: lab.paused_variants.get("checkout") == frozenset({"bad"}))


def test_validate_names_the_guardrails_and_the_state_store(tmp_path: Path, capsys: Any) -> None:
    cfg = tmp_path / "lab.toml"
    cfg.write_text(TOML)
    assert main(["validate", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "guardrails: service SLO 99.9 %, windows 30s/5s at 10x" in out
    assert str(tmp_path / "run" / "state.json") in out


def test_analyze_counts_units_by_their_assigned_variant_through_a_pause(tmp_path: Path) -> None:
    """Intent-to-treat: requests served control because the variant was paused count in the paused variant
    (before, returning units were dropped as seen in two variants and new ones counted as control: an SRM)."""
    from span_kit import Request, write_spans

    from fieldlab.analysis import analyze

    t0 = int((time.time() - 600) * 1e9)
    reqs = []
    for i in range(300):
        for arm in ("control", "bad"):
            uid = f"{arm}-{i}"
            base = {A.unit_attr("user"): uid, A.HTTP_STATUS_CODE: 200}
            before_pause = i < 200  # a third of the units arrive while "bad" is paused
            if before_pause:
                reqs.append(Request(t0 + i * 1000, 5.0, False, {**base, A.variant_attr("checkout"): arm}))
            served = (
                {A.variant_attr("checkout"): "control", A.guardrail_attr("checkout"): "bad"}
                if arm == "bad"
                else {A.variant_attr("checkout"): "control"}
            )
            reqs.append(Request(t0 + 10**11 + i * 1000, 5.0, False, {**base, **served}))
    spans = write_spans(str(tmp_path / "traces.jsonl"), reqs)
    for engine in ("chdb", "python"):
        e = analyze([spans], engine=engine, all_assigned=True)["experiments"]["checkout"]
        assert {v: s["units"] for v, s in e["variants"].items()} == {"control": 300, "bad": 300}, engine
        assert not e["srm"]["mismatch"]


def test_the_controller_counts_units_by_their_assigned_variant_through_a_pause(tmp_path: Path) -> None:
    from span_kit import Request, write_spans

    from fieldlab.analysis.sources import FileSource
    from fieldlab.control.controller import Controller, ExperimentSpec, measure
    from fieldlab.control.settings import parse_guardrails_config

    now = time.time()
    reqs = []
    for i in range(50):
        for arm in ("control", "bad"):
            base = {A.unit_attr("user"): f"{arm}-{i}"}
            reqs.append(Request(int((now - 120) * 1e9), 5.0, False, {**base, A.variant_attr("checkout"): arm}))
            served = {A.guardrail_attr("checkout"): "bad"} if arm == "bad" else {}
            reqs.append(
                Request(int((now - 60) * 1e9), 5.0, False, {**base, A.variant_attr("checkout"): "control", **served})
            )
    spans = write_spans(str(tmp_path / "traces.jsonl"), reqs)
    cfg = parse_guardrails_config({"experiments": [{"key": "checkout"}]})
    ctl = Controller(
        cfg, {"checkout": ExperimentSpec("checkout", "control")}, spans, JsonFileStore(str(tmp_path / "s.json"))
    )
    for engine in ("chdb", "python"):
        m = measure(FileSource(spans, engine=engine), ctl.query(now), cfg)
        arms = {v: a.units for e in m.experiments for v, a in e.arms.items()}
        assert arms == {"control": 50, "bad": 50}, engine


def test_a_lab_collected_while_another_follows_its_store_does_not_deadlock() -> None:
    """A Lab's finalizer releases its store under the runtime's lock; the garbage collector can run it
    on the thread that already holds that lock (inside ``follow``, while it allocates the poller).
    With a plain Lock this hung the test suite; the finalizer must be able to take the lock again."""
    import threading

    from fieldlab.control import runtime

    done = threading.Event()

    def finalizer_inside_follow() -> None:
        with runtime._LOCK:  # as follow() holds it
            runtime._release(("/nonexistent/state.json", 1.0))  # as a finalizer run by the GC there
        done.set()

    t = threading.Thread(target=finalizer_inside_follow, daemon=True)
    t.start()
    t.join(5)
    assert done.is_set(), "the finalizer deadlocked on the runtime's lock"
