"""Reading OTLP JSON-lines files safely: compressed chunks, a line cap, strict parsing, spans.

The pure-Python reader of the files :class:`~fieldlab.analysis.sources.FileSource` analyses (and the reference
for what embedded ClickHouse reads): files come in bounded chunks (gzip decompressed as it goes, damage
reported as :class:`DamagedFile`), lines longer than a cap are skipped unread (:data:`LONG_LINE`), each line is
parsed as ClickHouse would parse it (:func:`parse_line`), and every span becomes a :class:`~.model.Span` with
values read as ClickHouse reads them (:func:`clickhouse_text`). Memory never grows with the file or one line.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from .. import attributes as A
from .model import BAD_LINE, SourceError, Span

__all__ = [
    "MAX_LINE_BYTES",
    "CHUNK_BYTES",
    "LONG_LINE",
    "DamagedFile",
    "detect_compression",
    "file_chunks",
    "iter_lines",
    "scan_file",
    "clickhouse_text",
    "int64_or_zero",
    "parse_line",
    "spans_of_line",
    "read_spans",
    "with_packed_variants",
]

#: Default cap on one line of a JSON-lines file (16 MiB). A longer line is skipped unread and counted, so the
#: reader's memory never grows with the longest line; the OTLP file exporter writes one export batch per line,
#: well below this. ``FileSource(max_line_bytes=...)`` and ``fieldlab analyze --max-line-bytes`` change it.
MAX_LINE_BYTES = 16 * 1024 * 1024
#: Bytes read (and, for gzip, decompressed) per step.
CHUNK_BYTES = 1 << 20
#: What :func:`iter_lines` yields in place of a line over the cap (skipped unread).
LONG_LINE: Any = object()
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_INT64 = re.compile(r"[+-]?[0-9]+\Z")


class DamagedFile(Exception):
    """A file that can be read only up to some point (truncated or corrupt compressed data)."""


def file_chunks(path: str, kind: str) -> Iterator[bytes]:
    """The file's (decompressed) bytes in pieces of at most ``CHUNK_BYTES``; raises :class:`DamagedFile` where the
    compressed stream is truncated or corrupt. Output per step is bounded too (a highly compressible
    member never expands all at once)."""
    with open(path, "rb") as f:
        if kind != "gzip":
            while True:
                raw = f.read(CHUNK_BYTES)
                if not raw:
                    return
                yield raw
        d = zlib.decompressobj(wbits=31)
        started = False
        while True:
            raw = f.read(CHUNK_BYTES)
            if not raw:
                if started and not d.eof:
                    raise DamagedFile("truncated gzip (the file ends inside compressed data)")
                return
            buf = raw
            while True:
                if not started:
                    buf = buf.lstrip(b"\0")  # zero padding after the last member, as gzip(1) accepts
                    if not buf:
                        break
                    started = True
                try:
                    out = d.decompress(buf, CHUNK_BYTES)
                except zlib.error as exc:
                    raise DamagedFile(f"corrupt gzip data ({exc})") from None
                if out:
                    yield out
                if d.eof:  # a member ended; another may follow (concatenated gzip)
                    buf = d.unused_data
                    d = zlib.decompressobj(wbits=31)
                    started = False
                    continue
                buf = d.unconsumed_tail
                if not buf and len(out) < CHUNK_BYTES:
                    break


def iter_lines(chunks: Iterable[bytes], max_line: int) -> Iterator[Any]:
    """Lines (without the newline) from byte chunks; a line longer than ``max_line`` yields ``LONG_LINE`` once
    and its bytes are dropped as they arrive, never joined."""
    parts: list[bytes] = []
    size = 0
    skipping = False
    for chunk in chunks:
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            end = len(chunk) if nl < 0 else nl
            if not skipping:
                size += end - start
                if size > max_line:
                    parts, skipping = [], True
                    yield LONG_LINE
                elif nl >= 0:
                    yield b"".join(parts) + chunk[start:nl] if parts else chunk[start:nl]
                    parts = []
                elif end > start:
                    parts.append(chunk[start:end])
            if nl < 0:
                break
            skipping, size, start = False, 0, nl + 1
    if parts and not skipping:
        yield b"".join(parts)


def scan_file(path: str, kind: str, max_line: int) -> str | None:
    """Why embedded ClickHouse cannot read ``path`` line by line (an over-long line, damaged data), or None.

    ClickHouse fails the whole query on a truncated gzip and holds a whole line in memory, so such files are
    read by the Python reader instead, which skips and counts what it cannot use. Reads in bounded chunks.
    """
    if kind == "zstd":
        return None  # only chdb reads zstd; it reports damage itself
    run = 0  # bytes since the last newline
    try:
        for chunk in file_chunks(path, kind):
            first = chunk.find(b"\n")
            if first < 0:
                run += len(chunk)
            else:
                if run + first > max_line:
                    return f"a line longer than {max_line} bytes"
                run = len(chunk) - 1 - chunk.rfind(b"\n")
            if run > max_line:
                return f"a line longer than {max_line} bytes"
    except DamagedFile as exc:
        return str(exc)
    return None


def clickhouse_text(x: Any) -> str:
    """A JSON value as ClickHouse's ``JSONExtract(..., 'String')`` gives it, so both engines read alike:
    strings as they are, numbers and booleans as their text, objects and arrays as compact JSON, null as ''."""
    if isinstance(x, str):
        return x
    if x is None:
        return ""
    if x is True or x is False:
        return "true" if x else "false"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if x.is_integer() and abs(x) < 1e21:
            return str(int(x))
        r = repr(x)
        return r.replace("e-0", "e-").replace("e+0", "e").replace("e+", "e")
    return json.dumps(x, separators=(",", ":"), ensure_ascii=False)


def int64_or_zero(x: Any) -> int:
    """ClickHouse's ``toInt64OrZero`` of the value's text: an integer in the int64 range, else 0."""
    s = clickhouse_text(x)
    if not _INT64.match(s):
        return 0
    v = int(s)
    return v if -(1 << 63) <= v < (1 << 63) else 0


def _finite_float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"number out of range: {text}")
    return v


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _has_lone_surrogate(doc: Any) -> bool:
    """Whether any string (key or value) holds a lone UTF-16 surrogate (``"\\ud800"``): not valid UTF-8 text."""
    stack = [doc]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            try:
                x.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return False


#: ClickHouse's JSON parser accepts at most this many nested levels; so does the Python reader.
_MAX_JSON_DEPTH = 1024
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def _json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in a JSON text (strings ignored)."""
    depth = deepest = 0
    for b in _JSON_BRACKET.findall(_JSON_STRING.sub("", text)):
        depth += 1 if b in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _parse_deep(text: str) -> Any:
    """A line Python's parser gave up on (about 1000 levels, less on a deep stack): parsed when ClickHouse
    would parse it (at most :data:`_MAX_JSON_DEPTH` levels), else None, so both engines agree."""
    if _json_depth(text) > _MAX_JSON_DEPTH:
        return None
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(limit + 2 * _MAX_JSON_DEPTH)
    try:
        return json.loads(text, parse_float=_finite_float, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return None
    finally:
        sys.setrecursionlimit(limit)


def parse_line(line: bytes) -> Any:
    """A JSON-lines line as a dict, or None when the line is not a usable JSON object.

    The same lines ClickHouse rejects are rejected: not UTF-8, not JSON, numbers out of range (``1e999``),
    ``NaN``, nesting deeper than the parser allows, lone surrogate escapes, anything but an object.
    """
    try:
        text = line.decode("utf-8")
        doc = json.loads(text, parse_float=_finite_float, parse_constant=_no_constant)
    except ValueError:
        return None
    except RecursionError:
        doc = _parse_deep(text)
        if doc is None:
            return None
    if not isinstance(doc, dict):
        return None
    if _SURROGATE_ESCAPE.search(line) and _has_lone_surrogate(doc):
        return None
    return doc


def _dict(x: Any) -> Mapping[str, Any]:
    return x if isinstance(x, dict) else {}


def _list(x: Any) -> Any:
    """A JSON array, or nothing (a wrong shape is treated as empty, as ClickHouse's JSONExtract does)."""
    return x if isinstance(x, list) else ()


def _value_str(v: Any) -> str:
    """An OTLP AnyValue as the ClickHouse exporter stores it: a string (the first of string, bool, int,
    double it holds; arrays, maps and bytes are '')."""
    if not isinstance(v, dict):
        return ""
    for k in ("stringValue", "boolValue", "intValue", "doubleValue"):
        if k in v:
            return clickhouse_text(v[k])
    return ""


def spans_of_line(doc: Mapping[str, Any]) -> Iterator[Span]:
    """A :class:`~.model.Span` per span of a parsed line; a wrong-typed field
    reads as ClickHouse reads it (see :func:`clickhouse_text`), a wrong-shaped element is skipped, never the line."""
    for rs in _list(doc.get("resourceSpans")):
        for ss in _list(_dict(rs).get("scopeSpans")):
            for sp in _list(_dict(ss).get("spans")):
                if not isinstance(sp, dict):
                    continue
                start = int64_or_zero(sp.get("startTimeUnixNano"))
                end = int64_or_zero(sp.get("endTimeUnixNano"))
                attrs: dict[str, str] = {}
                for a in _list(sp.get("attributes")):
                    if isinstance(a, dict):
                        key = clickhouse_text(a.get("key"))
                        if key not in attrs:  # the first of repeated keys, as ClickHouse's map lookup
                            attrs[key] = _value_str(a.get("value"))
                yield Span(
                    True,
                    clickhouse_text(sp.get("traceId")),
                    clickhouse_text(sp.get("spanId")),
                    start,
                    float(end - start),
                    clickhouse_text(sp.get("kind")) in ("2", "SPAN_KIND_SERVER"),
                    clickhouse_text(_dict(sp.get("status")).get("code")) in ("2", "STATUS_CODE_ERROR"),
                    with_packed_variants(attrs),
                )


def with_packed_variants(attrs: dict[str, str]) -> dict[str, str]:
    """``attrs`` plus the variants held only in ``fieldlab.assignments`` (see
    :func:`fieldlab.analysis.sql.with_packed_variants_sql`); an individual attribute wins."""
    packed = attrs.get(A.ASSIGNMENTS)
    if packed:
        for key, variant in A.unpack_assignments(packed).items():
            attrs.setdefault(A.variant_attr(key), variant)
    return attrs


def detect_compression(path: str) -> str:
    """``gzip``, ``zstd`` (the Collector file exporter's ``compression: zstd``) or ``none``, by content.

    Raises OSError when the file cannot be opened; :func:`~fieldlab.analysis.sql.file_spans_sql` takes the
    result as each file's ``compression`` argument.
    """
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head == b"\x28\xb5\x2f\xfd":
        return "zstd"
    return "none"


def read_spans(
    files: Sequence[tuple[str, str]],
    max_line_bytes: int = MAX_LINE_BYTES,
    counts: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
    description: str = "",
) -> Iterator[Span]:
    """Every span of ``files`` (``(path, compression)`` pairs), in file order; an unusable line yields
    :data:`~.model.BAD_LINE`. Over-long lines and damaged files are counted in ``counts`` (``long``,
    ``damaged``), never fatal; a file that cannot be read, or a zstd file, raises :class:`SourceError`.
    ``progress`` gets the share read, at most twice a second."""
    counts = counts if counts is not None else {"long": 0, "damaged": []}
    total = sum(os.path.getsize(p) for p, _ in files) or 1
    done = 0
    last = time.monotonic()
    for path, kind in files:
        if kind == "zstd":
            raise SourceError(
                f"{path}: zstd-compressed; the Python reader cannot read zstd: install chdb "
                "(the default engine reads it) or decompress the file"
            )
        size = os.path.getsize(path)
        read = 0
        try:
            for line in iter_lines(file_chunks(path, kind), max_line_bytes):
                if line is LONG_LINE:
                    counts["long"] += 1
                    continue
                read += len(line) + 1
                if progress and time.monotonic() - last > 0.5:
                    last = time.monotonic()
                    progress(f"read {100 * (done + min(read, size)) / total:5.1f}% of {description}")
                if not line.strip(b" "):
                    continue
                doc = parse_line(line)
                if doc is None:
                    yield BAD_LINE
                    continue
                yield from spans_of_line(doc)
        except DamagedFile as exc:
            counts["damaged"].append(f"{path}: {exc}")
        except OSError as exc:
            raise SourceError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
        done += size
