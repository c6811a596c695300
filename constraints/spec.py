"""The parsed constraint specification of a run, from which its sets are built.

A run configures its side-constraints once (Leike et al. 2018, Sec. 5.6 and 5.7:
a learned classifier of unacceptable outcomes plus hard constraints the user
writes down). :meth:`ConstraintSpec.from_config` parses and validates every
entry at start-up, learned ones included, so that a typo stops the run before
any training. The run then builds a :class:`~constraints.sets.ConstraintSet`
from the spec whenever its classifier changes: ``spec.build(classifier,
include_learned=calibrated)`` reuses the parsed entries and only binds the
classifier to the learned ones.

One classifier serves every learned entry: it is built for one set of input
dimensions and calibrated once per round for one ``alpha``, so the spec refuses
learned entries that ask for different ``alpha`` or ``inputs``, and answers for
the classifier with :meth:`~ConstraintSpec.learned_alpha` and
:meth:`~ConstraintSpec.classifier_input_mask`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from constraints.entries import Classifier, LearnedEntrySpec
from constraints.parse import ActionBounds, ParsedEntry, parse_action_bounds, parse_entries
from constraints.sets import ConfigError, ConstraintSet
from mbrm.tasks import StateLayout

HIDDEN_RULE = "unacceptable (hidden rule)"


@dataclass(frozen=True, eq=False)
class ConstraintSpec:
    """Validated constraint entries in their configured order; see the module docstring.

    Build one with :meth:`from_config`, which checks what the fields below cannot say.
    """

    entries: tuple[ParsedEntry, ...]
    layout: StateLayout  # the task's state layout (names of state dimensions)
    action_dim: int
    action_bounds: ActionBounds | None = field(default=None, repr=False)

    @classmethod
    def from_config(
        cls,
        entries: Sequence[Mapping[str, Any]] | Mapping[str, Mapping[str, Any] | None],
        *,
        layout: StateLayout,
        action_dim: int,
        action_bounds: tuple[Any, Any] | None = None,
    ) -> ConstraintSpec:
        """Parse and validate the configured entries.

        entries:        a list of dicts with ``name`` and ``kind``, or a dict keyed by
                        name (a ``None`` value disables that entry)
        layout:         the task's state layout
        action_dim:     A
        action_bounds:  the task's actuator range (low [A], high [A]); the default of
                        ``action_box`` and part of the action-feasibility check
        Raises :class:`ConfigError` naming the entry and the problem.
        """
        bounds = parse_action_bounds(action_bounds, action_dim)
        parsed = parse_entries(entries, layout=layout, action_dim=action_dim, action_bounds=bounds)
        names = [e.name for e in parsed]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"constraint entries {dupes} are defined more than once")
        spec = cls(parsed, layout, int(action_dim), bounds)
        # the learned entries are not linear: leaving them out changes no row
        spec.build(None, include_learned=False).linear_rows().check_actions_feasible()
        spec._shared_learned_value("alpha")
        spec.classifier_input_mask()  # the shared inputs, and some of them network inputs
        return spec

    # ---- what the spec holds

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entries)

    @property
    def learned(self) -> tuple[LearnedEntrySpec, ...]:
        return tuple(e for e in self.entries if isinstance(e, LearnedEntrySpec))

    def __len__(self) -> int:
        return len(self.entries)

    # ---- sets

    def build(self, classifier: Classifier | None, include_learned: bool) -> ConstraintSet:
        """The set of the configured entries, in order.

        classifier:       backs every learned entry; needed when ``include_learned``
                          and the spec has learned entries
        include_learned:  False leaves the learned entries out (e.g. while the classifier
                          is not yet calibrated); the hard entries are the same objects
                          in every set built from this spec
        """
        entries = []
        for e in self.entries:
            if not isinstance(e, LearnedEntrySpec):
                entries.append(e)
            elif include_learned:
                if classifier is None:
                    raise ConfigError(
                        f"constraint entry {e.name!r}: kind 'learned' needs a classifier, "
                        "and none was given"
                    )
                if not isinstance(classifier, Classifier):
                    raise ConfigError(
                        f"constraint entry {e.name!r}: {type(classifier).__name__} lacks "
                        "predict(states) and threshold"
                    )
                entries.append(e.bind(classifier))
        return ConstraintSet(tuple(entries), self.layout.dim, self.action_dim, self.action_bounds)

    def with_hidden_learned_entry(self, name: str = HIDDEN_RULE) -> ConstraintSpec:
        """This spec with a default learned entry ``name`` appended, unless it has one.

        For the oracle baseline, whose classifier is the task's hidden unacceptable
        rule: it rejects unacceptable states also in runs configured without a
        learned entry, and keeps the run's hard entries.
        """
        if self.learned:
            return self
        if name in self.names:
            raise ConfigError(f"constraint entries {[name]} are defined more than once")
        return dataclasses.replace(self, entries=(*self.entries, LearnedEntrySpec(name)))

    # ---- the classifier the learned entries share

    def learned_alpha(self) -> float | None:
        """The ``alpha`` the learned entries calibrate the classifier for, or None when
        none gives one (the run's default alpha then applies)."""
        return self._shared_learned_value("alpha")

    def learned_inputs(self) -> tuple[str, ...] | None:
        """The state names the learned entries let the classifier read, or None: all."""
        return self._shared_learned_value("inputs")

    def classifier_input_mask(self) -> np.ndarray:
        """bool [S]: the layout's network inputs, narrowed to :meth:`learned_inputs`."""
        mask = np.array(self.layout.input_mask, dtype=bool)
        inputs = self.learned_inputs()
        if inputs is None:
            return mask
        chosen = np.zeros_like(mask)
        chosen[[self.layout.index(n) for n in inputs]] = True
        if not (mask & chosen).any():
            name = next(e.name for e in self.learned if e.inputs is not None)
            raise ConfigError(
                f"constraint entry {name!r}: inputs {list(inputs)} are all excluded from "
                "the networks"
            )
        return mask & chosen

    def _shared_learned_value(self, key: str) -> Any:
        """The one value of ``key`` the learned entries give (None: none gives one)."""
        values = {e.name: getattr(e, key) for e in self.learned if getattr(e, key) is not None}
        if len(set(values.values())) > 1:
            fix = {
                "alpha": "give them the same alpha or a fixed `threshold`",
                "inputs": "give them the same inputs",
            }[key]
            shown = {n: list(v) if isinstance(v, tuple) else v for n, v in values.items()}
            raise ConfigError(
                f"learned constraint entries ask for different {key} {shown}: one classifier "
                f"serves them all; {fix}"
            )
        return next(iter(values.values()), None)


def constraint_set(
    entries: Sequence[Mapping[str, Any]] | Mapping[str, Mapping[str, Any] | None],
    *,
    layout: StateLayout,
    action_dim: int,
    classifier: Classifier | None = None,
    action_bounds: tuple[Any, Any] | None = None,
) -> ConstraintSet:
    """Parse ``entries`` and build the set with every entry, learned ones included:
    ``ConstraintSpec.from_config(...).build(classifier, include_learned=True)``."""
    spec = ConstraintSpec.from_config(
        entries, layout=layout, action_dim=action_dim, action_bounds=action_bounds
    )
    return spec.build(classifier, include_learned=True)
