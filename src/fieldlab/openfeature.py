"""An OpenFeature provider backed by a fieldlab Lab, so code written against OpenFeature reads fieldlab variants.

>>> from openfeature import api                                            # doctest: +SKIP
>>> api.set_provider(FieldLabProvider(lab))                                # doctest: +SKIP
>>> api.get_client().get_string_value("checkout-redesign", "control",     # doctest: +SKIP
...     EvaluationContext(targeting_key="alice", attributes={"country": "DE"}))

Each experiment is a flag. The flag's value is the variant name (string
flags), the variant's parameters (object flags), or, for boolean, integer and
float flags, the variant's ``value`` parameter when it has one, else the
variant name read as that type (variants named ``"true"``/``"false"``,
``"10"``/``"20"``...). A unit not in the experiment gets the caller's default.

Inside a request that a fieldlab adapter handles, an evaluation returns that
request's own assignment (whatever the evaluation context says) and marks the
experiment exposed, exactly as :func:`fieldlab.variant` does, so the two
never disagree and the exposure lands on the request's span once. Outside a
request the provider evaluates the lab for the context's unit: the
attribute named like the experiment's unit kind (``"user"``, ``"session"``)
when the context has one, else ``targeting_key``; the other attributes feed
targeting. Nothing is exposed then: there is no request span to record it on.

Reasons map as fieldlab's own ``feature_flag.evaluation`` events map them
(:data:`fieldlab.attributes.OTEL_REASONS`): ``split`` -> SPLIT, a signed
override or a concluded winner -> STATIC, ``paused``/``draft`` -> DISABLED,
an internal error -> ERROR, and every "not in the experiment" reason
(targeting, holdout, layer, traffic, no unit) -> DEFAULT. The fieldlab reason
itself is in the flag metadata, with the bucket, the config ``version``, the
layer (``layer`` and OpenFeature's ``flagSetId``), ``unitKind``, ``holdout``
and ``forced``. An unknown key is ``FLAG_NOT_FOUND``.

The provider emits ``PROVIDER_CONFIGURATION_CHANGED`` when a file-backed lab
reloads a new configuration. It depends only on fieldlab's public API
(:class:`fieldlab.Lab`, :class:`fieldlab.Assignment` and
:func:`fieldlab.context.current` / :func:`fieldlab.context.read_from`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEventDetails
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagResolutionDetails, FlagValueType, Reason
from openfeature.provider import AbstractProvider, Metadata

from . import attributes as A
from ._assignment import Assignment
from .context import current, read_from
from .lab import Lab

__all__ = ["PROVIDER_NAME", "REASONS", "FieldLabProvider"]

_log = logging.getLogger("fieldlab")

#: The provider name OpenFeature hooks report (``feature_flag.provider.name``), as fieldlab's own events do.
PROVIDER_NAME = A.PROVIDER_NAME

#: fieldlab reason -> OpenFeature reason, the same mapping fieldlab's span events use.
REASONS: Mapping[str, str] = {key: Reason(value.upper()).value for key, value in A.OTEL_REASONS.items()}

_TRUE = frozenset({"true", "on", "yes", "enabled", "1"})
_FALSE = frozenset({"false", "off", "no", "disabled", "0"})


class _TypeMismatch(Exception):
    """The variant has no value of the requested flag type."""


class FieldLabProvider(AbstractProvider):
    """OpenFeature provider whose flags are the experiments of ``lab``."""

    def __init__(self, lab: Lab) -> None:
        super().__init__()
        if not isinstance(lab, Lab):
            from .errors import ConfigError

            raise ConfigError(
                "lab",
                f"expected a fieldlab.Lab, got {type(lab).__name__}",
                "pass FieldLabProvider(Lab.from_file('lab.toml'))",
            )
        self.lab = lab
        self._listening = False

    # ------------------------------------------------------------ life cycle
    def get_metadata(self) -> Metadata:
        return Metadata(name=PROVIDER_NAME)

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        """Tell OpenFeature when a reload changes the configuration (once per provider)."""
        if not self._listening:
            self._listening = True
            self.lab.on_reload(self._reloaded)

    def _reloaded(self, lab: Lab) -> None:
        if getattr(self, "_on_emit", None) is None:  # not attached (shut down or never registered)
            return
        try:
            self.emit_provider_configuration_changed(
                ProviderEventDetails(flags_changed=sorted(lab.experiments), message=f"fieldlab config {lab.version}")
            )
        except Exception:
            _log.warning("fieldlab: an OpenFeature configuration-changed handler failed", exc_info=True)

    # ------------------------------------------------------------ resolution
    def resolve_boolean_details(
        self, flag_key: str, default_value: bool, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[bool]:
        return self._resolve(flag_key, default_value, evaluation_context, bool)

    def resolve_string_details(
        self, flag_key: str, default_value: str, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[str]:
        return self._resolve(flag_key, default_value, evaluation_context, str)

    def resolve_integer_details(
        self, flag_key: str, default_value: int, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[int]:
        return self._resolve(flag_key, default_value, evaluation_context, int)

    def resolve_float_details(
        self, flag_key: str, default_value: float, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[float]:
        return self._resolve(flag_key, default_value, evaluation_context, float)

    def resolve_object_details(
        self,
        flag_key: str,
        default_value: Sequence[FlagValueType] | Mapping[str, FlagValueType],
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[Sequence[FlagValueType] | Mapping[str, FlagValueType]]:
        return self._resolve(flag_key, default_value, evaluation_context, dict)

    def _resolve(self, key: str, default: Any, ec: EvaluationContext | None, kind: type) -> FlagResolutionDetails[Any]:
        lab = self.lab
        exp = lab.experiments.get(key)
        if exp is None:
            return FlagResolutionDetails(
                value=default,
                reason=Reason.ERROR,
                error_code=ErrorCode.FLAG_NOT_FOUND,
                error_message=f"no experiment {key!r} in the fieldlab config",
            )
        a, version = self._assignment(key, exp.unit, ec)
        if a is None:  # the request began before a reload added this key: it has no assignment for it
            a = Assignment(key, None, None, "no_unit")
        meta = _metadata(a, version, exp.layer, exp.unit)
        reason = REASONS.get(a.reason, Reason.UNKNOWN.value)
        if a.variant is None:
            if a.reason == "error":
                return FlagResolutionDetails(
                    value=default,
                    reason=Reason.ERROR,
                    error_code=ErrorCode.GENERAL,
                    error_message="fieldlab could not evaluate this experiment",
                    flag_metadata=meta,
                )
            return FlagResolutionDetails(value=default, reason=reason, flag_metadata=meta)
        try:
            value = _value(a, kind)
        except _TypeMismatch as exc:
            return FlagResolutionDetails(
                value=default,
                reason=Reason.ERROR,
                error_code=ErrorCode.TYPE_MISMATCH,
                error_message=str(exc),
                variant=a.variant,
                flag_metadata=meta,
            )
        return FlagResolutionDetails(value=value, reason=reason, variant=a.variant, flag_metadata=meta)

    def _assignment(self, key: str, unit_kind: str, ec: EvaluationContext | None) -> tuple[Assignment | None, str]:
        """The assignment and the version of the configuration that made it."""
        ctx = current()
        if ctx is not None and ctx.lab is self.lab:
            # the request's own assignment, marked exposed: what fieldlab.variant() returns
            return read_from(ctx, key), ctx.version
        attrs: dict[str, Any] = dict(ec.attributes) if ec is not None and ec.attributes else {}
        unit = attrs.get(unit_kind)
        if not isinstance(unit, str) or not unit:
            unit = ec.targeting_key if ec is not None else None
        return self.lab.assign(key, unit, attrs), self.lab.version


def _metadata(a: Assignment, version: str, layer: str | None, unit_kind: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"reason": a.reason, "unitKind": unit_kind, "forced": a.forced}
    if a.bucket is not None:
        meta["bucket"] = a.bucket
    if version and a.reason != "error":
        meta["version"] = version  # OpenFeature's telemetry reads this as feature_flag.version
    if layer:
        meta["layer"] = layer
        meta["flagSetId"] = layer  # ... and this as feature_flag.set.id
    if a.holdout:
        meta["holdout"] = a.holdout
    return meta


def _value(a: Assignment, kind: type) -> Any:
    name = a.variant
    if kind is str:
        return name
    if kind is dict:
        return dict(a.params)
    explicit = a.params.get("value")
    if explicit is not None:
        if kind is float and isinstance(explicit, int) and not isinstance(explicit, bool):
            return float(explicit)
        if type(explicit) is kind:
            return explicit
        raise _TypeMismatch(f"variant {name!r} has value {explicit!r}, not a {kind.__name__}")
    text = str(name).strip().lower()
    if kind is bool:
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    else:
        try:
            return kind(text)
        except ValueError:
            pass
    raise _TypeMismatch(
        f"variant {name!r} is not a {kind.__name__}; give it a 'value' parameter or read the flag as a string"
    )
