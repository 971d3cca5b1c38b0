"""The telemetry schema: every span attribute and event name fieldlab writes or reads.

This module is the only place these names are spelled. Adapters, the recorder,
fault injection, the analysis readers and the files under ``integrations/``
all use (or are tested against) the names here.

On the request's SERVER span:

==================================  ======================================================
``fieldlab.variant.<experiment>``   variant name, for every experiment the unit is in
``fieldlab.exposed.<experiment>``   true when the code read the variant (trigger analysis)
``fieldlab.forced.<experiment>``    true when a signed override chose the variant
``fieldlab.holdout.<holdout>``      true when the unit is held out by that holdout
``fieldlab.guardrail.<experiment>`` the variant the split chose and the guardrails paused
                                    (the unit got control: ``fieldlab.variant.<experiment>``)
``fieldlab.unit.<kind>``            the unit id: keyed hash by default, raw, or absent
``fieldlab.config.version``         content hash of the configuration that assigned
``fieldlab.fault.injected``         true when any fault was injected into the request
``fieldlab.canary.<canary>``        the request's arm of a sick canary: ``control`` or the
                                    dose's label (``"100ms"``); absent outside the canary
``fieldlab.bandit.<experiment>``    the weights version (int) that decided a ``kind = "bandit"``
                                    experiment's variant: the enrolment period of the unit
``fieldlab.assignments``            every variant of the request packed in one value
                                    (:func:`pack_assignments`), written only when the
                                    span's attribute limit left some of the above out
==================================  ======================================================

``fieldlab.variant.*`` is written for split, signed-override and guardrail
assignments only (not for concluded winners, holdouts or targeting misses). Unit ids are
``h1:`` + 16 hex digits of HMAC-SHA256 by default (key: the env var named by
``lab.unit_hash_key_env``, else the lab secret, else a public default key, in
which case the hash is pseudonymous only); ``lab.unit_ids`` = ``raw`` writes
them as they are, ``none`` leaves them out; the ``request`` kind is the trace id.

Events: ``feature_flag.evaluation`` (OpenTelemetry semantic conventions for
feature flags) on each exposure, with key, result variant, result reason
(mapped through :data:`OTEL_REASONS`), provider ``fieldlab``, context id (the
unit attribute value), set id (the layer) and version (config version); and
``fieldlab.fault`` on each injected fault. See docs/integration.md.
"""

from __future__ import annotations

from urllib.parse import unquote

__all__ = [
    "PREFIX",
    "VARIANT_PREFIX",
    "EXPOSED_PREFIX",
    "FORCED_PREFIX",
    "HOLDOUT_PREFIX",
    "UNIT_PREFIX",
    "GUARDRAIL_PREFIX",
    "CONFIG_VERSION",
    "FAULT_INJECTED",
    "ASSIGNMENTS",
    "variant_attr",
    "exposed_attr",
    "forced_attr",
    "holdout_attr",
    "unit_attr",
    "guardrail_attr",
    "CANARY_PREFIX",
    "canary_attr",
    "BANDIT_PREFIX",
    "bandit_attr",
    "FAULT_CANARY",
    "FLAG_EVENT",
    "FLAG_KEY",
    "FLAG_VARIANT",
    "FLAG_REASON",
    "FLAG_PROVIDER",
    "FLAG_CONTEXT_ID",
    "FLAG_SET_ID",
    "FLAG_VERSION",
    "PROVIDER_NAME",
    "OTEL_REASONS",
    "FAULT_EVENT",
    "FAULT_POINT",
    "FAULT_KIND",
    "FAULT_EXPERIMENT",
    "FAULT_VARIANT",
    "FAULT_DELAY_MS",
    "FAULT_STATUS",
    "FAULT_EXCEPTION",
    "HTTP_STATUS_CODE",
    "HTTP_STATUS_CODE_OLD",
    "HTTP_ROUTE",
    "HTTP_METHOD",
    "BAGGAGE_KEY",
    "pack_assignments",
    "unpack_assignments",
]

PREFIX = "fieldlab."
VARIANT_PREFIX = "fieldlab.variant."
EXPOSED_PREFIX = "fieldlab.exposed."
FORCED_PREFIX = "fieldlab.forced."
HOLDOUT_PREFIX = "fieldlab.holdout."
UNIT_PREFIX = "fieldlab.unit."
GUARDRAIL_PREFIX = "fieldlab.guardrail."
CONFIG_VERSION = "fieldlab.config.version"
FAULT_INJECTED = "fieldlab.fault.injected"
ASSIGNMENTS = "fieldlab.assignments"
CANARY_PREFIX = "fieldlab.canary."
#: ``fieldlab.bandit.<experiment>``: the weights version (enrolment period) that decided a bandit's assignment
BANDIT_PREFIX = "fieldlab.bandit."


def variant_attr(experiment: str) -> str:
    return VARIANT_PREFIX + experiment


def exposed_attr(experiment: str) -> str:
    return EXPOSED_PREFIX + experiment


def forced_attr(experiment: str) -> str:
    return FORCED_PREFIX + experiment


def holdout_attr(holdout: str) -> str:
    return HOLDOUT_PREFIX + holdout


def canary_attr(canary: str) -> str:
    return CANARY_PREFIX + canary


def bandit_attr(experiment: str) -> str:
    return BANDIT_PREFIX + experiment


def unit_attr(kind: str) -> str:
    return UNIT_PREFIX + kind


def guardrail_attr(experiment: str) -> str:
    return GUARDRAIL_PREFIX + experiment


def pack_assignments(variants: dict[str, str]) -> str:
    """The ``fieldlab.assignments`` value: ``key=variant`` pairs joined by ``;``, in the order given.

    Experiment keys never contain ``=``, ``;`` or ``%`` (see
    ``fieldlab.experiments.KEY_PATTERN``); in variant names these three are
    percent-escaped (``%3D``, ``%3B``, ``%25``), so any variant name survives
    :func:`unpack_assignments` and SQL's ``decodeURLComponent``.
    """
    return ";".join(f"{key}={_escape(variant)}" for key, variant in variants.items())


def unpack_assignments(value: str) -> dict[str, str]:
    """The ``{experiment: variant}`` a ``fieldlab.assignments`` value holds; malformed pairs are skipped."""
    out: dict[str, str] = {}
    for pair in value.split(";"):
        key, sep, variant = pair.partition("=")
        if sep and key:
            out[key] = _unescape(variant)
    return out


def _escape(name: str) -> str:
    return name.replace("%", "%25").replace(";", "%3B").replace("=", "%3D")


def _unescape(text: str) -> str:
    return unquote(text) if "%" in text else text


# OpenTelemetry semantic conventions, feature flags (v1.44 release candidate).
FLAG_EVENT = "feature_flag.evaluation"
FLAG_KEY = "feature_flag.key"
FLAG_VARIANT = "feature_flag.result.variant"
FLAG_REASON = "feature_flag.result.reason"
FLAG_PROVIDER = "feature_flag.provider.name"
FLAG_CONTEXT_ID = "feature_flag.context.id"
FLAG_SET_ID = "feature_flag.set.id"
FLAG_VERSION = "feature_flag.version"
PROVIDER_NAME = "fieldlab"

#: fieldlab reason -> ``feature_flag.result.reason`` well-known value.
OTEL_REASONS = {
    "split": "split",
    "override": "static",
    "concluded": "static",
    "targeting": "default",
    "holdout": "default",
    "layer": "default",
    "traffic": "default",
    "no_unit": "default",
    "paused": "disabled",
    "guardrail": "disabled",
    "error": "error",
}

# Fault injection.
FAULT_EVENT = "fieldlab.fault"
FAULT_POINT = "fieldlab.fault.point"
FAULT_KIND = "fieldlab.fault.kind"
FAULT_EXPERIMENT = "fieldlab.fault.experiment"
FAULT_VARIANT = "fieldlab.fault.variant"
FAULT_DELAY_MS = "fieldlab.fault.delay_ms"
FAULT_STATUS = "fieldlab.fault.status"
FAULT_EXCEPTION = "fieldlab.fault.exception"
#: On a ``fieldlab.fault`` event of a canary dose: the canary's key (FAULT_VARIANT holds the dose's label).
FAULT_CANARY = "fieldlab.fault.canary"

# Attributes fieldlab reads from other instrumentations (stable HTTP semconv and the old name).
HTTP_STATUS_CODE = "http.response.status_code"
HTTP_STATUS_CODE_OLD = "http.status_code"
HTTP_ROUTE = "http.route"
HTTP_METHOD = "http.request.method"

#: W3C baggage member that carries signed assignments downstream.
BAGGAGE_KEY = "fieldlab"
