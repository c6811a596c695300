"""Invariants of the planners: Hypothesis properties, batch independence, sampling, configs."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from planners import (
    PLANNERS,
    CEMPlanner,
    CEMSettings,
    ImaginedBatch,
    MCTSPlanner,
    MCTSSettings,
    coloured_noise,
    make_planner,
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
    settings = CEMSettings(
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
    planner = CEMPlanner(settings, low, high)
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
    whole = score_candidates(batch, risk_aversion=0.7, reject_above=0.5)
    for i in range(N):
        one = score_candidates(
            ImaginedBatch(
                batch.states[i : i + 1],
                batch.reward_mean[i : i + 1],
                batch.reward_std[i : i + 1],
                batch.p_unacceptable[i : i + 1],
                {"c": batch.violations["c"][i : i + 1]},
            ),
            risk_aversion=0.7,
            reject_above=0.5,
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
        risk_aversion=0.7,
        reject_above=0.5,
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
            CEMSettings(horizon=3, population=30, elites=4), [-1, -1], [1, 1]
        ),
        "mcts": lambda: MCTSPlanner(
            MCTSSettings(horizon=3, simulations=60, batch_size=20), [-1, -1], [1, 1]
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


def composed(name: str) -> dict:
    """A planner config with its defaults list applied (``_self_`` last), as Hydra composes it."""
    cfg = OmegaConf.to_container(OmegaConf.load(CONFIGS / f"{name}.yaml"))
    merged: dict = {}
    for entry in cfg.pop("defaults", ["_self_"]):
        merged |= cfg if entry == "_self_" else composed(entry)
    return merged


@pytest.mark.parametrize("name", ["cem", "icem", "mcts"])
def test_configs_document_every_setting(name: str) -> None:
    """Each base config comments every key and sets exactly the fields of its settings class."""
    path = CONFIGS / f"{name}.yaml"
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if line and not line.startswith("#"):
            assert i > 0 and lines[i - 1].startswith("# "), f"{path.name}: {line!r} lacks a comment"
    cfg = composed(name)
    fields = {f.name for f in dataclasses.fields(PLANNERS[cfg["kind"]][0])}
    assert set(cfg) == fields, f"{path.name}: {set(cfg) ^ fields}"


@pytest.mark.parametrize("name", ["cem", "icem", "mcts", "cem_fast", "icem_fast", "mcts_fast"])
def test_configs_build_their_planner(name: str) -> None:
    """Plain keyword arguments and the structured-config schema give the same settings."""
    cfg = composed(name)
    settings_type, planner_type = PLANNERS[cfg["kind"]]
    settings = settings_type(**cfg)
    schema = OmegaConf.merge(OmegaConf.structured(settings_type), cfg)
    assert OmegaConf.to_object(schema) == settings
    planner = make_planner(settings, [-1.0, -1.0], [1.0, 1.0])
    assert isinstance(planner, planner_type)
    assert planner.settings.horizon == cfg["horizon"]


@pytest.mark.parametrize(
    "settings_type, kw, text",
    [
        (CEMSettings, {"population": 0}, "planner.population must be an integer >= 2 * planner.elites = 80, got 0"),
        (CEMSettings, {"elites": 0}, "planner.elites must be an integer >= 1, got 0"),
        (CEMSettings, {"horizon": 2.5}, "planner.horizon must be an integer >= 1, got 2.5"),
        (CEMSettings, {"iterations": True}, "planner.iterations must be an integer >= 1, got True"),
        (CEMSettings, {"momentum": 1.0}, "planner.momentum must be a number in [0, 1), got 1.0"),
        (CEMSettings, {"init_std": 0.0}, "planner.init_std must be a number > 0, got 0.0"),
        (CEMSettings, {"risk_aversion": float("nan")}, "planner.risk_aversion must be a finite number"),
        (CEMSettings, {"reject_above": 1.5}, "planner.reject_above must be a number in [0, 1], got 1.5"),
        (CEMSettings, {"noise_beta": -1.0}, "planner.noise_beta must be a number >= 0, got -1.0"),
        (CEMSettings, {"keep_elites": 2}, "planner.keep_elites must be a number in [0, 1], got 2"),
        (CEMSettings, {"population_decay": 0.5}, "planner.population_decay must be a number >= 1"),
        (CEMSettings, {"add_mean": "yes"}, "planner.add_mean must be true or false, got 'yes'"),
        (CEMSettings, {"execute_best": 1}, "planner.execute_best must be true or false, got 1"),
        (CEMSettings, {"warm_start_fill": "last"}, "planner.warm_start_fill must be one of repeat, zero, got 'last'"),
        (CEMSettings, {"top_k": 0}, "planner.top_k must be an integer >= 1, got 0"),
        (CEMSettings, {"kind": "mcts"}, "planner.kind must be cem for CEMSettings, got 'mcts'"),
        (CEMSettings, {"kind": "icem"}, "planner.kind must be one of cem, mcts, got 'icem'"),
        (MCTSSettings, {"simulations": 0}, "planner.simulations must be an integer >= 1, got 0"),
        (MCTSSettings, {"batch_size": -3}, "planner.batch_size must be an integer >= 1, got -3"),
        (MCTSSettings, {"widening_k": 0.0}, "planner.widening_k must be a number > 0, got 0.0"),
        (MCTSSettings, {"widening_alpha": 1.0}, "planner.widening_alpha must be a number in (0, 1), got 1.0"),
        (MCTSSettings, {"max_children": 0}, "planner.max_children must be an integer >= 1, got 0"),
        (MCTSSettings, {"selection": "ucb"}, "planner.selection must be one of puct, uct, got 'ucb'"),
        (MCTSSettings, {"exploration": -0.1}, "planner.exploration must be a number >= 0, got -0.1"),
        (MCTSSettings, {"proposal_std": float("inf")}, "planner.proposal_std must be a number > 0, got inf"),
        (MCTSSettings, {"uniform_fraction": -0.5}, "planner.uniform_fraction must be a number in [0, 1]"),
        (MCTSSettings, {"recommend": "mean"}, "planner.recommend must be one of best, visits, got 'mean'"),
        (MCTSSettings, {"kind": "cem"}, "planner.kind must be mcts for MCTSSettings, got 'cem'"),
    ],
)  # fmt: skip
def test_bad_settings_are_refused_with_the_key_named(settings_type, kw, text) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(text)}"):
        settings_type(**({"horizon": 5} | kw))


def test_settings_are_frozen_plain_and_checked_by_the_planner() -> None:
    settings = CEMSettings(horizon=5, momentum=0, risk_aversion=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.population = 10  # type: ignore[misc]
    # Integers given for float fields are stored as floats: the numbers a planner reads
    # do not depend on how a config spells them.
    assert type(settings.momentum) is float and type(settings.risk_aversion) is float
    assert dataclasses.replace(settings, population=100).population == 100
    with pytest.raises(ValueError, match=r"planner\.population must be an integer >= 2"):
        dataclasses.replace(settings, population=10)
    with pytest.raises(TypeError, match="missing 1 required keyword-only argument: 'horizon'"):
        CEMSettings()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="MCTSPlanner needs MCTSSettings, got CEMSettings"):
        MCTSPlanner(settings, [-1.0], [1.0])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="make_planner needs planner settings, got dict"):
        make_planner({"kind": "cem", "horizon": 5}, [-1.0], [1.0])  # type: ignore[arg-type]
