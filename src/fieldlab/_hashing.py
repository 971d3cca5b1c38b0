"""The assignment contract, v1: the only place that turns (salt, unit) into a bucket.

The contract is public and permanent (see the README): any process, any service
and any SQL engine with MurmurHash3 recomputes the same bucket.

* ``hash32(s)``  = MurmurHash3 x86 32-bit of the UTF-8 bytes of ``s``, seed 0, unsigned.
* ``bucket(salt, unit) = hash32(salt + ":" + unit) % 10000``.

Text with no UTF-8 form (a ``str`` holding a lone surrogate, e.g. ``"\\ud800"``
from a JSON body) has no hash: these functions raise ValueError for it, and
the Lab gives such a unit no variant (reason ``no_unit``). It never reaches
MurmurHash's C code, which would crash the process.
"""

from __future__ import annotations

import mmh3

__all__ = ["BUCKETS", "hash32", "bucket", "variant_boundaries", "traffic_basis_points"]

#: Number of buckets; one bucket is one basis point (0.01 %) of the population.
BUCKETS = 10_000

_mmh3_hash = mmh3.hash


def _utf8(s: str) -> str | bytes:
    """``s`` as MurmurHash may take it: ASCII as is, other text as its UTF-8 bytes (ValueError without any)."""
    if s.isascii():
        return s
    try:
        return s.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            f"{s!r} is not valid Unicode text (it holds a lone surrogate), so it has no "
            "UTF-8 bytes to hash; pass the text the client sent, decoded as UTF-8"
        ) from None


def hash32(s: str) -> int:
    """MurmurHash3 x86 32-bit of the UTF-8 bytes of ``s``, seed 0, as an unsigned int.

    Raises ValueError when ``s`` has no UTF-8 form (a lone surrogate).
    """
    return _mmh3_hash(_utf8(s), 0, False)


def bucket(salt: str, unit: str) -> int:
    """The bucket, 0..9999, of ``unit`` under ``salt``; ValueError when the text has no UTF-8 form."""
    key = f"{salt}:{unit}"
    return _mmh3_hash(key if key.isascii() else _utf8(key), 0, False) % BUCKETS  # ASCII (most ids) hashes as is


def traffic_basis_points(traffic: float) -> int:
    """``T = round(traffic * 100)``: a traffic share in percent, as basis points."""
    return int(round(float(traffic) * 100))


def variant_boundaries(weights: list[int] | tuple[int, ...], traffic_bp: int) -> list[tuple[int, int]]:
    """The bucket range ``[lo, hi)`` of each variant.

    ``B_i = 10000 * C_i // W`` where ``C_i`` is the sum of the weights before
    variant ``i``; variant ``i`` owns ``B_i <= b < B_i + (B_{i+1} - B_i) * T // 10000``.
    Raising the traffic only widens each range at its top, so no unit ever
    changes variant during a ramp.
    """
    total = sum(weights)
    starts = []
    acc = 0
    for w in weights:
        starts.append(BUCKETS * acc // total)
        acc += w
    starts.append(BUCKETS)
    return [(starts[i], starts[i] + (starts[i + 1] - starts[i]) * traffic_bp // BUCKETS) for i in range(len(weights))]
