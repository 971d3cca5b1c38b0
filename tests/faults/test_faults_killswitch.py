"""The kill switch: `fieldlab kill/unkill` write a state file; every process stops faults within one reload interval."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from faultkit import bound, unit_in

import fieldlab
from fieldlab import faults, killswitch

INTERVAL = 0.2
CONFIG = f"""
[lab]
reload_interval = {INTERVAL}

[faults]
enabled = true

[[experiments]]
key = "slow-db"
traffic = 4
[[experiments.variants]]
name = "control"
[[experiments.variants]]
name = "slow"
faults = [{{point = "db.query", latency_ms = 1}}]

[[experiments]]
key = "flaky-api"
traffic = 4
[[experiments.variants]]
name = "control"
[[experiments.variants]]
name = "down"
faults = [{{status = 503}}]
"""


@fieldlab.fault_point("db.query")
def query() -> None:
    return None


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command, in its own process (as an operator would run it)."""
    return subprocess.run([sys.executable, "-m", "fieldlab.cli", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = tmp_path / "shop.toml"
    path.write_text(CONFIG)
    return path


def faulted(lab: fieldlab.Lab, unit: str) -> bool:
    with bound(lab, unit) as ctx:
        query()
        return ctx.fault_injected


def aborted(lab: fieldlab.Lab, unit: str) -> bool:
    with bound(lab, unit) as ctx:
        return faults.abort_for(ctx) is not None


def test_kill_and_unkill_from_another_process_take_effect_after_one_interval(cfg: Path) -> None:
    lab = fieldlab.Lab.from_file(cfg)
    slow, down = unit_in(lab, "slow-db", "slow"), unit_in(lab, "flaky-api", "down")
    assert faulted(lab, slow) and aborted(lab, down)

    done = cli("kill", "slow-db", "--config", str(cfg), "--reason", "INC-42")
    assert done.returncode == 0, done.stderr
    assert "faults of 'slow-db' killed" in done.stdout and "INC-42" in done.stdout
    state = json.loads(Path(str(cfg) + ".state.json").read_text())
    assert list(state["experiments"]) == ["slow-db"] and state["experiments"]["slow-db"]["reason"] == "INC-42"

    time.sleep(INTERVAL + 0.05)
    assert not faulted(lab, slow), "the kill did not take effect after one interval"
    assert aborted(lab, down), "killing one experiment stopped another"
    assert faults.stats()["skipped_killed"] == 1
    assert lab.assign("slow-db", slow).variant == "slow"  # assignment goes on; only faults stop

    assert cli("kill", "--all", "--config", str(cfg)).returncode == 0
    time.sleep(INTERVAL + 0.05)
    assert not faulted(lab, slow) and not aborted(lab, down)

    out = cli("unkill", "slow-db", "--config", str(cfg))
    assert out.returncode == 0 and "still killed" in out.stdout  # --all is still in force
    time.sleep(INTERVAL + 0.05)
    assert not faulted(lab, slow)

    assert cli("unkill", "--all", "--config", str(cfg)).returncode == 0
    time.sleep(INTERVAL + 0.05)
    assert faulted(lab, slow) and aborted(lab, down)
    status = cli("kill", "--status", "--config", str(cfg))
    assert status.returncode == 0 and "no kills in force" in status.stdout


def test_the_state_file_is_polled_once_per_interval_not_per_decision(cfg: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    lab = fieldlab.Lab.from_file(cfg)
    slow = unit_in(lab, "slow-db", "slow")
    faulted(lab, slow)  # first poll
    calls = []
    real_stat = os.stat

    def counting_stat(path, *a, **k):  # type: ignore[no-untyped-def]
        if str(path).endswith(".state.json"):
            calls.append(path)
        return real_stat(path, *a, **k)

    monkeypatch.setattr(killswitch.os, "stat", counting_stat)
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < INTERVAL * 0.5:
        faulted(lab, slow)
        n += 1
    assert n > 50 and len(calls) <= 1
    time.sleep(INTERVAL)
    faulted(lab, slow)
    assert len(calls) >= 1


def test_a_kill_written_in_this_process_applies_at_once(cfg: Path) -> None:
    lab = fieldlab.Lab.from_file(cfg)
    slow = unit_in(lab, "slow-db", "slow")
    assert faulted(lab, slow)
    killswitch.kill(str(cfg), "slow-db")
    assert not faulted(lab, slow)
    killswitch.unkill(str(cfg), "slow-db")
    assert faulted(lab, slow)


def test_an_unreadable_state_file_kills_all_faults(cfg: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    lab = fieldlab.Lab.from_file(cfg)
    slow = unit_in(lab, "slow-db", "slow")
    Path(str(cfg) + ".state.json").write_text("{ not json")
    killswitch._invalidate(str(cfg) + ".state.json")
    assert not faulted(lab, slow)
    assert any("unreadable" in r.getMessage() for r in caplog.records)
    assert cli("unkill", "--all", "--config", str(cfg)).returncode == 0  # the CLI repairs it
    killswitch._invalidate(str(cfg) + ".state.json")
    assert faulted(lab, slow)


def test_kill_refuses_an_unknown_experiment_unless_forced(cfg: Path) -> None:
    out = cli("kill", "slow-bd", "--config", str(cfg))
    assert out.returncode == 2 and "unknown experiment 'slow-bd'" in out.stderr and "Traceback" not in out.stderr
    assert not Path(str(cfg) + ".state.json").exists()
    assert cli("kill", "slow-bd", "--force", "--config", str(cfg)).returncode == 0
    both = cli("kill", "slow-db", "--all", "--config", str(cfg))
    assert both.returncode == 2 and "EXPERIMENT or pass --all" in both.stderr


def test_kill_works_even_when_the_config_is_broken(cfg: Path) -> None:
    cfg.write_text("this is [not toml")
    out = cli("kill", "--all", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    assert killswitch.read_state(str(cfg) + ".state.json").all is not None


def test_state_file_setting_is_relative_to_the_config(tmp_path: Path) -> None:
    cfg = tmp_path / "conf" / "shop.toml"
    cfg.parent.mkdir()
    cfg.write_text(CONFIG.replace("[lab]\n", '[lab]\nstate_file = "../run/faults.json"\n'))
    (tmp_path / "run").mkdir()
    lab = fieldlab.Lab.from_file(cfg)
    assert lab.kill_state_file == str(tmp_path / "run" / "faults.json")
    assert cli("kill", "slow-db", "--config", str(cfg)).returncode == 0
    assert (tmp_path / "run" / "faults.json").exists()
    assert not faulted(lab, unit_in(lab, "slow-db", "slow"))


def test_writes_are_atomic_and_serialised(cfg: Path) -> None:
    """Readers never see a partial file, and concurrent operators do not lose each other's kills."""
    path = str(cfg) + ".state.json"
    stop = threading.Event()
    bad: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                killswitch.read_state(path)
            except ValueError as exc:
                bad.append(str(exc))

    r = threading.Thread(target=reader)
    r.start()
    names = [f"exp-{i}" for i in range(30)]
    writers = [threading.Thread(target=killswitch.kill, args=(str(cfg), n), kwargs={"force": True}) for n in names]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    r.join()
    assert bad == []
    assert set(killswitch.read_state(path).experiments) == set(names)
    assert not [p for p in os.listdir(cfg.parent) if p.endswith(".tmp")]


def test_kill_refuses_a_config_path_that_does_not_exist(tmp_path: Path) -> None:
    out = cli("kill", "--all", "--config", str(tmp_path / "typo.toml"))
    assert out.returncode == 2 and "no config file" in out.stderr
    assert list(tmp_path.iterdir()) == []
