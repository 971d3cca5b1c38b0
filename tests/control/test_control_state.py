"""The state store (JSON file and real Redis) and the request-side poller."""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
from collections.abc import Callable

import pytest
from redis_kit import REDIS_BIN, RedisServer, free_port

from fieldlab import killswitch
from fieldlab.control import state as state_module
from fieldlab.control.state import (
    HISTORY_LIMIT,
    Decision,
    JsonFileStore,
    LabState,
    RedisStore,
    StateFormatError,
    StatePoller,
    StateStore,
    StateStoreError,
    apply_decision,
    open_store,
)


def pause(exp: str = "checkout", variant: str = "one-page", cause: str = "guardrail", **kw) -> Decision:
    return Decision(
        "pause",
        exp,
        variant,
        cause,
        reason=kw.pop("reason", "error burn 1h/5m"),
        by=kw.pop("by", "fieldlab-controller@test"),
        evidence=kw.pop("evidence", {"burn": 20.0}),
        **kw,
    )


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> float:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)
    return time.monotonic() - t0


# ----------------------------------------------------------------------------- pure state transitions


def test_apply_decision_pause_is_idempotent_and_first_reason_stays() -> None:
    s, changed = apply_decision(LabState(), pause(reason="first"), 1)
    assert changed and s.is_paused("checkout", "one-page") and not s.is_paused("checkout", "control")
    s2, changed = apply_decision(s, pause(reason="second"), 2)
    assert not changed and s2.paused["checkout"]["one-page"].reason == "first"


def test_a_budget_pause_is_taken_over_by_a_guardrail_pause() -> None:
    s, _ = apply_decision(LabState(), pause(cause="budget"), 1)
    s, changed = apply_decision(s, pause(cause="guardrail"), 2)
    assert changed and s.paused["checkout"]["one-page"].cause == "guardrail"
    s, changed = apply_decision(s, Decision("resume", "checkout", None, "budget", by="ctl"), 3)
    assert not changed and s.is_paused("checkout", "one-page")  # budget recovery cannot lift it now
    s, changed = apply_decision(s, pause(cause="budget"), 4)
    assert not changed and s.paused["checkout"]["one-page"].cause == "guardrail"


def test_machine_resumes_lift_only_their_own_cause() -> None:
    s, _ = apply_decision(LabState(), pause(variant="a", cause="guardrail"), 1)
    s, _ = apply_decision(s, pause(variant="b", cause="budget"), 2)
    s, changed = apply_decision(s, Decision("resume", "checkout", None, "budget", by="ctl"), 3)
    assert changed and s.is_paused("checkout", "a") and not s.is_paused("checkout", "b")
    s, changed = apply_decision(s, Decision("resume", "checkout", "a", "operator", by="alice"), 4)
    assert changed and not s.paused


def test_halts_first_writer_wins_and_budget_recovery_never_lifts_an_operator_kill() -> None:
    s, changed = apply_decision(LabState(), Decision("halt_faults", None, None, "operator", "INC-1", by="alice"), 1)
    assert changed and s.faults_halted("anything")
    s, changed = apply_decision(s, Decision("halt_faults", None, None, "budget", by="ctl"), 2)
    assert not changed and s.all is not None and s.all.by == "alice"
    s, changed = apply_decision(s, Decision("resume_faults", None, None, "budget", by="ctl"), 3)
    assert not changed and s.all is not None
    s, _ = apply_decision(s, Decision("halt_faults", "slow-db", None, "environment", by="ctl"), 4)
    s, changed = apply_decision(s, Decision("resume_faults", None, None, "operator", by="alice"), 5)
    assert changed and s.all is None and not s.killed


def test_decision_validation() -> None:
    with pytest.raises(ValueError):
        Decision("stop", "a", "b")
    with pytest.raises(ValueError):
        Decision("pause", "a", None)
    with pytest.raises(ValueError):
        Decision("pause", "a", "b", cause="whim")


# ----------------------------------------------------------------------------- both backends


@pytest.fixture(params=["json", "redis"])
def store_factory(request, tmp_path) -> Callable[[], StateStore]:
    if request.param == "json":
        path = str(tmp_path / "lab.toml.state.json")
        return lambda: JsonFileStore(path)
    if REDIS_BIN is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install -y redis-server)")
    server = RedisServer(str(tmp_path))
    server.start()
    request.addfinalizer(server.stop)
    return lambda: RedisStore(server.url)


def test_record_round_trip_with_sequence_history_and_evidence(store_factory) -> None:
    store = store_factory()
    assert store.read() == LabState()
    state, applied = store.record([pause()], at="2026-12-04T20:00:00.000Z")
    assert state.seq == 1 and [d.seq for d in applied] == [1]
    read = store.read()
    assert read.is_paused("checkout", "one-page")
    (d,) = read.history
    assert (d.action, d.cause, d.by, d.at, d.evidence, d.seq) == (
        "pause",
        "guardrail",
        "fieldlab-controller@test",
        "2026-12-04T20:00:00.000Z",
        {"burn": 20.0},
        1,
    )
    mark = read.paused["checkout"]["one-page"]
    assert (mark.by, mark.cause, mark.seq) == ("fieldlab-controller@test", "guardrail", 1)
    token = store.token()
    state, applied = store.record([pause()])  # no change: nothing written
    assert applied == [] and state.seq == 1 and store.token() == token
    state, _ = store.record([], report={"round": 2})
    assert state.seq == 2 and store.read().report == {"round": 2} and store.token() != token
    store.close()


def test_history_is_bounded(store_factory, monkeypatch) -> None:
    assert HISTORY_LIMIT == 200
    monkeypatch.setattr(state_module, "HISTORY_LIMIT", 10)
    store = store_factory()
    for i in range(15):
        store.record([pause(variant=f"v{i}")])
    state = store.read()
    assert len(state.history) == 10 and state.history[0].variant == "v5" and state.history[-1].variant == "v14"
    assert state.seq == 15 and len(state.paused["checkout"]) == 15


def test_concurrent_writers_lose_no_update(store_factory) -> None:
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        store = store_factory()  # its own connection / file descriptor, as another process would have
        try:
            for i in range(15):
                store.record([pause(variant=f"w{k}-{i}")])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    state = store_factory().read()
    assert len(state.paused["checkout"]) == 60 and state.seq == 60
    assert sorted(d.seq for d in state.history) == list(range(1, 61))


# ----------------------------------------------------------------------------- the JSON file


def test_json_file_absorbs_the_kill_switch_file(tmp_path) -> None:
    path = str(tmp_path / "lab.toml.state.json")
    killswitch.write_state(
        path,
        killswitch.KillState(
            all=None, experiments={"slow-db": {"at": "2026-11-29T01:02:03Z", "by": "alice", "reason": "INC-42"}}
        ),
    )
    store = JsonFileStore(path)
    state = store.read()
    assert state.faults_halted("slow-db") and not state.faults_halted("checkout") and state.seq == 0
    assert (state.killed["slow-db"].by, state.killed["slow-db"].reason) == ("alice", "INC-42")
    store.record([pause(), Decision("halt_faults", None, None, "budget", "budget spent", by="ctl")])
    # an old reader (today's kill switch) still sees the kills in the new document
    old = killswitch.read_state(path)
    assert old.killed("slow-db") and old.all is not None and old.all["by"] == "ctl"
    assert json.load(open(path))["version"] == 2


def test_json_writes_are_atomic_for_readers(tmp_path) -> None:
    store = JsonFileStore(str(tmp_path / "state.json"))
    stop = threading.Event()
    bad: list[Exception] = []
    reads = [0]

    def reader() -> None:
        r = JsonFileStore(store.path)
        while not stop.is_set():
            try:
                r.read()
                reads[0] += 1
            except Exception as exc:  # pragma: no cover - the failure this test looks for
                bad.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    for i in range(40):
        store.record([pause(variant=f"v{i}", evidence={"pad": "x" * 2000})])
    stop.set()
    t.join()
    assert bad == [] and reads[0] > 0
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []


def test_a_broken_file_is_a_format_error_naming_the_file(tmp_path) -> None:
    path = tmp_path / "state.json"
    path.write_text("{ half a docu")
    with pytest.raises(StateFormatError, match="state.json"):
        JsonFileStore(str(path)).read()
    path.write_text(json.dumps({"version": 99}))
    with pytest.raises(StateFormatError, match="newer"):
        JsonFileStore(str(path)).read()


def test_open_store_urls(tmp_path) -> None:
    assert isinstance(open_store("redis://127.0.0.1:6379/2"), RedisStore)
    assert open_store("redis://127.0.0.1:6379/2?key=shop:state").key == "shop:state"  # type: ignore[attr-defined]
    s = open_store("state.json", base_dir=str(tmp_path))
    assert isinstance(s, JsonFileStore) and s.path == str(tmp_path / "state.json")
    assert open_store(f"file://{tmp_path}/x.json").path == f"{tmp_path}/x.json"  # type: ignore[attr-defined]
    with pytest.raises(StateStoreError, match="unknown scheme"):
        open_store("etcd://host/x")
    with pytest.raises(StateStoreError):
        open_store("")


# ----------------------------------------------------------------------------- the poller


def test_poller_follows_the_file_within_one_interval(tmp_path) -> None:
    store = JsonFileStore(str(tmp_path / "state.json"))
    poller = StatePoller(JsonFileStore(store.path), interval=0.1).start()
    try:
        assert poller.status == "ok" and not poller.snapshot.halt_faults  # an absent file is an empty state
        store.record([pause()])
        waited = wait_for(lambda: poller.is_paused("checkout", "one-page"))
        assert waited < 1.0
        assert not poller.is_paused("checkout", "control")
    finally:
        poller.stop()


def test_a_broken_document_halts_faults_but_keeps_known_pauses(tmp_path) -> None:
    store = JsonFileStore(str(tmp_path / "state.json"))
    store.record([pause()])
    poller = StatePoller(JsonFileStore(store.path), interval=0.05).start()
    try:
        assert poller.status == "ok" and not poller.faults_halted("checkout")
        with open(store.path, "w") as fh:
            fh.write("{ not json")
        wait_for(lambda: poller.status == "error")
        snap = poller.snapshot
        assert snap.halt_faults and snap.faults_halted("checkout") and snap.is_paused("checkout", "one-page")
        store.record([pause(variant="b")])  # a write replaces the broken file
        wait_for(lambda: poller.status == "ok")
        assert not poller.faults_halted("checkout") and poller.is_paused("checkout", "b")
    finally:
        poller.stop()


def test_a_store_never_read_halts_faults_and_start_is_bounded() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2)  # nothing listens there
    t0 = time.monotonic()
    poller = StatePoller(store, interval=0.1).start()
    try:
        assert time.monotonic() - t0 < 2.0
        snap = poller.snapshot
        assert snap.status == "error" and snap.halt_faults and snap.faults_halted("any") and snap.state is None
        assert "ConnectionError" in (snap.error or "")
    finally:
        poller.stop()


def _read_latencies_ns(poller: StatePoller, n: int = 20000) -> list[int]:
    out = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        poller.is_paused("checkout", "one-page")
        out.append(clock() - t0)
    return sorted(out)


def test_redis_lost_mid_run_keeps_the_last_state_and_reads_stay_in_memory(redis_server: RedisServer) -> None:
    writer = RedisStore(redis_server.url)
    writer.record([pause()])
    poller = StatePoller(RedisStore(redis_server.url, timeout=0.3), interval=0.05).start()
    try:
        assert poller.status == "ok" and poller.is_paused("checkout", "one-page")
        up = _read_latencies_ns(poller)

        # a hung server (SIGSTOP): the poller thread sits in a socket read; requests do not wait on it
        redis_server.freeze()
        time.sleep(0.1)
        t0 = time.monotonic()
        frozen = _read_latencies_ns(poller, 2000)
        assert time.monotonic() - t0 < 0.25  # 2000 reads; one store round trip would be the 0.3 s timeout
        wait_for(lambda: poller.status == "stale")
        redis_server.thaw()

        # a killed server: stale, the last state holds, faults are not halted by a lost store
        redis_server.stop()
        wait_for(lambda: poller.status == "stale")
        assert poller.is_paused("checkout", "one-page") and not poller.faults_halted("checkout")
        down = _read_latencies_ns(poller)
        p99 = {k: v[int(len(v) * 0.99)] for k, v in (("up", up), ("frozen", frozen), ("down", down))}
        print(f"\nrequest-side read p99 (ns): {p99}")

        # back: polling resumes (no persistence in this server, so the state starts afresh and is rewritten)
        redis_server.start()
        wait_for(lambda: poller.status == "ok")
        RedisStore(redis_server.url).record([pause(variant="after-restart")])
        wait_for(lambda: poller.is_paused("checkout", "after-restart"))
    finally:
        poller.stop()


def _child_sees(poller: StatePoller, path: str, conn) -> None:  # runs in a forked child
    writer = JsonFileStore(path)
    writer.record([pause(variant="after-fork")])
    try:
        wait_for(lambda: poller.is_paused("checkout", "after-fork"), timeout=5)
        conn.send("ok")
    except AssertionError:
        conn.send("not seen")


def test_a_forked_worker_restarts_its_poller(tmp_path) -> None:
    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    path = str(tmp_path / "state.json")
    poller = StatePoller(JsonFileStore(path), interval=0.05).start()
    try:
        ctx = multiprocessing.get_context("fork")
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_child_sees, args=(poller, path, child))
        p.start()
        assert parent.poll(10) and parent.recv() == "ok"
        p.join(5)
    finally:
        poller.stop()
