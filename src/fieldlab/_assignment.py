"""What an evaluation returns: the variant, the bucket and a reason a person can read."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

__all__ = [
    "Assignment",
    "REASONS",
    "SPLIT",
    "OVERRIDE",
    "HOLDOUT",
    "TARGETING",
    "LAYER",
    "TRAFFIC",
    "PAUSED",
    "CONCLUDED",
    "NO_UNIT",
    "ERROR",
    "GUARDRAIL",
    "bucket_outcome",
]

SPLIT = "split"  # in the experiment; the variant comes from the bucket
OVERRIDE = "override"  # a signed QA token forced the variant
HOLDOUT = "holdout"  # the unit is in a holdout that covers this experiment
TARGETING = "targeting"  # the attributes did not match the targeting rule
LAYER = "layer"  # the unit's layer bucket belongs to another experiment
TRAFFIC = "traffic"  # the bucket lies outside the traffic share
PAUSED = "paused"  # draft or paused: nobody is in it
CONCLUDED = "concluded"  # everyone gets the declared winner; not an exposure
NO_UNIT = "no_unit"  # no unit id: not in the experiment, never a random fallback
ERROR = "error"  # something failed inside fieldlab: the default path
GUARDRAIL = "guardrail"  # the split chose a variant the guardrails paused: the unit gets control

REASONS = (SPLIT, OVERRIDE, HOLDOUT, TARGETING, LAYER, TRAFFIC, PAUSED, CONCLUDED, NO_UNIT, ERROR, GUARDRAIL)
_EMPTY: Mapping[str, Any] = MappingProxyType({})


class Assignment:
    """The outcome of evaluating one experiment for one unit.

    ``variant`` is None when the unit is not in the experiment; ``reason`` says
    why. ``params`` holds the variant's parameters (empty when no variant).
    With reason ``guardrail``, ``variant`` is the control and ``paused`` the
    variant the split chose, which the guardrails paused. For a ``kind = "bandit"``
    experiment, ``period`` is the weights version that decided the split (the
    unit's enrolment period; ``fieldlab.bandit.<key>`` on the span); None otherwise.
    Instances are immutable and shared between units with the same outcome.
    """

    __slots__ = ("experiment", "variant", "bucket", "reason", "params", "holdout", "in_experiment", "paused", "period")

    experiment: str
    variant: str | None
    bucket: int | None
    reason: str
    params: Mapping[str, Any]
    holdout: str | None
    #: True when the unit takes part (split, override, or guardrail): reading it is an exposure.
    in_experiment: bool
    paused: str | None
    period: int | None

    def __init__(
        self,
        experiment: str,
        variant: str | None,
        bucket: int | None,
        reason: str,
        params: Mapping[str, Any] | None = None,
        holdout: str | None = None,
        paused: str | None = None,
        period: int | None = None,
    ) -> None:
        set_ = object.__setattr__
        set_(self, "experiment", experiment)
        set_(self, "variant", variant)
        set_(self, "bucket", bucket)
        set_(self, "reason", reason)
        set_(self, "params", params if params is not None else _EMPTY)
        set_(self, "holdout", holdout)
        # a plain attribute, not a property: the request path reads it on every variant() call
        set_(self, "in_experiment", reason == SPLIT or reason == OVERRIDE or reason == GUARDRAIL)
        set_(self, "paused", paused)
        set_(self, "period", period)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Assignment is immutable")

    @property
    def forced(self) -> bool:
        return self.reason == OVERRIDE

    def param(self, name: str, default: Any = None) -> Any:
        return self.params.get(name, default)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "experiment": self.experiment,
            "variant": self.variant,
            "bucket": self.bucket,
            "reason": self.reason,
        }
        if self.params:
            out["params"] = dict(self.params)
        if self.holdout:
            out["holdout"] = self.holdout
        if self.paused:
            out["paused"] = self.paused
        if self.period is not None:
            out["period"] = self.period
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Assignment):
            return NotImplemented
        return (self.experiment, self.variant, self.bucket, self.reason, self.holdout, self.paused, self.period) == (
            other.experiment,
            other.variant,
            other.bucket,
            other.reason,
            other.holdout,
            other.paused,
            other.period,
        )

    def __hash__(self) -> int:
        return hash((self.experiment, self.variant, self.bucket, self.reason, self.holdout, self.paused, self.period))

    def __repr__(self) -> str:
        return (
            f"Assignment(experiment={self.experiment!r}, variant={self.variant!r}, "
            f"bucket={self.bucket!r}, reason={self.reason!r})"
        )


class _Unsealed(Assignment):
    """An Assignment while :func:`bucket_outcome` fills it in: same fields, plain attribute writes."""

    __slots__ = ()
    __setattr__ = object.__setattr__  # type: ignore[assignment]  # plain slot writes while filling in


def bucket_outcome(
    experiment: str, variant: str | None, bucket: int, params: Mapping[str, Any], period: int | None = None
) -> Assignment:
    """The outcome of one bucket: ``variant`` (reason split), or no variant (reason traffic); for the Lab.
    ``period``: the bandit weights version that decided it (None outside a bandit).

    Equal to ``Assignment(experiment, variant, bucket, SPLIT or TRAFFIC, params, period=period)``, made for every
    evaluation (the bucket is the unit's own) at a third of the cost: ``Assignment.__init__`` pays
    one ``object.__setattr__`` call per field to stay immutable, while this writes the fields of an
    ``_Unsealed`` instance directly and then makes it a plain, immutable Assignment.
    """
    a: Assignment = object.__new__(_Unsealed)
    a.experiment = experiment
    a.variant = variant
    a.bucket = bucket
    a.reason = SPLIT if variant is not None else TRAFFIC
    a.params = params if variant is not None else _EMPTY
    a.holdout = None
    a.in_experiment = variant is not None
    a.paused = None
    a.period = period
    a.__class__ = Assignment
    return a
