"""Hardening of configuration input: numbers that would switch a brake off, absurd sizes, catastrophic regexes.

Each test names the defect it pins (issue 10, section 2).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from fieldlab import ConfigError, Experiment, Lab
from fieldlab import config as config_mod
from fieldlab.targeting import compile_condition

BASE = """
[lab]
reload_interval = {interval}

[[experiments]]
key = "checkout-redesign"
variants = [{{ name = "control", weight = 1 }}, {{ name = "treatment", weight = 1 }}]
"""


def write(tmp_path: Path, text: str, name: str = "lab.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, "utf-8")
    return path


# ------------------------------------------------------------- numeric settings


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e308", "-1", "0.001", "3601"])
def test_reload_interval_nan_inf_huge_or_negative_is_refused_not_accepted(tmp_path: Path, value: str) -> None:
    """`reload_interval = nan/inf/1e308/-1` validated, then stopped the watcher (OverflowError) and the kill switch."""
    path = write(tmp_path, BASE.format(interval=value))
    with pytest.raises(ConfigError, match=r"lab\.reload_interval: reload_interval .*; set reload_interval to 0"):
        Lab.from_file(path)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e308, -1.0])
def test_reload_interval_argument_is_validated_like_the_setting(tmp_path: Path, value: float) -> None:
    path = write(tmp_path, BASE.format(interval=5))
    with pytest.raises(ConfigError, match="reload_interval"):
        Lab.from_file(path, reload_interval=value)


def test_valid_reload_intervals_still_load(tmp_path: Path) -> None:
    for value in ("0", "0.05", "5", "3600"):
        lab = Lab.from_file(write(tmp_path, BASE.format(interval=value)))
        assert lab.reload_interval == float(value)
        lab.close()


NUMERIC_FIELDS = [
    ("traffic", '[[experiments]]\nkey = "a"\ntraffic = {v}\nvariants = [{{name = "x"}}]\n', "experiments[0].traffic"),
    (
        "weight",
        '[[experiments]]\nkey = "a"\nvariants = [{{name = "x", weight = {v}}}]\n',
        "experiments[0].variants[0].weight",
    ),
    (
        "layer_range",
        '[[layers]]\nkey = "l"\n[[experiments]]\nkey = "a"\nlayer = "l"\nlayer_range = [0, {v}]\n'
        'variants = [{{name = "x"}}]\n',
        "experiments[0].layer_range[1]",
    ),
    (
        "holdout percent",
        '[[experiments]]\nkey = "a"\nvariants = [{{name = "x"}}]\n[[holdouts]]\nkey = "h"\n'
        'percent = {v}\nexperiments = ["a"]\n',
        "holdouts[0].percent",
    ),
    ("max_blast_radius", "[faults]\nmax_blast_radius = {v}\n", "faults.max_blast_radius"),
    ("max_active", "[faults]\nmax_active = {v}\n", "faults.max_active"),
    (
        "fault rate",
        '[[experiments]]\nkey = "a"\nvariants = [{{name = "x", faults = [{{point = "p", latency_ms = 1, '
        "rate = {v}}}]}}]\n",
        "faults[0].rate",
    ),
    (
        "latency_ms",
        '[[experiments]]\nkey = "a"\nvariants = [{{name = "x", faults = [{{point = "p", latency_ms = {v}}}]}}]\n',
        "faults[0].latency_ms",
    ),
    (
        "jitter_ms",
        '[[experiments]]\nkey = "a"\nvariants = [{{name = "x", faults = [{{point = "p", latency_ms = 1, '
        "jitter_ms = {v}}}]}}]\n",
        "faults[0].jitter_ms",
    ),
]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e308", "-1"])
@pytest.mark.parametrize("name,template,field", NUMERIC_FIELDS, ids=[f[0] for f in NUMERIC_FIELDS])
def test_every_numeric_setting_refuses_non_finite_and_out_of_range(
    tmp_path: Path, name: str, template: str, field: str, value: str
) -> None:
    path = write(tmp_path, template.format(v=value))
    with pytest.raises(ConfigError) as info:
        Lab.from_file(path, reload_interval=0)
    assert field in str(info.value), str(info.value)


# ------------------------------------------------------------------- size limits


def _variants_toml(n: int) -> str:
    rows = ",\n".join(f'  {{ name = "v{i}" }}' for i in range(n))
    return f'[[experiments]]\nkey = "many"\nvariants = [\n{rows}\n]\n'


def test_forty_thousand_variants_are_refused_quickly_not_loaded_in_quadratic_time(tmp_path: Path) -> None:
    """40,000 variants took 144 s (quadratic in _fault_kinds.variant_share -> Experiment.ranges)."""
    path = write(tmp_path, _variants_toml(40_000))
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"40,000 variants, above the limit of 1,000 per experiment"):
        Lab.from_file(path, reload_interval=0)
    assert time.perf_counter() - t0 < 30  # coarse: the failure mode took minutes


def test_variant_shares_are_linear_in_the_number_of_variants() -> None:
    """The quadratic path itself: the blast radius of 1,000 fault variants is computed once per experiment."""
    from fieldlab import _fault_kinds

    exp = Experiment(
        "many",
        [(f"v{i}", 1) for i in range(1000)],
        faults={f"v{i}": [{"point": "p", "latency_ms": 1}] for i in range(1000)},
    )
    calls = 0
    real = Experiment.ranges

    def counting(self: Experiment) -> dict[str, tuple[int, int]]:
        nonlocal calls
        calls += 1
        return real(self)

    Experiment.ranges = counting  # type: ignore[method-assign]
    try:
        lab = Lab([exp], faults={"enabled": True, "max_blast_radius": 100})
    finally:
        Experiment.ranges = real  # type: ignore[method-assign]
    assert calls <= 1, f"Experiment.ranges rebuilt {calls} times for one experiment"
    radius = _fault_kinds.blast_radius([exp])
    assert len(radius) == 1000 and abs(sum(radius.values()) - 1.0) < 1e-9
    assert abs(lab._state.fault_plan.total_radius - 1.0) < 1e-9


def test_too_many_experiments_is_a_config_error_naming_the_limit(tmp_path: Path) -> None:
    """200,000 experiments ran past 60 s and 7.5 GB; the limit refuses them before any is built."""
    n = config_mod.MAX_EXPERIMENTS + 1
    text = "".join(f'[[experiments]]\nkey = "e{i}"\nvariants = [{{name = "x"}}]\n' for i in range(n))
    path = write(tmp_path, text)
    with pytest.raises(
        ConfigError,
        match=rf"experiments: {n:,} experiments, above the limit of "
        rf"{config_mod.MAX_EXPERIMENTS:,} per config",
    ):
        Lab.from_file(path, reload_interval=0)


def test_a_file_over_the_size_limit_is_a_config_error_naming_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(BASE.format(interval=0))
        fh.write("# padding\n" * (config_mod.MAX_CONFIG_BYTES // 10 + 1))
    assert os.path.getsize(path) > config_mod.MAX_CONFIG_BYTES
    with pytest.raises(ConfigError, match=r"lab\.toml: \(file\): larger than the limit of 8 MiB per config file"):
        Lab.from_file(path)


def test_reloading_an_absurd_file_keeps_the_last_good_config(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.format(interval=0))
    lab = Lab.from_file(path)
    version = lab.version
    tmp = tmp_path / "next.toml"
    n = config_mod.MAX_EXPERIMENTS * 3
    tmp.write_text("".join(f'[[experiments]]\nkey = "e{i}"\nvariants = [{{name = "x"}}]\n' for i in range(n)))
    os.replace(tmp, path)
    assert lab.reload() is False
    assert lab.version == version and list(lab.experiments) == ["checkout-redesign"]
    assert "above the limit" in (lab.config_error or "")
    assert lab.assign("checkout-redesign", "alice").variant is not None


# -------------------------------------------------------------------------- regex


def test_catastrophic_regex_matches_in_linear_time() -> None:
    """`^/(a+)+$` validated and a 26-character path took 2.9 s on the request path (backtracking)."""
    pred = compile_condition({"attr": "path", "op": "regex", "value": "^/(a+)+$"})
    for n in (26, 10_000):  # shortest first: a backtracking engine fails the bound at 26 and never ends at 10 KB
        t0 = time.perf_counter()
        assert pred({"path": "/" + "a" * n + "!"}) is False
        # Coarse on purpose: backtracking takes seconds at 26 characters and ages at 10 KB.
        assert time.perf_counter() - t0 < 0.5, f"{n + 2}-character path took {time.perf_counter() - t0:.2f} s"
    assert pred({"path": "/aaaa"}) is True


def test_long_subject_is_never_cut_short_into_a_false_match() -> None:
    pred = compile_condition({"attr": "path", "op": "regex", "value": "^/(a+)+$"})
    assert pred({"path": "/" + "a" * 5000 + "!"}) is False  # cutting at 1024 characters made this match


@pytest.mark.parametrize("pattern", [r"^/(a)\1$", r"^/(?=shop)", r"(?<!x)y"])
def test_regex_features_that_need_backtracking_are_refused_at_load(tmp_path: Path, pattern: str) -> None:
    text = (
        '[[experiments]]\nkey = "a"\nvariants = [{name = "x"}]\n'
        f'targeting = {{attr = "path", op = "regex", value = \'{pattern}\'}}\n'
    )
    with pytest.raises(ConfigError, match=r"experiments\[0\]\.targeting\.value: regex does not compile as RE2"):
        Lab.from_file(write(tmp_path, text), reload_interval=0)
