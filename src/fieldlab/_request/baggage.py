"""fieldlab's W3C baggage member: the request's variants, signed with the lab secret, valid five minutes.

Outbound (``propagate_baggage=True``) the request path attaches the signed
value to the OpenTelemetry context, so instrumented clients send it on.
Inbound it is used only when trusted (``trust_baggage``) and when the
signature verifies and the value has not expired; a signed override on this
hop still wins.
"""

from __future__ import annotations

import base64
import hmac
import json
import time
from urllib.parse import quote, unquote

from .. import attributes as A
from .._assignment import SPLIT, Assignment
from ..context import RequestContext
from ..overrides import sign
from .failures import stats

__all__ = ["BAGGAGE_TTL_SECONDS", "apply_baggage", "baggage_header", "outbound_baggage", "verify_baggage"]

BAGGAGE_TTL_SECONDS = 300
_BAGGAGE_CONTEXT = "fieldlab-baggage-v1."


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def outbound_baggage(ctx: RequestContext, *, now: float | None = None) -> str | None:
    """The signed ``fieldlab`` baggage value carrying this request's variants, or None without a secret."""
    secret = ctx.lab.secret
    if not secret:
        return None
    variants = {k: a.variant for k, a in ctx.assignments.items() if a.in_experiment}
    expiry = int((time.time() if now is None else now) + BAGGAGE_TTL_SECONDS)
    payload = _b64(json.dumps({"a": variants, "x": expiry}, separators=(",", ":"), sort_keys=True).encode("utf-8"))
    return f"{payload}.{sign(secret, _BAGGAGE_CONTEXT + payload)}"


def verify_baggage(secret: bytes | None, value: str, *, now: float | None = None) -> dict[str, str] | None:
    """The variants a ``fieldlab`` baggage value carries, if its signature verifies and it has not expired."""
    if not secret or not value or len(value) > 4096:
        return None
    payload, sep, sig = value.strip().partition(".")
    if not sep or not hmac.compare_digest(sign(secret, _BAGGAGE_CONTEXT + payload), sig):
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        variants, expiry = data["a"], data["x"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(variants, dict) or not isinstance(expiry, int) or expiry < (time.time() if now is None else now):
        return None
    return {str(k): str(v) for k, v in variants.items()}


def _baggage_member(header: str | None) -> str | None:
    if not header:
        return None
    for member in header.split(","):
        name, sep, value = member.partition("=")
        if sep and name.strip() == A.BAGGAGE_KEY:
            return unquote(value.split(";", 1)[0].strip())
    return None


def apply_baggage(ctx: RequestContext, header: str | None) -> bool:
    """Apply verified inbound baggage to ``ctx``; True when it changed an assignment."""
    raw = _baggage_member(header)
    if raw is None:
        return False
    lab = ctx.lab
    variants = verify_baggage(lab.secret, raw)
    if variants is None:
        stats["baggage_rejected"] += 1
        return False
    changed = False
    experiments = lab.experiments
    for key, name in variants.items():
        exp = experiments.get(key)
        if exp is None or name not in exp.variant_names or ctx.assignments.get(key, None) is None:
            continue
        if ctx.assignments[key].reason == "override":
            continue  # a signed override on this hop wins
        a = Assignment(key, name, None, SPLIT, exp.variant(name).params)
        ctx.own_assignments()[key] = lab._guardrail(a) if lab._paused else a  # paused here: control
        changed = True
    return changed


def baggage_header(value: str) -> str:
    """A ``baggage`` header carrying only the fieldlab member (for clients without OTel propagation)."""
    return f"{A.BAGGAGE_KEY}={quote(value, safe='')}"
