"""QP safety filter on analytic linear dynamics: hand cases, fallbacks, and properties."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import scipy.optimize
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from constraints.qp_filter import QPFilter
from constraints.sets import ConfigError, ConstraintSet
from constraints.spec import constraint_set
from mbrm.tasks import StateLayout

DT = 0.1
LAYOUT = StateLayout(("qpos.x", "qvel.x"), nq=1, nv=1, excluded=(), dt=DT)


def double_integrator(s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """x' = x + dt v, v' = v + 0.5 a: the velocity bound is one step from the action."""
    return torch.stack([s[:, 0] + DT * s[:, 1], s[:, 1] + 0.5 * a[:, 0]], -1)


def speed_set(upper: float = 1.0, box: float = 1.0) -> ConstraintSet:
    return constraint_set(
        {
            "speed": {"kind": "state_bounds", "dims": ["qvel.x"], "lower": -upper, "upper": upper},
            "box": {"kind": "action_box", "low": -box, "high": box},
        },
        layout=LAYOUT,
        action_dim=1,
    )


def run(filt: QPFilter, state, action):
    return filt(np.asarray(state, dtype=np.float64), np.asarray(action, dtype=np.float64))


# --------------------------------------------------------------------------- hand cases


@pytest.mark.parametrize("solver", ["OSQP", "CLARABEL"])
def test_projection_by_hand(solver):
    filt = QPFilter(speed_set(), double_integrator, solver=solver, dtype=torch.float64)
    # v = 0.9: v' = 0.9 + 0.5 a <= 1  =>  a <= 0.2, the projection of 0.5
    res = run(filt, [0.0, 0.9], [0.5])
    assert res.status == "optimal" and res.fallback is None and res.changed
    np.testing.assert_allclose(res.action, [0.2], atol=1e-8)
    assert res.active == ("speed[qvel.x <= 1]",) and res.active_entries == ("speed",)
    np.testing.assert_allclose(res.slack, [0.0, 2.0, 1.2, 0.8], atol=1e-8)
    assert res.row_names == ("speed[qvel.x <= 1]", "speed[qvel.x >= -1]", "box[a0 >= -1]",
                             "box[a0 <= 1]")  # fmt: skip
    assert res.violation <= 1e-8


def test_safe_plan_is_returned_untouched():
    filt = QPFilter(speed_set(), double_integrator, dtype=torch.float64)
    res = run(filt, [0.0, 0.0], [0.5])
    assert res.status == "already_safe" and not res.changed and res.action.tolist() == [0.5]
    assert res.solve_s == 0.0 and res.active == ()


def test_infeasible_fallbacks():
    # v = 1.8: v' = 1.8 + 0.5 a >= 1.3 for every a in [-1, 1]: infeasible
    state, plan = [0.0, 1.8], [0.5]
    results = {
        fb: run(
            QPFilter(speed_set(), double_integrator, fallback=fb, dtype=torch.float64), state, plan
        )
        for fb in ("pass_through", "zero", "least_violation")
    }
    assert all(r.status == "infeasible" for r in results.values())
    assert results["pass_through"].action.tolist() == [0.5]
    assert not results["pass_through"].changed
    assert results["zero"].action.tolist() == [0.0] and results["zero"].changed
    lv = results["least_violation"]
    np.testing.assert_allclose(lv.action, [-1.0], atol=1e-6)  # brake as hard as allowed
    np.testing.assert_allclose(lv.violation, 0.3, atol=1e-6)  # v' = 1.3 > 1
    assert lv.fallback == "least_violation" and "box[a0 >= -1]" in lv.active
    np.testing.assert_allclose(results["pass_through"].violation, 1.05, atol=1e-9)
    np.testing.assert_allclose(results["zero"].violation, 0.8, atol=1e-9)


def test_least_violation_trades_rows_by_total_slack():
    # Two rows on v' that cannot both hold: v' <= 0 and v' >= 0.5 (from two entries);
    # total slack is 0.5 anywhere in between, so the nearest point to the plan wins.
    cs = constraint_set(
        {
            "low_speed": {"kind": "state_bounds", "dims": ["qvel.x"], "upper": 0.0},
            "min_speed": {"kind": "state_bounds", "dims": ["qvel.x"], "lower": 0.5},
            "box": {"kind": "action_box", "low": -1.0, "high": 1.0},
        },
        layout=LAYOUT,
        action_dim=1,
    )
    res = run(QPFilter(cs, double_integrator, dtype=torch.float64), [0.0, 0.0], [0.4])
    assert res.status == "infeasible" and res.fallback == "least_violation"
    np.testing.assert_allclose(res.action, [0.4], atol=1e-4)  # v' = 0.2 lies in [0, 0.5]
    np.testing.assert_allclose(-res.slack[:2].sum(), 0.5, atol=1e-4)


def test_solver_failure_is_a_status_not_a_crash(monkeypatch):
    filt = QPFilter(speed_set(), double_integrator, fallback="zero", dtype=torch.float64)

    def broken(*args, **kwargs):
        raise cp.error.SolverError("solver exploded")

    for problem in filt._problem.values():  # the Clarabel second opinion fails too
        monkeypatch.setattr(problem, "solve", broken)
    res = run(filt, [0.0, 0.9], [0.5])
    assert res.status == "solver_error" and res.fallback == "zero" and res.action.tolist() == [0.0]
    filt2 = QPFilter(speed_set(), double_integrator, dtype=torch.float64)
    for problem in (*filt2._problem.values(), *filt2._elastic.values()):
        monkeypatch.setattr(problem, "solve", broken)
    res = run(filt2, [0.0, 0.9], [0.5])  # the least-violation solve fails too: said so
    assert res.status == "solver_error" and res.fallback == "pass_through"
    assert res.action.tolist() == [0.5]


def test_nonfinite_dynamics_falls_back_with_status():
    def exploding(s, a):
        return double_integrator(s, a) * torch.tensor(float("nan"))

    res = run(QPFilter(speed_set(), exploding, dtype=torch.float64), [0.0, 0.9], [1.5])
    assert res.status == "nonfinite_linearisation" and res.fallback == "least_violation"
    # only the action rows could be honoured: the plan is projected onto the box, and the
    # speed rows are reported as unknown rather than as satisfied
    np.testing.assert_allclose(res.action, [1.0], atol=1e-6)
    assert np.isnan(res.slack[:2]).all() and np.isfinite(res.slack[2:]).all()


def test_construction_errors():
    with pytest.raises(ValueError, match="needs a differentiable dynamics"):
        QPFilter(speed_set())
    with pytest.raises(ValueError, match="unknown fallback 'clip'"):
        QPFilter(speed_set(), double_integrator, fallback="clip")
    with pytest.raises(ValueError, match="unknown solver"):
        QPFilter(speed_set(), double_integrator, solver="GUROBI")
    off_zero = constraint_set(
        {"box": {"kind": "action_box", "low": 0.2, "high": 1.0}}, layout=LAYOUT, action_dim=1
    )
    with pytest.raises(ValueError, match=r"fallback 'zero' is not an allowed action.*box\[a0"):
        QPFilter(off_zero, fallback="zero")
    filt = QPFilter(speed_set(), double_integrator)
    with pytest.raises(ValueError, match="non-finite"):
        run(filt, [0.0, 0.0], [np.nan])
    with pytest.raises(ValueError, match=r"expected state \[2\] and action \[1\]"):
        run(filt, [0.0, 0.0, 0.0], [0.0])


def test_learned_entries_are_skipped_and_action_only_sets_need_no_model():
    class Clf:
        threshold = 0.5

        def predict(self, states, dtype="float32"):
            return torch.zeros(states.shape[:-1]), torch.zeros(states.shape[:-1])

    cs = constraint_set(
        {
            "clf": {"kind": "learned"},
            "poly": {"kind": "action_polytope", "A": [[1.0, 1.0]], "b": [1.0]},
        },
        layout=LAYOUT,
        action_dim=2,
        classifier=Clf(),
        action_bounds=(np.array([-1.0, -1.0]), np.array([1.0, 1.0])),
    )
    filt = QPFilter(cs)
    assert filt.skipped == ("clf",)
    res = run(filt, [0.0, 0.0], [1.0, 0.6])  # project onto a0 + a1 <= 1
    np.testing.assert_allclose(res.action, [0.7, 0.3], atol=1e-7)
    assert res.active_entries == ("poly",)
    unconstrained = QPFilter(constraint_set({}, layout=LAYOUT, action_dim=1))
    assert run(unconstrained, [0.0, 0.0], [5.0]).status == "unconstrained"


def test_linearisation_matches_finite_differences_on_nonlinear_dynamics():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(2, 2, generator=g, dtype=torch.float64)
    B = torch.randn(2, 3, generator=g, dtype=torch.float64)

    def dyn(s, a):
        return s + torch.tanh(s @ W.T + a @ B.T) ** 2

    cs = constraint_set(
        {"lin": {"kind": "linear", "over": "both", "A": [[1.0, -2.0, 0.5, 0.0, 1.0]], "b": [1.0]}},
        layout=LAYOUT,
        action_dim=3,
    )
    filt = QPFilter(cs, dyn, dtype=torch.float64)
    s = torch.tensor([0.3, -0.2], dtype=torch.float64)
    a0 = torch.tensor([0.1, 0.4, -0.3], dtype=torch.float64)
    M, r = filt.linearise(s, a0)

    def c(a):  # the constraint's lhs as a function of the action
        s2 = dyn(s[None], torch.as_tensor(a)[None])[0].numpy()
        return s2 @ [1.0, -2.0] + a @ [0.5, 0.0, 1.0]

    eps = 1e-6
    fd = [(c(a0.numpy() + eps * e) - c(a0.numpy() - eps * e)) / (2 * eps) for e in np.eye(3)]
    np.testing.assert_allclose(M[0], fd, atol=1e-8)
    # the linearised lhs M a - (r - b) equals c(a) at the linearisation point
    np.testing.assert_allclose(M[0] @ a0.numpy() - r[0] + 1.0, c(a0.numpy()), atol=1e-12)


def test_rows_that_read_no_state_need_no_model_call():
    cs = constraint_set(
        {"both": {"kind": "linear", "over": "both", "A": [[0.0, 0.0, 1.0]], "b": [0.25]}},
        layout=LAYOUT,
        action_dim=1,
    )

    def never(s, a):
        raise AssertionError("the dynamics must not be called")

    res = run(QPFilter(cs, never), [0.0, 0.0], [1.0])
    assert res.status == "optimal"
    np.testing.assert_allclose(res.action, [0.25], atol=1e-7)


def test_linearise_at_zero_agrees_on_linear_dynamics():
    plan = QPFilter(speed_set(), double_integrator, dtype=torch.float64)
    zero = QPFilter(speed_set(), double_integrator, linearise_at="zero", dtype=torch.float64)
    a, b = run(plan, [0.0, 0.7], [0.9]), run(zero, [0.0, 0.7], [0.9])
    np.testing.assert_allclose(a.action, b.action, atol=1e-9)
    np.testing.assert_allclose(a.action, [0.6], atol=1e-8)


def test_float32_world_model_style_dynamics():
    # float32 dynamics (as the world model's) give float32-accurate rows
    filt = QPFilter(speed_set(), double_integrator)  # dtype float32
    res = run(filt, [0.0, 0.9], [0.5])
    np.testing.assert_allclose(res.action, [0.2], atol=1e-6)


# --------------------------------------------------------------------------- properties


@st.composite
def problems(draw):
    """A random linear system and linear constraints over (s', a) plus a box and a polytope."""
    S = draw(st.integers(1, 3))
    A = draw(st.integers(1, 3))
    M = draw(st.integers(1, 4))
    K = draw(st.integers(0, 2))
    num = st.floats(-2.0, 2.0, allow_nan=False, width=64)
    return {
        "S": S,
        "A": A,
        "Ad": draw(arrays(np.float64, (S, S), elements=num)),
        "Bd": draw(arrays(np.float64, (S, A), elements=num)),
        "c": draw(arrays(np.float64, (S,), elements=num)),
        "rows": draw(arrays(np.float64, (M, S + A), elements=num)),
        "b": draw(arrays(np.float64, (M,), elements=num)),
        "poly": draw(arrays(np.float64, (K, A), elements=num)),
        "h": draw(arrays(np.float64, (K,), elements=st.floats(0.0, 2.0))),
        "low": draw(arrays(np.float64, (A,), elements=st.floats(-2.0, -0.1))),
        "high": draw(arrays(np.float64, (A,), elements=st.floats(0.1, 2.0))),
        "state": draw(arrays(np.float64, (S,), elements=num)),
        "plan": draw(arrays(np.float64, (A,), elements=st.floats(-3.0, 3.0))),
    }


def build(p, b=None, fallback="least_violation", solver="CLARABEL"):
    S, A = p["S"], p["A"]
    layout = StateLayout(tuple(f"qpos.q{i}" for i in range(S)), S, 0, (), DT)
    entries = {
        "lin": {"kind": "linear", "over": "both", "A": p["rows"].tolist(),
                "b": (p["b"] if b is None else b).tolist()},
        "box": {"kind": "action_box", "low": p["low"].tolist(), "high": p["high"].tolist()},
    }  # fmt: skip
    if len(p["h"]):
        entries["poly"] = {"kind": "action_polytope", "A": p["poly"].tolist(), "b": p["h"].tolist()}
    try:
        cs = constraint_set(entries, layout=layout, action_dim=A)
    except ConfigError:
        assume(False)
    Ad, Bd, c = (torch.as_tensor(p[k]) for k in ("Ad", "Bd", "c"))

    def dyn(s, a):
        return s @ Ad.T + a @ Bd.T + c

    return QPFilter(cs, dyn, fallback=fallback, solver=solver, dtype=torch.float64)


def exact_rows(p, b=None):
    """All constraints as G a <= h, computed from the true linear dynamics."""
    S = p["S"]
    Cs, Ca = p["rows"][:, :S], p["rows"][:, S:]
    b = p["b"] if b is None else b
    G = np.vstack([Cs @ p["Bd"] + Ca, p["poly"], -np.eye(p["A"]), np.eye(p["A"])])
    h = np.concatenate([b - Cs @ (p["Ad"] @ p["state"] + p["c"]), p["h"], -p["low"], p["high"]])
    return G, h


def chebyshev_margin(G, h):
    """max t s.t. G a + t <= h (t <= 1): > 0 strictly feasible, < 0 infeasible."""
    n = G.shape[1]
    res = scipy.optimize.linprog(
        np.r_[np.zeros(n), -1.0],
        A_ub=np.c_[G, np.ones(len(h))],
        b_ub=h,
        bounds=[(None, None)] * n + [(None, 1.0)],
        method="highs",
    )
    assert res.status == 0, res.message
    return -res.fun


PROPERTY = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(problems(), st.sampled_from(["CLARABEL", "OSQP"]))
def test_output_is_feasible_whenever_the_problem_is(p, solver):
    G, h = exact_rows(p)
    margin = chebyshev_margin(G, h)
    assume(abs(margin) > 1e-5)  # leave out problems on the edge of feasibility
    filt = build(p, solver=solver)
    res = filt(p["state"], p["plan"])
    if margin > 0:
        assert res.status in ("optimal", "already_safe"), res.status
        assert res.fallback is None
        assert (G @ res.action - h).max() <= 1e-6
        # optimal too: a local solver started from the projection finds nothing closer
        proj = scipy.optimize.minimize(
            lambda a: np.sum((a - p["plan"]) ** 2),
            res.action,
            constraints=[{"type": "ineq", "fun": lambda a: h - G @ a}],
        )
        assert np.sum((res.action - p["plan"]) ** 2) <= proj.fun + 1e-6
    else:
        assert res.status == "infeasible" and res.fallback == "least_violation"
        # action rows stay hard under the least-violation fallback
        K = len(p["h"]) + 2 * p["A"]
        assert (G[-K:] @ res.action - h[-K:]).max() <= 1e-6


@PROPERTY
@given(problems(), st.data())
def test_a_feasible_plan_comes_back_unchanged(p, data):
    # Move b so that the plan satisfies every state row with a drawn margin.
    S = p["S"]
    plan = np.clip(p["plan"], p["low"], p["high"])
    s2 = p["Ad"] @ p["state"] + p["Bd"] @ plan + p["c"]
    lhs = p["rows"][:, :S] @ s2 + p["rows"][:, S:] @ plan
    margin = data.draw(arrays(np.float64, lhs.shape, elements=st.floats(0.0, 1.0)))
    b = lhs + margin
    assume((p["poly"] @ plan <= p["h"]).all())
    res = build(p, b)(p["state"], plan)
    assert res.status == "already_safe" and not res.changed
    assert np.array_equal(res.action, plan)


@PROPERTY
@given(problems())
def test_filtering_twice_equals_filtering_once(p):
    G, h = exact_rows(p)
    assume(chebyshev_margin(G, h) > 1e-5)
    filt = build(p)
    once = filt(p["state"], p["plan"])
    twice = filt(p["state"], once.action)
    np.testing.assert_allclose(twice.action, once.action, atol=1e-6)
    assert twice.status == "already_safe"


def test_world_model_mean_next_state_as_dynamics():
    from mbrm.world_model import WorldModel

    layout = StateLayout(("qpos.x", "qpos.y", "qvel.x", "qvel.y"), 2, 2, (), DT)
    model = WorldModel(4, 2, ensemble_size=3, elites=2, hidden=16, layers=2, seed=0).eval()
    s = torch.tensor([0.1, -0.2, 0.3, 0.0])
    plan = torch.tensor([0.8, -0.6])
    with torch.no_grad():
        v_next = float(model.mean_next_state(s[None], plan[None])[0, 2])
    cs = constraint_set(
        {
            "speed": {"kind": "state_bounds", "dims": ["qvel.x"], "upper": v_next - 0.01},
            "box": {"kind": "action_box", "low": -1.0, "high": 1.0},
        },
        layout=layout,
        action_dim=2,
    )
    filt = QPFilter(cs, model.mean_next_state)
    M, r = filt.linearise(s, plan)
    J = torch.autograd.functional.jacobian(
        lambda a: model.mean_next_state(s[None], a[None])[0], plan
    )  # [S, A]
    np.testing.assert_allclose(M[0], J[2].numpy(), rtol=1e-5, atol=1e-6)
    # at the plan the linearised row reads the model's own prediction: M a - r = v' - bound
    np.testing.assert_allclose(M[0] @ plan.numpy() - r[0], 0.01, atol=1e-5)
    with torch.no_grad():  # the filter differentiates even when called under no_grad
        res = filt(s, plan)
    assert res.status in ("optimal", "infeasible") and res.changed
    if res.status == "optimal":
        assert res.violation <= 1e-6 and "speed[qvel.x <= " in res.active[0]
