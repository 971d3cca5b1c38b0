"""Where spans come from, and the one aggregation every source performs.

fieldlab never needs individual spans for an analysis: it needs, per experiment
and per *unit of randomisation*, how many requests the unit made, how many
failed, their summed latency, whether the unit was exposed, when it was first
seen and its custom-metric sums; plus, per variant, a latency histogram. That
is :class:`Aggregates`, and every source produces exactly it:

* :class:`FileSource` -- OTLP JSON-lines files (the ``opentelemetry-exporter-
  otlp-json-file`` exporter and the Collector's file exporter; plain or gzip;
  files, directories, globs). The default engine is embedded ClickHouse
  (``chdb``): it streams the files and runs the same SQL as a server, and it was
  the fastest engine measured (see ``docs/statistics.md``). Without chdb, a
  streaming pure-Python reader computes identical aggregates, more slowly.
* :class:`ClickHouseSource` -- the Collector's ClickHouse exporter table
  (``otel_traces``) on a server (``clickhouse://`` URL, via clickhouse-connect)
  or on an embedded chdb session. All grouping happens in the database.

Both engines read spans into the same normalised shape (:class:`~.model.Span`)
and then run one SQL text (:func:`~.sql.aggregate_sql`) or its pure-Python twin
(:mod:`~.python_engine`), so files and tables give the same numbers for the same
spans. Memory is bounded by the per-unit aggregates, never by the span count.

The parts live in their own modules: :mod:`~.model` (what goes in and comes
out), :mod:`~.sql` (the SQL text), :mod:`~.sql_rows` (decoding its rows),
:mod:`~.clickhouse` (running it), :mod:`~.reader` (the files, line by line),
:mod:`~.python_engine`, :mod:`~.paths` and :mod:`~.progress`. This module keeps
their public names importable from ``fieldlab.analysis.sources``, as before.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .clickhouse import Runner, chdb_available, chdb_session_runner, connect, query_chdb
from .model import (
    HIST_PER_DECADE,
    UNIT_FALLBACK_ORDER,
    Aggregates,
    ExperimentData,
    GroupData,
    Metric,
    QuerySpec,
    SourceError,
    Span,
    hist_value_ms,
    parse_metric,
)
from .paths import expand_paths
from .progress import Ticker
from .python_engine import python_aggregate, python_unit_totals
from .reader import MAX_LINE_BYTES, detect_compression, read_spans, scan_file
from .sql import aggregate_sql, file_spans_sql, otel_traces_spans_sql, unit_totals_sql
from .sql_rows import rows_to_aggregates, unit_totals_from_row

__all__ = [
    "Metric",
    "parse_metric",
    "QuerySpec",
    "GroupData",
    "ExperimentData",
    "Aggregates",
    "Source",
    "FileSource",
    "ClickHouseSource",
    "open_source",
    "open_source_when_ready",
    "aggregate_sql",
    "file_spans_sql",
    "otel_traces_spans_sql",
    "unit_totals_sql",
    "SourceError",
    "HIST_PER_DECADE",
    "MAX_LINE_BYTES",
    "hist_value_ms",
    "UNIT_FALLBACK_ORDER",
    "Span",
]


class Source:
    """A place spans can be aggregated from: ``aggregate(spec) -> Aggregates``."""

    description = "source"

    def aggregate(self, spec: QuerySpec, progress: Callable[[str], None] | None = None) -> Aggregates:
        raise NotImplementedError

    def unit_totals(self, kind: str, metrics: Sequence[Metric] = ()) -> tuple[list[str], Any, str | None]:
        """Per-unit totals of every SERVER span for unit ``kind`` (for the balance check).

        Returns ``(ids, matrix, hashed_example)``: the matrix has one row per unit,
        ``[requests, errors, latency ms, metric sum, metric count, ...]``; a conversion
        metric's "sum" is 1 when any request matched. ``hashed_example`` is an
        ``h1:`` id when the spans carry hashed ids, else None.
        """
        raise NotImplementedError  # pragma: no cover - overridden


class FileSource(Source):
    """OTLP JSON-lines files: paths, directories and globs; gzip detected by content.

    ``engine``: ``"chdb"`` (embedded ClickHouse, default when installed),
    ``"python"`` (streaming ``json`` reader, no dependency) or ``"auto"``.
    ``max_line_bytes``: longer lines are skipped unread and counted (:data:`MAX_LINE_BYTES`).

    Bad input never stops a read: unusable lines are counted (``malformed_lines``), over-long lines too
    (``long_lines``), and a file that ends early or holds corrupt compressed data is read up to the
    damage and named in ``damaged_files``. A file that cannot be opened at all raises :class:`SourceError`.
    Embedded ClickHouse would fail the whole query on a damaged file and hold an over-long line in memory,
    so when a quick bounded pre-scan finds either, the Python reader reads the files instead (the result's
    ``engine`` says so); both readers count every line the same way.
    """

    def __init__(self, paths: Sequence[str] | str, engine: str = "auto", max_line_bytes: int = MAX_LINE_BYTES) -> None:
        if isinstance(paths, (str, os.PathLike)):
            paths = [os.fspath(paths)]
        self.paths = expand_paths([os.fspath(p) for p in paths])
        if engine not in ("auto", "chdb", "python"):
            raise SourceError(f"engine {engine!r} is unknown; use auto, chdb or python")
        if engine == "chdb" and not chdb_available():
            raise SourceError(
                "engine chdb: the chdb package is not installed; pip install 'fieldlab[analysis]', or use "
                "--engine python"
            )
        if not isinstance(max_line_bytes, int) or max_line_bytes < 1024:
            raise SourceError(
                f"max_line_bytes {max_line_bytes!r}: give a whole number of bytes of at least 1024 "
                f"(default {MAX_LINE_BYTES})"
            )
        self.max_line_bytes = max_line_bytes
        self.requested_engine = engine
        self.engine = "chdb" if engine == "auto" and chdb_available() else ("python" if engine == "auto" else engine)
        if self.engine == "chdb" and any(ch in p for p in self.paths for ch in "*?{}[]"):
            # ClickHouse's file() would read these characters as a glob; the Python reader takes names literally.
            if engine == "chdb":
                raise SourceError(
                    "a file name contains one of * ? { } [ ], which embedded ClickHouse reads as a "
                    "glob; rename the file or use --engine python"
                )
            self.engine = "python"
        self.description = ", ".join(self.paths) if len(self.paths) <= 3 else f"{len(self.paths)} files"

    def inputs(self) -> list[tuple[str, str]]:
        """``(absolute path, compression)`` per file, as :func:`~.sql.file_spans_sql` and
        :func:`~.reader.read_spans` take them; a file that cannot be opened is a SourceError."""
        out = []
        for p in self.paths:
            try:
                out.append((os.path.abspath(p), detect_compression(p)))
            except OSError as exc:
                raise SourceError(f"{p}: cannot read the file ({exc.strerror or exc}); check its permissions") from None
        return out

    def _chdb_obstacle(self, pairs: Sequence[tuple[str, str]]) -> str | None:
        """Why embedded ClickHouse cannot read these files safely (see :func:`~.reader.scan_file`), or None."""
        for path, kind in pairs:
            try:
                why = scan_file(path, kind, self.max_line_bytes)
            except OSError as exc:
                raise SourceError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
            if why:
                return f"{path}: {why}"
        return None

    def aggregate(self, spec: QuerySpec, progress: Callable[[str], None] | None = None) -> Aggregates:
        t0 = time.perf_counter()
        pairs = self.inputs()
        engine = self.engine
        if engine == "chdb":
            obstacle = self._chdb_obstacle(pairs)
            if obstacle:
                if any(c == "zstd" for _, c in pairs):
                    raise SourceError(
                        f"{obstacle}; the Python reader cannot read the zstd files next to it: "
                        "decompress them or analyse the damaged file separately"
                    )
                engine = f"python (embedded ClickHouse cannot skip {obstacle})"
        if engine == "chdb":
            if progress:
                total = sum(os.path.getsize(p) for p in self.paths)
                progress(f"reading {len(self.paths)} file(s), {total / 1e6:.1f} MB, with embedded ClickHouse ...")
            ticker = Ticker(progress, f"reading {self.description} with embedded ClickHouse") if progress else None
            try:
                rows = query_chdb(aggregate_sql(file_spans_sql(pairs, spec), spec))
            except Exception as exc:  # chdb raises its own error type
                why = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
                if self.requested_engine != "auto" or any(c == "zstd" for _, c in pairs):
                    raise SourceError(
                        f"{self.description}: embedded ClickHouse failed: {why}; try --engine python"
                    ) from None
                # e.g. the process already holds a chdb session on another path: read with Python instead
                agg = self._python(spec, progress)
                agg.engine, agg.source, agg.seconds = (
                    f"python (chdb unavailable: {why})",
                    self.description,
                    time.perf_counter() - t0,
                )
                return agg
            finally:
                if ticker:
                    ticker.stop()
            agg = rows_to_aggregates(rows, spec)
        else:
            agg = self._python(spec, progress)
        agg.engine, agg.source, agg.seconds = engine, self.description, time.perf_counter() - t0
        return agg

    def _python(self, spec: QuerySpec, progress: Callable[[str], None] | None) -> Aggregates:
        counts: dict[str, Any] = {"long": 0, "damaged": []}
        agg = python_aggregate(self.iter_spans(progress, counts), spec)
        agg.long_lines, agg.damaged_files = counts["long"], counts["damaged"]
        return agg

    def iter_spans(
        self, progress: Callable[[str], None] | None = None, counts: dict[str, Any] | None = None
    ) -> Iterator[Span]:
        """Every span of the files, read by the streaming pure-Python reader (:func:`~.reader.read_spans`);
        an unusable line yields a ``Span`` with ``line_ok`` False. Over-long lines and damaged files are
        counted in ``counts`` (``{"long": n, "damaged": [...]}``)."""
        return read_spans(self.inputs(), self.max_line_bytes, counts, progress, self.description)

    def unit_totals(self, kind: str, metrics: Sequence[Metric] = ()) -> tuple[list[str], Any, str | None]:
        """See :meth:`Source.unit_totals`; over-long lines and damaged files read are left in
        :attr:`last_read` (``{"long": n, "damaged": [...]}``) for the caller to report."""
        pairs = self.inputs()
        self.last_read: dict[str, Any] = {"long": 0, "damaged": []}
        if self.engine == "chdb" and not self._chdb_obstacle(pairs):
            spec = QuerySpec(metrics=tuple(metrics))
            try:
                rows = query_chdb(unit_totals_sql(file_spans_sql(pairs, spec), kind, metrics))
            except Exception as exc:
                if self.requested_engine == "auto":
                    return python_unit_totals(self.iter_spans(None, self.last_read), kind, metrics)
                raise SourceError(
                    f"{self.description}: embedded ClickHouse failed: {str(exc).splitlines()[0][:300]}; "
                    "try --engine python"
                ) from None
            return unit_totals_from_row(rows[0], metrics)
        return python_unit_totals(self.iter_spans(None, self.last_read), kind, metrics)


class ClickHouseSource(Source):
    """The Collector ClickHouse exporter's ``otel_traces`` table; all aggregation runs in the database.

    ``ClickHouseSource("clickhouse://user:pass@host:8123/db?table=otel_traces")`` connects with
    clickhouse-connect; ``ClickHouseSource.from_chdb(session, "db.otel_traces")`` runs the same SQL
    on an embedded chdb session (tests, local copies).
    """

    def __init__(
        self, url: str | None = None, *, table: str | None = None, runner: Runner | None = None, where: str = ""
    ) -> None:
        self.where = where
        if runner is not None:
            self._runner = runner
            self.table = table or "otel_traces"
            self.description = f"chdb:{self.table}"
            return
        if not url:
            raise SourceError("ClickHouseSource needs a clickhouse:// URL")
        self._runner, self.table, self.description = connect(url, table)

    @classmethod
    def from_chdb(cls, session: Any, table: str = "otel_traces", where: str = "") -> ClickHouseSource:
        """The same SQL on an embedded chdb session (``chdb.session.Session``)."""

        return cls(table=table, runner=chdb_session_runner(session), where=where)

    def run(self, sql: str) -> list[dict[str, Any]]:
        """Rows of ``sql`` run where this source's table lives (the server or the chdb session); the
        database's own errors pass through."""
        return self._runner(sql)

    def aggregate(self, spec: QuerySpec, progress: Callable[[str], None] | None = None) -> Aggregates:
        t0 = time.perf_counter()
        if progress:
            progress(f"aggregating {self.table} in ClickHouse ...")
        try:
            rows = self.run(aggregate_sql(otel_traces_spans_sql(self.table, self.where, spec), spec))
        except SourceError:
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise SourceError(
                f"{self.description}: query failed: {first}; check that the table has the "
                "Collector ClickHouse exporter schema (SpanAttributes, Duration, StatusCode, SpanKind)"
            ) from None
        agg = rows_to_aggregates(rows, spec)
        agg.engine, agg.source, agg.seconds = "clickhouse", self.description, time.perf_counter() - t0
        return agg

    def unit_totals(self, kind: str, metrics: Sequence[Metric] = ()) -> tuple[list[str], Any, str | None]:
        spec = QuerySpec(metrics=tuple(metrics))
        try:
            rows = self.run(unit_totals_sql(otel_traces_spans_sql(self.table, self.where, spec), kind, metrics))
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise SourceError(f"{self.description}: query failed: {first}") from None
        return unit_totals_from_row(rows[0], metrics)


def open_source(
    spec: str | Sequence[str] | Source, engine: str = "auto", max_line_bytes: int = MAX_LINE_BYTES
) -> Source:
    """A source from what a user typed: a ``clickhouse://`` URL, or files/directories/globs."""
    if isinstance(spec, Source):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        spec = [os.fspath(spec)]
    spec = list(spec)
    urls = [s for s in spec if isinstance(s, str) and "://" in s]
    if urls:
        if len(spec) != 1:
            raise SourceError("give either one clickhouse:// URL or files, not both")
        return ClickHouseSource(urls[0])
    if not spec:
        raise SourceError("no source given; pass OTLP JSON-lines files, a directory, a glob or a clickhouse:// URL")
    return FileSource(spec, engine=engine, max_line_bytes=max_line_bytes)


def open_source_when_ready(spec: str | Sequence[str] | Source, engine: str = "auto") -> Source | None:
    """:func:`open_source` for a controller that opens its source again every round (new span files appear as
    processes start): None, not an error, while the given directories hold no span files yet."""
    try:
        return open_source(spec, engine=engine)
    except SourceError:
        assert not isinstance(spec, Source)  # open_source returns a Source as it is
        specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
        if specs and all(isinstance(p, (str, os.PathLike)) and os.path.isdir(p) for p in specs):
            return None
        raise
