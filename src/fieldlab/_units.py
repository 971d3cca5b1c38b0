"""Unit ids at the edge: which text is a unit id, how header bytes become one, which ids are cached.

The assignment contract hashes the UTF-8 bytes of a unit id. A Python ``str``
can hold text with no UTF-8 form: a lone surrogate (``"\\ud800"`` from a JSON
body, ``"\\udcff"`` from bytes decoded with ``surrogateescape``). Such an id
has no bucket, so it is not a unit: the experiment gives it no variant, reason
``no_unit``, and the C hash never sees it (MurmurHash's C code crashes the
process on it).

Headers and cookies arrive as bytes. The contract hashes the text the client
sent, so they are decoded as UTF-8, never as latin-1; bytes that are not
UTF-8 decode to text that fails :func:`is_unit_text` and so give no unit.

Per-id caches (prepared requests, unit-id hashes) skip ids longer than
:data:`MAX_CACHED_ID_LENGTH`: such ids still work, they are only evaluated
each time, so a client sending huge ids cannot grow a process.
"""

from __future__ import annotations

__all__ = ["MAX_CACHED_ID_LENGTH", "is_unit_text", "header_text", "wsgi_text"]

#: Unit ids (and raw header values) longer than this many characters (bytes, for raw ASGI
#: headers) are never kept in a per-id cache; they are still assigned, just not remembered.
MAX_CACHED_ID_LENGTH = 256


def is_unit_text(s: str) -> bool:
    """True when ``s`` has a UTF-8 form, i.e. holds no lone surrogate (ASCII answers in O(1))."""
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def header_text(value: bytes) -> str:
    """Header bytes as text: UTF-8, with bytes that are not UTF-8 kept as lone surrogates.

    The result is lossless (distinct bytes give distinct text) and fails
    :func:`is_unit_text` exactly when the bytes are not UTF-8.
    """
    return value.decode("utf-8", "surrogateescape")


def wsgi_text(value: str) -> str:
    """A PEP 3333 header value (bytes decoded as latin-1) as the UTF-8 text the client sent.

    ASCII values are returned as they are; others are re-encoded to their
    bytes and decoded as :func:`header_text` does. A value that is not a
    latin-1 string (a server outside PEP 3333 that decoded it already) is
    taken as text.
    """
    if value.isascii():
        return value
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError:
        return value
    return header_text(raw)
