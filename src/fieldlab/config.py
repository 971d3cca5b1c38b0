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
import re
from collections.abc import Mapping
from typing import Any

from .errors import ConfigError, suggest_names

__all__ = [
    "read_config_file",
    "read_config_bytes",
    "parse_format",
    "content_version",
    "check_document",
    "check_number",
    "check_reload_interval",
    "check_settings",
    "check_state_setting",
    "check_limits",
    "TOP_LEVEL_KEYS",
    "SETTINGS_KEYS",
    "MAX_CONFIG_BYTES",
    "MAX_EXPERIMENTS",
    "MAX_LAYERS",
    "MAX_HOLDOUTS",
    "MIN_RELOAD_INTERVAL",
    "MAX_RELOAD_INTERVAL",
    "DEFAULT_STATE_POLL_INTERVAL",
    "MIN_STATE_POLL_INTERVAL",
    "MAX_STATE_POLL_INTERVAL",
]

try:  # Python 3.11+
    import tomllib as _toml
except ModuleNotFoundError:  # pragma: no cover - 3.10
    import tomli as _toml  # type: ignore[no-redef]

TOP_LEVEL_KEYS = frozenset({"lab", "experiments", "layers", "holdouts", "faults", "guardrails", "canaries"})
SETTINGS_KEYS = frozenset(
    {
        "secret_env",
        "reload_interval",
        "unit_ids",
        "unit_hash_key_env",
        "trust_baggage",
        "state_file",
        "state",
        "state_poll_interval",
        "span_attribute_limit",
        "span_attribute_headroom",
    }
)

#: Limits of one configuration. A file beyond them is refused with a ConfigError naming the limit (on a
#: reload, the last good config stays), so a runaway generator cannot exhaust a process's memory. An
#: experiment costs about 2 KB at run time whatever the number of units seen (no per-bucket table).
MAX_CONFIG_BYTES = 8 * 1024 * 1024
MAX_EXPERIMENTS = 1000
MAX_LAYERS = 1000
MAX_HOLDOUTS = 1000
#: ``reload_interval``: 0 turns reloading off; otherwise seconds from 0.01 to 3600.
MIN_RELOAD_INTERVAL = 0.01
MAX_RELOAD_INTERVAL = 3600.0
#: ``state_poll_interval``: seconds between two reads of the lab state (pauses, kills) by each process.
DEFAULT_STATE_POLL_INTERVAL = 1.0
MIN_STATE_POLL_INTERVAL = 0.01
MAX_STATE_POLL_INTERVAL = 60.0


def check_number(value: Any, path: str, *, lo: float, hi: float, what: str, fix: str, integer: bool = False) -> float:
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
    fix = (
        f"set {path.rsplit('.', 1)[-1]} to 0 (no reloading) or to seconds from {MIN_RELOAD_INTERVAL:g} "
        f"to {MAX_RELOAD_INTERVAL:g}, e.g. 5"
    )
    seconds = check_number(value, path, lo=0, hi=MAX_RELOAD_INTERVAL, what="reload_interval", fix=fix)
    if 0 < seconds < MIN_RELOAD_INTERVAL:
        raise ConfigError(path, f"reload_interval {seconds:g} is below {MIN_RELOAD_INTERVAL:g} s", fix)
    return seconds


def check_settings(settings: Mapping[str, Any]) -> None:
    """Validate the numeric ``[lab]`` settings (the others are checked where they are used)."""
    if "reload_interval" in settings:
        check_reload_interval(settings["reload_interval"])
    if "state_poll_interval" in settings:
        check_number(
            settings["state_poll_interval"],
            "lab.state_poll_interval",
            lo=MIN_STATE_POLL_INTERVAL,
            hi=MAX_STATE_POLL_INTERVAL,
            what="state_poll_interval",
            fix=f"give seconds from {MIN_STATE_POLL_INTERVAL:g} to {MAX_STATE_POLL_INTERVAL:g} "
            f"(default {DEFAULT_STATE_POLL_INTERVAL:g}: pauses take effect within one interval)",
        )
    check_state_setting(settings)


def check_state_setting(settings: Mapping[str, Any]) -> str | None:
    """The ``[lab] state`` value (a file path, ``file://`` or ``redis://`` URL), checked; None when not set.

    ``state_file`` is its older name (the kill switch's file): either may be given, not both.
    """
    if "state" in settings and "state_file" in settings:
        raise ConfigError(
            "lab.state",
            "both state and state_file are set",
            "keep state (state_file is its older name, for the same JSON file)",
        )
    key = "state" if "state" in settings else "state_file"
    if key not in settings:
        return None
    value = settings[key]
    fix = 'give a file path such as "lab.state.json" or a Redis URL such as "redis://127.0.0.1:6379/0"'
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"lab.{key}", f"{value!r} is not a state store", fix)
    value = value.strip()
    if "://" in value:
        scheme = value.split("://", 1)[0].lower()
        if scheme not in ("redis", "rediss", "unix", "file"):
            raise ConfigError(f"lab.{key}", f"unknown scheme {scheme!r} in {value!r}", fix)
        if scheme != "file" and key == "state_file":
            raise ConfigError("lab.state_file", f"{value!r} is not a file", "write state = ... for a Redis store")
    return value


def check_limits(doc: Mapping[str, Any]) -> None:
    """Refuse a document with more experiments, layers or holdouts than the documented limits."""
    for name, limit in (("experiments", MAX_EXPERIMENTS), ("layers", MAX_LAYERS), ("holdouts", MAX_HOLDOUTS)):
        items = doc.get(name)
        if isinstance(items, (list, tuple)) and len(items) > limit:
            raise ConfigError(
                name,
                f"{len(items):,} {name}, above the limit of {limit:,} per config",
                f"split the config, or remove concluded {name}",
            )


def parse_format(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext == ".toml":
        return "toml"
    if ext == ".json":
        return "json"
    if ext in (".yaml", ".yml"):
        return "yaml"
    raise ConfigError(
        "(file)",
        f"cannot tell the format of {os.path.basename(path)!r}",
        "name the file .toml, .json, .yaml or .yml",
        source=path,
    )


def parse_bytes(data: bytes, fmt: str, source: str) -> dict[str, Any]:
    """Decode one config document into plain Python data."""
    try:
        text = data.decode("utf-8")
        if fmt == "toml":
            doc = _toml.loads(text)  # refuses duplicate keys and surrogate escapes itself
            suspect = False
        elif fmt == "json":
            found: list[_Duplicated] = []
            doc = json.loads(text, object_pairs_hook=lambda pairs: _json_object(pairs, found))
            suspect = bool(found) or _SURROGATE_ESCAPE.search(text) is not None
        else:
            try:
                import yaml  # type: ignore[import-untyped]
            except ModuleNotFoundError:
                raise ConfigError(
                    "(file)",
                    "YAML needs PyYAML, which is not installed",
                    "pip install 'fieldlab[yaml]', or use TOML or JSON",
                    source=source,
                ) from None
            loader = _yaml_loader()(text)  # a SafeLoader that marks duplicate keys (what yaml.load does)
            try:
                doc = loader.get_single_data()
            finally:
                loader.dispose()
            suspect = loader.duplicates_found or _SURROGATE_ESCAPE.search(text) is not None
    except ConfigError:
        raise
    except UnicodeDecodeError as exc:
        raise ConfigError(
            "(file)", f"not UTF-8 text ({exc.reason} at byte {exc.start})", "save the file as UTF-8", source=source
        ) from None
    except Exception as exc:  # parser errors carry line numbers in their text
        problem, fix = _parse_error(exc, fmt)
        raise ConfigError("(file)", f"cannot parse {fmt.upper()}: {problem}", fix, source=source) from None
    if suspect:  # only then the walk over the whole document, which costs about as much as parsing
        try:
            check_document(doc)
        except ConfigError as exc:
            raise exc.with_source(source) from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(
            "(top level)",
            f"expected a table/object, got {type(doc).__name__}",
            "start the file with experiments, layers, holdouts and lab sections",
            source=source,
        )
    unknown = set(doc) - TOP_LEVEL_KEYS
    if unknown:
        raise ConfigError(
            "(top level)",
            f"unknown sections {sorted(unknown, key=str)}",
            suggest_names(sorted(unknown, key=str), TOP_LEVEL_KEYS, "sections"),
            source=source,
        )
    try:
        check_limits(doc)
    except ConfigError as exc:
        raise exc.with_source(source) from None
    return doc


def _parse_error(exc: Exception, fmt: str) -> tuple[str, str]:
    """One line saying where and what, and the fix, from a parser's exception.

    PyYAML's messages span four lines (context, a quoted source line, a caret);
    the CLI promises one line, so its marks become "line L, column C".
    """
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem and mark is not None:  # yaml.MarkedYAMLError
        text = f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
        context, cmark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context:
            text += f" ({context}" + (f" at line {cmark.line + 1}, column {cmark.column + 1})" if cmark else ")")
    else:
        text = str(exc)
    text = " ".join(text.split())
    if fmt == "toml" and ("Cannot overwrite" in text or "twice" in text):
        return text, "remove the duplicate: each key and table appears once (the last would otherwise win silently)"
    return text, f"fix the {fmt.upper()} syntax"


class _Duplicated(dict):  # type: ignore[type-arg]
    """A parsed mapping in which ``duplicates`` appeared more than once; only lives until check_document."""

    duplicates: list[tuple[Any, str]]  # (key, where), set on each instance


#: A JSON or YAML escape that can make a lone surrogate (\ud800-\udfff, YAML also \U0000d800).
_SURROGATE_ESCAPE = re.compile(r"\\(?:u|U0000)[dD][89a-fA-F]")


def _json_object(pairs: list[tuple[str, Any]], found: list[_Duplicated]) -> dict[str, Any]:
    """json's object_pairs_hook: a plain dict, or a _Duplicated one (also put in ``found``) when a key repeats."""
    out = dict(pairs)
    if len(out) == len(pairs):
        return out
    marked = _Duplicated(out)
    found.append(marked)
    marked.duplicates = []
    seen: set[str] = set()
    for key, _value in pairs:
        if key in seen:
            marked.duplicates.append((key, ""))
        seen.add(key)
    return marked


_YAML_LOADER: Any = None


def _yaml_loader() -> Any:
    """PyYAML's SafeLoader, except that a key repeated in one mapping is reported, not overwritten.

    Keys brought in by a merge (``<<: *defaults``) may be overridden, as YAML intends.
    """
    global _YAML_LOADER
    if _YAML_LOADER is None:
        import yaml

        class Loader(yaml.SafeLoader):  # type: ignore[misc]
            duplicates_found = False

            def construct_yaml_map(self, node: Any) -> Any:
                seen: dict[tuple[str, str], Any] = {}
                dups: list[tuple[Any, str]] = []
                for key_node, _value in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                        continue
                    ident = (key_node.tag, key_node.value)
                    if ident in seen:
                        lines = f" (lines {seen[ident].line + 1} and {key_node.start_mark.line + 1})"
                        dups.append((key_node.value, lines))
                    else:
                        seen[ident] = key_node.start_mark
                data: dict[Any, Any] = _Duplicated() if dups else {}
                if dups:
                    data.duplicates = dups  # type: ignore[attr-defined]
                    self.duplicates_found = True
                yield data
                data.update(self.construct_mapping(node))

        Loader.add_constructor("tag:yaml.org,2002:map", Loader.construct_yaml_map)
        _YAML_LOADER = Loader
    return _YAML_LOADER


def _text(value: str) -> str:
    """``value`` safe to print: lone surrogates shown as escapes."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def _bad_text(value: Any) -> bool:
    """True for a str holding a lone surrogate (JSON/YAML allow "\\ud800"; no UTF-8 encoder, span or file does)."""
    if value.__class__ is not str or value.isascii():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_document(doc: Any) -> None:
    """Refuse what a parser accepts but would go wrong later, naming the field path.

    A key given twice in one mapping (JSON and YAML keep the last silently), and
    strings with lone surrogate escapes (not Unicode text: they cannot be hashed as
    UTF-8, written to a span or versioned). Iterative, so any depth the parser
    accepted is fine.
    """
    stack: list[tuple[Any, str]] = [(doc, "")]
    seen: set[int] = set()
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            if id(value) in seen:  # YAML aliases share (and may nest) objects
                continue
            seen.add(id(value))
            if isinstance(value, _Duplicated):
                key, where = value.duplicates[0]
                shown = _text(key) if isinstance(key, str) else repr(key)
                raise ConfigError(
                    f"{path}.{shown}" if path else shown,
                    f"key {shown!r} is given more than once{where}; the parser would keep only the last",
                    "keep one of them",
                )
            items = list(value.items())
            for key, item in reversed(items):
                shown = _text(key) if isinstance(key, str) else str(key)
                sub = f"{path}.{shown}" if path else shown
                if _bad_text(key):
                    raise ConfigError(
                        path or "(top level)",
                        f'key "{shown}" holds a lone surrogate escape, which is not a Unicode character',
                        "write the character itself rather than an escape",
                    )
                stack.append((item, sub))
        elif isinstance(value, list):
            if id(value) in seen:
                continue
            seen.add(id(value))
            for i in range(len(value) - 1, -1, -1):
                stack.append((value[i], f"{path}[{i}]"))
        elif _bad_text(value):
            raise ConfigError(
                path or "(top level)",
                f'"{_text(value)}" holds a lone surrogate escape, which is not a Unicode character',
                "write the character itself rather than an escape",
            )


def read_config_bytes(path: str) -> bytes:
    """The raw bytes of a config file, refusing one above MAX_CONFIG_BYTES before reading it whole."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(
            "(file)", f"cannot read: {exc.strerror}", "check the path and permissions", source=path
        ) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            "(file)",
            f"larger than the limit of {MAX_CONFIG_BYTES // (1024 * 1024)} MiB per config file",
            "split the config, or remove concluded experiments",
            source=path,
        )
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
