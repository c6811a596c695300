"""A QP safety filter that projects a planned action onto linearised constraints.

Follows the safety layer of Dalal et al. 2018 ("Safe Exploration in Continuous
Action Spaces", Sec. 4): every hard constraint of a :class:`ConstraintSet` is
linearised in the action around the current state and the planned action is
projected onto the result,

    a* = argmin_a ||a - a_plan||^2
         s.t.  C_s s'(a) + C_a a <= d      (state_bounds, linear over state/both)
               G a <= h                    (action_polytope, linear over action)
               low <= a <= high            (action_box entries, actuator range)

with ``s'(a) ~ f(s, a_bar) + J (a - a_bar)``, ``J = d f / d a`` taken by autodiff
through a differentiable ``dynamics(states [B, S], actions [B, A]) -> [B, S]``
(e.g. ``WorldModel.mean_next_state``). Dalal et al. linearise at ``a_bar = 0``
(``c(s') ~ c(s) + g(s)^T a``); linearising at the planned action (the default)
is the same first-order model, exact where the projection starts. ``learned``
entries are not linear and are left to the planner's rejection (``skipped``).

The cvxpy problem is built once with Parameters (DPP), so each step only sets
values and calls the solver: Clarabel (interior point) by default, or OSQP
warm-started, whose answers other than "optimal" are checked by Clarabel before
they count. Measured on half_cheetah_safe (6 actions, 13 and 25 rows, see
``benchmarks/qp_filter.py``) Clarabel's median solve is the lower of the two. A plan that
already satisfies the linearised constraints (within ``tol``) is returned
unchanged without a solve, which also makes the filter idempotent.

An infeasible linearised problem, a solver failure, an inaccurate solution or a
non-finite linearisation never raises mid-run: the result carries a status and
the configured fallback is applied (``pass_through``, ``zero``, or
``least_violation``: minimise ``||a - a_plan||^2 + w * sum(slack)`` with the
state rows softened by non-negative slack, an L1 exact penalty). The action is
never clipped silently; every deviation from ``a_plan`` is reported.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import cvxpy as cp
import numpy as np
import torch

from constraints.entries import LearnedEntry
from constraints.sets import ConstraintSet

Dynamics = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
FALLBACKS = ("pass_through", "zero", "least_violation")
SOLVERS = ("OSQP", "CLARABEL")
_DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    # Tight tolerances plus polishing: the returned action must satisfy the
    # linearised constraints to ~1e-9, not OSQP's default 1e-3.
    "OSQP": {"eps_abs": 1e-9, "eps_rel": 1e-9, "polishing": True, "max_iter": 20000},
    "CLARABEL": {},
}


@dataclass(frozen=True)
class FilterResult:
    """What the filter did to one planned action.

    action:      [A] the action to execute
    status:      unconstrained | already_safe | optimal | infeasible | inaccurate |
                 solver_error | nonfinite_linearisation
    fallback:    the fallback applied (None when the projection succeeded)
    changed:     whether ``action`` differs from the planned action
    row_names:   one name per inequality, ``entry[detail]``
    slack:       [R] rhs - lhs of each linearised inequality at ``action``
                 (negative: violated; NaN: could not be linearised)
    active:      names of the rows with |slack| <= accept_tol (1e-6 by default)
    violation:   max(0, -slack), the largest violation of the linearised rows
    """

    action: np.ndarray
    status: str
    fallback: str | None
    changed: bool
    row_names: tuple[str, ...]
    slack: np.ndarray
    active: tuple[str, ...]
    violation: float
    linearise_s: float
    solve_s: float

    @property
    def active_entries(self) -> tuple[str, ...]:
        """The constraint entries with an active row, in row order."""
        return tuple(dict.fromkeys(n.split("[")[0] for n in self.active))


class QPFilter:
    """Projects planned actions onto a constraint set's linearised hard entries.

    constraints:       the set (its ``action_bounds`` become box rows too)
    dynamics:          differentiable ``[B, S], [B, A] -> [B, S]``; needed when the
                       set constrains states
    fallback:          pass_through | zero | least_violation
    solver:            CLARABEL (default: faster per step here, and no false
                       infeasibility reports) | OSQP (warm-started)
    linearise_at:      plan (a_bar = a_plan) | zero (a_bar = 0, as Dalal et al.)
    violation_weight:  w of the least-violation L1 penalty
    tol:               a plan whose rows are violated by at most tol is kept as is
    accept_tol:        a solution violating a row by more is reported inaccurate
    dtype:             dtype of the tensors given to ``dynamics``
    solver_options:    passed to the solver, over the defaults above
    """

    def __init__(
        self,
        constraints: ConstraintSet,
        dynamics: Dynamics | None = None,
        *,
        fallback: str = "least_violation",
        solver: str = "CLARABEL",
        linearise_at: str = "plan",
        violation_weight: float = 1e4,
        tol: float = 1e-7,
        accept_tol: float = 1e-6,
        dtype: torch.dtype = torch.float32,
        solver_options: Mapping[str, Any] | None = None,
    ) -> None:
        if fallback not in FALLBACKS:
            raise ValueError(f"unknown fallback {fallback!r}; expected one of {FALLBACKS}")
        if solver not in SOLVERS:
            raise ValueError(f"unknown solver {solver!r}; expected one of {SOLVERS}")
        if linearise_at not in ("plan", "zero"):
            raise ValueError(f"linearise_at must be 'plan' or 'zero', got {linearise_at!r}")
        if not violation_weight > 0 or not 0 <= tol <= accept_tol:
            raise ValueError(
                f"need violation_weight > 0 and 0 <= tol <= accept_tol; got "
                f"{violation_weight}, {tol}, {accept_tol}"
            )
        rows = constraints.linear_rows()
        self.A = constraints.action_dim
        self.S = constraints.state_dim
        self.n_state = rows.d.shape[0]
        if self.n_state and dynamics is None:
            raise ValueError(
                f"the rows {list(rows.state_names)} constrain the next state: QPFilter needs "
                "a differentiable dynamics(states, actions) callable"
            )
        self.dynamics = dynamics
        self.fallback, self.solver, self.linearise_at = fallback, solver, linearise_at
        self.tol, self.accept_tol, self.dtype = tol, accept_tol, dtype
        self.options = {**_DEFAULT_OPTIONS[solver], **(solver_options or {})}
        self.skipped = tuple(e.name for e in constraints.entries if isinstance(e, LearnedEntry))
        self._C_s, self._C_a, self._d = rows.C_s, rows.C_a, rows.d
        # State dimensions read by some row; each needs one Jacobian row.
        self._dims = np.flatnonzero(np.any(rows.C_s != 0, axis=0))  # [K]
        self._dims_t = torch.as_tensor(self._dims, dtype=torch.long, device="cpu")

        # Constant rows: action inequalities and the finite sides of the box, as G a <= h.
        lo_i, hi_i = np.flatnonzero(np.isfinite(rows.low)), np.flatnonzero(np.isfinite(rows.high))
        eye = np.eye(self.A)
        self._G = np.vstack([rows.G, -eye[lo_i], eye[hi_i]])  # [Ra, A]
        self._h = np.concatenate([rows.h, -rows.low[lo_i], rows.high[hi_i]])  # [Ra]
        self.row_names = (
            rows.state_names
            + rows.action_names
            + tuple(rows.low_names[i] for i in lo_i)
            + tuple(rows.high_names[i] for i in hi_i)
        )
        if fallback == "zero" and np.any(self._h < 0):
            bad = [n for n, h in zip(self.row_names[self.n_state :], self._h, strict=True) if h < 0]
            raise ValueError(f"fallback 'zero' is not an allowed action: it violates {bad}")

        # One DPP problem (and its elastic twin), built once; only values change per step.
        self._a = cp.Variable(self.A)
        self._a_plan = cp.Parameter(self.A)
        self._M = cp.Parameter((self.n_state, self.A)) if self.n_state else None
        self._r = cp.Parameter(self.n_state) if self.n_state else None
        fixed = [self._G @ self._a <= self._h] if self._G.shape[0] else []
        dist = cp.sum_squares(self._a - self._a_plan)
        hard = [self._M @ self._a <= self._r] if self.n_state else []
        # One instance per solver: cvxpy caches one compiled chain per problem, and
        # switching solvers on one instance would recompile it on every switch.
        self._problem = {sv: cp.Problem(cp.Minimize(dist), hard + fixed) for sv in SOLVERS}
        self._elastic = None
        if self.n_state and fallback == "least_violation":
            self._slack = cp.Variable(self.n_state, nonneg=True)
            soft = [self._M @ self._a <= self._r + self._slack]
            objective = cp.Minimize(dist + violation_weight * cp.sum(self._slack))
            self._elastic = {sv: cp.Problem(objective, soft + fixed) for sv in SOLVERS}
        assert self._problem[solver].is_dpp(), "the projection problem must be DPP"
        self._compile()

    def _compile(self) -> None:
        """Canonicalise every instance now, so that no step pays for it."""
        self._a_plan.value = np.zeros(self.A)
        if self.n_state:
            self._M.value, self._r.value = np.zeros((self.n_state, self.A)), np.zeros(self.n_state)
        for problems in (self._problem, self._elastic or {}):
            for sv, problem in problems.items():
                problem.get_problem_data(getattr(cp, sv))

    # ------------------------------------------------------------------ linearisation

    def linearise(self, state: torch.Tensor, a_bar: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``M a <= r`` of the state constraints around ``(state [S], a_bar [A])``.

        Only the K state dimensions that some row reads need a Jacobian row: one
        batched forward pass with a copy of the input per dimension and one backward
        pass give ``J[dims] [K, A]`` at once; then ``M = C_s[:, dims] J[dims] + C_a``.
        """
        K = len(self._dims)
        if K == 0:  # the rows read no state dimension: nothing to linearise
            return self._C_a.copy(), self._d.copy()
        states = state.expand(K, self.S)  # [K, S]
        actions = a_bar.expand(K, self.A).clone().requires_grad_(True)  # [K, A]
        with torch.enable_grad():
            nxt = self.dynamics(states, actions)  # [K, S]
            if nxt.shape != (K, self.S):
                raise ValueError(f"dynamics returned {tuple(nxt.shape)}, expected {(K, self.S)}")
            rows = torch.arange(K, device=nxt.device)
            y = nxt[rows, self._dims_t.to(nxt.device)]  # [K]: copy k reads dimension dims[k]
            (grad,) = torch.autograd.grad(y.sum(), actions, allow_unused=True)
        # the rows go to the solver on the CPU: one copy each per filtered action
        J = np.zeros((K, self.A)) if grad is None else grad.detach().double().cpu().numpy()
        f = nxt[0].detach().double().cpu().numpy()  # [S]
        a0 = a_bar.detach().double().cpu().numpy()
        G = self._C_s[:, self._dims] @ J  # [Ms, A] = C_s J
        M = G + self._C_a
        r = self._d - self._C_s @ f + G @ a0
        return M, r

    # ------------------------------------------------------------------ filtering

    def __call__(
        self, state: torch.Tensor | np.ndarray, action: torch.Tensor | np.ndarray
    ) -> FilterResult:
        """Filter one planned action [A] at state [S]; returns a :class:`FilterResult`."""
        # the state stays where it is (the dynamics' device); an array is a CPU state
        device = state.device if isinstance(state, torch.Tensor) else torch.device("cpu")
        s = torch.as_tensor(state, dtype=self.dtype, device=device).reshape(-1)
        a_plan = np.asarray(
            action.detach().cpu() if isinstance(action, torch.Tensor) else action,
            dtype=np.float64,
        ).reshape(-1)
        if s.shape != (self.S,) or a_plan.shape != (self.A,):
            raise ValueError(
                f"expected state [{self.S}] and action [{self.A}], got {tuple(s.shape)} "
                f"and {a_plan.shape}"
            )
        if not (torch.isfinite(s).all() and np.isfinite(a_plan).all()):
            raise ValueError("QPFilter got a non-finite state or planned action")
        if not self.row_names:
            return self._result(a_plan, a_plan, "unconstrained", None, None, 0.0, 0.0)

        t0 = time.perf_counter()
        M = r = None
        if self.n_state:
            a_bar = torch.as_tensor(a_plan, dtype=self.dtype, device=device)
            if self.linearise_at == "zero":
                a_bar = torch.zeros_like(a_bar)
            M, r = self.linearise(s, a_bar)
            if not (np.isfinite(M).all() and np.isfinite(r).all()):
                t1 = time.perf_counter()
                return self._fallback(a_plan, None, None, "nonfinite_linearisation", t1 - t0, t1)
        t1 = time.perf_counter()
        lin = t1 - t0

        if self._slack_at(a_plan, M, r).min() >= -self.tol:
            return self._result(a_plan, a_plan, "already_safe", None, (M, r), lin, 0.0)

        self._a_plan.value = a_plan
        if self.n_state:
            self._M.value, self._r.value = M, r
        status, a_star = self._solve(self._problem, lambda a: self._slack_at(a, M, r).min())
        if status == "optimal":
            return self._result(
                a_plan, a_star, "optimal", None, (M, r), lin, time.perf_counter() - t1
            )
        return self._fallback(a_plan, M, r, status, lin, t1)

    def _fallback(
        self,
        a_plan: np.ndarray,
        M: np.ndarray | None,
        r: np.ndarray | None,
        status: str,
        lin: float,
        t_start: float,
    ) -> FilterResult:
        if self.fallback == "pass_through":
            action = a_plan
        elif self.fallback == "zero":
            action = np.zeros(self.A)
        else:
            if self._elastic is None:  # no state rows: the action rows alone are feasible
                self._a_plan.value = a_plan
                _, action = self._solve(self._problem)
            else:
                self._a_plan.value = a_plan
                # Non-finite rows cannot be softened meaningfully: drop them (0 a <= 0)
                # and report their slack as NaN below.
                self._M.value = np.zeros((self.n_state, self.A)) if M is None else M
                self._r.value = np.zeros(self.n_state) if r is None else r
                _, action = self._solve(self._elastic)
            if action is None:  # even the softened problem failed: say so, pass through
                return self._result(
                    a_plan,
                    a_plan,
                    status,
                    "pass_through",
                    (M, r),
                    lin,
                    time.perf_counter() - t_start,
                )
        return self._result(
            a_plan, action, status, self.fallback, (M, r), lin, time.perf_counter() - t_start
        )

    def _solve(
        self,
        problems: dict[str, cp.Problem],
        min_slack: Callable[[np.ndarray], float] | None = None,
    ) -> tuple[str, np.ndarray | None]:
        """Solve; ``min_slack(a)`` below ``-accept_tol`` marks the answer inaccurate."""

        def attempt(solver: str, options: Mapping[str, Any]) -> tuple[str, np.ndarray | None]:
            status, a = self._solve_with(problems[solver], solver, options)
            if status == "optimal" and min_slack is not None and min_slack(a) < -self.accept_tol:
                status = "inaccurate"
            return status, a

        status, a = attempt(self.solver, self.options)
        if status != "optimal" and self.solver == "OSQP":
            # First-order OSQP can misreport infeasibility on badly scaled rows; the
            # interior-point Clarabel gives a second opinion before a fallback is used.
            status, a = attempt("CLARABEL", {})
        return status, a

    def _solve_with(
        self, problem: cp.Problem, solver: str, options: Mapping[str, Any]
    ) -> tuple[str, np.ndarray | None]:
        try:
            with warnings.catch_warnings():
                # cvxpy warns on "optimal_inaccurate"; the rows are checked here instead.
                warnings.filterwarnings("ignore", "Solution may be inaccurate", UserWarning)
                if solver == "OSQP":
                    problem.solve(solver=cp.OSQP, warm_start=True, **options)
                else:
                    problem.solve(solver=cp.CLARABEL, **options)
        except cp.error.SolverError:
            return "solver_error", None
        if problem.status in (cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE):
            return "infeasible", None
        a = self._a.value
        if problem.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) or a is None:
            return "solver_error", None
        if not np.isfinite(a).all():
            return "solver_error", None
        return "optimal", np.asarray(a, dtype=np.float64).copy()

    def _slack_at(self, a: np.ndarray, M: np.ndarray | None, r: np.ndarray | None) -> np.ndarray:
        """rhs - lhs of every row at action a [A] -> [R] (NaN for rows not linearised)."""
        state = np.full(self.n_state, np.nan) if M is None else r - M @ a
        return np.concatenate([state, self._h - self._G @ a])

    def _result(
        self,
        a_plan: np.ndarray,
        action: np.ndarray,
        status: str,
        fallback: str | None,
        rows: tuple[np.ndarray | None, np.ndarray | None] | None,
        lin: float,
        solve: float,
    ) -> FilterResult:
        M, r = rows if rows is not None else (None, None)
        slack = self._slack_at(action, M, r)
        active = tuple(
            n for n, sl in zip(self.row_names, slack, strict=True) if abs(sl) <= self.accept_tol
        )
        finite = slack[np.isfinite(slack)]
        return FilterResult(
            action=np.asarray(action, dtype=np.float64),
            status=status,
            fallback=fallback,
            changed=not np.array_equal(action, a_plan),
            row_names=self.row_names,
            slack=slack,
            active=active,
            violation=float(max(0.0, -finite.min())) if finite.size else 0.0,
            linearise_s=lin,
            solve_s=solve,
        )
