"""Fault entries and [faults] settings are validated at load, with the path and the fix."""

from __future__ import annotations

import pytest

import fieldlab
from fieldlab.errors import ConfigError

TOML = """
[faults]
enabled = true
max_blast_radius = 5.0
max_active = 20

[[experiments]]
key = "slow-db"
traffic = 4

[[experiments.variants]]
name = "control"

[[experiments.variants]]
name = "slow"
faults = [
  {point = "db.query", median_ms = 80, p99_ms = 600, max_ms = 2000, rate = 50},
  {point = "http", status = 503, rate = 10},
]
"""


def test_a_toml_config_with_faults_loads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "shop.toml"
    cfg.write_text(TOML)
    lab = fieldlab.Lab.from_file(cfg, reload_interval=0)
    assert lab.fault_settings == {"enabled": True, "max_blast_radius": 5.0, "max_active": 20}
    plan = lab._state.fault_plan
    (db,) = plan.by_point["db.query"]
    assert db[:2] == ("slow-db", "slow") and db[2].distribution == "lognormal" and db[2].rate_bp == 5000
    assert plan.by_point["http"][0][2].kind == "abort"
    assert lab.kill_state_file == str(cfg) + ".state.json"


def test_python_api_mirrors_the_config() -> None:
    exp = fieldlab.Experiment(
        "slow-db", {"control": 1, "slow": 1}, traffic=4, faults={"slow": [{"point": "db.query", "latency_ms": 300}]}
    )
    lab = fieldlab.Lab([exp], faults={"enabled": True, "max_blast_radius": 5.0})
    assert lab._state.fault_plan.enabled and lab._state.fault_plan.by_point["db.query"][0][2].latency_ms == 300


def _exp(entry: object) -> fieldlab.Experiment:
    return fieldlab.Experiment("slow-db", {"control": 1, "slow": 1}, traffic=4, faults={"slow": [entry]})  # type: ignore[list-item]


@pytest.mark.parametrize(
    "entry, where, words",
    [
        ({"point": "db.query", "latency_ms": -5}, "faults[0].latency_ms", "negative"),
        ({"point": "db.query", "latency_ms": "300"}, "faults[0].latency_ms", "not a number"),
        ({"point": "db.query", "latency_ms": 120_000}, "faults[0].latency_ms", "limit"),
        ({"point": "db.query", "latency_ms": 5, "rate": 150}, "faults[0].rate", "outside 0-100"),
        ({"point": "db.query", "latency_ms": 5, "rate": -1}, "faults[0].rate", "outside 0-100"),
        ({"point": "db.query", "kind": "explode"}, "faults[0].kind", "unknown fault kind"),
        ({"point": "db.query", "latency_ms": 5, "colour": "red"}, "faults[0]", "unknown keys ['colour']"),
        ({"point": "db.query"}, "faults[0]", "cannot tell the fault kind"),
        ({"latency_ms": 5}, "faults[0].point", "is missing"),
        ({"point": "db.query", "status": 503}, "faults[0].point", "its point is 'http'"),
        ({"point": "http", "latency_ms": 5}, "faults[0].point", "reserved for aborts"),
        ({"status": 200}, "faults[0].status", "not an HTTP error status"),
        ({"point": "db.query", "min_ms": 9, "max_ms": 3}, "faults[0].min_ms", "above max_ms"),
        ({"point": "db.query", "median_ms": 90, "p99_ms": 10}, "faults[0].p99_ms", "below median_ms"),
        ({"point": "db.query", "median_ms": 90}, "faults[0].p99_ms", "is missing"),
        ({"point": "db.query", "latency_ms": 5, "min_ms": 1}, "faults[0]", "do not go with"),
        ({"point": "db.query", "latency_ms": 5, "distribution": "uniform"}, "faults[0].distribution", "does not match"),
        ({"point": "db.query", "exception": "no spaces allowed"}, "faults[0].exception", "not a valid exception name"),
        ("db.query", "faults[0]", "expected a table"),
    ],
)
def test_bad_entries_are_refused_with_path_and_fix(entry: object, where: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        fieldlab.Lab([_exp(entry)], faults={"enabled": True})
    err = info.value
    assert err.path.endswith(f"variants[1].{where}"), err.path
    assert words in err.problem and "'slow'" in err.problem
    assert err.fix


def test_unknown_point_names_are_fine() -> None:
    fieldlab.Lab([_exp({"point": "never.used.anywhere", "latency_ms": 5})], faults={"enabled": True})


@pytest.mark.parametrize(
    "settings, where",
    [
        ({"enabled": "yes"}, "faults.enabled"),
        ({"max_blast_radius": 120}, "faults.max_blast_radius"),
        ({"max_active": 0}, "faults.max_active"),
        ({"max_active": 2.5}, "faults.max_active"),
        ({"turbo": True}, "faults"),
    ],
)
def test_bad_fault_settings_are_refused(settings: dict, where: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as info:
        fieldlab.Lab([], faults=settings)
    assert info.value.path == where


def test_errors_in_a_file_name_the_file_and_path(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "shop.toml"
    cfg.write_text(TOML.replace("rate = 50", "rate = 500"))
    with pytest.raises(ConfigError) as info:
        fieldlab.Lab.from_file(cfg, reload_interval=0)
    assert str(info.value).startswith(f"{cfg}: experiments[0].variants[1].faults[0].rate: (variant 'slow') rate 500")


def test_inject_validates_its_fault_at_decoration() -> None:
    with pytest.raises(ConfigError, match="negative"):
        fieldlab.inject(experiment="slow-db", variant="slow", latency_ms=-1)
    with pytest.raises(ConfigError, match="aborts"):
        fieldlab.inject(experiment="slow-db", variant="slow", status=503)
    with pytest.raises(ConfigError):
        fieldlab.fault_point("http")
