"""Reading configuration files: TOML, JSON, or YAML where PyYAML is installed.

The file format keeps variant order explicit (a list of tables), and every
error names the file, the field path and the fix. The config ``version`` is
derived from the content, so every span can say which config produced it.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping

from .errors import ConfigError

__all__ = ["read_config_file", "parse_format", "content_version", "TOP_LEVEL_KEYS", "SETTINGS_KEYS"]

try:  # Python 3.11+
    import tomllib as _toml
except ModuleNotFoundError:  # pragma: no cover - 3.10
    import tomli as _toml  # type: ignore[no-redef]

TOP_LEVEL_KEYS = frozenset({"lab", "experiments", "layers", "holdouts", "faults"})
SETTINGS_KEYS = frozenset({"secret_env", "reload_interval", "unit_ids", "unit_hash_key_env", "trust_baggage", "state_file",
                           "span_attribute_limit", "span_attribute_headroom"})


def parse_format(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext == ".toml":
        return "toml"
    if ext == ".json":
        return "json"
    if ext in (".yaml", ".yml"):
        return "yaml"
    raise ConfigError("(file)", f"cannot tell the format of {os.path.basename(path)!r}",
                      "name the file .toml, .json, .yaml or .yml", source=path)


def parse_bytes(data: bytes, fmt: str, source: str) -> dict[str, Any]:
    """Decode one config document into plain Python data."""
    try:
        if fmt == "toml":
            doc = _toml.loads(data.decode("utf-8"))
        elif fmt == "json":
            doc = json.loads(data.decode("utf-8"))
        else:
            try:
                import yaml  # type: ignore[import-untyped]
            except ModuleNotFoundError:
                raise ConfigError("(file)", "YAML needs PyYAML, which is not installed",
                                  "pip install 'fieldlab[yaml]', or use TOML or JSON", source=source) from None
            doc = yaml.safe_load(data.decode("utf-8"))
    except ConfigError:
        raise
    except UnicodeDecodeError as exc:
        raise ConfigError("(file)", f"not UTF-8 text ({exc.reason} at byte {exc.start})", "save the file as UTF-8",
                          source=source) from None
    except Exception as exc:  # parser errors carry line numbers in their text
        raise ConfigError("(file)", f"cannot parse {fmt.upper()}: {exc}", f"fix the {fmt.upper()} syntax",
                          source=source) from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError("(top level)", f"expected a table/object, got {type(doc).__name__}",
                          "start the file with experiments, layers, holdouts and lab sections", source=source)
    unknown = set(doc) - TOP_LEVEL_KEYS
    if unknown:
        raise ConfigError("(top level)", f"unknown sections {sorted(unknown)}",
                          f"use only {', '.join(sorted(TOP_LEVEL_KEYS))}", source=source)
    return doc


def read_config_file(path: str) -> tuple[dict[str, Any], bytes]:
    """The parsed document and the raw bytes it came from."""
    fmt = parse_format(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ConfigError("(file)", f"cannot read: {exc.strerror}", "check the path and permissions", source=path) from None
    return parse_bytes(data, fmt, path), data


def content_version(doc: Mapping[str, Any]) -> str:
    """A short, stable hash of a config's meaning (key order and format do not matter)."""
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]
