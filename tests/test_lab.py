"""Evaluation order, reasons, targeting, overrides and fail-safety of Lab.assign."""

from __future__ import annotations

import logging

import pytest

from fieldlab import BUCKETS, Experiment, Holdout, Lab, Layer, bucket, make_token, verify_token
from fieldlab.overrides import VerifiedOverrides

SECRET = "s3cret-for-tests"


def find_unit(pred, prefix="u"):
    for i in range(100_000):
        u = f"{prefix}{i}"
        if pred(u):
            return u
    raise AssertionError("no unit found")


def test_reasons_in_evaluation_order():
    exp = Experiment(
        "e",
        {"control": 1, "treatment": 1},
        traffic=50,
        layer="l",
        layer_range=[0, 50],
        targeting={"attr": "country", "op": "eq", "value": "DE"},
    )
    lab = Lab([exp], layers=[Layer("l")], holdouts=[Holdout("h", 10, ["e"])], secret=SECRET)
    de = {"country": "DE"}
    held = find_unit(lambda u: bucket("h", u) < 1000)
    assert lab.assign("e", held, de).reason == "holdout"
    free = lambda u: bucket("h", u) >= 1000  # noqa: E731
    u = find_unit(lambda u: free(u) and bucket("l", u) < 5000 and bucket("e", u) < 2500)
    assert lab.assign("e", u, {"country": "FR"}).reason == "targeting"
    assert lab.assign("e", u, de).reason == "split"
    assert lab.assign("e", u, de).variant == "control"
    other = find_unit(lambda u: free(u) and bucket("l", u) >= 5000)
    assert lab.assign("e", other, de).reason == "layer"
    out = find_unit(lambda u: free(u) and bucket("l", u) < 5000 and 2500 <= bucket("e", u) < 5000)
    a = lab.assign("e", out, de)
    assert (a.reason, a.variant, a.bucket) == ("traffic", None, bucket("e", out))
    assert lab.assign("e", None, de).reason == "no_unit"
    assert lab.assign("e", "", de).reason == "no_unit"
    token = make_token(SECRET, "e", "treatment", 60)
    forced = lab.assign("e", held, de, overrides=[token])
    assert (forced.variant, forced.reason, forced.forced) == ("treatment", "override", True)


def test_status_paused_draft_concluded():
    lab = Lab(
        [
            Experiment("p", {"a": 1, "b": 1}, status="paused"),
            Experiment("d", {"a": 1, "b": 1}, status="draft"),
            Experiment("c", {"a": 1, "b": 1}, status="concluded", winner="b"),
        ],
        secret=SECRET,
    )
    assert lab.assign("p", "alice").reason == "paused"
    assert lab.assign("p", "alice", overrides=[make_token(SECRET, "p", "b", 60)]).reason == "paused"
    assert lab.assign("d", "alice").reason == "paused"
    assert lab.assign("d", "alice", overrides=[make_token(SECRET, "d", "b", 60)]).variant == "b"
    c = lab.assign("c", "alice")
    assert (c.variant, c.reason, c.in_experiment) == ("b", "concluded", False)
    assert lab.assign("c", None).variant == "b"


def test_params_and_int_units():
    lab = Lab(
        [
            Experiment(
                "search", {"control": 1, "big": 1}, params={"control": {"page_size": 10}, "big": {"page_size": 20}}
            )
        ]
    )
    for unit in (42, "42"):
        a = lab.assign("search", unit)
        assert a.bucket == bucket("search", "42")
        assert a.params["page_size"] == (10 if a.variant == "control" else 20)
        assert a.param("missing", "d") == "d"
    with pytest.raises(TypeError):
        a.params["page_size"] = 1  # read-only


@pytest.mark.parametrize(
    "rule,attrs,expected",
    [
        ({"attr": "country", "op": "in", "value": ["DE", "FR"]}, {"country": "FR"}, True),
        ({"attr": "country", "op": "not_in", "value": ["DE", "FR"]}, {"country": "FR"}, False),
        ({"attr": "country", "op": "ne", "value": "DE"}, {}, False),
        ({"attr": "age", "op": "gte", "value": 18}, {"age": "21"}, True),
        ({"attr": "age", "op": "lt", "value": 18}, {"age": "abc"}, False),
        ({"attr": "plan", "op": "eq", "value": "pro"}, {"plan": "pro"}, True),
        ({"attr": "id", "op": "eq", "value": "7"}, {"id": 7}, True),
        ({"attr": "v", "op": "semver_gte", "value": "2.3.0"}, {"v": "2.10.0"}, True),
        ({"attr": "v", "op": "semver_gte", "value": "2.3.0"}, {"v": "2.3.0-rc.1"}, False),
        ({"attr": "v", "op": "semver_lt", "value": "2.3.0"}, {"v": "2.3.0-rc.1"}, True),
        ({"attr": "v", "op": "semver_eq", "value": "2.3"}, {"v": "2.3.0"}, True),
        ({"attr": "beta", "op": "exists"}, {"beta": False}, True),
        ({"attr": "beta", "op": "not_exists"}, {"beta": False}, False),
        ({"attr": "path", "op": "regex", "value": "^/shop/"}, {"path": "/shop/cart"}, True),
        ({"attr": "tags", "op": "contains", "value": "vip"}, {"tags": ["vip", "x"]}, True),
        (
            {"all": [{"attr": "a", "op": "eq", "value": 1}, {"attr": "b", "op": "eq", "value": 2}]},
            {"a": 1, "b": 2},
            True,
        ),
        ({"all": [{"attr": "a", "op": "eq", "value": 1}, {"attr": "b", "op": "eq", "value": 2}]}, {"a": 1}, False),
        ({"any": [{"attr": "a", "op": "eq", "value": 1}, {"attr": "b", "op": "eq", "value": 2}]}, {"b": 2}, True),
        ({"not": {"attr": "a", "op": "eq", "value": 1}}, {"a": 2}, True),
    ],
)
def test_targeting_operators(rule, attrs, expected):
    lab = Lab([Experiment("t", {"only": 1}, targeting=rule)])
    assert (lab.assign("t", "alice", attrs).reason == "split") is expected


def test_override_tokens_cannot_be_forged():
    lab = Lab([Experiment("e", {"control": 1, "treatment": 1})], secret=SECRET)
    u = find_unit(lambda u: lab.assign("e", u).variant == "control")
    good = make_token(SECRET, "e", "treatment", 60)
    assert verify_token(SECRET, good) == ("e", "treatment")
    forged_secret = make_token("guess", "e", "treatment", 60)
    expired = make_token(SECRET, "e", "treatment", 60, now=0)
    head, payload, sig = good.split(".")
    import base64
    import json

    tampered_payload = (
        base64.urlsafe_b64encode(json.dumps({"e": "e", "v": "treatment", "x": 2**40}).encode()).rstrip(b"=").decode()
    )
    for bad in (forged_secret, expired, f"{head}.{tampered_payload}.{sig}", "treatment", "", "fl1..", "x" * 5000):
        assert lab.assign("e", u, overrides=[bad]).variant == "control", bad
    assert lab.stats["overrides_rejected"] == 7
    assert lab.assign("e", u, overrides=[good]).variant == "treatment"
    # an override for a variant that does not exist is ignored
    assert lab.assign("e", u, overrides=[make_token(SECRET, "e", "nope", 60)]).variant == "control"


def test_without_secret_overrides_are_off(monkeypatch):
    monkeypatch.delenv("FIELDLAB_SECRET", raising=False)
    lab = Lab([Experiment("e", {"control": 1, "treatment": 1})])
    u = find_unit(lambda u: lab.assign("e", u).variant == "control")
    assert lab.assign("e", u, overrides=[make_token(SECRET, "e", "treatment", 60)]).variant == "control"
    monkeypatch.setenv("FIELDLAB_SECRET", SECRET)
    assert lab.assign("e", u, overrides=[make_token(SECRET, "e", "treatment", 60)]).variant == "treatment"


def test_verified_overrides_only_from_tokens():
    v = VerifiedOverrides.from_tokens(SECRET, [make_token(SECRET, "e", "b", 60), "junk"])
    assert dict(v) == {"e": "b"} and v.rejected == 1


def test_internal_error_is_reason_error_and_never_raises(caplog):
    lab = Lab(
        [Experiment("e", {"a": 1, "b": 1}, targeting={"attr": "x", "op": "eq", "value": 1}), Experiment("f", {"a": 1})]
    )

    class Exploding(dict):
        def get(self, *a):
            raise RuntimeError("boom")

    with caplog.at_level(logging.WARNING, logger="fieldlab"):
        a = lab.assign("e", "alice", Exploding(x=1))
        assert (a.variant, a.reason) == (None, "error")
        lab._state.compiled["f"].ranges = None  # corrupt the compiled form to force a failure
        b = lab.assign("f", "alice")
        assert (b.variant, b.reason) == (None, "error")
        assert lab.assign("unknown-key", "alice").reason == "error"
    assert lab.stats["errors"] == 3
    assert "unknown experiment 'unknown-key'" in caplog.text
    all_ = lab.assign_all({"user": "bob"})
    assert all_["f"].reason == "error" and all_["e"].reason == "targeting"


def test_assign_all_uses_each_experiments_unit_kind():
    lab = Lab(
        [
            Experiment("by-user", {"a": 1, "b": 1}),
            Experiment("by-visitor", {"a": 1, "b": 1}, unit="visitor"),
            Experiment("by-request", {"a": 1, "b": 1}, unit="request"),
        ]
    )
    out = lab.assign_all({"user": "alice", "visitor": "v-1"})
    assert out["by-user"].bucket == bucket("by-user", "alice")
    assert out["by-visitor"].bucket == bucket("by-visitor", "v-1")
    assert out["by-request"].reason == "no_unit"


def test_assign_all_matches_assign_for_every_path():
    lab = Lab.from_file("examples/lab.toml", reload_interval=0, secret=SECRET)
    token = make_token(SECRET, "checkout-redesign", "treatment", 60)
    attrs = {"country": "DE", "app_version": "2.4.0"}
    reasons = set()
    for i in range(3000):
        units = {"user": f"user-{i}", "visitor": f"v-{i}"}
        tokens = [token] if i % 7 == 0 else None
        all_ = lab.assign_all(units, attrs, overrides=tokens)
        for key, a in all_.items():
            kind = lab.experiments[key].unit
            assert a == lab.assign(key, units[kind], attrs, overrides=tokens), (key, units)
            reasons.add(a.reason)
    assert reasons >= {"split", "holdout", "layer", "traffic", "override", "concluded"}


def test_memory_per_running_experiment_is_bounded_whatever_the_units_seen():
    """A 10,000-slot outcome table per experiment held 1.19 MB once warm; the bound is 64 KB per experiment."""
    import gc
    import tracemalloc

    import mmh3

    experiments = [Experiment(f"exp-{i}", {"control": 1, "a": 1, "b": 1}, traffic=80) for i in range(10)]
    units_by_key: dict[str, list[str]] = {}
    for e in experiments:  # one unit in each of the 10,000 buckets of each experiment
        found: dict[int, str] = {}
        i = 0
        while len(found) < BUCKETS:
            unit = f"u{i}"
            found.setdefault(mmh3.hash(f"{e.salt}:{unit}", 0, False) % BUCKETS, unit)
            i += 1
        units_by_key[e.key] = list(found.values())
    gc.collect()
    tracemalloc.start()
    try:
        lab = Lab(experiments)
        for key, units in units_by_key.items():
            for unit in units:
                lab.assign(key, unit)
        for unit in units_by_key["exp-0"]:
            lab.assign_all({"user": unit})
        gc.collect()
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lab.experiments  # the lab is alive while measured
    assert held / len(experiments) <= 64 * 1024, f"{held / len(experiments) / 1024:.0f} KB per experiment"


def test_split_outcomes_made_per_evaluation_are_plain_immutable_assignments():
    from fieldlab import Assignment

    lab = Lab([Experiment("e", {"a": 1, "b": 1}, traffic=50)])
    seen = set()
    for i in range(200):
        got = lab.assign("e", f"u{i}")
        assert type(got) is Assignment
        b = bucket("e", f"u{i}")
        assert got.bucket == b
        expected = Assignment(
            "e",
            got.variant,
            b,
            "split" if got.variant else "traffic",
            lab.experiments["e"].variant(got.variant).params if got.variant else None,
        )
        assert got == expected and got.in_experiment == (got.variant is not None) and got.params == expected.params
        with pytest.raises(AttributeError):
            got.variant = "b"
        seen.add(got.reason)
    assert seen == {"split", "traffic"}


def test_make_token_errors_name_the_parameter_not_a_cli_flag():
    import fieldlab

    lab = Lab([Experiment("e", {"a": 1, "b": 1})], secret=SECRET)
    with pytest.raises(fieldlab.ConfigError) as info:
        lab.make_token("nope", "a", 60)
    assert info.value.path == "experiment" and "--" not in str(info.value)
    with pytest.raises(fieldlab.ConfigError) as info:
        lab.make_token("e", "c", 60)
    assert info.value.path == "variant" and "use one of ['a', 'b']" in str(info.value)
