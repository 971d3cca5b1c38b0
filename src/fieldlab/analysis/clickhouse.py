"""Running the analysis SQL on ClickHouse: embedded (chdb, in this process) or a server (clickhouse-connect).

Each function returns a *runner*: ``run(sql) -> list of row dicts`` with plain JSON values (64-bit integers as
numbers), which :mod:`fieldlab.analysis.sql_rows` decodes. Errors of the database pass through as raised;
the sources turn them into one-line :class:`~.model.SourceError` s.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable
from typing import Any

from .model import SourceError

__all__ = ["Runner", "chdb_available", "query_chdb", "chdb_session_runner", "connect"]

#: ``run(sql) -> rows``: what a :class:`~fieldlab.analysis.sources.ClickHouseSource` queries through.
Runner = Callable[[str], list[dict[str, Any]]]


def chdb_available() -> bool:
    """Whether embedded ClickHouse (the ``chdb`` package, in the ``analysis`` extra) can be imported."""
    try:
        import chdb  # noqa: F401
    except Exception:
        return False
    return True


def _json_rows(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def query_chdb(sql: str) -> list[dict[str, Any]]:
    """Rows of ``sql`` run by embedded ClickHouse (``chdb.query``), e.g. over ``file()`` reads of span files."""
    import chdb

    # storage_file_read_method = 'read': chdb would otherwise mmap the files, and the mapped pages count
    # as the process's memory (peak RSS grew with the file size in the benchmark).
    res = chdb.query(
        sql + " SETTINGS output_format_json_quote_64bit_integers = 0, "
        "output_format_json_quote_denormals = 0, storage_file_read_method = 'read'",
        "JSONEachRow",
    )
    # surrogateescape: ClickHouse passes a stored id's bytes through even when they are not UTF-8
    return _json_rows(res.bytes().decode("utf-8", "surrogateescape") if hasattr(res, "bytes") else str(res))


def chdb_session_runner(session: Any) -> Runner:
    """A runner over an embedded chdb session (``chdb.session.Session``) that holds the tables."""

    def run(sql: str) -> list[dict[str, Any]]:
        res = session.query(sql + " SETTINGS output_format_json_quote_64bit_integers = 0", "JSONEachRow")
        return _json_rows(res.bytes().decode("utf-8", "surrogateescape") if hasattr(res, "bytes") else str(res))

    return run


def connect(url: str, table: str | None = None) -> tuple[Runner, str, str]:
    """Connect to the server of a ``clickhouse://user:password@host:8123/database?table=otel_traces`` URL.

    Returns ``(runner, database.table, description)``. A URL of another scheme, a missing clickhouse-connect
    (the ``clickhouse`` extra) or a failed connection is a :class:`~.model.SourceError` that says the fix.
    """
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("clickhouse", "clickhouses", "http", "https"):
        raise SourceError(f"{url}: not a ClickHouse URL; write clickhouse://user:password@host:8123/database")
    q = urllib.parse.parse_qs(u.query)
    database = u.path.strip("/") or "default"
    table = table or q.get("table", ["otel_traces"])[0]
    if "." not in table:
        table = f"{database}.{table}"
    try:
        import clickhouse_connect
    except ImportError:
        raise SourceError("clickhouse:// sources need clickhouse-connect; pip install 'fieldlab[clickhouse]'") from None
    secure = u.scheme in ("clickhouses", "https")
    try:
        client = clickhouse_connect.get_client(
            host=u.hostname or "localhost",
            port=u.port or (8443 if secure else 8123),
            username=urllib.parse.unquote(u.username or "default"),
            password=urllib.parse.unquote(u.password or ""),
            database=database,
            secure=secure,
        )
    except Exception as exc:
        raise SourceError(
            f"{u.hostname}:{u.port or 8123}: cannot connect to ClickHouse ({exc}); "
            "check the host, port (HTTP interface, 8123) and credentials"
        ) from None

    def run(sql: str) -> list[dict[str, Any]]:
        return list(client.query(sql).named_results())

    return run, table, f"clickhouse:{u.hostname}/{table}"
