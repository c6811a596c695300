"""Episodes in the real environment: the planning agent or the random explorer acts.

The agent sees only the MuJoCo state; the hidden ``true_reward`` and ``unacceptable``
are read after the episode, for the figures an experimenter logs (Leike et al. 2018,
Sec. 3.1: the reward is not given to the agent, only to whoever simulates a teacher
or evaluates it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from constraints.sets import ConstraintSet
from mbrm.feedback.segments import Segment
from mbrm.replay import ReplayBuffer
from mbrm.synthesis import imagined_segment
from mbrm.tasks import Task


class Planning(Protocol):
    """A planning policy: :class:`mbrm.agent.Agent` or one whose plans are reviewed
    (:class:`mbrm.plan_review.ReviewedAgent`)."""

    def reset(self) -> None: ...

    def act(self, state: np.ndarray, generator: torch.Generator) -> tuple[np.ndarray, Any]: ...


class RandomExplorer:
    """Uniform actions in the task's box, resampled until the hard action entries hold."""

    def __init__(self, task: Task, constraint_set: ConstraintSet, rng: np.random.Generator):
        self.low, self.high = task.action_bounds
        self.entries = [e for e in constraint_set.entries if not e.uses_states]
        self.rng = rng

    def __call__(self) -> np.ndarray:
        for _ in range(1000):
            a = self.rng.uniform(self.low, self.high)
            act = torch.as_tensor(a[None, None], device="cpu")  # [1, 1, A]: one step
            if all(float(e.evaluate(None, act).max()) <= 0.5 for e in self.entries):
                return a
        raise RuntimeError(
            "no random action satisfies the configured action constraints after 1000 tries"
        )


@dataclass
class Recorder:
    """Where an episode's data goes while training (None of it while evaluating).

    replay:          every real transition, tagged with ``episode``
    imagined:        the planner's best imagined future every ``imagined_every`` steps,
                     cut to ``segment_length`` transitions (query candidates)
    """

    replay: ReplayBuffer
    episode: int
    imagined: list[Segment]
    imagined_every: int
    segment_length: int


@dataclass
class PlanSnapshot:
    """The plan the agent chose at one step, as the planner imagined it.

    step:          the episode step it was chosen at
    states:        [H+1, S] the best candidate's imagined states (its first particle)
    feasible:      it passed the rejection rule
    no_safe_plan:  no candidate did; the agent took the least risky one
    """

    step: int
    states: np.ndarray
    feasible: bool
    no_safe_plan: bool


@dataclass
class Capture:
    """What an evaluation episode leaves behind for people to watch (videos, plan strips).

    Reading the states and plans draws no random number and changes no model, so an
    episode with a capture has exactly the result of one without.

    plan_every:  keep the chosen plan every k steps (0: none)
    states:      [T+1, S] the real states, filled in when the episode ends
    actions:     [T, A] the actions taken
    plans:       the chosen plans, in step order
    """

    plan_every: int
    states: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    actions: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    plans: list[PlanSnapshot] = field(default_factory=list)


def run_episode(
    task: Task,
    policy: Planning | RandomExplorer,
    *,
    seed: int,
    length: int,
    generator: torch.Generator,
    recorder: Recorder | None = None,
    reward_model: Any | None = None,
    capture: Capture | None = None,
    on_step: Callable[[], None] | None = None,
    reset_on_unacceptable: bool = False,
    make_env: Callable[[int], Any] | None = None,
) -> dict[str, Any]:
    """One episode of at most ``length`` steps from ``task.make_env(seed)``.

    Returns the true return and unacceptable steps (hidden task functions, evaluation
    only), the no-safe-plan and rejection counts, the median planning seconds and, when
    a fitted ``reward_model`` is given, the return it predicts for the episode. A
    ``capture`` receives the real states and the plans chosen every ``plan_every`` steps;
    ``on_step`` (a progress bar's) is called after every environment step.

    ``reset_on_unacceptable`` is the experimenter's reset: when the real state turns
    unacceptable (the hidden rule), the environment is reset and the episode goes on from
    the fresh start state, within the same ``length`` steps. Nothing tells the agent; the
    replay's step index skips one there, so no segment spans the reset. ``resets`` counts
    them. ``make_env(seed)`` builds the environment instead of ``task.make_env`` (a
    certificate's perturbed scenarios, :mod:`mbrm.certify.perturb`).
    """
    env = task.make_env(seed) if make_env is None else make_env(seed)
    s, _ = env.reset(seed=seed)
    states, actions, next_states = [s], [], []
    resets = 0
    blocked: dict[str, int] = {}
    no_safe_plan, plan_seconds = 0, []
    planning = not isinstance(policy, RandomExplorer)
    if planning:
        policy.reset()
    for t in range(length):
        if planning:
            a, info = policy.act(s, generator)
            plan = info.plan
            no_safe_plan += int(info.no_safe_plan)
            plan_seconds.append(info.seconds)
            for name, n in plan.rejected_by.items():
                blocked[name] = blocked.get(name, 0) + n
            if recorder is not None and recorder.imagined_every > 0:
                if t % recorder.imagined_every == 0:
                    recorder.imagined.append(
                        imagined_segment(plan.top_states, plan.top_actions, recorder.segment_length)
                    )
            if capture is not None and capture.plan_every > 0 and t % capture.plan_every == 0:
                capture.plans.append(
                    PlanSnapshot(
                        t,
                        plan.top_states[0, 0].double().numpy().copy(),
                        bool(plan.top_feasible[0]),
                        bool(plan.no_safe_plan),
                    )
                )
        else:
            a = policy()
        s2, _, terminated, truncated, _ = env.step(a)
        if recorder is not None:
            recorder.replay.add(s, a, s2, recorder.episode, t + resets)
        states.append(s2)
        actions.append(a)
        next_states.append(s2)
        s = s2
        if reset_on_unacceptable and bool(task.unacceptable(s2)) and t + 1 < length:
            s, _ = env.reset()  # the env's own generator: the same seed, the same starts
            resets += 1
            states[-1] = s  # the next transition starts here
            if planning:
                policy.reset()
        if on_step is not None:
            on_step()
        if terminated or truncated:
            break
    env.close()
    S, A = np.array(states), np.array(actions)
    S0, S1 = S[:-1], np.array(next_states).reshape(S[1:].shape)  # each step's s and s'
    if capture is not None:
        capture.states, capture.actions = S.copy(), A.copy()
    out = {
        "true_return": float(task.true_reward(S0, A, S1).sum()),
        "unacceptable_steps": int(task.unacceptable(S1).sum()),
        "steps": len(A),
        "resets": resets,
        "no_safe_plan": no_safe_plan,
        "blocked": blocked,
        "plan_seconds": float(np.median(plan_seconds)) if plan_seconds else 0.0,
    }
    if reward_model is not None and reward_model.fitted:
        mean, _ = reward_model.predict(
            torch.as_tensor(S0, dtype=torch.float32, device="cpu"),
            torch.as_tensor(A, dtype=torch.float32, device="cpu"),
            torch.as_tensor(S1, dtype=torch.float32, device="cpu"),
        )
        out["predicted_return"] = float(mean.sum())
    return out
