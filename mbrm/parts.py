"""The parts of a run, and how they make the acting agent.

Built by the composition root (:mod:`mbrm.run`) and handed to the loop. The agent
plans in the world model's imagination, scored by the reward model and checked by
the constraint set (Leike et al. 2018, Sec. 5.6); the reference agent that scores
are normalised against plans in the same world model with the hidden reward and
the hidden unacceptable rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from constraints.qp_filter import QPFilter
from constraints.sets import ConstraintSet
from constraints.spec import ConstraintSpec
from mbrm.agent import Agent
from mbrm.feedback.gatherers import FeedbackGatherer
from mbrm.imagination import HiddenRuleClassifier, ModelImagination, hidden_reward, learned_reward
from mbrm.settings import LoopSettings
from mbrm.tasks import Task
from mbrm.world_model import WorldModel


@dataclass
class RunParts:
    """Everything a run is made of.

    reward_model: the reward ensemble; None plans with the task's hidden reward (oracle mode)
    classifier:   the side-constraint classifier; None when ``hidden_rule``
    hidden_rule:  the task's hidden ``unacceptable`` backs the learned entries (oracle mode)
    qp_filter:    QPFilter keyword arguments; None: no filter
    signature:    what a checkpoint of the run must match (task, model sizes)
    """

    task: Task
    seed: int
    world_model: WorldModel
    planner: Any  # planners.Planner
    constraints: ConstraintSpec
    reward_model: Any | None
    classifier: Any | None
    hidden_rule: bool
    gatherer: FeedbackGatherer
    settings: LoopSettings
    episode_length: int
    qp_filter: dict[str, Any] | None = None
    plan_reviewer: Any | None = None
    progress: bool = True
    signature: dict[str, Any] = field(default_factory=dict)

    def constraint_set(self, classifier_ready: bool) -> ConstraintSet:
        """The configured set; the learned entry joins once the classifier is calibrated
        (``classifier_ready``: and does not flag most acceptable states)."""
        if self.hidden_rule:
            return self.constraints.build(HiddenRuleClassifier(self.task), include_learned=True)
        clf = self.classifier
        ready = clf is not None and clf.threshold is not None and classifier_ready
        return self.constraints.build(clf, include_learned=ready)

    def reference_constraint_set(self) -> ConstraintSet:
        """The reference agent's set: the hidden rule rejects the task's unacceptable
        states, also in runs configured without a learned entry (``constraints=none``), so
        no arm of a comparison is normalised against a reference that may enter them."""
        spec = self.constraints.with_hidden_learned_entry()
        return spec.build(HiddenRuleClassifier(self.task), include_learned=True)

    def imagination(
        self, constraint_set: ConstraintSet, generator: torch.Generator, *, reference: bool = False
    ) -> ModelImagination:
        """The current models as the planners' imagination (the hidden reward for the
        reference agent and in oracle mode)."""
        s = self.settings
        learned = self.reward_model is not None and not reference
        reward = learned_reward(self.reward_model, s.dtype) if learned else hidden_reward(self.task)
        # the reference agent and oracle mode always reject
        penalise = s.constraint_mode == "penalty" and learned
        return ModelImagination(
            self.world_model,
            reward,
            constraint_set,
            s.particles,
            generator,
            s.propagation,
            s.dtype,
            penalty=s.constraint_penalty if penalise else None,
        )

    def agent(
        self, constraint_set: ConstraintSet, generator: torch.Generator, *, reference: bool = False
    ) -> Agent:
        """Planner + imagination (+ the QP filter, linearised through the world model's
        mean prediction: Dalal et al. 2018, Sec. 4)."""
        qp = None
        if self.qp_filter is not None:
            qp = QPFilter(constraint_set, self.world_model.mean_next_state, **self.qp_filter)
        imagination = self.imagination(constraint_set, generator, reference=reference)
        return Agent(self.planner, imagination, qp_filter=qp)
