"""[[canaries]] in a lab config: parsed with the Lab, errors naming the field, traffic inside the blast-radius cap."""

from __future__ import annotations

from typing import Any

import pytest

from fieldlab.errors import ConfigError
from fieldlab.lab import Lab


def doc(**canary: Any) -> dict[str, Any]:
    table = {
        "key": "inventory-latency",
        "point": "inventory.reserve",
        "traffic": 2,
        "doses": {"latency_ms": [25, 50, 100]},
        "steady_state": {"error_slo": 99.5, "latency_slo": {"ms": 1000, "percent": 99}, "metrics": []},
    }
    table.update(canary)
    return {
        "faults": {"enabled": True, "max_blast_radius": 10},
        "experiments": [
            {
                "key": "slow-db",
                "traffic": 10,
                "variants": [{"name": "control"}, {"name": "slow", "faults": [{"point": "db", "latency_ms": 5}]}],
            }
        ],
        "canaries": [{k: v for k, v in table.items() if v is not None}],
    }


def error_of(d: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        Lab.from_dict(d)
    return info.value


def test_canary_table_is_parsed_with_the_lab() -> None:
    lab = Lab.from_dict(doc(doses={"start": 25, "factor": 2, "max": 1600}))
    (c,) = lab._state.canaries
    assert (c.key, c.point, c.unit, c.traffic) == ("inventory-latency", "inventory.reserve", "request", 2.0)
    assert c.spec.doses == (25, 50, 100, 200, 400, 800, 1600)
    assert c.spec.steady.latency_ms == 1000 and c.spec.steady.error_slo == 99.5


def test_canary_changes_the_config_version() -> None:
    a = Lab.from_dict(doc())._state.version
    b = Lab.from_dict(doc(traffic=3))._state.version
    assert a != b


@pytest.mark.parametrize(
    "change, path, words",
    [
        ({"point": None}, "canaries[0].point", "is missing"),
        ({"point": "bad point!"}, "canaries[0].point", "not a fault point"),
        ({"traffic": 0}, "canaries[0].traffic", "percentage"),
        ({"traffic": True}, "canaries[0].traffic", "percentage"),
        ({"unit": "User Id"}, "canaries[0].unit", "unit kind"),
        ({"doses": {"latency_ms": [50, 25]}}, "canaries[0].doses.latency_ms", "strictly increasing"),
        ({"doses": {"start": 25, "factor": 1, "max": 100}}, "canaries[0].doses.factor", "above 1"),
        ({"steady_state": {"error_slo": 100}}, "canaries[0].steady_state.error_slo", "between 0 and 100"),
        ({"key": "Bad Key"}, "canaries[0].key", "canary key"),
        ({"key": "slow-db"}, "canaries[0].key", "experiment's key"),
        ({"trafic": 2}, "canaries[0].trafic", "did you mean 'traffic'"),
    ],
)
def test_canary_config_error_names_the_field(change: dict[str, Any], path: str, words: str) -> None:
    err = error_of(doc(**change))
    assert err.path == path and words in str(err), str(err)


def test_canary_traffic_counts_in_the_blast_radius_cap() -> None:
    # the fault variant reaches 5 % (10 % traffic x half), the cap is 5 %: no room for a 2 % canary
    d = doc()
    d["faults"]["max_blast_radius"] = 6
    err = error_of(d)
    assert err.path == "faults.max_blast_radius" and "canary inventory-latency 2%" in str(err)
    d["faults"]["max_blast_radius"] = 7
    assert Lab.from_dict(d)._state.canaries


def test_duplicate_canary_keys_are_refused() -> None:
    d = doc()
    d["canaries"].append(dict(d["canaries"][0], traffic=0.5))
    d["faults"]["max_blast_radius"] = 10
    err = error_of(d)
    assert err.path == "canaries[1].key" and "canaries[0]" in str(err)
