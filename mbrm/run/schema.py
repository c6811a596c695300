"""Typed configuration: one dataclass per config group, registered with Hydra's ConfigStore.

The schema is the primary config's base (``configs/config.yaml`` lists ``base_config``
first in its defaults), so every group file merges into a typed node: a misspelled
key or a value of the wrong type fails while Hydra composes the config, naming the
key. Value ranges are checked when the composed config becomes these objects
(:func:`to_settings`), each refusal a :class:`ConfigValueError` whose message names
the dotted key and the allowed range.

The planner group is typed by the planner's own settings (``planners.settings``), the
experiment group by :class:`mbrm.loop.LoopSettings`; both check their values in
``__post_init__``. Constraint entries are free-form here and parsed by
``constraints`` (one parser per entry kind).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from mbrm.settings import LoopSettings

# mode switches: every one is the ``kind`` of its group
REWARD_KINDS = ("ensemble", "hidden_reward")
CONSTRAINT_KINDS = ("classifier", "hidden_rule")
FEEDBACK_KINDS = ("synthetic", "human")
ACTIVATIONS = ("silu", "relu", "tanh", "elu", "leaky_relu")


class ConfigValueError(ValueError):
    """A configured value outside its allowed range (the message names the key)."""


def at_least(key: str, value: Any, low: float, *, integer: bool = True) -> None:
    """Refuse ``value`` unless it is a number (an integer if ``integer``) >= ``low``."""
    kind = "an integer" if integer else "a number"
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or not math.isfinite(value) or value < low:
        raise ConfigValueError(f"{key} must be {kind} >= {low:g}, got {value!r}")


def in_range(
    key: str,
    value: Any,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Refuse ``value`` unless ``low <= value <= high`` (or open ends)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low)
    ok = ok and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ConfigValueError(f"{key} must be in {interval}, got {value!r}")


def one_of(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    """Refuse ``value`` unless it is one of ``allowed``."""
    if value not in allowed:
        raise ConfigValueError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")


def positive(key: str, value: Any) -> None:
    """Refuse ``value`` unless it is a finite number > 0."""
    in_range(key, value, 0.0, math.inf, low_open=True, high_open=True)


@dataclass
class TaskConfig:
    """The task group. A task defined outside mbrm is registered here, before the name
    is checked: ``task=custom task.file=PATH.yaml`` or ``task.module=PKG`` (README "Tasks")."""

    # Which MuJoCo task (mbrm.tasks registry); null with task.file: the file's task.
    name: str | None = None
    # Steps per episode; null: the task's default.
    episode_length: int | None = None
    # A YAML task file (mbrm.tasks.load_task_file), relative to the working directory.
    file: str | None = None
    # A Python module to import first; it registers its tasks (mbrm.tasks.register_task).
    module: str | None = None

    def __post_init__(self) -> None:
        from mbrm.tasks import TASKS, import_task_module, load_task_file

        if self.module is not None:
            import_task_module(self.module)
        if self.file is not None:
            defined = load_task_file(self.file).name
            if self.name is None:
                self.name = defined
            elif self.name != defined:
                raise ConfigValueError(
                    f"task.file={self.file} defines task {defined!r}, but task.name is "
                    f"{self.name!r}; run the file's task with task=custom task.file={self.file}"
                )
        if self.name is None:
            raise ConfigValueError(
                "task.name is not set: give task.file=PATH.yaml, or task.module=MODULE with "
                "task.name=NAME"
            )
        one_of("task.name", self.name, tuple(sorted(TASKS)))
        if self.episode_length is not None:
            at_least("task.episode_length", self.episode_length, 1)


@dataclass
class NetworkConfig:
    """Sizes and optimiser of a batched ensemble (``mbrm.nn``)."""

    # Members trained on bootstrap resamples.
    ensemble_size: int = 5
    # Width of each hidden layer.
    hidden: int = 64
    # Number of hidden layers.
    layers: int = 2
    # Hidden activation.
    activation: str = "silu"
    # Adam learning rate.
    lr: float = 1e-3
    # Decoupled weight decay (AdamW).
    weight_decay: float = 1e-2

    def check(self, group: str) -> None:
        at_least(f"{group}.ensemble_size", self.ensemble_size, 1)
        at_least(f"{group}.hidden", self.hidden, 1)
        at_least(f"{group}.layers", self.layers, 1)
        one_of(f"{group}.activation", self.activation, ACTIVATIONS)
        positive(f"{group}.lr", self.lr)
        at_least(f"{group}.weight_decay", self.weight_decay, 0.0, integer=False)

    def __post_init__(self) -> None:
        self.check("classifier")


@dataclass
class WorldModelConfig(NetworkConfig):
    ensemble_size: int = 7
    # Members with the lowest held-out error, used for imagination.
    elites: int = 5
    hidden: int = 200
    layers: int = 4
    weight_decay: float = 5e-5

    def __post_init__(self) -> None:
        self.check("world_model")
        at_least("world_model.elites", self.elites, 1)
        if self.elites > self.ensemble_size:
            raise ConfigValueError(
                f"world_model.elites must be in [1, world_model.ensemble_size="
                f"{self.ensemble_size}], got {self.elites}"
            )


@dataclass
class RewardModelConfig(NetworkConfig):
    # ensemble (Bradley-Terry on preferences) | hidden_reward (oracle mode: the task's hidden reward).
    kind: str = "ensemble"
    lr: float = 3e-3
    # Which state a step's reward reads: next = r(a_t, s_t+1) | current = r(s_t, a_t).
    state: str = "next"
    # Probability that an answer is uniformly random, in [0, 1): the Bradley-Terry model's lapse.
    lapse: float = 0.0

    def __post_init__(self) -> None:
        one_of("reward_model.kind", self.kind, REWARD_KINDS)
        self.check("reward_model")
        in_range("reward_model.lapse", self.lapse, 0.0, 1.0, high_open=True)
        one_of("reward_model.state", self.state, ("next", "current"))


@dataclass
class ClassifierConfig(NetworkConfig):
    pass


@dataclass
class ConstraintsConfig:
    # What backs the `learned` entries: classifier (learned from labels) | hidden_rule (oracle mode).
    kind: str = "classifier"
    # Entries by name (or a list): kind learned | state_bounds | linear | action_box | action_polytope.
    entries: Any = field(default_factory=dict)

    def __post_init__(self) -> None:
        one_of("constraints.kind", self.kind, CONSTRAINT_KINDS)
        if not isinstance(self.entries, dict | list):
            raise ConfigValueError(
                f"constraints.entries must be a mapping of name -> entry (or a list), "
                f"got {type(self.entries).__name__}"
            )


@dataclass
class FeedbackConfig:
    # synthetic (a teacher answers at once) | human (queries wait for the labelling UI).
    kind: str = "synthetic"
    # Preference teacher (B-Pref, Lee et al. 2021): rationality; < 0 always prefers the higher return.
    beta: float = -1.0
    # Myopia discount; step t of T weighs gamma^(T-1-t).
    gamma: float = 1.0
    # Probability of flipping a left/right answer.
    eps_mistake: float = 0.0
    # Skip if both segments' mean per-step true reward is below this; 0 disables.
    skip_threshold: float = 0.0
    # Answer "equal" if the mean per-step true reward gap is below this.
    equal_threshold: float = 0.0

    def __post_init__(self) -> None:
        one_of("feedback.kind", self.kind, FEEDBACK_KINDS)
        if not math.isfinite(self.beta):
            raise ConfigValueError(f"feedback.beta must be finite, got {self.beta}")
        in_range("feedback.gamma", self.gamma, 0.0, 1.0, low_open=True)
        in_range("feedback.eps_mistake", self.eps_mistake, 0.0, 1.0)
        if not math.isfinite(self.skip_threshold):
            raise ConfigValueError(
                f"feedback.skip_threshold must be finite, got {self.skip_threshold}"
            )
        at_least("feedback.equal_threshold", self.equal_threshold, 0.0, integer=False)

    def teacher_arguments(self) -> dict[str, float]:
        """Keyword arguments of :class:`mbrm.feedback.teachers.PreferenceTeacher`."""
        return {
            "beta": self.beta,
            "gamma": self.gamma,
            "eps_mistake": self.eps_mistake,
            "skip_threshold": self.skip_threshold,
            "equal_threshold": self.equal_threshold,
        }


@dataclass
class UnacceptableTeacherConfig:
    # Probability that the synthetic teacher misses an unacceptable state.
    false_negative_rate: float = 0.0
    # Probability that it flags an acceptable state.
    false_positive_rate: float = 0.0

    def __post_init__(self) -> None:
        in_range("unacceptable_teacher.false_negative_rate", self.false_negative_rate, 0.0, 1.0)
        in_range("unacceptable_teacher.false_positive_rate", self.false_positive_rate, 0.0, 1.0)


@dataclass
class QPFilterOptions:
    # What to do when the linearised problem is infeasible: pass_through | zero | least_violation.
    fallback: str = "least_violation"
    # QP solver: CLARABEL | OSQP.
    solver: str = "CLARABEL"

    def __post_init__(self) -> None:
        one_of(
            "qp_filter.options.fallback", self.fallback, ("pass_through", "zero", "least_violation")
        )
        one_of("qp_filter.options.solver", self.solver, ("CLARABEL", "OSQP"))


@dataclass
class QPFilterConfig:
    # Turn the filter on.
    enabled: bool = False
    options: QPFilterOptions = field(default_factory=QPFilterOptions)


@dataclass
class RunConfig:
    """The whole composed configuration of a training run."""

    task: TaskConfig = MISSING
    world_model: WorldModelConfig = MISSING
    reward_model: RewardModelConfig = MISSING
    classifier: ClassifierConfig = MISSING
    # typed by the chosen planner's settings class (planners.settings)
    planner: Any = MISSING
    constraints: ConstraintsConfig = MISSING
    feedback: FeedbackConfig = MISSING
    experiment: LoopSettings = MISSING
    # Seed of every random generator in the run.
    seed: int = 0
    # A run directory to continue after an interruption (its labels and checkpoint are kept).
    resume: str | None = None
    # Show progress bars.
    progress: bool = True
    # Torch CPU threads (0: torch's default).
    threads: int = 1
    # Where models, buffers and planning run: auto (CUDA if torch sees one) | cpu | cuda | cuda:N.
    device: str = "auto"
    qp_filter: QPFilterConfig = field(default_factory=QPFilterConfig)
    unacceptable_teacher: UnacceptableTeacherConfig = field(
        default_factory=UnacceptableTeacherConfig
    )

    def __post_init__(self) -> None:
        at_least("seed", self.seed, 0)
        at_least("threads", self.threads, 0)
        from mbrm.device import resolve_device

        try:  # the message names the key and the allowed values
            resolve_device(self.device)
        except ValueError as e:
            raise ConfigValueError(str(e)) from None


def register_schemas() -> None:
    """Store the run's schema in Hydra's ConfigStore as ``base_config`` (idempotent).

    The planner group is not typed by Hydra (its settings are frozen dataclasses, which
    OmegaConf would make read-only); :func:`mbrm.run.compose.run_settings` checks its keys
    against the chosen planner's settings class before any run starts.
    """
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="base_config", node=RunConfig)
