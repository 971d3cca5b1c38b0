"""The prepared cache: unit ids -> the evaluation every request with those ids shares.

Without targeting and without per-request units, a request's assignments (and
the span attributes they imply) are a function of its unit ids alone, so the
request path evaluates them once per distinct ids (see
:class:`~fieldlab.context.PreparedRequest`). The cache belongs to one
configuration version and is replaced when it changes; its size is bounded in
entries and, since ids longer than :data:`~fieldlab._units.MAX_CACHED_ID_LENGTH`
are never kept, in bytes too, whatever clients send.
"""

from __future__ import annotations

from collections.abc import Iterator

from .._units import MAX_CACHED_ID_LENGTH
from ..context import PreparedRequest

__all__ = ["CACHE_SIZE", "CacheKey", "PreparedCache"]

#: Entries a cache holds at most; a full cache is emptied.
CACHE_SIZE = 10_000

#: The unit ids in plan order (a tuple), or the one id of a one-header plan.
CacheKey = tuple[str | None, ...] | str | None


class PreparedCache:
    """:class:`PreparedRequest` by unit ids, for one configuration ``version``."""

    def __init__(self, version: str) -> None:
        self.version = version
        self._entries: dict[CacheKey, PreparedRequest] = {}

    def get(self, key: CacheKey) -> PreparedRequest | None:
        """The prepared evaluation of ``key``, if kept."""
        return self._entries.get(key)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[CacheKey]:
        return iter(self._entries)

    def __getitem__(self, key: CacheKey) -> PreparedRequest:
        return self._entries[key]

    def remember(self, key: CacheKey, prepared: PreparedRequest) -> None:
        """Keep ``prepared`` under ``key``, unless another configuration made it or an id is too long.

        A request that evaluated under the old configuration while a reload put
        a new cache in place must not leave its assignments here: every later
        request with those ids would get the old config.
        """
        if prepared.version != self.version or _too_long(key):
            return
        if len(self._entries) >= CACHE_SIZE:
            self._entries.clear()
        self._entries[key] = prepared


def _too_long(key: CacheKey) -> bool:
    if isinstance(key, tuple):
        return any(part is not None and len(part) > MAX_CACHED_ID_LENGTH for part in key)
    return key is not None and len(key) > MAX_CACHED_ID_LENGTH
