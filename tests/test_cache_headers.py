"""The pure cache-header decision: which Vary / Cache-Control a response that read variants needs."""

from __future__ import annotations

import doctest

import pytest

from fieldlab import _cache_headers as ch
from fieldlab._cache_headers import (
    COOKIE,
    OPAQUE,
    CacheNeeds,
    header_source,
    merge_cache_control,
    merge_vary,
    needs,
    response_headers,
    source_for,
)


def test_doctests_hold() -> None:
    result = doctest.testmod(ch)
    assert result.attempted >= 3 and result.failed == 0


@pytest.mark.parametrize(
    ("how", "name", "source"),
    [
        ("header", "X-User-Id", "header:X-User-Id"),
        ("cookie", "uid", COOKIE),
        ("visitor", "fieldlab_visitor", COOKIE),
        ("call", "", OPAQUE),
        ("request", "", OPAQUE),
        ("header", "", OPAQUE),
        ("something-new", "", OPAQUE),
    ],
)
def test_source_for_each_resolver(how: str, name: str, source: str) -> None:
    assert source_for(how, name) == source


def test_cookie_sources_give_one_vary_cookie() -> None:
    # visitor cookie, session and a session login all come from the Cookie header: named once
    got = needs(["visitor", "session", "user"], {"visitor": COOKIE, "session": COOKIE, "user": COOKIE})
    assert got == CacheNeeds(("Cookie",), False)


def test_header_units_vary_on_the_header_named_once_case_insensitively() -> None:
    got = needs(
        ["user", "team", "visitor"], {"user": header_source("X-User-Id"), "team": "header:x-user-id", "visitor": COOKIE}
    )
    assert got.vary == ("X-User-Id", "Cookie") and not got.private


def test_callable_or_unknown_source_makes_the_response_private() -> None:
    assert needs(["user"], {"user": OPAQUE}) == CacheNeeds((), True)
    assert needs(["tenant"], {}) == CacheNeeds((), True)  # no source known: fail safe
    assert needs(["user"], {"user": "header:Bad Name"}).private  # not a header field name: cannot vary on it
    mixed = needs(["visitor", "request"], {"visitor": COOKIE, "request": OPAQUE})
    assert mixed == CacheNeeds(("Cookie",), True)


def test_nothing_read_needs_nothing() -> None:
    assert not needs([], {"user": COOKIE})
    assert response_headers([], {"user": OPAQUE}, vary="Accept", cache_control="public") == {}


@pytest.mark.parametrize(
    ("existing", "names", "merged"),
    [
        (None, ["Cookie"], "Cookie"),
        ("", ["Cookie"], "Cookie"),
        ("Accept-Encoding", ["Cookie"], "Accept-Encoding, Cookie"),
        ("accept-encoding, COOKIE", ["Cookie", "X-User-Id"], "accept-encoding, COOKIE, X-User-Id"),
        (["Accept-Encoding", "Accept-Language, Cookie"], ["cookie"], "Accept-Encoding, Accept-Language, Cookie"),
        ("*", ["Cookie"], "*"),
        ("Accept, *", ["Cookie"], "*"),
        ("Accept", ["*"], "*"),
        ("Accept,, ,Cookie", [], "Accept, Cookie"),
        (None, [], None),
    ],
)
def test_merge_vary(existing: object, names: list[str], merged: str | None) -> None:
    assert merge_vary(existing, names) == merged  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("existing", "merged"),
    [
        (None, "private"),
        ("", "private"),
        ("max-age=60", "max-age=60, private"),
        ("public, max-age=60", "max-age=60, private"),
        ("PUBLIC, s-maxage=300, max-age=0", "s-maxage=300, max-age=0, private"),
        ("private", "private"),
        ("max-age=10, Private", "max-age=10, Private"),
        ('private="Set-Cookie", max-age=60', "max-age=60, private"),  # only some fields private: not enough
        ("no-store", "no-store"),
        ("public, no-store", "public, no-store"),  # no cache stores it anyway
        ("no-cache", "no-cache, private"),  # a shared cache may store it and revalidate: still needs private
        (["max-age=60", "public"], "max-age=60, private"),
    ],
)
def test_merge_cache_control_private(existing: object, merged: str) -> None:
    assert merge_cache_control(existing, True) == merged  # type: ignore[arg-type]


def test_merge_cache_control_without_private_changes_nothing() -> None:
    assert merge_cache_control("public, max-age=60", False) == "public, max-age=60"
    assert merge_cache_control(None, False) is None


def test_response_headers_returns_only_what_changes() -> None:
    sources = {"visitor": COOKIE, "user": OPAQUE, "team": "header:X-Team"}
    assert response_headers(["visitor"], sources, vary="Cookie") == {}  # the session middleware already said so
    assert response_headers(["visitor"], sources, vary="cookie, accept") == {}
    assert response_headers(["visitor"], sources) == {"Vary": "Cookie"}
    assert response_headers(["user"], sources, cache_control="no-store") == {}
    assert response_headers(["user", "team"], sources, vary="Accept", cache_control="public, max-age=5") == {
        "Vary": "Accept, X-Team",
        "Cache-Control": "max-age=5, private",
    }
    assert response_headers(["team"], sources, vary="*") == {}


def test_a_unit_created_by_this_response_makes_it_private() -> None:
    # the request carried no cookie: a cache keyed on Cookie would give this page to every new visitor
    assert needs(["visitor"], {"visitor": COOKIE}, new_kinds=["visitor"]) == CacheNeeds(("Cookie",), True)
    assert needs(["user"], {"user": COOKIE, "visitor": COOKIE}, new_kinds=["visitor"]) == CacheNeeds(("Cookie",), False)
    assert response_headers(["session"], {"session": COOKIE}, new_kinds={"session"}, cache_control="max-age=60") == {
        "Vary": "Cookie",
        "Cache-Control": "max-age=60, private",
    }
