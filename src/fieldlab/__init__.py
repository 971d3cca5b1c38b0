"""fieldlab: deterministic experiments in production, measured from your traces.

Public names are listed in ``__all__``; everything else is private.
"""

from __future__ import annotations

from ._assignment import REASONS, Assignment
from ._hashing import BUCKETS, bucket, hash32
from .context import assignment, choose, current, expose, param, variant
from .errors import ConfigError, FieldLabError
from .experiments import Experiment, Holdout, Layer, Variant
from .faults import InjectedFault, fault_point, inject
from .lab import Lab
from .overrides import VerifiedOverrides, make_token, verify_token
from .switches import switch

__version__ = "0.1.0"

__all__ = [
    "BUCKETS", "bucket", "hash32",
    "Assignment", "REASONS",
    "ConfigError", "FieldLabError",
    "Experiment", "Holdout", "Layer", "Variant",
    "fault_point", "inject", "InjectedFault",
    "Lab",
    "VerifiedOverrides", "make_token", "verify_token",
    "variant", "param", "switch", "choose", "assignment", "expose", "current",
    "__version__",
]
