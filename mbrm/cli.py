"""The ``mbrm`` command line.

mbrm train [key=value ...]      a training run (Hydra; -m for sweeps)
mbrm train resume=RUN_DIR       continue an interrupted run in RUN_DIR
mbrm eval RUN_DIR               evaluate a run's final agent again
mbrm report RUN_DIR             write RUN_DIR/report.md with plots
mbrm demo                       the main job: reacher_keepout, synthetic feedback, CEM
mbrm options                    every configuration option with its one-line help
mbrm label RUN_DIR              label RUN_DIR's queued queries in the browser
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
USAGE = __doc__


def build_loop(cfg: Any, run_dir: Path):
    """Plain objects from the composed config (constructors never see a DictConfig)."""
    import hydra.utils
    import torch
    from omegaconf import OmegaConf

    from constraints.classifier import ConstraintClassifier
    from mbrm.feedback.teachers import PreferenceTeacher, UnacceptableTeacher
    from mbrm.loop import Loop, LoopSettings
    from mbrm.reward_model import RewardEnsemble
    from mbrm.solicit import SolicitSettings
    from mbrm.tasks import get_task
    from mbrm.world_model import WorldModel

    c = OmegaConf.to_container(cfg, resolve=True)
    if c.get("threads"):
        torch.set_num_threads(int(c["threads"]))
    task = get_task(c["task"]["name"])
    S, A = task.state_dim, task.action_dim
    masks = {"input_mask": task.layout.input_mask, "periodic_mask": task.layout.periodic_mask}
    seed = int(c["seed"])
    world_model = WorldModel(S, A, seed=seed, **masks, **c["world_model"])
    rm_cfg = dict(c["reward_model"])
    kind = rm_cfg.pop("kind")
    if kind not in ("ensemble", "oracle"):
        raise ValueError(f"reward_model.kind must be 'ensemble' or 'oracle', got {kind!r}")
    # the reward model and classifier also read the task's derived features (kinematics)
    derived = task.layout.derived
    reward_model = (
        RewardEnsemble(S, A, seed=seed, derived=derived, **masks, **rm_cfg)
        if kind == "ensemble"
        else None
    )
    cons = dict(c["constraints"])
    oracle_constraints = bool(cons.pop("oracle", False))
    learned = _learned_entries(cons.get("entries") or {})
    classifier = (
        None
        if oracle_constraints
        else ConstraintClassifier(
            S,
            seed=seed,
            input_mask=_classifier_mask(task, _learned_field(learned, "inputs")),
            periodic_mask=task.layout.periodic_mask,
            derived=derived,
            **c["classifier"],
        )
    )
    low, high = task.action_bounds
    planner = hydra.utils.instantiate(
        cfg.planner, action_low=low.tolist(), action_high=high.tolist()
    )
    if learned and float(c["planner"].get("threshold", 0.5)) != 0.5:
        raise ValueError(
            f"planner.threshold={c['planner']['threshold']}: with a learned constraint entry the "
            "planner's threshold must stay 0.5, where the set maps the calibrated threshold; "
            "change the entry's alpha or threshold instead"
        )
    fb = dict(c["feedback"])
    mode = fb.pop("mode", "synthetic")
    if mode not in ("synthetic", "human"):
        raise ValueError(f"feedback.mode must be 'synthetic' or 'human', got {mode!r}")
    if mode == "synthetic":
        fb.pop("_target_", None)
        fb.pop("seed", None)  # the run's seed drives every generator
        pref_teacher = PreferenceTeacher(task, seed=seed, **fb)
        unacc_teacher = UnacceptableTeacher(task, seed=seed + 1, **c["unacceptable_teacher"])
    else:
        pref_teacher = unacc_teacher = None
    exp = dict(c["experiment"])
    alpha = _learned_field(learned, "alpha")
    if alpha is not None:
        exp["alpha"] = float(alpha)  # the constraint's own alpha calibrates its classifier
    solicit = SolicitSettings(**exp.pop("solicit"))
    settings = LoopSettings(**exp, episode_length=c["task"].get("episode_length"), solicit=solicit)
    return Loop(
        run_dir=run_dir,
        task=task,
        seed=seed,
        world_model=world_model,
        planner=planner,
        constraint_entries=cons.get("entries", {}),
        reward_model=reward_model,
        classifier=classifier,
        oracle_constraints=oracle_constraints,
        preference_teacher=pref_teacher,
        unacceptable_teacher=unacc_teacher,
        settings=settings,
        qp_filter=dict(c["qp_filter"]["options"]) if c["qp_filter"]["enabled"] else None,
        progress=bool(c["progress"]),
    )


def _learned_entries(entries: Any) -> dict[str, dict[str, Any]]:
    """The constraint entries of kind ``learned``, by name."""
    rows = entries.items() if isinstance(entries, dict) else enumerate(entries)
    return {
        str(e.get("name", key)): e
        for key, e in rows
        if isinstance(e, dict) and e.get("kind") == "learned"
    }


def _learned_field(learned: dict[str, dict[str, Any]], key: str) -> Any:
    """The value of ``key`` (``alpha``, ``inputs``) the learned constraint entries give,
    or None when none gives one.

    One classifier serves every learned entry: it is built for one set of inputs and
    calibrated once per round for one alpha, so learned entries that ask for different
    values cannot all be honoured; that is a configuration error.
    """
    values = {name: e[key] for name, e in learned.items() if e.get(key) is not None}
    if len({json.dumps(v, sort_keys=True, default=str) for v in values.values()}) > 1:
        fix = {
            "alpha": "give them the same alpha or a fixed `threshold`",
            "inputs": "give them the same inputs",
        }.get(key, f"give them the same {key}")
        raise ValueError(
            f"learned constraint entries ask for different {key} {values}: one classifier "
            f"serves them all; {fix}"
        )
    return next(iter(values.values())) if values else None


def _classifier_mask(task: Any, inputs: Any) -> Any:
    """The task's network inputs, narrowed to the state names a learned entry lists in
    ``inputs`` (the dimensions its rule may depend on); all of them when None."""
    import numpy as np

    mask = np.asarray(task.layout.input_mask, dtype=bool)
    if inputs is None:
        return mask
    if isinstance(inputs, str) or not isinstance(inputs, list | tuple) or not inputs:
        raise ValueError(f"a learned entry's `inputs` must list state names, got {inputs!r}")
    chosen = np.zeros_like(mask)
    for name in inputs:
        if name not in task.layout.names:
            raise ValueError(
                f"a learned entry's inputs name {name!r}, not a state of {task.name}; "
                f"valid names: {list(task.layout.names)}"
            )
        chosen[task.layout.index(name)] = True
    if not (mask & chosen).any():
        raise ValueError(
            f"a learned entry's inputs {list(inputs)} are all excluded from the networks"
        )
    return mask & chosen


def _train(cfg) -> dict:
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if cfg.resume:
        run_dir = Path(cfg.resume)
        saved = OmegaConf.load(run_dir / "config.yaml")
        saved.resume = cfg.resume
        cfg = saved
    else:
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    loop = build_loop(cfg, run_dir)
    if cfg.resume:
        loop.resume()
    summary = loop.run()
    from mbrm.report import write_report

    report = write_report(run_dir)
    _print_summary(summary, run_dir, report)
    return summary


def _print_summary(summary: dict, run_dir: Path, report: Path | None) -> None:
    print()
    print(
        f"mbrm: {summary['task']} seed {summary['seed']} finished after {summary['env_steps']} environment steps"
    )
    print(
        f"  true return (eval)     {summary['eval_return']:9.2f}   random {summary['random_return']:.2f}   oracle {summary['oracle_return']:.2f}"
    )
    print(
        f"  normalised score       {summary['normalised_score']:9.3f}   (R - R_random) / (R_oracle - R_random)"
    )
    print(
        f"  unacceptable steps     eval {summary['eval_unacceptable_steps']}   during training {summary['train_unacceptable_steps']}   random policy {summary['random_unacceptable_steps']}"
    )
    print(
        f"  labels                 {json.dumps(summary['labels'])}  by source {json.dumps(summary['labels_by_source'])}"
    )
    print(f"  planning               {summary['plan_seconds_per_step'] * 1000:.0f} ms per step")
    print(f"  outputs                {run_dir}")
    if report is not None:
        print(f"  report                 {report}")


# Hydra flags followed by a value as a separate argument.
_FLAGS_WITH_VALUE = {
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--experimental-rerun",
}


def _hydra_entry(argv: list[str], extra: list[str] | None = None) -> None:
    import hydra

    # Hydra takes flags (-m, --cfg job, ...) before overrides only: keep the user's flags
    # ahead of the overrides this command adds.
    flags, overrides = [], []
    for i, arg in enumerate(argv):
        if arg.startswith("-"):
            flags.append(arg)
        elif i > 0 and argv[i - 1] in _FLAGS_WITH_VALUE:
            flags.append(arg)
        else:
            overrides.append(arg)
    sys.argv = [sys.argv[0], *flags, *(extra or []), *overrides]
    main = hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")(_train)
    main()


def _eval(run_dir: Path) -> None:
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(run_dir / "config.yaml")
    cfg.resume = str(run_dir)
    loop = build_loop(cfg, run_dir)
    loop.resume()
    summary = loop.final_evaluation()
    _print_summary(summary, run_dir, None)


def _options() -> None:
    """Every option of every config file with the comment line above it."""
    for path in sorted(CONFIG_DIR.rglob("*.yaml")):
        comment = ""
        print(f"\n[{path.relative_to(CONFIG_DIR)}]")
        for line in path.read_text().splitlines():
            s = line.strip()
            if s.startswith("#"):
                comment = s.lstrip("# ")
            elif ":" in s and not s.startswith("-"):
                key, _, rest = s.partition(":")
                value, _, inline = rest.partition("#")
                print(f"  {key.strip():24s} {value.strip():24s} {(inline.strip() or comment)}")
                comment = ""


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    cmd, rest = argv[0], argv[1:]
    if cmd == "train":
        _hydra_entry(rest)
    elif cmd == "demo":
        _hydra_entry(rest, ["experiment=demo", "world_model=small", "planner=cem_fast"])
    elif cmd in ("eval", "report"):
        if len(rest) != 1:
            raise SystemExit(f"usage: mbrm {cmd} RUN_DIR")
        run_dir = Path(rest[0])
        if not (run_dir / "config.yaml").exists():
            raise SystemExit(f"mbrm: {run_dir} is not a run directory (no config.yaml)")
        if cmd == "eval":
            _eval(run_dir)
        else:
            from mbrm.report import write_report

            print(f"mbrm: report written to {write_report(run_dir)}")
    elif cmd == "label":
        from mbrm.labeling.server import main as label_main

        label_main(rest)
    elif cmd == "options":
        _options()
    else:
        raise SystemExit(f"mbrm: unknown command {cmd!r}\n{USAGE}")


if __name__ == "__main__":
    main()
