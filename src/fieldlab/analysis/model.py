"""The shapes the analysis passes around: what to compute, one normalised span, and the aggregates.

A newcomer reads this module first: :class:`QuerySpec` (unit kinds, custom
:class:`Metric` s, holdout coverage) goes into a source, :class:`Span` is the
normalised span both engines read, and :class:`Aggregates` (per experiment and
variant a :class:`GroupData` of per-unit arrays) comes out.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .. import attributes as A
from ..errors import FieldLabError

__all__ = [
    "HIST_PER_DECADE",
    "UNIT_FALLBACK_ORDER",
    "SourceError",
    "hist_value_ms",
    "Metric",
    "parse_metric",
    "QuerySpec",
    "Filter",
    "parse_where",
    "FILTER_ALIASES",
    "TimeWindow",
    "parse_time",
    "time_window",
    "Span",
    "BAD_LINE",
    "GroupData",
    "ExperimentData",
    "Aggregates",
]

#: Latency histogram resolution: bins per factor of ten (200 -> bins 1.16 % wide).
HIST_PER_DECADE = 200
#: Without a configuration the unit kind is unknown: the first of these found on the span is used,
#: and the trace id (kind ``request``) when none is.
UNIT_FALLBACK_ORDER = ("user", "visitor", "session")


class SourceError(FieldLabError):
    """A source cannot be read; the message names the source and the fix."""


def hist_value_ms(bin_index: Any) -> Any:
    """Representative latency in milliseconds (geometric bin centre) of a histogram bin."""
    return 10.0 ** ((bin_index + 0.5) / HIST_PER_DECADE) / 1e6


# --------------------------------------------------------------------------- what to compute


@dataclass(frozen=True)
class Metric:
    """A custom metric read from a SERVER-span attribute.

    ``kind == "mean"``: the attribute's numeric value, averaged over the
    requests that carry it (a ratio metric per unit, analysed with the delta
    method). ``kind == "conversion"``: the share of units with at least one
    request whose attribute equals ``value`` (e.g. ``app.checkout.completed=true``).
    """

    name: str
    attr: str
    kind: str
    value: str | None = None
    higher_is_better: bool = True


def parse_metric(text: str) -> Metric:
    """Parse ``--metric``: ``ATTR`` (numeric mean), ``ATTR=VALUE`` (conversion); a leading ``-``
    means lower is better (``-app.queue.wait_ms``)."""
    raw = text.strip()
    higher = True
    if raw.startswith("-"):
        higher, raw = False, raw[1:]
    if not raw:
        raise ValueError(
            f"--metric {text!r}: empty attribute name; write --metric app.checkout.completed=true "
            "or --metric app.cart.value"
        )
    if "=" in raw:
        attr, value = raw.split("=", 1)
        attr, value = attr.strip(), value.strip()
        if not attr or not value:
            raise ValueError(f"--metric {text!r}: a conversion needs ATTR=VALUE, e.g. app.checkout.completed=true")
        return Metric(name=f"{attr}={value}", attr=attr, kind="conversion", value=value, higher_is_better=higher)
    return Metric(name=raw, attr=raw, kind="mean", higher_is_better=higher)


#: ``--where`` shorthands and semantic-convention aliases: a filter on the first name reads the first of these
#: attributes a span carries (current name, then the older one), so old and new instrumentation both match.
FILTER_ALIASES: Mapping[str, tuple[str, ...]] = {
    "route": (A.HTTP_ROUTE,),
    "path": ("url.path", "http.target"),
    "url.path": ("url.path", "http.target"),
    "method": (A.HTTP_METHOD, "http.method"),
    A.HTTP_METHOD: (A.HTTP_METHOD, "http.method"),
    "http.method": (A.HTTP_METHOD, "http.method"),
}
_METHOD_ATTRS = (A.HTTP_METHOD, "http.method")


@dataclass(frozen=True)
class Filter:
    """``--where ATTR=VALUE``: only requests (SERVER spans) whose attribute has this value are analysed.

    ``attrs`` are the attribute names read, first present wins (``method`` reads ``http.request.method``,
    then the older ``http.method``); ``value`` is compared as text, as attribute values are stored.
    """

    name: str
    attrs: tuple[str, ...]
    value: str

    def __str__(self) -> str:
        return f"{self.name}={self.value}"

    def matches(self, attrs: Mapping[str, str]) -> bool:
        """Whether a span's attributes pass this filter (the Python twin of the SQL condition)."""
        for a in self.attrs:
            got = attrs.get(a)
            if got:
                return got == self.value
        return self.value == ""


def parse_where(text: str) -> Filter:
    """Parse ``--where ATTR=VALUE`` (``http.route=/checkout``, ``method=POST``, ``url.path=/login``).

    Shorthands: ``route`` (``http.route``), ``path`` (``url.path``, else ``http.target``), ``method``
    (``http.request.method``, else ``http.method``; the value is upper-cased as HTTP methods are).
    """
    name, sep, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name:
        raise ValueError(
            f"--where {text!r}: write ATTR=VALUE, e.g. --where http.route=/checkout or --where method=POST"
        )
    attrs = FILTER_ALIASES.get(name, (name,))
    if attrs[0] in _METHOD_ATTRS:
        value = value.upper()
    return Filter(name=attrs[0], attrs=attrs, value=value)


_ISO_FRACTION = re.compile(r"^(?P<head>[^.,]*T[^.,]*?)[.,](?P<frac>\d+)(?P<tail>.*)$")


def parse_time(value: Any, flag: str = "since") -> int:
    """A point in time as integer nanoseconds since the epoch, from epoch seconds (``1796000000``,
    ``1796000000.25``), an ISO-8601 timestamp (``2026-12-04T20:31:07Z``; no zone = UTC; fractions to the
    nanosecond) or a timezone-aware :class:`datetime.datetime`. ``flag`` names the argument in the error."""
    import datetime as dt
    from decimal import Decimal, InvalidOperation

    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)

    def from_datetime(d: dt.datetime) -> int:
        if d.tzinfo is None:
            d = d.replace(tzinfo=dt.timezone.utc)
        delta = d - epoch
        return (delta.days * 86400 + delta.seconds) * 10**9 + delta.microseconds * 1000

    if isinstance(value, dt.datetime):
        return from_datetime(value)
    if isinstance(value, bool):
        value = str(value)
    if isinstance(value, int):
        return value * 10**9
    if isinstance(value, float):
        if math.isfinite(value):
            return int(Decimal(repr(value)) * 10**9)
        value = str(value)
    text = str(value).strip()
    try:
        secs = Decimal(text)
        if secs.is_finite():
            return int(secs * 10**9)
    except InvalidOperation:
        pass
    extra_ns = 0
    m = _ISO_FRACTION.match(text)
    if m:  # datetime reads microseconds at most: the nanoseconds are added here
        frac = m["frac"][:9].ljust(9, "0")
        text, extra_ns = m["head"] + m["tail"], int(frac)
    try:
        d = dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise ValueError(
            f"--{flag} {value!r}: not a time; give an ISO-8601 timestamp (2026-12-04T20:31:07Z; without a zone, "
            "UTC) or seconds since the epoch (1796000000)"
        ) from None
    return from_datetime(d) + extra_ns


@dataclass(frozen=True)
class TimeWindow:
    """``--since`` / ``--until``: only requests (SERVER spans) that started in ``[since, until)`` are read.

    Bounds are integer nanoseconds since the epoch (None: open). A span outside the window is not read at
    all (nor counted among the spans), so a ClickHouse table can skip whole partitions.
    """

    since_ns: int | None = None
    until_ns: int | None = None

    def contains(self, start_ns: int) -> bool:
        """Whether a span that started at ``start_ns`` is in the window (the Python twin of the SQL)."""
        return (self.since_ns is None or start_ns >= self.since_ns) and (
            self.until_ns is None or start_ns < self.until_ns
        )

    @property
    def since(self) -> float | None:
        """The lower bound in seconds since the epoch (None: open)."""
        return None if self.since_ns is None else self.since_ns / 1e9

    @property
    def until(self) -> float | None:
        """The upper bound in seconds since the epoch (None: open)."""
        return None if self.until_ns is None else self.until_ns / 1e9

    def __str__(self) -> str:
        def iso(ns: int | None) -> str:
            if ns is None:
                return "open"
            import datetime as dt

            d = dt.datetime.fromtimestamp(ns // 10**9, dt.timezone.utc)
            frac = f".{ns % 10**9:09d}".rstrip("0").rstrip(".")
            return d.strftime("%Y-%m-%dT%H:%M:%S") + frac + "Z"

        return f"[{iso(self.since_ns)}, {iso(self.until_ns)})"


def time_window(since: Any = None, until: Any = None) -> TimeWindow | None:
    """The window of ``since`` / ``until`` (see :func:`parse_time`), None when both are None.
    ``until`` not after ``since`` is a ValueError naming both flags."""
    if since is None and until is None:
        return None
    lo = None if since is None else parse_time(since, "since")
    hi = None if until is None else parse_time(until, "until")
    if lo is not None and hi is not None and hi <= lo:
        raise ValueError(
            f"--until {until!r} is not after --since {since!r}: the window [since, until) would be empty; "
            "swap them or widen the window"
        )
    return TimeWindow(lo, hi)


@dataclass(frozen=True)
class QuerySpec:
    """What the aggregation needs: unit kind per experiment (from a config), custom metrics and filters."""

    unit_kinds: Mapping[str, str] = field(default_factory=dict)
    metrics: tuple[Metric, ...] = ()
    #: holdout key -> the experiments it covers (from a config). A unit held out by a holdout leaves only the
    #: experiments that holdout covers; without a config a variant attribute on the span is taken as an assignment.
    holdout_experiments: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: ``--where`` filters: a SERVER span that fails one is counted as read but not analysed.
    filters: tuple[Filter, ...] = ()
    #: ``--since`` / ``--until``: only spans that started in this window are read (None: all).
    window: TimeWindow | None = None


class Span(NamedTuple):
    """One span as both engines read it (the columns of :func:`~fieldlab.analysis.sql.file_spans_sql`).

    A line of a file that is not usable JSON gives one ``Span`` with ``line_ok`` False (and nothing else), so it
    is counted, never fatal. Attribute values are strings, as the Collector's ClickHouse exporter stores them.
    """

    line_ok: bool
    trace_id: str
    span_id: str
    start_ns: int
    duration_ns: float
    is_server: bool
    status_error: bool
    attrs: Mapping[str, str]


#: The one ``Span`` an unusable line yields.
BAD_LINE = Span(False, "", "", 0, 0.0, False, False, {})


# --------------------------------------------------------------------------- the aggregates


@dataclass
class GroupData:
    """Per-unit aggregates of one variant (or one holdout group), as numpy arrays of equal length."""

    requests: Any
    errors: Any
    latency_sum_ms: Any
    exposed: Any
    first_seen: Any  # seconds since the epoch
    metric_sums: dict[str, Any]
    metric_counts: dict[str, Any]
    conversions: dict[str, Any]
    hist_bins: Any
    hist_all: Any
    hist_exposed: Any
    #: per unit, its requests that read the variant (``fieldlab.exposed.<key>`` on the span)
    exposed_requests: Any = None
    #: per unit, its requests served control because its variant was paused (``fieldlab.guardrail.<key>``)
    guarded_requests: Any = None
    #: per unit, the bandit period it belongs to: the lowest weights version (``fieldlab.bandit.<key>``, read as
    #: ClickHouse's ``toInt64OrZero``) among its requests that carry one; 0 when none does (see analysis.bandits)
    period: Any = None

    @property
    def units(self) -> int:
        return int(len(self.requests))

    def select(self, mask: Any) -> GroupData:
        """The units where ``mask`` is true (histograms are request-level and are kept)."""
        return GroupData(
            self.requests[mask],
            self.errors[mask],
            self.latency_sum_ms[mask],
            self.exposed[mask],
            self.first_seen[mask],
            {k: v[mask] for k, v in self.metric_sums.items()},
            {k: v[mask] for k, v in self.metric_counts.items()},
            {k: v[mask] for k, v in self.conversions.items()},
            self.hist_bins,
            self.hist_all,
            self.hist_exposed,
            None if self.exposed_requests is None else self.exposed_requests[mask],
            guarded_requests=None if self.guarded_requests is None else self.guarded_requests[mask],
            period=None if self.period is None else self.period[mask],
        )


@dataclass
class ExperimentData:
    """One experiment's per-variant unit aggregates and what was excluded (forced requests, units in two variants)."""

    key: str
    variants: dict[str, GroupData]
    unit_kinds: list[str]
    forced_requests: int = 0
    multi_variant_units: int = 0


@dataclass
class Aggregates:
    """Everything a source hands to the statistics: experiments, holdout groups and reading counters."""

    experiments: dict[str, ExperimentData]
    holdouts: dict[str, GroupData]
    spans: int = 0
    server_spans: int = 0
    malformed_lines: int = 0
    #: lines longer than the reader's cap (``max_line_bytes``), skipped unread
    long_lines: int = 0
    #: ``"path: why"`` for each file that could be read only in part (e.g. a truncated gzip)
    damaged_files: list[str] = field(default_factory=list)
    engine: str = ""
    source: str = ""
    seconds: float = 0.0
