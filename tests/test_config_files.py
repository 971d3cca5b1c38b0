"""Configuration: formats, versions, every validation rule, and hot reload."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from fieldlab import ConfigError, Experiment, Holdout, Lab, Layer

EXAMPLE = Path(__file__).parent.parent / "examples" / "lab.toml"

BASE = """
[[experiments]]
key = "checkout-redesign"
variants = [{ name = "control", weight = 1 }, { name = "treatment", weight = 1 }]
"""


def write(tmp_path: Path, text: str, name: str = "lab.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, "utf-8")
    return path


def test_example_config_loads():
    lab = Lab.from_file(EXAMPLE, reload_interval=0)
    assert list(lab.experiments) == [
        "checkout-redesign",
        "free-shipping-banner",
        "search-ranking",
        "recommendations-v2",
    ]
    assert lab.experiments["search-ranking"].variant("bm25").params["page_size"] == 20
    assert lab.layers["checkout"].salt == "checkout-layer-2026"
    assert lab.holdouts["holdout-2026"].percent == 5


def test_toml_json_yaml_give_the_same_lab_and_version(tmp_path):
    import tomllib
    import yaml

    doc = tomllib.loads(EXAMPLE.read_text("utf-8"))
    j = write(tmp_path, json.dumps(doc), "lab.json")
    y = write(tmp_path, yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), "lab.yaml")
    labs = [Lab.from_file(p, reload_interval=0) for p in (EXAMPLE, j, y)]
    assert len({lab.version for lab in labs}) == 1
    for unit in ("alice", "bob", "carol"):
        units = {"user": unit, "visitor": unit}
        attrs = {"country": "DE", "app_version": "2.4.0"}
        results = [lab.assign_all(units, attrs) for lab in labs]
        assert results[0] == results[1] == results[2]


def test_version_changes_with_meaning_not_formatting(tmp_path):
    a = Lab.from_file(write(tmp_path, BASE, "a.toml"), reload_interval=0)
    b = Lab.from_file(write(tmp_path, "# a comment\n" + BASE.replace(" = ", "=")), reload_interval=0)
    c = Lab.from_file(write(tmp_path, BASE.replace("weight = 1 }, {", "weight = 2 }, {"), "c.toml"), reload_interval=0)
    assert a.version == b.version != c.version


def test_variant_order_is_explicit_and_kept():
    lab = Lab.from_dict({"experiments": [{"key": "e", "variants": [{"name": "z"}, {"name": "a"}, {"name": "m"}]}]})
    assert lab.experiments["e"].variant_names == ["z", "a", "m"]
    assert lab.experiments["e"].control == "z"


BAD_CASES = [
    ("duplicate experiment key", BASE + BASE, "experiments[1].key: duplicate key 'checkout-redesign'"),
    (
        "shared salt between experiments",
        BASE + '[[experiments]]\nkey = "other"\nsalt = "checkout-redesign"\nvariants = [{name = "a"}]\n',
        "experiments[1].salt: salt 'checkout-redesign' is also used by experiments[0]",
    ),
    (
        "shared salt between a layer and an experiment",
        BASE + '[[layers]]\nkey = "l"\nsalt = "checkout-redesign"\n',
        "layers[0].salt: salt 'checkout-redesign' is also used",
    ),
    (
        "shared salt between a holdout and a layer",
        BASE
        + '[[layers]]\nkey = "l"\n[[holdouts]]\nkey = "h"\nsalt = "l"\npercent = 5\nexperiments = ["checkout-redesign"]\n',
        "holdouts[0].salt: salt 'l' is also used by layers[0]",
    ),
    (
        "overlapping layer ranges",
        '[[layers]]\nkey = "l"\n'
        '[[experiments]]\nkey = "a"\nlayer = "l"\nlayer_range = [0, 50]\nvariants = [{name = "x"}]\n'
        '[[experiments]]\nkey = "b"\nlayer = "l"\nlayer_range = [40, 100]\nvariants = [{name = "x"}]\n',
        "'b' [40, 100) overlaps 'a' [0, 50) in layer 'l'",
    ),
    (
        "unknown layer",
        '[[experiments]]\nkey = "a"\nlayer = "nope"\nlayer_range = [0, 50]\nvariants = [{name = "x"}]\n',
        "experiments[0].layer: unknown layer 'nope'",
    ),
    (
        "negative weight",
        '[[experiments]]\nkey = "a"\nvariants = [{name = "x", weight = -1}, {name = "y"}]\n',
        "experiments[0].variants[0].weight: weight -1 is negative",
    ),
    (
        "non-integer weight",
        '[[experiments]]\nkey = "a"\nvariants = [{name = "x", weight = 0.5}, {name = "y"}]\n',
        "experiments[0].variants[0].weight: weight 0.5 is not an integer",
    ),
    (
        "all-zero weights",
        '[[experiments]]\nkey = "a"\nvariants = [{name = "x", weight = 0}, {name = "y", weight = 0}]\n',
        "experiments[0].variants: all weights are zero",
    ),
    (
        "traffic above 100",
        '[[experiments]]\nkey = "a"\ntraffic = 150\nvariants = [{name = "x"}]\n',
        "experiments[0].traffic: traffic 150 is outside 0-100",
    ),
    (
        "traffic below 0",
        '[[experiments]]\nkey = "a"\ntraffic = -1\nvariants = [{name = "x"}]\n',
        "experiments[0].traffic: traffic -1 is outside 0-100",
    ),
    (
        "traffic with three decimals",
        '[[experiments]]\nkey = "a"\ntraffic = 12.345\nvariants = [{name = "x"}]\n',
        "experiments[0].traffic: traffic 12.345 has more than two decimals",
    ),
    (
        "unknown control",
        '[[experiments]]\nkey = "a"\ncontrol = "nope"\nvariants = [{name = "x"}]\n',
        "experiments[0].control: unknown control variant 'nope'",
    ),
    (
        "unknown winner",
        '[[experiments]]\nkey = "a"\nstatus = "concluded"\nwinner = "nope"\nvariants = [{name = "x"}]\n',
        "experiments[0].winner: unknown winner 'nope'",
    ),
    (
        "concluded without winner",
        '[[experiments]]\nkey = "a"\nstatus = "concluded"\nvariants = [{name = "x"}]\n',
        "experiments[0].winner: a concluded experiment needs a winner",
    ),
    (
        "unknown operator",
        '[[experiments]]\nkey = "a"\nvariants = [{name = "x"}]\ntargeting = {attr = "country", op = "like", value = "D%"}\n',
        "experiments[0].targeting.op: unknown operator 'like'",
    ),
    (
        "unknown operator nested in a group",
        '[[experiments]]\nkey = "a"\nvariants = [{name = "x"}]\n'
        'targeting = {any = [{attr = "c", op = "eq", value = "x"}, {not = {attr = "d", op = "matches", value = 1}}]}\n',
        "experiments[0].targeting.any[1].not.op: unknown operator 'matches'",
    ),
    (
        "regex too long",
        '[[experiments]]\nkey = "a"\nvariants = [{name = "x"}]\ntargeting = {attr = "p", op = "regex", value = "'
        + "a" * 300
        + '"}\n',
        "experiments[0].targeting.value: regex is 300 characters, over the limit of 256",
    ),
    (
        "regex that does not compile",
        '[[experiments]]\nkey = "a"\nvariants = [{name = "x"}]\ntargeting = {attr = "p", op = "regex", value = "(unclosed"}\n',
        "experiments[0].targeting.value: regex does not compile",
    ),
    (
        "bad semver",
        '[[experiments]]\nkey = "a"\nvariants = [{name = "x"}]\ntargeting = {attr = "v", op = "semver_gte", value = "two"}\n',
        "experiments[0].targeting.value: 'two' is not a semantic version",
    ),
    (
        "bad key",
        '[[experiments]]\nkey = "Checkout Redesign"\nvariants = [{name = "x"}]\n',
        "experiments[0].key: 'Checkout Redesign' is not a valid experiment key",
    ),
    (
        "unknown status",
        '[[experiments]]\nkey = "a"\nstatus = "live"\nvariants = [{name = "x"}]\n',
        "experiments[0].status: unknown status 'live'",
    ),
    (
        "unknown field",
        '[[experiments]]\nkey = "a"\ntrafic = 5\nvariants = [{name = "x"}]\n',
        "experiments[0]: unknown or misplaced field",
    ),
    ("missing variants", '[[experiments]]\nkey = "a"\n', "experiments[0].variants: is missing"),
    (
        "holdout of an unknown experiment",
        BASE + '[[holdouts]]\nkey = "h"\npercent = 5\nexperiments = ["nope"]\n',
        "holdouts[0].experiments: unknown experiment 'nope'",
    ),
    (
        "holdout percent out of range",
        BASE + '[[holdouts]]\nkey = "h"\npercent = 101\nexperiments = ["checkout-redesign"]\n',
        "holdouts[0].percent: percent 101 is outside 0-100",
    ),
    ("unknown top-level section", BASE + '[experiment]\nkey = "x"\n', "(top level): unknown sections ['experiment']"),
    ("unknown lab setting", BASE + '[lab]\nsecret = "x"\n', "lab: unknown settings ['secret']"),
    ("syntax error", "experiments = [\n", "(file): cannot parse TOML"),
]


@pytest.mark.parametrize("text,expected", [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES])
def test_validation_messages_name_file_field_and_fix(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        Lab.from_file(path, reload_interval=0)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "; " in message and len(info.value.fix) > 5  # the fix is spelled out


def test_python_api_validates_too():
    with pytest.raises(ConfigError, match="duplicate variant 'a'"):
        Experiment("e", [("a", 1), ("a", 1)])
    with pytest.raises(ConfigError, match="layer and layer_range go together"):
        Experiment("e", {"a": 1}, layer="l")
    with pytest.raises(ConfigError, match="salt 'e' is also used"):
        Lab([Experiment("e", {"a": 1})], holdouts=[Holdout("h", 1, ["e"], salt="e")])
    with pytest.raises(ConfigError, match="different unit kinds"):
        Lab(
            [Experiment("a", {"x": 1}, unit="user"), Experiment("b", {"x": 1}, unit="visitor")],
            holdouts=[Holdout("h", 1, ["a", "b"])],
        )
    Lab([Experiment("e", {"a": 1}, layer="l", layer_range=(0, 50))], layers=[Layer("l")])


def test_yaml_needs_pyyaml_message(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_yaml(name, *args, **kwargs):
        if name == "yaml":
            raise ModuleNotFoundError("No module named 'yaml'", name="yaml")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_yaml)
    with pytest.raises(ConfigError, match=r"pip install 'fieldlab\[yaml\]'"):
        Lab.from_file(write(tmp_path, "experiments: []\n", "lab.yaml"), reload_interval=0)


# ------------------------------------------------------------------ hot reload


def _rewrite(path: Path, text: str) -> None:
    """Replace the file atomically with a new mtime, as an editor or deploy would."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, "utf-8")
    st = path.stat()
    os.replace(tmp, path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_reload_swaps_good_config_and_keeps_last_good_on_bad(tmp_path, caplog):
    path = write(tmp_path, BASE)
    lab = Lab.from_file(path, reload_interval=0)
    v1 = lab.version
    assert lab.assign("checkout-redesign", "alice").variant == "control"

    _rewrite(path, BASE.replace("weight = 1 }, { name", "weight = 0 }, { name"))
    assert lab.reload() is True
    assert lab.assign("checkout-redesign", "alice").variant == "treatment"
    v2 = lab.version
    assert v2 != v1 and lab.config_error is None

    _rewrite(path, BASE.replace('name = "control", weight = 1', 'name = "control", weight = -5'))
    assert lab.reload() is False
    assert lab.version == v2, "a bad file must keep the last good config"
    assert "weight -5 is negative" in lab.config_error
    assert lab.assign("checkout-redesign", "alice").variant == "treatment"
    assert "keeping config" in caplog.text
    assert lab.stats["reload_failures"] == 1

    _rewrite(path, "this is = not toml [")
    assert lab.reload() is False and "cannot parse TOML" in lab.config_error

    _rewrite(path, BASE)
    assert lab.reload() is True
    assert lab.version == v1 and lab.config_error is None


def test_deleted_file_keeps_last_good(tmp_path):
    path = write(tmp_path, BASE)
    lab = Lab.from_file(path, reload_interval=0)
    path.unlink()
    assert lab.reload() is False
    assert "cannot read" in lab.config_error
    assert lab.assign("checkout-redesign", "alice").variant == "control"


def _watchers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "fieldlab-config-watcher"]


def test_watcher_starts_lazily_and_reloads(tmp_path):
    path = write(tmp_path, BASE)
    before = len(_watchers())
    lab = Lab.from_file(path, reload_interval=0.05)
    assert len(_watchers()) == before, "no thread may start before the lab is used"
    assert lab.assign("checkout-redesign", "alice").variant == "control"
    assert len(_watchers()) == before + 1
    _rewrite(path, BASE.replace("weight = 1 }, { name", "weight = 0 }, { name"))
    deadline = time.monotonic() + 5
    while lab.assign("checkout-redesign", "alice").variant != "treatment":
        assert time.monotonic() < deadline, "watcher did not pick up the new file"
        time.sleep(0.02)
    lab.close()


def test_watcher_restarts_in_a_forked_child(tmp_path):
    """gunicorn --preload: the parent builds the lab, each worker must watch on its own."""
    path = write(tmp_path, BASE)
    lab = Lab.from_file(path, reload_interval=0.05)
    lab.assign("checkout-redesign", "alice")  # parent starts its watcher
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        try:
            ok = not lab._watcher.started  # threads do not survive fork: the watcher starts again on first use
            lab.assign("checkout-redesign", "alice")
            ok = ok and len(_watchers()) == 1
            _rewrite(path, BASE.replace("weight = 1 }, { name", "weight = 0 }, { name"))
            deadline = time.monotonic() + 5
            while lab.assign("checkout-redesign", "alice").variant != "treatment" and time.monotonic() < deadline:
                time.sleep(0.02)
            ok = ok and lab.assign("checkout-redesign", "alice").variant == "treatment"
            os.write(write_fd, b"ok" if ok else b"no")
        finally:
            os._exit(0)
    os.close(write_fd)
    os.waitpid(pid, 0)
    assert os.read(read_fd, 2) == b"ok"
    lab.close()


def test_import_starts_no_thread():
    import subprocess
    import sys

    code = (
        f"import threading, fieldlab; lab = fieldlab.Lab.from_file({str(EXAMPLE)!r}); print(threading.active_count())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1"


def test_example_is_copyable(tmp_path):
    shutil.copy(EXAMPLE, tmp_path / "copy.toml")
    assert Lab.from_file(tmp_path / "copy.toml", reload_interval=0).version == Lab.from_file(EXAMPLE).version


# ------------------------------------------- parser mistakes: one line, file, field path, the fix
def load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        Lab.from_file(path, reload_interval=0)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    return message


def test_yaml_syntax_error_is_one_line_with_line_and_column(tmp_path):
    pytest.importorskip("yaml")
    path = write(tmp_path, "experiments:\n  - key: a\n    variants: [{name: x}\n    traffic: 50\n", "lab.yaml")
    message = load_error(path)
    assert "(file): cannot parse YAML: line 4, column 5: expected ',' or ']'" in message
    assert "while parsing a flow sequence at line 3, column 15" in message and message.endswith("fix the YAML syntax")


def test_duplicate_key_in_json_is_an_error_naming_the_field_path(tmp_path):
    path = write(
        tmp_path,
        json.dumps({"experiments": [{"key": "a", "variants": [{"name": "x"}]}]}).replace(
            '"key": "a"', '"key": "a", "traffic": 5, "traffic": 50'
        ),
        "lab.json",
    )
    message = load_error(path)
    assert "experiments[0].traffic: key 'traffic' is given more than once" in message and "keep one" in message
    top = write(tmp_path, '{"lab": {}, "experiments": [], "lab": {"reload_interval": 1}}', "top.json")
    assert f"{top}: lab: key 'lab' is given more than once" in load_error(top)


def test_duplicate_key_in_yaml_is_an_error_naming_path_and_lines(tmp_path):
    pytest.importorskip("yaml")
    path = write(
        tmp_path,
        "experiments:\n  - key: a\n    traffic: 5\n    variants:\n      - name: x\n"
        "        weight: 1\n        weight: 3\n",
        "lab.yaml",
    )
    message = load_error(path)
    assert "experiments[0].variants[0].weight: key 'weight' is given more than once (lines 6 and 7)" in message


def test_yaml_merge_keys_may_still_override(tmp_path):
    """`<<: *defaults` then the same key is YAML's way to override, not a duplicate."""
    pytest.importorskip("yaml")
    path = write(
        tmp_path,
        "experiments:\n  - &base {key: b, traffic: 5, salt: s1, variants: [{name: x}]}\n"
        "  - <<: *base\n    key: a\n    traffic: 50\n    salt: s2\n",
        "lab.yaml",
    )
    lab = Lab.from_file(path, reload_interval=0)
    assert (lab.experiments["a"].traffic, lab.experiments["b"].traffic) == (50, 5)


def test_duplicate_key_in_toml_is_one_line_with_the_file_and_the_fix(tmp_path):
    path = write(
        tmp_path, BASE.replace('key = "checkout-redesign"', 'key = "checkout-redesign"\ntraffic = 5\ntraffic = 6')
    )
    message = load_error(path)
    assert "(file): cannot parse TOML: Cannot overwrite a value (at line 5" in message
    assert "remove the duplicate" in message


def yaml_available() -> bool:
    try:
        import yaml  # noqa: F401
    except ImportError:
        return False
    return True


def test_surrogate_escape_in_json_config_is_a_config_error(tmp_path):
    """JSON allows "\\ud800"; the UTF-8 version hash then raised UnicodeEncodeError. Now a ConfigError with the path."""
    text = '{"experiments": [{"key": "a", "variants": [{"name": "x"}, {"name": "\\ud800"}]}]}'
    message = load_error(write(tmp_path, text, "lab.json"))
    assert 'experiments[0].variants[1].name: "\\ud800" holds a lone surrogate escape' in message
    with pytest.raises(ConfigError, match=r"^<dict>: experiments\[0\]\.variants\[1\]\.name: .*lone surrogate"):
        Lab.from_dict(json.loads(text))
    if yaml_available():
        yaml_text = 'experiments:\n  - key: a\n    variants: [{name: "\\U0000dfff"}]\n'
        assert 'experiments[0].variants[0].name: "\\udfff" holds a lone surrogate' in load_error(
            write(tmp_path, yaml_text, "lab.yaml")
        )
    key_text = '{"experiments": [{"key": "a", "variants": [{"name": "x", "params": {"\\udcff": 1}}]}]}'
    assert 'experiments[0].variants[0].params: key "\\udcff" holds a lone surrogate' in load_error(
        write(tmp_path, key_text, "key.json")
    )


@pytest.mark.parametrize(
    "text,expected",
    [
        (
            '[[experiments]]\nkey = "a"\ntrafic = 5\nvariants = [{name = "x"}]\n',
            "experiments[0]: unknown or misplaced field 'trafic'; did you mean 'traffic'?",
        ),
        (
            '[[experiments]]\nkey = "a"\nvariants = [{nmae = "x"}]\n',
            "experiments[0].variants[0]: unknown keys ['nmae']; did you mean 'name'?",
        ),
        (
            BASE + "[lab]\nreload_intervall = 3\n",
            "lab: unknown settings ['reload_intervall']; did you mean 'reload_interval'?",
        ),
        (BASE + '[[holdout]]\nkey = "h"\n', "(top level): unknown sections ['holdout']; did you mean 'holdouts'?"),
        (
            BASE + '[[holdouts]]\nkey = "h"\npercnt = 5\nexperiments = ["checkout-redesign"]\n',
            "holdouts[0]: unknown or misplaced field 'percnt'; did you mean 'percent'?",
        ),
    ],
    ids=["experiment field", "variant key", "lab setting", "section", "holdout field"],
)
def test_misspelt_field_names_the_closest_valid_name(tmp_path, text, expected):
    message = load_error(write(tmp_path, text))
    assert expected in message and "__init__" not in message and "keyword argument" not in message
