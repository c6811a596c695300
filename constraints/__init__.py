"""Side-constraints: configured constraint sets and the QP safety filter.

Public API:

* :class:`ConstraintSpec` (``from_config``, ``build``, ``with_hidden_learned_entry``,
  ``learned_alpha``, ``learned_inputs``, ``classifier_input_mask``): a run's parsed
  and validated constraint entries; :class:`ConfigError` for bad configuration.
* :func:`constraint_set` (parse and build in one call); :class:`ConstraintSet` (``evaluate``, ``linear_rows``) and its
  :class:`ConstraintEvaluation` and :class:`LinearRows`.
* The entries: :class:`LearnedEntry` (configured as a :class:`LearnedEntrySpec`),
  :class:`StateBoundsEntry`, :class:`LinearEntry`, :class:`ActionBoxEntry`,
  :class:`ActionPolytopeEntry`; :class:`Classifier`, the protocol a learned entry needs.
* :class:`QPFilter` and its :class:`FilterResult`.
"""

from constraints.entries import (
    ActionBoxEntry,
    ActionPolytopeEntry,
    Classifier,
    LearnedEntry,
    LearnedEntrySpec,
    LinearEntry,
    StateBoundsEntry,
)
from constraints.qp_filter import FilterResult, QPFilter
from constraints.sets import ConfigError, ConstraintEvaluation, ConstraintSet, LinearRows
from constraints.spec import ConstraintSpec, constraint_set

__all__ = [
    "ActionBoxEntry",
    "ActionPolytopeEntry",
    "Classifier",
    "ConfigError",
    "ConstraintEvaluation",
    "ConstraintSet",
    "ConstraintSpec",
    "FilterResult",
    "LearnedEntry",
    "LearnedEntrySpec",
    "LinearEntry",
    "LinearRows",
    "QPFilter",
    "StateBoundsEntry",
    "constraint_set",
]
