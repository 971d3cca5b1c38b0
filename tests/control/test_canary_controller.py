"""The canary controller against span files written by the real SDK: it counts each arm as the request
side marks it, advances the search, publishes weights in the state store, finds a known breaking point,
stops on a kill, and the CLI runs a round and shows the status."""

from __future__ import annotations

import json
import math
import random
import statistics
from pathlib import Path

import pytest
from span_kit import Request, write_spans

from fieldlab import attributes as A
from fieldlab.analysis import sources as S
from fieldlab.cli import main
from fieldlab.control import canary as C
from fieldlab.control.canary_config import parse_canaries
from fieldlab.control.canary_controller import CanaryController, measure_arms
from fieldlab.control.state import JsonFileStore

KEY = "inventory-latency"
TIMEOUT_MS, MEDIAN_MS, SIGMA = 300.0, 40.0, 0.4
TABLE = {
    "key": KEY,
    "point": "inventory.reserve",
    "traffic": 5,
    "doses": {"start": 25, "factor": 2, "max": 1600},
    "steady_state": {"error_slo": 99.5, "latency_slo": {"ms": 1000, "percent": 99}},
}


def truth() -> float:
    """The smallest dose at which more than 0.5 % of requests exceed the client timeout."""
    nd = statistics.NormalDist()
    lo, hi = 0.0, TIMEOUT_MS
    for _ in range(60):
        mid = (lo + hi) / 2
        room = TIMEOUT_MS - mid
        rate = 0.0005 + 0.9995 * (1.0 - nd.cdf(math.log(room / MEDIAN_MS) / SIGMA))
        lo, hi = (lo, mid) if rate >= 0.005 else (mid, hi)
    return hi


def serve(weights: dict[str, float], n: int, t0: float, rnd: random.Random) -> list[Request]:
    """``n`` requests of the canary's traffic: each arm from its trace id as the request side chooses it; a
    request fails when its latency passes the client timeout."""
    table = C.weight_table(weights)
    out = []
    for i in range(n):
        tid = f"{rnd.getrandbits(128):032x}"
        arm = C.choose_arm(KEY, tid, table, 100.0)
        if arm is None:
            continue
        dose = C.dose_of(arm) or 0.0
        dur = MEDIAN_MS * math.exp(SIGMA * rnd.gauss(0, 1)) + dose
        err = dur > TIMEOUT_MS or rnd.random() < 0.0005
        out.append(
            Request(
                int((t0 + i * 1e-3) * 1e9),
                min(dur, TIMEOUT_MS),
                err,
                {A.canary_attr(KEY): arm, A.HTTP_STATUS_CODE: 504 if err else 200},
            )
        )
    return out


def test_measure_counts_each_arm_with_both_engines(tmp_path: Path) -> None:
    (canary,) = parse_canaries([TABLE])
    rnd = random.Random(3)
    reqs = serve({"control": 0.2, "200ms": 0.4, "400ms": 0.4}, 600, 1_000_000.0, rnd)
    reqs.append(Request(int(999_000.0 * 1e9), 10, False, {A.canary_attr(KEY): "control"}))  # before the start
    path = write_spans(str(tmp_path / "spans.jsonl"), reqs)
    expect: dict[str, list[int]] = {}
    for r in reqs[:-1]:
        c = expect.setdefault(r.attrs[A.canary_attr(KEY)], [0, 0, 0])
        c[0] += 1
        c[1] += r.error
        c[2] += r.dur_ms > 1000
    counts, engine = measure_arms(S.open_source([path], engine="python"), canary, 1_000_000.0, 2_000_000.0)
    assert engine == "python"
    assert {k: [v.requests, v.errors, v.slow] for k, v in counts.items()} == expect
    assert expect["400ms"][1] > 100 and expect["control"][1] < 3  # 400 ms breaks, control does not
    try:
        import chdb  # noqa: F401
    except ImportError:
        return
    by_sql, engine = measure_arms(S.open_source([path], engine="chdb"), canary, 1_000_000.0, 2_000_000.0)
    assert engine == "chdb" and by_sql == counts


def test_controller_finds_the_breaking_point_through_the_state_store(tmp_path: Path) -> None:
    (canary,) = parse_canaries([TABLE])
    store = JsonFileStore(str(tmp_path / "lab.state.json"))
    spans = tmp_path / "spans"
    spans.mkdir()
    ctl = CanaryController([canary], [str(spans)], store, engine="python")
    rnd = random.Random(7)
    t = 1_000_000.0
    doc = ctl.run_round(now=t)[KEY]  # round 0: the smallest dose opens, weights published
    assert doc["phase"] == "escalating" and set(doc["weights"]) == {"control", "25ms"}
    seen_above_failure = 0
    for rnd_no in range(400):
        weights = store.read().canaries[KEY]["weights"]  # what every process's poller reads
        broken = [a["dose"] for a in store.read().canaries[KEY]["arms"] if a["status"] == "broken"]
        if broken:
            seen_above_failure += sum(1 for k in weights if k != "control" and C.dose_of(k) > min(broken))
        write_spans(str(spans / f"r{rnd_no:04d}.jsonl"), serve(weights, 250, t, rnd))
        t += 1.0
        doc = ctl.run_round(now=t)[KEY]
        if doc["phase"] in ("done", "stopped"):
            break
    assert doc["phase"] == "done" and doc["outcome"] == "found", doc["history"][-3:]
    bp, (lo, hi) = doc["breaking_point"], doc["bracket"]
    assert abs(bp - truth()) / truth() <= 0.10, (bp, truth(), lo, hi)
    assert hi / lo <= 1.1 / 0.9 + 1e-6
    assert seen_above_failure == 0  # never traffic above a known failure
    assert doc["weights"] == {}  # finished: no dose runs any more
    assert doc["started_at"] == 1_000_000.0 and doc["requests_spent"] > 0


def test_a_kill_in_the_store_halts_the_canary(tmp_path: Path) -> None:
    import dataclasses

    from fieldlab.control.state import Mark

    (canary,) = parse_canaries([TABLE])
    store = JsonFileStore(str(tmp_path / "lab.state.json"))
    ctl = CanaryController([canary], [str(tmp_path)], store, engine="python")
    ctl.run_round(now=1.0)
    store.update(
        lambda cur: dataclasses.replace(cur, seq=cur.seq + 1, killed={KEY: Mark("t", "alice", reason="INC-7")})
    )
    doc = ctl.run_round(now=2.0)[KEY]
    assert doc["phase"] == "stopped" and doc["outcome"] == "halted" and doc["weights"] == {}
    assert "alice" in doc["history"][-1]["reason"] and "INC-7" in doc["history"][-1]["reason"]
    assert store.read().killed  # the kill itself is kept


def test_cli_runs_a_round_and_shows_the_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "lab.toml"
    cfg.write_text(
        '[lab]\nstate_file = "lab.state.json"\n[faults]\nenabled = true\nmax_blast_radius = 5\n'
        '[[canaries]]\nkey = "inventory-latency"\npoint = "inventory.reserve"\ntraffic = 5\n'
        "doses = { start = 25, factor = 2, max = 1600 }\n"
        "steady_state = { error_slo = 99.5, latency_slo = { ms = 1000, percent = 99 } }\n"
    )
    spans = tmp_path / "spans"
    spans.mkdir()
    write_spans(str(spans / "a.jsonl"), serve({"control": 0.5, "25ms": 0.5}, 300, 1.0, random.Random(1)))

    def cli(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = cli("canary", "run", str(cfg), str(spans), "--once", "--engine", "python", "--json")
    assert code == 0, err
    line = json.loads(out.strip().splitlines()[-1])
    assert line[KEY]["round"] == 1 and line[KEY]["requests_spent"] == 0  # spans older than the canary's start
    code, out, err = cli("canary", "status", str(cfg), "--json")
    assert code == 0, err
    (st,) = json.loads(out)["canaries"]
    assert st["key"] == KEY and st["dose_response"][0]["arm"] == "control" and st["bracket"] == [0.0, None]
    code, out, err = cli("canary", "status", str(cfg))
    assert "canary inventory-latency at inventory.reserve (5% of units): escalating" in out, out
    code, out, err = cli("canary", "status", str(tmp_path / "missing.toml"))
    assert code == 2 and "missing.toml" in err
    # fieldlab status shows the canaries beside the guardrails' variants
    code, out, err = cli("status", str(cfg), "--json")
    assert code == 0, err
    (st,) = json.loads(out)["canaries"]
    assert st["key"] == KEY and st["dose_response"][0]["arm"] == "control"
    code, out, err = cli("status", str(cfg))
    assert code == 0 and "canary inventory-latency at inventory.reserve (5% of units): escalating" in out, out


@pytest.mark.server
def test_canary_run_ends_cleanly_on_sigterm(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    cfg = tmp_path / "lab.toml"
    cfg.write_text(
        '[lab]\nstate_file = "lab.state.json"\n[faults]\nenabled = true\n'
        '[[canaries]]\nkey = "inventory-latency"\npoint = "inventory.reserve"\ntraffic = 5\n'
        "doses = { latency_ms = [25, 50] }\n"
    )
    spans = tmp_path / "spans"
    spans.mkdir()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from fieldlab.cli import main; sys.exit(main())",
            "canary",
            "run",
            str(cfg),
            str(spans),
            "--interval",
            "0.2",
            "--engine",
            "python",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    state = tmp_path / "lab.state.json"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not state.exists():
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    rounds = [json.loads(line) for line in out.splitlines()]
    assert len(rounds) >= 2
    doc = json.loads(state.read_text())["canaries"]["inventory-latency"]
    assert doc["round"] == rounds[-1]["inventory-latency"]["round"]  # the last round was written whole


def test_fieldlab_kill_names_the_canary_and_keeps_its_search(tmp_path: Path) -> None:
    from fieldlab import killswitch
    from fieldlab.control.canary_cli import load

    cfg = tmp_path / "lab.toml"
    cfg.write_text(
        '[lab]\nstate = "lab.state.json"\n[faults]\nenabled = true\n'
        '[[canaries]]\nkey = "inventory-latency"\npoint = "inventory.reserve"\ntraffic = 5\n'
        "doses = { latency_ms = [25, 50] }\n"
    )
    canaries, store = load(str(cfg))
    ctl = CanaryController(canaries, [str(tmp_path)], store, engine="python")
    ctl.run_round(now=1.0)
    killswitch.kill(str(cfg), KEY, reason="game day over")  # no --force: the config declares the canary
    state = store.read()
    assert KEY in state.killed and state.canaries[KEY]["round"] == 1  # the kill kept the canary's state
    doc = ctl.run_round(now=2.0)[KEY]
    assert doc["phase"] == "stopped" and "game day over" in doc["history"][-1]["reason"]
    assert [h["action"] for h in doc["history"]][:1] == ["open"]  # the search's history is kept


def test_fieldlab_watch_runs_the_canaries_beside_the_guardrails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 13: the controller (`fieldlab watch`) runs the canaries; a finished canary is left alone."""
    cfg = tmp_path / "lab.toml"
    cfg.write_text(
        '[lab]\nstate_file = "lab.state.json"\n[faults]\nenabled = true\nmax_blast_radius = 5\n'
        '[[experiments]]\nkey = "checkout"\nvariants = [{ name = "control" }, { name = "one-page" }]\n'
        '[[canaries]]\nkey = "inventory-latency"\npoint = "inventory.reserve"\ntraffic = 5\n'
        "doses = { start = 25, factor = 2, max = 1600 }\n"
    )
    spans = tmp_path / "spans"
    spans.mkdir()
    write_spans(str(spans / "a.jsonl"), serve({"control": 0.5, "25ms": 0.5}, 300, 1.0, random.Random(1)))
    state = tmp_path / "lab.state.json"

    def watch(*extra: str) -> tuple[int, str, str]:
        code = main(["watch", str(cfg), str(spans), "--once", "--engine", "python", *extra])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = watch("--json")
    assert code == 0, err
    (rnd,) = [json.loads(line) for line in out.splitlines()]
    assert rnd["canaries"][KEY]["phase"] == "escalating" and rnd["canaries"][KEY]["round"] == 1
    assert json.loads(state.read_text())["canaries"][KEY]["round"] == 1
    code, out, err = watch()
    assert code == 0, err
    assert "and 1 sick canary(ies)" in out and f"canary {KEY} escalating, on 25ms" in out, out
    assert json.loads(state.read_text())["canaries"][KEY]["round"] == 2
    # a finished canary is not run again, and the store is not rewritten for it
    doc = json.loads(state.read_text())
    doc["canaries"][KEY]["phase"] = "done"
    state.write_text(json.dumps(doc))
    code, out, err = watch("--json")
    assert code == 0, err
    (rnd,) = [json.loads(line) for line in out.splitlines()]
    assert "canaries" not in rnd
    after = json.loads(state.read_text())["canaries"][KEY]
    assert after["round"] == 2 and after["phase"] == "done"
