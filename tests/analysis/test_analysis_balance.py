"""``fieldlab balance``: a salt that splits heavy users unevenly is caught before launch."""

from __future__ import annotations

import random

import pytest

from analysis_helpers import write_otlp
from fieldlab import attributes as A
from fieldlab.analysis.balance import _check, _collect, balance
from fieldlab.analysis.core import load_config
from fieldlab.analysis.sources import FileSource
from fieldlab.cli import main

CONFIG = """
[lab]
reload_interval = 0

[[experiments]]
key = "newexp"
status = "draft"
salt = "{salt}"
variants = ["control", "treatment"]
"""


@pytest.fixture(scope="module")
def preperiod(tmp_path_factory):
    """Pre-period traffic with raw user ids: most users make a few requests, 1 % make 150 each."""
    rnd = random.Random(1)
    reqs = []
    for u in range(2000):
        n = 150 if u % 100 == 0 else rnd.randint(1, 3)
        for _ in range(n):
            reqs.append(dict(attrs={A.unit_attr("user"): f"user-{u}", A.HTTP_STATUS_CODE: 200}, dur_ms=rnd.uniform(5, 30)))
    path = str(tmp_path_factory.mktemp("pre") / "pre.jsonl")
    return write_otlp(path, reqs, child_spans=False, batch=512)


def _config(tmp_path, salt):
    p = tmp_path / "lab.toml"
    p.write_text(CONFIG.format(salt=salt))
    return str(p)


def _find_bad_salt(preperiod, tmp_path):
    lab = load_config(_config(tmp_path, "x"))
    ids, mat = _collect(FileSource(preperiod, engine="python"), "user", ())
    assert len(ids) == 2000
    for i in range(400):
        if not _check(lab, "newexp", f"s{i}", ids, mat, (), 0.05)["balanced"]:
            return f"s{i}"
    pytest.fail("no unbalanced salt among 400: the check cannot detect heavy-user imbalance")


def test_unbalanced_salt_is_caught_and_a_better_one_suggested(preperiod, tmp_path, capsys):
    bad = _find_bad_salt(preperiod, tmp_path)
    cfg = _config(tmp_path, bad)
    assert main(["balance", cfg, "newexp", preperiod]) == 1
    out = capsys.readouterr().out
    assert "IMBALANCED" in out and "requests_per_unit" in out
    res = balance(cfg, "newexp", preperiod)
    suggested = res["suggested_salt"]
    assert suggested and suggested != bad
    # the suggestion passes the same check, on its own, through the CLI
    assert main(["balance", cfg, "newexp", preperiod, "--salt", suggested]) == 0
    assert "BALANCED" in capsys.readouterr().out


def test_most_salts_are_balanced(preperiod, tmp_path):
    lab = load_config(_config(tmp_path, "x"))
    ids, mat = _collect(FileSource(preperiod, engine="python"), "user", ())
    ok = sum(_check(lab, "newexp", f"t{i}", ids, mat, (), 0.05)["balanced"] for i in range(60))
    assert ok >= 50  # Holm at 5 %: a false alarm rate near 5 %, never most salts


def test_hashed_ids_cannot_be_rebucketed(tmp_path, capsys):
    path = write_otlp(str(tmp_path / "h.jsonl"),
                      [dict(attrs={A.unit_attr("user"): "h1:00112233445566ff"}, dur_ms=3.0)], child_spans=False)
    assert main(["balance", _config(tmp_path, "a"), "newexp", path]) == 2
    err = capsys.readouterr().err
    assert "hashed unit ids" in err and "raw" in err and "\n" not in err.strip()


def test_unknown_experiment(preperiod, tmp_path, capsys):
    assert main(["balance", _config(tmp_path, "a"), "nope", preperiod]) == 2
    assert "not in the config" in capsys.readouterr().err
