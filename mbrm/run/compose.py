"""The composition root: a composed config becomes a run's parts.

Every component is built the same way: the typed settings of its config group
(:mod:`mbrm.run.schema`, values checked) go to its constructor as plain keyword
arguments, with the runtime values the task supplies (state and action sizes, input
masks, action bounds). Nothing below this module reads a config.

The run's ``device`` (:func:`mbrm.device.resolve_device`) is passed to every model
and planner :func:`build_parts` builds; the builders default to the CPU, where
readers of a finished run load its models (:mod:`mbrm.run.finished`).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mbrm.run.schema import ConfigValueError, RunConfig


def compose_config(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """``configs/config.yaml`` composed with ``overrides`` (Hydra's compose API), with the
    schema and resolvers registered; creates no file or folder."""
    from hydra import compose, initialize_config_dir

    from mbrm.resources import config_dir, register_resolvers
    from mbrm.run.schema import register_schemas

    register_resolvers()
    register_schemas()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def run_settings(cfg: DictConfig | dict[str, Any]) -> RunConfig:
    """The typed, checked settings of a composed (or saved) config.

    Raises :class:`ConfigValueError` naming the first key that is unknown, of the
    wrong type, or out of range.
    """
    from planners import PLANNERS

    try:
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), cfg)
        settings = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigValueError(f"{key}: {msg}" if key and key not in msg else msg) from None
    assert isinstance(settings, RunConfig)
    planner = settings.planner
    if not dataclasses.is_dataclass(planner):
        planner = dict(planner)
        kind = planner.get("kind")
        if kind not in PLANNERS:
            raise ConfigValueError(
                f"planner.kind must be one of {', '.join(sorted(PLANNERS))}; got {kind!r}"
            )
        cls = PLANNERS[kind][0]
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(planner) - names)
        if unknown:
            raise ConfigValueError(
                f"planner.{unknown[0]} is not a {kind} planner setting; valid keys: "
                f"{', '.join(sorted(names))}"
            )
        planner = cls(**planner)
    settings.planner = planner
    return settings


def run_signature(task: Any, settings: RunConfig) -> dict[str, Any]:
    """What a checkpoint of this run must match: the task and the model sizes (not the
    device: checkpoints load on the CPU, so a run resumes on any device)."""
    wm = settings.world_model
    return {
        "task": task.name,
        "state_dim": task.state_dim,
        "action_dim": task.action_dim,
        "world_model": [wm.ensemble_size, wm.elites, wm.hidden, wm.layers + 1],
        "oracle_reward": settings.reward_model.kind == "hidden_reward",
        "oracle_constraints": settings.constraints.kind == "hidden_rule",
    }


def constraint_spec(task: Any, settings: RunConfig) -> Any:
    """The parsed, validated constraint entries of the run (every entry checked now)."""
    from constraints import ConstraintSpec

    return ConstraintSpec.from_config(
        settings.constraints.entries,
        layout=task.layout,
        action_dim=task.action_dim,
        action_bounds=task.action_bounds,
    )


def build_reward_model(task: Any, settings: RunConfig, device: Any = "cpu") -> Any | None:
    """The reward ensemble (Sec. 5.2) on ``device``, or None for the hidden reward (oracle
    mode)."""
    from mbrm.reward_model import RewardEnsemble

    rm = dataclasses.asdict(settings.reward_model)
    if rm.pop("kind") == "hidden_reward":
        return None
    layout = task.layout
    return RewardEnsemble(
        task.state_dim,
        task.action_dim,
        seed=settings.seed,
        input_mask=layout.input_mask,
        periodic_mask=layout.periodic_mask,
        derived=layout.derived,
        device=device,
        **rm,
    )


def build_classifier(task: Any, settings: RunConfig, spec: Any, device: Any = "cpu") -> Any | None:
    """The side-constraint classifier (Sec. 5.7) on ``device``, or None when the hidden
    rule backs the learned entries (oracle mode)."""
    from constraints.classifier import ConstraintClassifier

    if settings.constraints.kind == "hidden_rule":
        return None
    return ConstraintClassifier(
        task.state_dim,
        seed=settings.seed,
        input_mask=spec.classifier_input_mask(),
        periodic_mask=task.layout.periodic_mask,
        derived=task.layout.derived,
        device=device,
        **dataclasses.asdict(settings.classifier),
    )


def build_world_model(task: Any, settings: RunConfig, device: Any = "cpu") -> Any:
    """The PETS probabilistic ensemble on ``device``."""
    from mbrm.world_model import WorldModel

    layout = task.layout
    return WorldModel(
        task.state_dim,
        task.action_dim,
        seed=settings.seed,
        input_mask=layout.input_mask,
        periodic_mask=layout.periodic_mask,
        device=device,
        **dataclasses.asdict(settings.world_model),
    )


def build_gatherer(task: Any, settings: RunConfig) -> Any:
    """Synthetic teachers, or a person in the labelling UI."""
    from mbrm.feedback.gatherers import HumanGatherer, SyntheticGatherer
    from mbrm.feedback.teachers import PreferenceTeacher, UnacceptableTeacher

    if settings.feedback.kind == "human":
        return HumanGatherer(settings.experiment.human_wait_seconds, settings.progress)
    seed = settings.seed  # the run's seed drives every generator
    return SyntheticGatherer(
        PreferenceTeacher(task, seed=seed, **settings.feedback.teacher_arguments()),
        UnacceptableTeacher(
            task, seed=seed + 1, **dataclasses.asdict(settings.unacceptable_teacher)
        ),
    )


def build_plan_reviewer(task: Any, settings: RunConfig) -> Any | None:
    """The synthetic plan reviewer when ``experiment.plan_review.when`` names a moment."""
    from mbrm.plan_review import SyntheticPlanReviewer

    review = settings.experiment.plan_review
    if not review.enabled:
        return None
    return SyntheticPlanReviewer(task, mistake=review.mistake, seed=settings.seed + 2)


def check_run(settings: RunConfig) -> tuple[Any, Any, Any]:
    """The checks a run needs beyond its settings' own: the task exists, every constraint
    entry parses, the learned entries agree with the planner. Returns the task, the
    constraint spec and the experiment settings (with the learned entry's alpha)."""
    from mbrm.tasks import get_task

    task = get_task(settings.task.name)
    spec = constraint_spec(task, settings)
    experiment = settings.experiment
    alpha = spec.learned_alpha()
    if alpha is not None:  # the constraint's own alpha calibrates its classifier
        experiment = dataclasses.replace(experiment, alpha=float(alpha))
    if experiment.plan_review.enabled and settings.feedback.kind == "human":
        raise ConfigValueError(
            "experiment.plan_review: plans are reviewed by the synthetic reviewer only; "
            "with feedback=human leave experiment.plan_review.when empty"
        )
    if spec.learned and settings.planner.reject_above != 0.5:
        raise ConfigValueError(
            f"planner.reject_above={settings.planner.reject_above}: with a learned constraint "
            "entry it must stay 0.5, where the set maps the calibrated threshold; change the "
            "entry's alpha or threshold instead"
        )
    return task, spec, experiment


def build_parts(settings: RunConfig) -> Any:
    """Every part of a run from its checked settings, its models and planner on the
    run's device."""
    import torch

    from mbrm.device import resolve_device
    from mbrm.parts import RunParts
    from planners import make_planner

    if settings.threads:
        torch.set_num_threads(settings.threads)
    task, spec, experiment = check_run(settings)
    device = resolve_device(settings.device)
    planner_settings = settings.planner
    low, high = task.action_bounds
    return RunParts(
        task=task,
        seed=settings.seed,
        world_model=build_world_model(task, settings, device),
        planner=make_planner(planner_settings, low.tolist(), high.tolist(), device),
        constraints=spec,
        reward_model=build_reward_model(task, settings, device),
        classifier=build_classifier(task, settings, spec, device),
        hidden_rule=settings.constraints.kind == "hidden_rule",
        gatherer=build_gatherer(task, settings),
        plan_reviewer=build_plan_reviewer(task, settings),
        settings=experiment,
        episode_length=settings.task.episode_length or task.episode_length,
        qp_filter=dataclasses.asdict(settings.qp_filter.options)
        if settings.qp_filter.enabled
        else None,
        # bars on a terminal only: a redirected log gets the per-iteration lines
        progress=settings.progress and sys.stderr.isatty(),
        signature=run_signature(task, settings),
    )


def build_loop(cfg: DictConfig | dict[str, Any] | RunConfig, run_dir: str | Path) -> Any:
    """The training loop of a composed config in ``run_dir``."""
    from mbrm.loop import Loop

    settings = cfg if isinstance(cfg, RunConfig) else run_settings(cfg)
    return Loop(build_parts(settings), run_dir)
