"""Reading configuration files: TOML, JSON, or YAML where PyYAML is installed.

The file format keeps variant order explicit (a list of tables), and every
error names the file, the field path and the fix. The config ``version`` is
derived from the content, so every span can say which config produced it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Any, Mapping

from .errors import ConfigError

__all__ = [
    "read_config_file", "read_config_bytes", "parse_format", "content_version", "check_number", "check_reload_interval",
    "check_settings",
    "check_limits", "TOP_LEVEL_KEYS", "SETTINGS_KEYS", "MAX_CONFIG_BYTES", "MAX_EXPERIMENTS", "MAX_LAYERS",
    "MAX_HOLDOUTS", "MIN_RELOAD_INTERVAL", "MAX_RELOAD_INTERVAL",
]

try:  # Python 3.11+
    import tomllib as _toml
except ModuleNotFoundError:  # pragma: no cover - 3.10
    import tomli as _toml  # type: ignore[no-redef]

TOP_LEVEL_KEYS = frozenset({"lab", "experiments", "layers", "holdouts", "faults"})
SETTINGS_KEYS = frozenset({"secret_env", "reload_interval", "unit_ids", "unit_hash_key_env", "trust_baggage", "state_file"})

#: Limits of one configuration. A file beyond them is refused with a ConfigError naming the limit (on a
#: reload, the last good config stays), so a runaway generator cannot exhaust a process's memory. Each
#: experiment costs about 80 KB at run time (its bucket table), so 1,000 experiments take about 80 MB.
MAX_CONFIG_BYTES = 8 * 1024 * 1024
MAX_EXPERIMENTS = 1000
MAX_LAYERS = 1000
MAX_HOLDOUTS = 1000
#: ``reload_interval``: 0 turns reloading off; otherwise seconds from 0.01 to 3600.
MIN_RELOAD_INTERVAL = 0.01
MAX_RELOAD_INTERVAL = 3600.0


def check_number(value: Any, path: str, *, lo: float, hi: float, what: str, fix: str,
                 integer: bool = False) -> float:
    """``value`` as a finite number within ``[lo, hi]``; else a ConfigError naming ``path`` and ``fix``.

    NaN and infinities are refused explicitly: they compare false with every
    bound, so a plain range check would let them through.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(path, f"{what} {value!r} is not a number", fix)
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(path, f"{what} {value!r} is not a finite number", fix)
    if integer and not (isinstance(value, int) or float(value).is_integer()):
        raise ConfigError(path, f"{what} {value!r} is not a whole number", fix)
    if not lo <= value <= hi:
        raise ConfigError(path, f"{what} {value:g} is outside {lo:g}-{hi:g}", fix)
    return float(value)


def check_reload_interval(value: Any, path: str = "lab.reload_interval") -> float:
    """A valid ``reload_interval``: 0 (off) or MIN_RELOAD_INTERVAL..MAX_RELOAD_INTERVAL seconds."""
    fix = (f"set {path.rsplit('.', 1)[-1]} to 0 (no reloading) or to seconds from {MIN_RELOAD_INTERVAL:g} "
           f"to {MAX_RELOAD_INTERVAL:g}, e.g. 5")
    seconds = check_number(value, path, lo=0, hi=MAX_RELOAD_INTERVAL, what="reload_interval", fix=fix)
    if 0 < seconds < MIN_RELOAD_INTERVAL:
        raise ConfigError(path, f"reload_interval {seconds:g} is below {MIN_RELOAD_INTERVAL:g} s", fix)
    return seconds


def check_settings(settings: Mapping[str, Any]) -> None:
    """Validate the numeric ``[lab]`` settings (the others are checked where they are used)."""
    if "reload_interval" in settings:
        check_reload_interval(settings["reload_interval"])


def check_limits(doc: Mapping[str, Any]) -> None:
    """Refuse a document with more experiments, layers or holdouts than the documented limits."""
    for name, limit in (("experiments", MAX_EXPERIMENTS), ("layers", MAX_LAYERS), ("holdouts", MAX_HOLDOUTS)):
        items = doc.get(name)
        if isinstance(items, (list, tuple)) and len(items) > limit:
            raise ConfigError(name, f"{len(items):,} {name}, above the limit of {limit:,} per config",
                              f"split the config, or remove concluded {name}")


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
    try:
        check_limits(doc)
    except ConfigError as exc:
        raise exc.with_source(source) from None
    return doc


def read_config_bytes(path: str) -> bytes:
    """The raw bytes of a config file, refusing one above MAX_CONFIG_BYTES before reading it whole."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError("(file)", f"cannot read: {exc.strerror}", "check the path and permissions", source=path) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError("(file)", f"larger than the limit of {MAX_CONFIG_BYTES // (1024 * 1024)} MiB per config file",
                          "split the config, or remove concluded experiments", source=path)
    return data


def read_config_file(path: str) -> tuple[dict[str, Any], bytes]:
    """The parsed document and the raw bytes it came from (at most MAX_CONFIG_BYTES)."""
    fmt = parse_format(path)
    data = read_config_bytes(path)
    return parse_bytes(data, fmt, path), data


def content_version(doc: Mapping[str, Any]) -> str:
    """A short, stable hash of a config's meaning (key order and format do not matter)."""
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]
