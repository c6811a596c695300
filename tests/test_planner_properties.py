"""Invariants of the planners: Hypothesis properties, batch independence, sampling, configs."""

from __future__ import annotations

from pathlib import Path

import hydra.utils
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from planners import (
    CEMPlanner,
    ImaginedBatch,
    MCTSPlanner,
    coloured_noise,
    rank,
    score_candidates,
    truncated_normal,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "planner"


def recording_quadratic(target: torch.Tensor, seen: list[torch.Tensor], cap: float | None = None):
    """-|a - target|^2 per step; steps with a[..., 0] > cap are flagged."""

    def imagine(state, actions):
        seen.append(actions.clone())
        N, H, _ = actions.shape
        r = -(actions - target).square().sum(-1)[:, None]  # [N, 1, H]
        p = torch.zeros_like(r) if cap is None else (actions[..., 0] > cap).float()[:, None]
        return ImaginedBatch(torch.zeros(N, 1, H + 1, 1), r, torch.zeros_like(r), p)

    return imagine


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    horizon=st.integers(1, 6),
    action_dim=st.integers(1, 3),
    centre=st.floats(-3.0, 3.0),
    width=st.floats(0.05, 4.0),
    beta=st.sampled_from([0.0, 1.0, 2.5]),
    keep=st.sampled_from([0.0, 0.3]),
    decay=st.sampled_from([1.0, 1.5]),
    add_mean=st.booleans(),
    execute_best=st.booleans(),
    cap=st.one_of(st.none(), st.floats(-3.0, 3.0)),
)
def test_cem_best_score_never_decreases_and_actions_stay_in_bounds(
    seed, horizon, action_dim, centre, width, beta, keep, decay, add_mean, execute_best, cap
) -> None:
    gen = torch.Generator().manual_seed(seed)
    low = np.full(action_dim, centre - width / 2)
    high = np.full(action_dim, centre + width / 2)
    # Targets partly outside the box, so the optimum sits on its boundary.
    target = (torch.rand(horizon, action_dim, generator=gen) - 0.5) * 8.0
    seen: list[torch.Tensor] = []
    planner = CEMPlanner(
        action_low=low,
        action_high=high,
        horizon=horizon,
        population=40,
        elites=5,
        iterations=4,
        noise_beta=beta,
        keep_elites=keep,
        population_decay=decay,
        add_mean=add_mean,
        execute_best=execute_best,
    )
    result = planner.plan(torch.zeros(1), recording_quadratic(target, seen, cap), generator=gen)
    lo, hi = torch.as_tensor(low, dtype=torch.float32), torch.as_tensor(high, dtype=torch.float32)
    for actions in [*seen, result.plan[None], result.top_actions]:
        assert bool(((actions >= lo) & (actions <= hi)).all())
    h = np.asarray(result.history)
    assert len(h) == 4
    # history is the score of the best-ranked candidate so far. Feasible candidates
    # outrank infeasible ones, so from the iteration where one is first imagined the
    # score can only rise (before it, the least risky candidate leads, whatever its score).
    any_feasible = [cap is None or bool((a[..., 0] <= cap).all(1).any()) for a in seen[:4]]
    if any(any_feasible):
        first = any_feasible.index(True)
        assert np.all(np.diff(h[first:]) >= 0), (h, first)


def test_scoring_is_per_candidate() -> None:
    """Batched scores equal one-by-one scores; a NaN row leaves the others unchanged."""
    gen = torch.Generator().manual_seed(0)
    N, P, H = 7, 4, 5
    batch = ImaginedBatch(
        states=torch.randn(N, P, H + 1, 3, generator=gen),
        reward_mean=torch.randn(N, P, H, generator=gen),
        reward_std=torch.rand(N, P, H, generator=gen),
        p_unacceptable=torch.rand(N, P, H, generator=gen) * 0.6,
        violations={"c": torch.rand(N, P, H, generator=gen) * 0.6},
    )
    whole = score_candidates(batch, kappa=0.7, threshold=0.5)
    for i in range(N):
        one = score_candidates(
            ImaginedBatch(
                batch.states[i : i + 1],
                batch.reward_mean[i : i + 1],
                batch.reward_std[i : i + 1],
                batch.p_unacceptable[i : i + 1],
                {"c": batch.violations["c"][i : i + 1]},
            ),
            kappa=0.7,
            threshold=0.5,
        )
        assert torch.allclose(one.score, whole.score[i : i + 1])
        assert torch.equal(one.feasible, whole.feasible[i : i + 1])
        assert torch.equal(one.flagged["c"], whole.flagged["c"][i : i + 1])
    expected = (batch.reward_mean - 0.7 * batch.reward_std).sum(-1).mean(-1)
    assert torch.allclose(whole.score, expected)

    poisoned_r = batch.reward_mean.clone()
    poisoned_r[2, 1, 3] = float("nan")
    poisoned_p = batch.p_unacceptable.clone()
    poisoned_p[5, 0, 0] = float("nan")
    bad = score_candidates(
        ImaginedBatch(batch.states, poisoned_r, batch.reward_std, poisoned_p),
        kappa=0.7,
        threshold=0.5,
    )
    keep = torch.tensor([i not in (2, 5) for i in range(N)])
    assert torch.equal(bad.score[keep], whole.score[keep])
    assert torch.equal(bad.feasible[keep], whole.feasible[keep])
    assert torch.isnan(bad.score[2]) and torch.isnan(bad.risk[5])
    assert bad.nan.tolist() == [i in (2, 5) for i in range(N)]
    assert not bool(bad.feasible[2]) and not bool(bad.feasible[5])


def test_rank_puts_feasible_first_then_least_risky() -> None:
    score = torch.tensor([5.0, 1.0, float("nan"), 3.0, 9.0, 2.0])
    risk = torch.tensor([0.9, 0.1, 0.0, 0.2, 0.7, 0.7])
    exposure = torch.tensor([3.0, 0.1, 0.0, 0.2, 2.0, 1.0])
    feasible = torch.tensor([False, True, False, True, False, False])
    order = rank(score, risk, exposure, feasible).tolist()
    # feasible by score (3, 1); then risk 0.7 by exposure (5, 4); then 0.9; NaN last
    assert order == [3, 1, 5, 4, 0, 2]


@pytest.mark.parametrize("kind", ["cem", "mcts"])
def test_plans_do_not_depend_on_how_the_batch_is_imagined(kind: str) -> None:
    """Imagining candidates one by one or all at once gives the same plan."""
    target = torch.tensor([[0.4, -0.2], [0.1, 0.3], [-0.3, 0.0]])

    def rowwise(state, actions):
        parts = [recording_quadratic(target, [], cap=0.5)(state, a[None]) for a in actions]
        return ImaginedBatch(
            *(
                torch.cat([getattr(p, f) for p in parts])
                for f in ("states", "reward_mean", "reward_std", "p_unacceptable")
            )
        )

    make = {
        "cem": lambda: CEMPlanner(
            action_low=[-1, -1], action_high=[1, 1], horizon=3, population=30, elites=4
        ),
        "mcts": lambda: MCTSPlanner(
            action_low=[-1, -1], action_high=[1, 1], horizon=3, simulations=60, batch_size=20
        ),
    }[kind]
    a = make().plan(
        torch.zeros(1),
        recording_quadratic(target, [], cap=0.5),
        generator=torch.Generator().manual_seed(2),
    )
    b = make().plan(torch.zeros(1), rowwise, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a.plan, b.plan) and torch.equal(a.top_scores, b.top_scores)
    assert a.n_rejected == b.n_rejected > 0


def test_coloured_noise_has_unit_variance_and_more_slow_power() -> None:
    gen = torch.Generator().manual_seed(0)
    lag1 = {}
    for beta in (0.0, 1.0, 2.5):
        for horizon in (7, 30):
            x = coloured_noise(20000, horizon, 2, beta, gen)  # [n, H, A]
            assert x.shape == (20000, horizon, 2)
            assert torch.allclose(x.var(0), torch.ones(horizon, 2), atol=0.06)
        lag1[beta] = float((x[:, 1:] * x[:, :-1]).mean())
    assert abs(lag1[0.0]) < 0.03 and lag1[0.0] < lag1[1.0] < lag1[2.5]


def test_truncated_normal_stays_in_the_box_and_matches_the_gaussian_inside() -> None:
    gen = torch.Generator().manual_seed(0)
    low, high = torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 0.1])
    mean = torch.tensor([[0.2, 0.1]])  # second dimension sits on its upper bound
    std = torch.tensor([[0.05, 1.0]])
    x = truncated_normal(mean, std, low, high, torch.randn(50000, 1, 2, generator=gen))
    assert bool(((x >= low) & (x <= high)).all())
    # Far from the bounds it is the plain Gaussian.
    assert abs(float(x[:, 0, 0].mean()) - 0.2) < 2e-3 and abs(float(x[:, 0, 0].std()) - 0.05) < 2e-3
    # Truncated at the mean: a half-normal folded into [0, 0.1], close to uniform.
    assert 0.04 < float(x[:, 0, 1].mean()) < 0.06


@pytest.mark.parametrize("name", ["cem", "icem", "mcts"])
def test_configs_instantiate_and_document_every_key(name: str) -> None:
    path = CONFIGS / f"{name}.yaml"
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if line and not line.startswith("#"):
            assert i > 0 and lines[i - 1].startswith("# "), f"{path.name}: {line!r} lacks a comment"
    cfg = OmegaConf.load(path)
    planner = hydra.utils.instantiate(cfg, action_low=[-1.0, -1.0], action_high=[1.0, 1.0])
    assert isinstance(planner, MCTSPlanner if name == "mcts" else CEMPlanner)
    assert planner.horizon == cfg.horizon
