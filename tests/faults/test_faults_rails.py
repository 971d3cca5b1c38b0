"""Safety rails: off by default, FIELDLAB_FAULTS=off, blast-radius cap, max_active, and code-defined faults under the cap."""

from __future__ import annotations

import threading
import time

import pytest
from faultkit import bound, make_lab, slow_db, unit_in

import fieldlab
from fieldlab import faults


@fieldlab.fault_point("db.query")
def query() -> str:
    return "rows"


def delayed(lab: fieldlab.Lab, unit: str) -> bool:
    with bound(lab, unit) as ctx:
        t0 = time.monotonic()
        query()
        took = time.monotonic() - t0
    assert (took >= 0.14) == ctx.fault_injected, "recorded and real delay disagree"
    return ctx.fault_injected


def test_faults_are_off_unless_enabled() -> None:
    lab = fieldlab.Lab([slow_db()])  # no [faults] table at all
    slow = unit_in(lab, "slow-db", "slow")
    assert not delayed(lab, slow)
    assert faults.stats()["skipped_disabled"] == 1
    assert not delayed(make_lab(enabled=False), slow)
    assert delayed(make_lab(enabled=True), slow)  # the same unit, enabled: the fault is real


@pytest.mark.parametrize("value", ["off", "OFF", "0", "false"])
def test_env_off_wins_over_the_config(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    lab = make_lab()
    slow = unit_in(lab, "slow-db", "slow")
    monkeypatch.setenv(faults.FAULTS_ENV, value)
    assert not delayed(lab, slow)
    assert faults.stats()["skipped_env"] == 1
    monkeypatch.setenv(faults.FAULTS_ENV, "on")  # anything else leaves the config in charge
    assert delayed(lab, slow)


def test_env_off_also_stops_aborts(monkeypatch: pytest.MonkeyPatch) -> None:
    lab = make_lab(fieldlab.Experiment("api", {"control": 1, "down": 1}, traffic=4, faults={"down": [{"status": 500}]}))
    with bound(lab, unit_in(lab, "api", "down")) as ctx:
        monkeypatch.setenv(faults.FAULTS_ENV, "off")
        assert faults.abort_for(ctx) is None
        monkeypatch.delenv(faults.FAULTS_ENV)
        assert faults.abort_for(ctx) == (500, b"fieldlab injected fault: api/down answered 500\n")


def test_blast_radius_cap_rejects_and_names_the_experiments() -> None:
    a = slow_db(traffic=6)  # 3% of units in "slow"
    b = fieldlab.Experiment(
        "flaky-cache",
        {"control": 3, "broken": 1},
        traffic=12,  # 3%
        faults={"broken": [{"point": "cache.get", "exception": "InjectedFault"}]},
    )
    with pytest.raises(fieldlab.ConfigError) as info:
        fieldlab.Lab([a, b], faults={"enabled": True})
    msg = str(info.value)
    assert "6% of units" in msg and "cap of 5%" in msg
    assert "slow-db/slow" in msg and "flaky-cache/broken" in msg and "max_blast_radius" in msg
    # Raising the cap admits it; disabling faults does not: the cap holds whether or not faults are on.
    fieldlab.Lab([a, b], faults={"enabled": True, "max_blast_radius": 6})
    with pytest.raises(fieldlab.ConfigError):
        fieldlab.Lab([a, b], faults={"enabled": False})


def test_blast_radius_counts_layers_holdouts_and_only_running_experiments() -> None:
    # 40% traffic x 1/2 weight = 20%, x 20% of the layer = 4%, x (1 - 10% holdout) = 3.6%: under 5%.
    exp = fieldlab.Experiment(
        "slow-db",
        {"control": 1, "slow": 1},
        traffic=40,
        layer="backend",
        layer_range=[0, 20],
        faults={"slow": [{"point": "db.query", "latency_ms": 10}]},
    )
    lab = fieldlab.Lab(
        [exp],
        layers=[fieldlab.Layer("backend")],
        holdouts=[fieldlab.Holdout("h", 10, ["slow-db"])],
        faults={"enabled": True},
    )
    radius = faults.blast_radius(lab)
    assert radius["variants"] == {"slow-db/slow": pytest.approx(3.6)} and radius["cap"] == 5.0
    # Without the holdout it is 4%, with a 3.9% cap it is refused.
    with pytest.raises(fieldlab.ConfigError, match="slow-db/slow 4%"):
        fieldlab.Lab([exp], layers=[fieldlab.Layer("backend")], faults={"enabled": True, "max_blast_radius": 3.9})
    # A paused experiment reaches nobody, so a wide one does not count.
    wide = slow_db(traffic=100, status="paused")
    assert faults.blast_radius(fieldlab.Lab([wide], faults={"enabled": True}))["total"] == 0


def test_a_reload_over_the_cap_keeps_the_last_good_config(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "lab.toml"
    good = (
        '[faults]\nenabled = true\n[[experiments]]\nkey = "slow-db"\ntraffic = {t}\n'
        '[[experiments.variants]]\nname = "control"\n[[experiments.variants]]\nname = "slow"\n'
        'faults = [{{point = "db.query", latency_ms = 150}}]\n'
    )
    cfg.write_text(good.format(t=4))
    lab = fieldlab.Lab.from_file(cfg, reload_interval=0)
    cfg.write_text(good.format(t=50))  # 25% of units: refused
    assert lab.reload() is False
    assert "max_blast_radius" in (lab.config_error or "") and "slow-db/slow" in lab.config_error
    assert lab.experiments["slow-db"].traffic == 4


def test_max_active_skips_and_counts_faults_beyond_it() -> None:
    lab = make_lab(max_active=1)
    units = [
        unit_in(lab, "slow-db", "slow"),
    ]
    units.append(unit_in(lab, "slow-db", "slow", start=int(units[0].split("-")[1]) + 1))
    barrier = threading.Barrier(2)
    out: dict[str, bool] = {}

    def run(unit: str, wait: float) -> None:
        barrier.wait()
        time.sleep(wait)  # the second request arrives while the first is being delayed
        out[unit] = delayed(lab, unit)

    threads = [threading.Thread(target=run, args=(u, w)) for u, w in zip(units, (0.0, 0.05), strict=False)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == {units[0]: True, units[1]: False}
    assert faults.stats()["skipped_max_active"] == 1 and faults.active() == 0
    assert delayed(lab, units[1])  # the slot is free again


def test_inject_stays_under_the_blast_radius_cap() -> None:
    wide = fieldlab.Experiment("checkout", {"control": 1, "new": 1}, traffic=100)  # 50% in "new"
    lab = make_lab(wide)

    @fieldlab.inject(experiment="checkout", variant="new", latency_ms=150)
    def step() -> None:
        return None

    with bound(lab, unit_in(lab, "checkout", "new")) as ctx:
        t0 = time.monotonic()
        step()
        assert time.monotonic() - t0 < 0.05 and not ctx.fault_injected
    assert faults.stats()["skipped_over_cap"] == 1
    roomy = make_lab(wide, max_blast_radius=60)
    with bound(roomy, unit_in(roomy, "checkout", "new")) as ctx:
        step()
        assert ctx.fault_injected


def test_inject_is_off_unless_enabled_too() -> None:
    lab = fieldlab.Lab([fieldlab.Experiment("slow-db", {"control": 1, "slow": 1}, traffic=4)])

    @fieldlab.inject(experiment="slow-db", variant="slow", latency_ms=150)
    def step() -> None:
        return None

    with bound(lab, unit_in(lab, "slow-db", "slow")) as ctx:
        step()
        assert not ctx.fault_injected
    assert faults.stats()["skipped_disabled"] == 1
