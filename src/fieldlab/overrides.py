"""Signed, expiring QA override tokens.

A token names one experiment and one variant and is signed with HMAC-SHA256
under the lab secret, so nobody without the secret can forge one. Without a
secret, overrides are off. An invalid or expired token is ignored (counted and
logged at debug), never an error in a request.

Format: ``fl1.<base64url(json payload)>.<base64url(hmac)>`` with payload
``{"e": experiment, "v": variant, "x": expiry unix seconds}``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Iterable, Mapping

from .errors import FieldLabError

__all__ = ["make_token", "verify_token", "VerifiedOverrides", "parse_duration"]

_log = logging.getLogger("fieldlab.overrides")
_PREFIX = "fl1"
_MAX_TOKEN_LENGTH = 1024


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _key(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def sign(secret: str | bytes, message: str) -> str:
    """HMAC-SHA256 of ``message`` under ``secret``, base64url without padding."""
    return _b64(hmac.new(_key(secret), message.encode("utf-8"), hashlib.sha256).digest())


def make_token(
    secret: str | bytes, experiment: str, variant: str, ttl_seconds: float, *, now: float | None = None
) -> str:
    """A token forcing ``variant`` of ``experiment`` until ``ttl_seconds`` from now."""
    if not secret:
        raise FieldLabError("no secret configured; set lab.secret_env (or FIELDLAB_SECRET) to sign override tokens")
    if ttl_seconds <= 0:
        raise FieldLabError(f"ttl must be positive, got {ttl_seconds}")
    expiry = int((time.time() if now is None else now) + ttl_seconds)
    payload = _b64(json.dumps({"e": experiment, "v": variant, "x": expiry}, separators=(",", ":")).encode())
    body = f"{_PREFIX}.{payload}"
    return f"{body}.{sign(secret, body)}"


def verify_token(secret: str | bytes | None, token: str, *, now: float | None = None) -> tuple[str, str] | None:
    """``(experiment, variant)`` if ``token`` is authentic and unexpired, else None."""
    if not secret or not isinstance(token, str) or len(token) > _MAX_TOKEN_LENGTH:
        return None
    parts = token.strip().split(".")
    if len(parts) != 3 or parts[0] != _PREFIX:
        return None
    body = f"{parts[0]}.{parts[1]}"
    if not hmac.compare_digest(sign(secret, body), parts[2]):
        return None
    try:
        data = json.loads(_unb64(parts[1]))
        experiment, variant, expiry = data["e"], data["v"], data["x"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(experiment, str) or not isinstance(variant, str) or not isinstance(expiry, int):
        return None
    if expiry < (time.time() if now is None else now):
        return None
    return experiment, variant


class VerifiedOverrides(Mapping[str, str]):
    """Overrides whose tokens verified: experiment key -> forced variant.

    Only :meth:`from_tokens` builds a populated one, so code that receives a
    ``VerifiedOverrides`` knows each entry was signed by the lab secret.
    """

    __slots__ = ("_data", "rejected")

    def __init__(self) -> None:
        self._data: dict[str, str] = {}
        self.rejected = 0

    @classmethod
    def from_tokens(
        cls, secret: str | bytes | None, tokens: Iterable[str], *, now: float | None = None
    ) -> VerifiedOverrides:
        out = cls()
        for token in tokens:
            result = verify_token(secret, token, now=now)
            if result is None:
                out.rejected += 1
                _log.debug("ignored an invalid or expired override token")
            else:
                out._data[result[0]] = result[1]
        return out

    def __getitem__(self, key: str) -> str:
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"VerifiedOverrides({self._data!r})"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``"90s"``, ``"15m"``, ``"1h"``, ``"7d"`` -> seconds."""
    m = _DURATION.match(str(text))
    if not m:
        raise FieldLabError(f"cannot read duration {text!r}; write e.g. 30m, 1h or 7d")
    return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
