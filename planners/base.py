"""Types shared by every planner: what imagination returns and what a plan is.

Planners see the world only through an :class:`Imagination` callable that turns
a start state and candidate action sequences into an :class:`ImaginedBatch`.
This keeps them independent of the world model, reward model and constraint
sets (and testable on analytic objectives), as in mctx where the model is passed
in, never subclassed.

Devices: a planner is built on one device (its action box lives there) and plans
there: the start state is moved there once per call and every tensor of a
:class:`PlanResult` is there. Random numbers come from the caller's generator, drawn
on the generator's device and moved once per iteration, so a seed gives the same
plans on every device.

This module imports torch and numpy only; it must never import ``mbrm`` or
``constraints``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from numpy.typing import ArrayLike

from planners.settings import PlannerSettings


@dataclass(frozen=True)
class ImaginedBatch:
    """Imagined futures of N candidate action sequences, P particles each.

    states:          [N, P, H+1, S]  predicted states, states[:, :, 0] is the start state
    reward_mean:     [N, P, H]       reward-ensemble mean of r(s_t, a_t)
    reward_std:      [N, P, H]       reward-ensemble std (epistemic uncertainty)
    p_unacceptable:  [N, P, H]       combined probability that s_{t+1} is unacceptable
    violations:      optional per-constraint probabilities, name -> [N, P, H]; used
                     to say which constraint rejected a plan
    """

    states: torch.Tensor
    reward_mean: torch.Tensor
    reward_std: torch.Tensor
    p_unacceptable: torch.Tensor
    violations: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        N, P, H1, _ = self.states.shape
        want = (N, P, H1 - 1)
        for name in ("reward_mean", "reward_std", "p_unacceptable"):
            got = tuple(getattr(self, name).shape)
            if got != want:
                raise ValueError(f"ImaginedBatch.{name} has shape {got}, expected {want}")
        for name, v in self.violations.items():
            if tuple(v.shape) != want:
                raise ValueError(
                    f"ImaginedBatch.violations[{name!r}] has shape {tuple(v.shape)}, "
                    f"expected {want}"
                )


class Imagination(Protocol):
    """Turns a start state [S] and actions [N, H, A] into an ImaginedBatch."""

    def __call__(self, state: torch.Tensor, actions: torch.Tensor) -> ImaginedBatch: ...


@dataclass(frozen=True)
class PlanResult:
    """What a planner returns for one state (the action to take and the evidence for it).

    action:        [A]   first action of ``plan``
    plan:          [H, A] chosen action sequence; shifted, it warm-starts the next call
    score:         risk-adjusted return of ``plan`` (NaN only when no candidate had a number)
    risk:          pessimistic p_unacceptable of ``plan`` (max over particles and steps)
    feasible:      ``plan`` passed ``reject_above`` on every step of every particle
    no_safe_plan:  no evaluated candidate was feasible; ``plan`` is the least risky one
    n_candidates:  action sequences imagined in this call
    n_rejected:    of those, how many were infeasible (above ``reject_above`` or NaN)
    n_nan:         of those, how many had a NaN score or risk
    rejected_by:   constraint name -> rejected candidates that constraint flagged
    n_calls:       calls made to the imagination
    top_states:    [k, P, H+1, S] imagined states of the k best candidates, best first
    top_actions:   [k, H, A] their action sequences
    top_scores:    [k] their scores
    top_feasible:  [k] their feasibility
    history:       score of the best candidate found so far, after each iteration
    """

    action: torch.Tensor
    plan: torch.Tensor
    score: float
    risk: float
    feasible: bool
    no_safe_plan: bool
    n_candidates: int
    n_rejected: int
    n_nan: int
    rejected_by: dict[str, int]
    n_calls: int
    top_states: torch.Tensor
    top_actions: torch.Tensor
    top_scores: torch.Tensor
    top_feasible: torch.Tensor
    history: tuple[float, ...]


@dataclass(frozen=True)
class CandidateScores:
    """Per-candidate verdicts on one ImaginedBatch of N action sequences.

    score:     [N] mean over particles of sum over steps of
               ``reward_mean - risk_aversion * reward_std``
    risk:      [N] max over particles and steps of ``p_unacceptable`` (pessimistic)
    exposure:  [N] mean over particles of sum over steps of ``p_unacceptable``: the
               expected number of unacceptable steps, which orders infeasible candidates
               that tie on ``risk`` (hard constraints give risk exactly 1)
    feasible:  [N] ``risk <= reject_above`` and both numbers are not NaN
    nan:       [N] score or risk is NaN
    flagged:   constraint name -> [N] bool, that constraint alone exceeded ``reject_above``
    """

    score: torch.Tensor
    risk: torch.Tensor
    exposure: torch.Tensor
    feasible: torch.Tensor
    nan: torch.Tensor
    flagged: dict[str, torch.Tensor]


def score_candidates(
    batch: ImaginedBatch, *, risk_aversion: float, reject_above: float
) -> CandidateScores:
    """Risk-adjusted return and rejection verdict of each imagined candidate.

    Scoring follows the risk-averse planning of Leike et al. 2018 (Sec. 5.6): the
    ensemble's disagreement is subtracted ``risk_aversion`` times, so uncertain futures look
    worse. Feasibility is a rejection rule (Sec. 5.2 side-constraints): one flagged
    step of one particle rejects the whole sequence. Every reduction runs over the
    particle and step axes only, so candidates never influence each other.
    """
    r = batch.reward_mean.float() - risk_aversion * batch.reward_std.float()  # [N, P, H]
    score = r.sum(-1).mean(-1)  # [N]
    p = batch.p_unacceptable.float()  # [N, P, H]
    risk = p.amax(dim=(1, 2))  # [N]
    # amax drops NaN on some builds; a NaN anywhere must make the candidate infeasible.
    p_nan = torch.isnan(p).any(dim=2).any(dim=1)  # [N]
    risk = torch.where(p_nan, torch.full_like(risk, float("nan")), risk)
    exposure = p.sum(-1).mean(-1)  # [N]
    nan = torch.isnan(score) | p_nan
    feasible = (risk <= reject_above) & ~nan
    flagged = {
        name: v.float().amax(dim=(1, 2)) > reject_above for name, v in batch.violations.items()
    }
    return CandidateScores(score, risk, exposure, feasible, nan, flagged)


def rank(
    score: torch.Tensor, risk: torch.Tensor, exposure: torch.Tensor, feasible: torch.Tensor
) -> torch.Tensor:
    """Indices [N] best first: feasible by score, then infeasible by least risk.

    Infeasible candidates come after every feasible one, ordered by risk, then
    exposure, then score; those with a NaN score or risk come last, since their
    numbers say nothing. Keys are applied least significant first with stable
    sorts; the scores themselves are left as they are.
    """
    inf = torch.full_like(score, float("inf"))
    zero = torch.zeros_like(score)
    by_score = torch.where(torch.isnan(score), inf, -score)
    by_exposure = torch.where(feasible, zero, torch.where(torch.isnan(exposure), inf, exposure))
    by_risk = torch.where(feasible, zero, torch.where(torch.isnan(risk), inf, risk))
    order = torch.argsort(by_score, stable=True)
    broken = (torch.isnan(score) | torch.isnan(risk)).to(score.dtype)
    for key in (by_exposure, by_risk, broken, (~feasible).to(score.dtype)):
        order = order[torch.argsort(key[order], stable=True)]
    return order


@dataclass(frozen=True)
class TopK:
    """The k best candidates seen so far within one ``plan`` call, best first."""

    states: torch.Tensor  # [k, P, H+1, S]
    actions: torch.Tensor  # [k, H, A]
    score: torch.Tensor  # [k]
    risk: torch.Tensor  # [k]
    exposure: torch.Tensor  # [k]
    feasible: torch.Tensor  # [k]

    def best_score(self) -> float:
        return float(self.score[0])


def merge_top(
    top: TopK | None,
    batch: ImaginedBatch,
    actions: torch.Tensor,
    scores: CandidateScores,
    k: int,
) -> TopK:
    """Merge the k best of a new batch into ``top``.

    Only k rows of the batch are gathered before merging, so the [N, P, H+1, S]
    states are never copied whole.
    """
    order = rank(scores.score, scores.risk, scores.exposure, scores.feasible)[:k]
    new = TopK(
        states=batch.states[order],
        actions=actions[order],
        score=scores.score[order],
        risk=scores.risk[order],
        exposure=scores.exposure[order],
        feasible=scores.feasible[order],
    )
    if top is None:
        return new
    cat = TopK(*(torch.cat([a, b]) for a, b in zip(_fields(top), _fields(new), strict=True)))
    keep = rank(cat.score, cat.risk, cat.exposure, cat.feasible)[:k]
    return TopK(*(t[keep] for t in _fields(cat)))


def _fields(t: TopK) -> tuple[torch.Tensor, ...]:
    return (t.states, t.actions, t.score, t.risk, t.exposure, t.feasible)


class RejectionTally:
    """Counts of imagined and rejected candidates over one ``plan`` call.

    Counts stay tensors (on the planner's device) until :meth:`totals` so the search
    loop does not wait on them.
    """

    def __init__(self) -> None:
        self.n_candidates = 0
        self.n_calls = 0
        self._rejected: torch.Tensor | int = 0
        self._nan: torch.Tensor | int = 0
        self._by: dict[str, torch.Tensor | int] = {}

    def add(self, scores: CandidateScores) -> None:
        self.n_calls += 1
        self.n_candidates += int(scores.score.shape[0])
        rejected = ~scores.feasible
        self._rejected = self._rejected + rejected.sum()
        self._nan = self._nan + scores.nan.sum()
        for name, flagged in scores.flagged.items():
            count = (flagged & rejected).sum()
            self._by[name] = self._by.get(name, 0) + count

    def totals(self) -> tuple[int, int, dict[str, int]]:
        """(n_rejected, n_nan, rejected_by)."""
        return int(self._rejected), int(self._nan), {k: int(v) for k, v in self._by.items()}


def action_box(
    action_low: ArrayLike, action_high: ArrayLike, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated float32 action bounds ``(low [A], high [A])`` on ``device``."""
    cpu = torch.device("cpu")
    low = torch.as_tensor(np.asarray(action_low, dtype=np.float32), device=cpu).reshape(-1)
    high = torch.as_tensor(np.asarray(action_high, dtype=np.float32), device=cpu).reshape(-1)
    if low.shape != high.shape or low.numel() == 0:
        raise ValueError(
            f"action_low and action_high must be non-empty and of one shape, "
            f"got {tuple(low.shape)} and {tuple(high.shape)}"
        )
    if not (torch.isfinite(low).all() and torch.isfinite(high).all()):
        raise ValueError("action bounds must be finite")
    if not (low < high).all():
        raise ValueError(f"action_low must be below action_high, got {low} and {high}")
    return low.to(device), high.to(device)


def warm_start(
    previous_plan: torch.Tensor | None,
    *,
    horizon: int,
    low: torch.Tensor,
    high: torch.Tensor,
    fill: str,
) -> torch.Tensor:
    """The initial plan [H, A]: the previous plan shifted by one step.

    The freed last step repeats the previous last action (``fill="repeat"``) or is
    zero clipped into the box (``fill="zero"``). Without a previous plan the
    initial plan is zero clipped into the box (PETS, Chua et al. 2018, Sec. 5:
    receding-horizon control re-uses the previous solution). On the box's device.
    """
    A = low.shape[0]
    zero = torch.zeros(A, device=low.device).clamp(low, high)  # [A]
    if previous_plan is None:
        return zero.expand(horizon, A).clone()
    prev = torch.as_tensor(previous_plan, dtype=torch.float32, device=low.device)
    if tuple(prev.shape) != (horizon, A):
        raise ValueError(
            f"previous_plan has shape {tuple(prev.shape)}, expected [H={horizon}, A={A}]"
        )
    if torch.isnan(prev).any():
        raise ValueError("previous_plan contains NaN")
    last = prev[-1] if fill == "repeat" else zero
    return torch.cat([prev[1:], last[None]]).clamp(low, high)


def check_state(state: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The start state as a 1-D tensor on the planner's ``device``, or a clear error."""
    if not isinstance(state, torch.Tensor) or state.dim() != 1:
        got = tuple(state.shape) if isinstance(state, torch.Tensor) else type(state).__name__
        raise ValueError(f"state must be a 1-D tensor [S], got {got}")
    return state.to(device)


def check_generator(generator: object) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    return generator


def imagine(imagination: Imagination, state: torch.Tensor, actions: torch.Tensor) -> ImaginedBatch:
    """Call the imagination and check it answered for exactly these candidates."""
    batch = imagination(state, actions)
    if not isinstance(batch, ImaginedBatch):
        raise TypeError(f"imagination must return an ImaginedBatch, got {type(batch).__name__}")
    N, H, _ = actions.shape
    got = tuple(batch.states.shape[:3])
    if got[0] != N or got[2] != H + 1:
        raise ValueError(
            f"imagination returned states {tuple(batch.states.shape)} for actions "
            f"{tuple(actions.shape)}; expected [N={N}, P, H+1={H + 1}, S]"
        )
    return batch


def finish(
    *,
    plan: torch.Tensor,
    plan_score: float,
    plan_risk: float,
    plan_feasible: bool,
    top: TopK,
    tally: RejectionTally,
    history: list[torch.Tensor],
) -> PlanResult:
    """Assemble a PlanResult; ``no_safe_plan`` holds when nothing evaluated was feasible.

    ``history`` holds the best score after each iteration as 0-d tensors, read back here
    once rather than once per iteration.
    """
    n_rejected, n_nan, rejected_by = tally.totals()
    return PlanResult(
        action=plan[0].clone(),
        plan=plan,
        score=plan_score,
        risk=plan_risk,
        feasible=plan_feasible,
        no_safe_plan=not bool(top.feasible[0]),
        n_candidates=tally.n_candidates,
        n_rejected=n_rejected,
        n_nan=n_nan,
        rejected_by=rejected_by,
        n_calls=tally.n_calls,
        top_states=top.states,
        top_actions=top.actions,
        top_scores=top.score,
        top_feasible=top.feasible,
        history=tuple(torch.stack(history).tolist()) if history else (),
    )


class Planner(Protocol):
    """What the agent calls: a stateless map from a state to a PlanResult."""

    @property
    def settings(self) -> PlannerSettings: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def low(self) -> torch.Tensor: ...  # [A] the action box, on ``device``

    @property
    def high(self) -> torch.Tensor: ...  # [A]

    def plan(
        self,
        state: torch.Tensor,
        imagination: Imagination,
        *,
        generator: torch.Generator,
        previous_plan: torch.Tensor | None = None,
    ) -> PlanResult: ...
