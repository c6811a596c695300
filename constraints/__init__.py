"""Side-constraints: configured constraint sets and the QP safety filter.

Public API:

* :class:`ConstraintSet` (``from_config``, ``evaluate``, ``linear_rows``) and its
  :class:`ConstraintEvaluation`; :class:`ConfigError` for bad configuration;
  :class:`Classifier`, the protocol a ``learned`` entry needs.
* :class:`QPFilter` and its :class:`FilterResult`.
"""

from constraints.qp_filter import FilterResult, QPFilter
from constraints.sets import (
    Classifier,
    ConfigError,
    ConstraintEvaluation,
    ConstraintSet,
    LinearRows,
)

__all__ = [
    "Classifier",
    "ConfigError",
    "ConstraintEvaluation",
    "ConstraintSet",
    "FilterResult",
    "LinearRows",
    "QPFilter",
]
