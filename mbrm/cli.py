"""The ``mbrm`` command line.

mbrm train [key=value ...]      a training run (Hydra; -m for sweeps)
mbrm train resume=RUN_DIR       continue an interrupted run with its own config
                                (experiment.iterations=N extends it; progress, threads)
mbrm eval RUN_DIR               evaluate a run's final agent again
mbrm report RUN_DIR             write RUN_DIR/report.md with plots
mbrm demo                       the main job: reacher_keepout, synthetic feedback, CEM
mbrm options                    every configuration option with its one-line help
mbrm label RUN_DIR              label RUN_DIR's queued queries in the browser

A refused setting or input prints one line and exits with status 2; add --debug
(anywhere) or set HYDRA_FULL_ERROR=1 to see the traceback instead.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

USAGE = __doc__
DEMO = ["experiment=demo", "world_model=small", "planner=cem_fast"]
# What `resume=RUN` may change: the rest of the run is its saved config.
RESUME_KEYS = ("resume", "progress", "threads", "experiment.iterations")

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


class UsageError(ValueError):
    """A command line that cannot be carried out (the message says why)."""


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that are the user's input, not a bug: one line, exit status 2."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from mbrm.feedback.errors import FeedbackStoreError

    return (
        ValueError,
        OSError,
        LookupError,
        FeedbackStoreError,
        HydraException,
        OmegaConfBaseException,
    )


def _one_line(e: BaseException) -> str:
    """The first line of an error, with the first line of its cause when that adds to it."""
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    cause = e.__cause__ or e.__context__
    if cause is not None and str(cause).strip():
        extra = str(cause).strip().splitlines()[0]
        if extra not in first:
            first = f"{first} ({extra})"
    return first


def _debug() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    """Hydra flags (with their values) and overrides, in the user's order."""
    flags, overrides = [], []
    for i, arg in enumerate(argv):
        if arg.startswith("-"):
            flags.append(arg)
        elif i > 0 and argv[i - 1] in _FLAGS_WITH_VALUE:
            flags.append(arg)
        else:
            overrides.append(arg)
    return flags, overrides


def _first_of_sweeps(overrides: list[str]) -> list[str]:
    """Each sweep override (``seed=0,1``) replaced by its first value, to check the config."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out = []
    for text, o in zip(overrides, OverridesParser.create().parse_overrides(overrides), strict=True):
        if o.is_sweep_override():
            out.append(f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}")
        else:
            out.append(text)
    return out


def compose_checked(overrides: list[str]) -> Any:
    """Compose ``config`` with ``overrides`` and check every value; raises on the first
    unknown key, wrong type or value out of range. Creates no file or folder."""
    from mbrm.run.compose import check_run, compose_config, run_settings

    cfg = compose_config(overrides)
    check_run(run_settings(cfg))
    return cfg


def _train(argv: list[str], extra: list[str] | None = None) -> None:
    import hydra

    from mbrm.resources import config_dir, register_resolvers
    from mbrm.run import register_schemas

    flags, overrides = _split(argv)
    overrides = [*(extra or []), *overrides]
    if any(o.startswith("resume=") for o in overrides):
        if extra or "-m" in flags or "--multirun" in flags:
            raise UsageError("resume=RUN continues one run: it takes no sweep and no demo preset")
        _resume(overrides, flags)
        return
    if not any(f in flags for f in ("--help", "-h", "--cfg", "-c", "--info", "-i")):
        compose_checked(_first_of_sweeps(overrides))  # refuse bad settings before any folder
    register_resolvers()
    register_schemas()
    # Hydra takes flags (-m, --cfg job, ...) before overrides only
    sys.argv = [sys.argv[0], *flags, *overrides]
    main = hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")(
        _train_job
    )
    main()


def _train_job(cfg: Any) -> dict[str, Any]:
    """One training run in Hydra's output folder (a job of a sweep, or the only one)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from mbrm.run import build_loop, run_settings
    from mbrm.run.compose import check_run

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        settings = run_settings(cfg)
        check_run(settings)
    except ValueError as e:  # a swept value out of range: leave no folder behind
        if not _debug():
            _remove_fresh_run_dir(run_dir)
            print(f"mbrm: error: {_one_line(e)}", file=sys.stderr)
            raise SystemExit(2) from None
        raise
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    return _run(build_loop(settings, run_dir), run_dir)


def _run(loop: Any, run_dir: Path) -> dict[str, Any]:
    from mbrm.report import write_report

    summary = loop.run()
    report = write_report(run_dir)
    _print_summary(summary, run_dir, report)
    return summary


def _remove_fresh_run_dir(run_dir: Path) -> None:
    """Remove a run folder Hydra has just made, if it holds nothing but Hydra's own files."""
    if not run_dir.is_dir():
        return
    if any(p.name not in (".hydra", "cli.log", "_train_job.log") for p in run_dir.iterdir()):
        return
    shutil.rmtree(run_dir)
    parent = run_dir.parent
    for _ in range(2):  # outputs/<date>/<time>: the date folder too, when empty
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent


def _resume(overrides: list[str], flags: list[str]) -> None:
    """``mbrm train resume=RUN``: continue RUN with its saved config (no new folder)."""
    from omegaconf import OmegaConf

    from mbrm.run import FinishedRun, build_loop, run_settings

    if flags:
        raise UsageError(f"resume=RUN takes no Hydra flags, got {' '.join(flags)}")
    pairs = [o.split("=", 1) for o in overrides]
    changing = [f"{k}={v}" for k, v in pairs if k.lstrip("+~") not in RESUME_KEYS]
    if changing:
        raise UsageError(
            f"resume continues a run with its own config; these overrides would change it: "
            f"{', '.join(changing)} (allowed with resume: {', '.join(RESUME_KEYS[1:])})"
        )
    given = dict(pairs)
    run = FinishedRun(given.pop("resume"))
    if not (run.run_dir / "checkpoint.pt").is_file():
        raise UsageError(f"{run.run_dir} has no checkpoint.pt to resume from")
    saved = OmegaConf.load(run.run_dir / "config.yaml")
    before = OmegaConf.to_container(saved, resolve=True)
    cfg = OmegaConf.merge(saved, OmegaConf.from_dotlist([f"{k}={v}" for k, v in given.items()]))
    settings = run_settings(cfg)
    old = int(before["experiment"]["iterations"])  # type: ignore[index]
    if settings.experiment.iterations < old:
        raise UsageError(
            f"experiment.iterations={settings.experiment.iterations}: resume can extend a run "
            f"(it has {old} iterations), not shorten it"
        )
    loop = build_loop(settings, run.run_dir)
    loop.resume()
    if settings.experiment.iterations != old:  # the run's config says what it now is
        saved.experiment.iterations = settings.experiment.iterations
        tmp = run.run_dir / "config.yaml.tmp"
        tmp.write_text(OmegaConf.to_yaml(saved))
        tmp.replace(run.run_dir / "config.yaml")
    _run(loop, run.run_dir)


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


def _run_dir(rest: list[str], cmd: str) -> Any:
    from mbrm.run import FinishedRun

    if len(rest) != 1:
        raise UsageError(f"usage: mbrm {cmd} RUN_DIR")
    return FinishedRun(rest[0])


def _options() -> None:
    """Every option of every config file with the comment line above it."""
    from mbrm.resources import config_dir

    root = config_dir()
    for path in sorted(root.rglob("*.yaml")):
        comment = ""
        print(f"\n[{path.relative_to(root)}]")
        for line in path.read_text().splitlines():
            s = line.strip()
            if s.startswith("#"):
                comment = s.lstrip("# ")
            elif ":" in s and not s.startswith("-"):
                key, _, rest = s.partition(":")
                value, _, inline = rest.partition("#")
                print(f"  {key.strip():24s} {value.strip():24s} {(inline.strip() or comment)}")
                comment = ""


def _dispatch(cmd: str, rest: list[str]) -> None:
    if cmd == "train":
        _train(rest)
    elif cmd == "demo":
        _train(rest, DEMO)
    elif cmd == "eval":
        run = _run_dir(rest, cmd)
        _print_summary(run.loop().final_evaluation(), run.run_dir, None)
    elif cmd == "report":
        from mbrm.report import write_report

        run = _run_dir(rest, cmd)
        print(f"mbrm: report written to {write_report(run.run_dir)}")
    elif cmd == "label":
        from mbrm.labeling.server import main as label_main

        label_main(rest)
    elif cmd == "options":
        _options()
    else:
        raise UsageError(
            f"unknown command {cmd!r}; commands: train, demo, eval, report, options, label"
        )


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv:
        argv = [a for a in argv if a != "--debug"]
        os.environ["HYDRA_FULL_ERROR"] = "1"
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    try:
        _dispatch(argv[0], argv[1:])
    except _user_errors() as e:
        if _debug():
            raise
        print(f"mbrm: error: {_one_line(e)}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
