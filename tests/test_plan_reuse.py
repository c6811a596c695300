"""Plan reuse (``planner.replan_every``): the agent follows its last plan between planner
calls while the rest of it, re-imagined from the real state, stays feasible."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mbrm.agent import Agent
from planners import CEMSettings, ImaginedBatch, make_planner

H = 6


class LineWorld:
    """s_{t+1} = s_t + a_t on a line; reward -(s - 2)^2; s above ``wall`` is unacceptable."""

    def __init__(self, wall: float = 10.0) -> None:
        self.wall = wall
        self.calls: list[int] = []  # candidates per imagination call

    def __call__(self, state: torch.Tensor, actions: torch.Tensor) -> ImaginedBatch:
        n = actions.shape[0]
        self.calls.append(n)
        steps = torch.cumsum(actions[..., 0], dim=1) + state[0]  # [n, h]
        states = torch.cat([state[0].expand(n, 1), steps], dim=1)[:, None, :, None]
        reward = -((steps - 2.0) ** 2)[:, None]  # [n, 1, h]
        p = (steps > self.wall).float()[:, None]
        return ImaginedBatch(states, reward, torch.zeros_like(reward), p)


class CountingPlanner:
    """A CEM planner that counts its calls."""

    def __init__(self, **settings: object) -> None:
        base = dict(horizon=H, population=40, elites=5, iterations=2)
        self.inner = make_planner(CEMSettings(**{**base, **settings}), [-1.0], [1.0])
        self.settings = self.inner.settings
        self.device = self.inner.device
        self.low, self.high = self.inner.low, self.inner.high
        self.calls = 0

    def plan(self, *args, **kwargs):
        self.calls += 1
        return self.inner.plan(*args, **kwargs)


def run(agent: Agent, steps: int, seed: int = 0) -> tuple[list[float], list[bool]]:
    """Acts ``steps`` times on the line world's true dynamics."""
    g = torch.Generator().manual_seed(seed)
    agent.reset()
    s = np.zeros(1)
    actions, replanned = [], []
    for _ in range(steps):
        a, info = agent.act(s, g)
        actions.append(float(a[0]))
        replanned.append(info.replanned)
        s = s + a
    return actions, replanned


def test_default_plans_every_step():
    planner = CountingPlanner()
    _, replanned = run(Agent(planner, LineWorld()), 7)
    assert planner.calls == 7 and all(replanned)


def test_replan_every_k_calls_the_planner_every_k_steps_and_follows_the_plan():
    planner = CountingPlanner(replan_every=3)
    world = LineWorld()
    agent = Agent(planner, world)
    g = torch.Generator().manual_seed(0)
    agent.reset()
    s = np.zeros(1)
    plan = None
    for t in range(9):
        a, info = agent.act(s, g)
        assert info.replanned == (t % 3 == 0)
        if info.replanned:
            plan = info.plan.plan.numpy().copy()
            j = 0
        else:
            j += 1
            # the action taken is the plan's action for this step, and the re-check imagined
            # one sequence of the full horizon from the real state
            assert float(a[0]) == pytest.approx(float(plan[j, 0]))
            assert info.plan.n_candidates == 1 and info.plan.top_states.shape[2] == H + 1
            assert float(info.plan.top_states[0, 0, 0, 0]) == pytest.approx(float(s[0]))
        s = s + a
    assert planner.calls == 3


def test_a_plan_that_turns_infeasible_from_the_real_state_is_dropped_at_once():
    # The plans head for s = 2; a wall at 1.5 makes every imagined future that passes it
    # unacceptable. Pushing the real state past what was planned makes the rest of the plan
    # cross the wall: the agent must replan on that step instead of following it.
    planner = CountingPlanner(replan_every=H)
    world = LineWorld(wall=1.5)
    agent = Agent(planner, world)
    g = torch.Generator().manual_seed(1)
    agent.reset()
    s = np.zeros(1)
    a, info = agent.act(s, g)
    assert info.replanned
    s = s + a
    a, info = agent.act(s, g)  # undisturbed: the rest of the plan stays feasible
    assert not info.replanned and info.plan.feasible
    s = s + a + 1.2  # a push toward the wall the plan did not foresee
    a, info = agent.act(s, g)
    assert info.replanned
    assert planner.calls == 2


def test_reuse_cuts_the_imagined_sequences_per_step():
    world_1, world_3 = LineWorld(), LineWorld()
    run(Agent(CountingPlanner(), world_1), 9)
    run(Agent(CountingPlanner(replan_every=3), world_3), 9)
    per_call = sum(world_1.calls) / 9
    assert sum(world_3.calls) == pytest.approx(3 * per_call + 6)


def test_reset_forgets_the_plan_being_followed():
    planner = CountingPlanner(replan_every=3)
    agent = Agent(planner, LineWorld())
    g = torch.Generator().manual_seed(0)
    agent.act(np.zeros(1), g)
    agent.reset()
    _, info = agent.act(np.zeros(1), g)
    assert info.replanned and planner.calls == 2


@pytest.mark.parametrize("value", [0, H + 1, 1.5])
def test_replan_every_out_of_range_is_refused_in_one_line(value):
    with pytest.raises(ValueError, match=r"planner\.replan_every must be an integer") as e:
        CEMSettings(horizon=H, population=40, elites=5, replan_every=value)
    assert "\n" not in str(e.value)
