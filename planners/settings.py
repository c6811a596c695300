"""Planner settings: one frozen dataclass per planner family, validated on construction.

Fields are plain ``int``, ``float``, ``bool`` and ``str`` so that the classes serve
directly as Hydra / OmegaConf structured-config schemas for ``configs/planner``.
Every error names the key as it is written in a config (``planner.population``)
and the values it may take. Integers given for float fields are stored as floats,
so a planner reads the same numbers whichever way a config spells them.

This module imports the standard library only.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

PLANNER_KINDS = ("cem", "mcts")
WARM_START_FILLS = ("repeat", "zero")
SELECTIONS = ("puct", "uct")
RECOMMENDATIONS = ("best", "visits")


@dataclass(frozen=True, kw_only=True)
class PlannerSettings:
    """Settings every planner reads: what it optimises, what it rejects, what it returns."""

    # Planner family: cem (CEM and iCEM) or mcts.
    kind: str
    # Steps of each imagined action sequence.
    horizon: int
    # Risk aversion: score = sum of reward mean - risk_aversion * reward std (0 = risk-neutral).
    risk_aversion: float = 0.0
    # A step with p_unacceptable above this rejects the whole sequence.
    reject_above: float = 0.5
    # Last step of the shifted warm start: repeat the previous last action, or zero.
    warm_start_fill: str = "repeat"
    # Best imagined trajectories returned for feedback queries.
    top_k: int = 4
    # Plan every k environment steps; in between, the rest of the last plan is re-imagined
    # from the real state (one sequence) and followed while it stays feasible (1 = MPC).
    replan_every: int = 1

    def __post_init__(self) -> None:
        _choice(self, "kind", PLANNER_KINDS)
        _integer(self, "horizon", 1)
        _integer(self, "replan_every", 1)
        if self.replan_every > self.horizon:
            raise _refuse(
                "replan_every",
                f"an integer in [1, planner.horizon = {self.horizon}]",
                self.replan_every,
            )
        _number(self, "risk_aversion")
        _number(self, "reject_above", low=0.0, high=1.0)
        _choice(self, "warm_start_fill", WARM_START_FILLS)
        _integer(self, "top_k", 1)


@dataclass(frozen=True, kw_only=True)
class CEMSettings(PlannerSettings):
    """PETS CEM (Chua et al. 2018, App. A) and its iCEM options (Pinneri et al. 2020, Sec. 3).

    The defaults are plain PETS CEM; ``configs/planner/icem.yaml`` sets iCEM's.
    """

    # Planner family: cem (CEM and iCEM) or mcts.
    kind: str = "cem"
    # Action sequences imagined per iteration (in the first iteration, with population_decay).
    population: int = 400
    # Best feasible sequences the Gaussian is refitted to.
    elites: int = 40
    # Refitting rounds per planning step.
    iterations: int = 5
    # Weight of the old mean and variance when refitting (PETS alpha).
    momentum: float = 0.1
    # Initial standard deviation as a fraction of half the action range.
    init_std: float = 0.5
    # Power-law exponent of the sampling noise along time (0 = white, as in PETS; iCEM's beta).
    noise_beta: float = 0.0
    # Fraction of elites re-imagined in the next iteration (0 = none, as in PETS; iCEM's xi).
    keep_elites: float = 0.0
    # Population shrink factor per iteration (1 = constant; iCEM's gamma).
    population_decay: float = 1.0
    # Add the distribution mean to the last iteration's population.
    add_mean: bool = False
    # Execute the best sequence imagined instead of the final mean.
    execute_best: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _kind(self, "cem")
        _integer(self, "elites", 1)
        _integer(self, "population", 2 * self.elites, "2 * planner.elites")
        _integer(self, "iterations", 1)
        _number(self, "momentum", low=0.0, high=1.0, open_high=True)
        _number(self, "init_std", low=0.0, open_low=True)
        _number(self, "noise_beta", low=0.0)
        _number(self, "keep_elites", low=0.0, high=1.0)
        _number(self, "population_decay", low=1.0)
        _flag(self, "add_mean")
        _flag(self, "execute_best")


@dataclass(frozen=True, kw_only=True)
class MCTSSettings(PlannerSettings):
    """Batched continuous-action MCTS with progressive widening (see ``planners.mcts``)."""

    # Planner family: cem (CEM and iCEM) or mcts.
    kind: str = "mcts"
    # Leaves imagined per planning step (one action sequence each).
    simulations: int = 2000
    # Leaves selected under virtual loss and imagined in one call.
    batch_size: int = 400
    # Progressive widening: a node may hold ceil(k * visits^alpha) children; this is k.
    widening_k: float = 2.0
    # Progressive widening exponent alpha.
    widening_alpha: float = 0.5
    # Hard cap on children per node.
    max_children: int = 16
    # Child selection rule: puct or uct.
    selection: str = "puct"
    # Exploration constant of the selection rule.
    exploration: float = 1.25
    # Std of proposed actions around the warm-start plan, as a fraction of half the range.
    proposal_std: float = 0.6
    # Probability that a proposed action is uniform over the action box instead.
    uniform_fraction: float = 0.2
    # Plan returned: best (best sequence imagined) or visits (most visited path).
    recommend: str = "best"

    def __post_init__(self) -> None:
        super().__post_init__()
        _kind(self, "mcts")
        _integer(self, "simulations", 1)
        _integer(self, "batch_size", 1)
        _number(self, "widening_k", low=0.0, open_low=True)
        _number(self, "widening_alpha", low=0.0, high=1.0, open_low=True, open_high=True)
        _integer(self, "max_children", 1)
        _choice(self, "selection", SELECTIONS)
        _number(self, "exploration", low=0.0)
        _number(self, "proposal_std", low=0.0, open_low=True)
        _number(self, "uniform_fraction", low=0.0, high=1.0)
        _choice(self, "recommend", RECOMMENDATIONS)


# -- checks: each stores the value in its plain type or raises a one-line ValueError --------


def _refuse(key: str, wanted: str, value: object) -> ValueError:
    return ValueError(f"planner.{key} must be {wanted}, got {value!r}")


def _store(settings: PlannerSettings, key: str, value: object) -> None:
    # The dataclass is frozen; this runs once, inside __post_init__.
    object.__setattr__(settings, key, value)


def _integer(settings: PlannerSettings, key: str, low: int, low_name: str | None = None) -> None:
    value = getattr(settings, key)
    bound = f"{low_name} = {low}" if low_name else f"{low}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise _refuse(key, f"an integer >= {bound}", value)
    _store(settings, key, int(value))


def _number(
    settings: PlannerSettings,
    key: str,
    *,
    low: float | None = None,
    high: float | None = None,
    open_low: bool = False,
    open_high: bool = False,
) -> None:
    """A finite real number within the bounds given (closed unless said open)."""
    value = getattr(settings, key)
    if low is not None and high is not None:
        wanted = (
            f"a number in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
        )
    elif low is not None:
        wanted = f"a number {'>' if open_low else '>='} {low:g}"
    else:
        wanted = "a finite number"
    ok = (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (low is None or (value > low if open_low else value >= low))
        and (high is None or (value < high if open_high else value <= high))
    )
    if not ok:
        raise _refuse(key, wanted, value)
    _store(settings, key, float(value))


def _flag(settings: PlannerSettings, key: str) -> None:
    value = getattr(settings, key)
    if not isinstance(value, bool):
        raise _refuse(key, "true or false", value)


def _choice(settings: PlannerSettings, key: str, choices: tuple[str, ...]) -> None:
    value = getattr(settings, key)
    if not isinstance(value, str) or value not in choices:
        raise _refuse(key, "one of " + ", ".join(choices), value)


def _kind(settings: PlannerSettings, kind: str) -> None:
    if settings.kind != kind:
        raise _refuse("kind", f"{kind} for {type(settings).__name__}", settings.kind)
