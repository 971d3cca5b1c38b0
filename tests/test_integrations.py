"""Every attribute name the tracing-backend recipes use must exist in fieldlab.attributes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fieldlab import attributes

ROOT = Path(__file__).parent.parent / "integrations"
NAME = re.compile(r"(?<![\w-])(?:fieldlab|feature_flag)\.[A-Za-z0-9_.\-${}]*[A-Za-z0-9_.}]")
KEY = re.compile(r"^(?:[a-z0-9_-]{1,64}|\$\{?[a-z_]+\}?)$")  # a key, or a dashboard variable like ${experiment}

CONSTANTS = {v for k, v in vars(attributes).items() if k.isupper() and isinstance(v, str)}
PREFIXES = {v for v in CONSTANTS if v.endswith(".") and v != attributes.PREFIX}
FILES = sorted(p for p in ROOT.rglob("*") if p.is_file())


def unknown_names(text: str) -> list[str]:
    bad = []
    for name in NAME.findall(text):
        name = name.rstrip(".") if name.rstrip(".") in CONSTANTS else name
        if name in CONSTANTS or name in PREFIXES:
            continue
        prefix = next((p for p in PREFIXES if name.startswith(p)), None)
        if prefix and KEY.match(name[len(prefix) :]):
            continue
        bad.append(name)
    return bad


def test_there_are_recipes():
    assert {p.parent.name for p in FILES} >= {"collector", "tempo", "jaeger", "grafana"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_recipe_names_exist_in_code(path):
    text = path.read_text("utf-8")
    assert unknown_names(text) == [], f"{path.relative_to(ROOT)} names attributes fieldlab does not write"


def test_checker_catches_a_renamed_attribute():
    assert unknown_names('{ span.fieldlab.varaint.checkout = "x" }') == ["fieldlab.varaint.checkout"]
    assert unknown_names("feature_flag.result.value") == ["feature_flag.result.value"]
    assert unknown_names("fieldlab.variant.checkout-redesign fieldlab.fault.injected") == []
