"""The [guardrails] and [experiments.guardrails] tables: pinned syntax, defaults, and errors that name the field."""

from __future__ import annotations

import math

import pytest

from fieldlab.control.settings import (
    DEFAULT_WINDOWS,
    LatencySLO,
    WindowPair,
    format_duration,
    parse_duration,
    parse_experiment_guardrails,
    parse_guardrails_config,
    parse_lab_guardrails,
)
from fieldlab.errors import ConfigError

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - 3.10
    import tomli as tomllib  # type: ignore[no-redef]

PINNED = """
[guardrails]
service_slo = 99.9
budget_period = "30d"
experiment_share = 25
windows = [
  { long = "1h", short = "5m", burn_rate = 14.4 },
  { long = "6h", short = "30m", burn_rate = 6 },
]

[[experiments]]
key = "checkout-redesign"
variants = [{ name = "control" }, { name = "one-page" }]
[experiments.guardrails]
error_slo = 99.5
latency_slo = { ms = 800, percent = 99 }
metrics = [{ name = "app.checkout.completed", kind = "conversion", margin = -2.0 }]
action = "pause"
"""


def test_the_pinned_syntax_parses() -> None:
    cfg = parse_guardrails_config(tomllib.loads(PINNED))
    assert cfg.lab.service_slo == 99.9
    assert cfg.lab.budget_period == 30 * 86400
    assert cfg.lab.experiment_share == 25
    assert cfg.lab.windows == (WindowPair(3600, 300, 14.4), WindowPair(21600, 1800, 6.0))
    g = cfg.experiments["checkout-redesign"]
    assert g.error_slo == 99.5
    assert g.latency_slo == LatencySLO(800.0, 99.0)
    (m,) = g.metrics
    assert (m.name, m.kind, m.margin, m.higher_is_better, m.value) == (
        "app.checkout.completed",
        "conversion",
        -2.0,
        True,
        "true",
    )
    assert g.action == "pause"
    assert g.min_units == cfg.lab.min_units


def test_defaults_when_tables_are_absent() -> None:
    cfg = parse_guardrails_config({"experiments": [{"key": "a", "variants": []}]})
    assert cfg.lab.windows == DEFAULT_WINDOWS
    assert cfg.lab.service_slo == 99.9 and cfg.lab.experiment_share == 25
    assert cfg.experiments["a"].error_slo == 99.9  # the service SLO guards an experiment without a table
    assert cfg.experiments["a"].action == "pause"


@pytest.mark.parametrize(
    "text,seconds",
    [("30d", 2592000), ("6h", 21600), ("5m", 300), ("90s", 90), ("1h30m", 5400), ("1w", 604800), ("0.5h", 1800)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, "x") == seconds


def test_format_duration_round_trips() -> None:
    for s in (300, 1800, 3600, 5400, 21600, 2592000, 45):
        assert parse_duration(format_duration(s), "x") == s


def _err(fn, *args, **kw) -> ConfigError:
    with pytest.raises(ConfigError) as exc:
        fn(*args, **kw)
    return exc.value


@pytest.mark.parametrize("bad", ["30", "30 days", "", "5x", "-5m", 30, "0m"])
def test_bad_duration_names_the_field(bad: object) -> None:
    e = _err(parse_lab_guardrails, {"budget_period": bad})
    assert e.path == "guardrails.budget_period"


def test_short_not_shorter_than_long_names_the_pair() -> None:
    e = _err(
        parse_lab_guardrails,
        {
            "windows": [
                {"long": "1h", "short": "5m", "burn_rate": 14.4},
                {"long": "30m", "short": "30m", "burn_rate": 6},
            ]
        },
    )
    assert e.path == "guardrails.windows[1].short"
    assert "not shorter" in e.problem


def test_unknown_keys_name_the_closest_valid_one() -> None:
    e = _err(parse_lab_guardrails, {"servce_slo": 99.9})
    assert e.path == "guardrails.servce_slo" and "'service_slo'" in e.fix
    e = _err(parse_lab_guardrails, {"windows": [{"long": "1h", "shrt": "5m", "burn_rate": 2}]})
    assert e.path == "guardrails.windows[0].shrt" and "'short'" in e.fix
    e = _err(parse_experiment_guardrails, {"latency_slo": {"ms": 5, "precent": 99}}, "experiments[2].guardrails")
    assert e.path == "experiments[2].guardrails.latency_slo.precent" and "'percent'" in e.fix
    e = _err(parse_experiment_guardrails, {"metrics": [{"name": "a", "margn": -1}]}, "experiments[0].guardrails")
    assert e.path == "experiments[0].guardrails.metrics[0].margn" and "'margin'" in e.fix


@pytest.mark.parametrize("slo", [0, 100, 100.5, -1, math.inf, math.nan, "99.9", True])
def test_impossible_slos(slo: object) -> None:
    assert _err(parse_lab_guardrails, {"service_slo": slo}).path == "guardrails.service_slo"
    e = _err(parse_experiment_guardrails, {"error_slo": slo}, "experiments[3].guardrails")
    assert e.path == "experiments[3].guardrails.error_slo"
    e = _err(parse_experiment_guardrails, {"latency_slo": {"ms": 800, "percent": slo}}, "experiments[3].guardrails")
    assert e.path == "experiments[3].guardrails.latency_slo.percent"


def test_a_burn_rate_the_slo_can_never_reach_is_refused() -> None:
    # 14.4 x a 10 % budget = 144 % bad requests: the pair could never fire
    e = _err(parse_lab_guardrails, {"service_slo": 90})
    assert e.path == "guardrails.service_slo" and "never" in e.problem
    e = _err(parse_experiment_guardrails, {"error_slo": 92}, "experiments[0].guardrails")
    assert e.path == "experiments[0].guardrails.error_slo"


def test_other_field_errors() -> None:
    assert _err(parse_lab_guardrails, {"experiment_share": 0}).path == "guardrails.experiment_share"
    assert _err(parse_lab_guardrails, {"experiment_share": 101}).path == "guardrails.experiment_share"
    assert _err(parse_lab_guardrails, {"windows": []}).path == "guardrails.windows"
    assert (
        _err(parse_lab_guardrails, {"windows": [{"long": "1h", "short": "5m", "burn_rate": 0}]}).path
        == "guardrails.windows[0].burn_rate"
    )
    assert (
        _err(parse_lab_guardrails, {"windows": [{"long": "1h", "short": "5m"}]}).path
        == "guardrails.windows[0].burn_rate"
    )
    assert (
        _err(
            parse_lab_guardrails, {"budget_period": "1h", "windows": [{"long": "6h", "short": "30m", "burn_rate": 2}]}
        ).path
        == "guardrails.windows[0].long"
    )
    assert _err(parse_lab_guardrails, {"min_units": 1}).path == "guardrails.min_units"
    assert _err(parse_lab_guardrails, {"alpha": 0.7}).path == "guardrails.alpha"
    p = "experiments[0].guardrails"
    assert _err(parse_experiment_guardrails, {"action": "stop"}, p).path == p + ".action"
    e = _err(parse_experiment_guardrails, {"latency_slo": {"ms": -1, "percent": 99}}, p)
    assert e.path == p + ".latency_slo.ms"
    assert _err(
        parse_experiment_guardrails, {"metrics": [{"name": "a", "kind": "conversoin", "margin": -1}]}, p
    ).fix.startswith("did you mean 'conversion'")
    assert (
        _err(parse_experiment_guardrails, {"metrics": [{"name": "a", "margin": 0}]}, p).path
        == p + ".metrics[0].direction"
    )
    assert (
        _err(parse_experiment_guardrails, {"metrics": [{"name": "a", "margin": 2, "direction": "higher"}]}, p).path
        == p + ".metrics[0].margin"
    )
    assert (
        _err(
            parse_experiment_guardrails, {"metrics": [{"name": "a", "margin": -1}, {"name": "a", "margin": -1}]}, p
        ).path
        == p + ".metrics[1].name"
    )
    assert _err(parse_experiment_guardrails, "pause", p).path == p


def test_metric_directions_and_overrides() -> None:
    g = parse_experiment_guardrails(
        {
            "metrics": [
                {"name": "app.queue.ms", "kind": "numeric", "margin": 5},
                {"name": "app.ok", "margin": 0, "direction": "higher", "value": True},
            ],
            "min_units": 500,
            "action": "alert",
        },
        "e",
        parse_lab_guardrails({"service_slo": 99}),
    )
    assert [m.higher_is_better for m in g.metrics] == [False, True]
    assert g.metrics[1].value == "true"
    assert g.error_slo == 99.0 and g.min_units == 500 and g.action == "alert"


def test_error_message_names_field_problem_and_fix() -> None:
    e = _err(parse_lab_guardrails, {"windows": [{"long": "5m", "short": "1h", "burn_rate": 2}]})
    assert str(e).startswith("guardrails.windows[0].short: ")
    assert "; " in str(e)
