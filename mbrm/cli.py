"""The ``mbrm`` command line.

mbrm train [key=value ...]      a training run (Hydra; -m for sweeps)
mbrm train resume=RUN_DIR       continue an interrupted run with its own config
                                (experiment.iterations=N extends it; progress, threads,
                                device, experiment.eval_workers)
mbrm eval RUN_DIR [--video [N]] evaluate a run's final agent again (and film it)
mbrm report RUN_DIR             write RUN_DIR/report.md and report.html
mbrm demo                       the main job: reacher_keepout, synthetic feedback, CEM
mbrm options [GROUP]            every configuration key: dotted path, default, help
mbrm label RUN_DIR              label RUN_DIR's queued queries in the browser
mbrm certify RUN_DIR --suite S  a safety certificate on a held-out suite (--verify CERT)

A refused setting or input prints one line and exits with status 2; add --debug
(anywhere) or set HYDRA_FULL_ERROR=1 to see the traceback instead.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

USAGE = __doc__
RUN_LOG = "run.log"  # a run folder's log (configs/config.yaml: hydra.job_logging)
log = logging.getLogger("mbrm")
DEMO = ["experiment=demo", "world_model=small", "planner=cem_fast"]
# What `resume=RUN` may change: the rest of the run is its saved config.
RESUME_KEYS = ("resume", "progress", "threads", "device")
RESUME_KEYS += ("experiment.iterations", "experiment.eval_workers")

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
    log.info("mbrm %s, config:\n%s", " ".join(sys.argv[1:]), OmegaConf.to_yaml(cfg).rstrip())
    return _run(build_loop(settings, run_dir), run_dir)


def _run(loop: Any, run_dir: Path) -> dict[str, Any]:
    from mbrm.report import write_report

    summary = loop.run()
    log.info("summary: %s", json.dumps(summary))
    report = write_report(run_dir)
    _print_summary(summary, run_dir, report)
    return summary


def _remove_fresh_run_dir(run_dir: Path) -> None:
    """Remove a run folder Hydra has just made, if it holds nothing but Hydra's own files."""
    if not run_dir.is_dir():
        return
    if any(p.name not in (".hydra", RUN_LOG) for p in run_dir.iterdir()):
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
    _log_to(run.run_dir / RUN_LOG)
    log.info("resumed with %s, config:\n%s", " ".join(overrides), OmegaConf.to_yaml(cfg).rstrip())
    loop = build_loop(settings, run.run_dir)
    loop.resume()
    if settings.experiment.iterations != old:  # the run's config says what it now is
        saved.experiment.iterations = settings.experiment.iterations
        tmp = run.run_dir / "config.yaml.tmp"
        tmp.write_text(OmegaConf.to_yaml(saved))
        tmp.replace(run.run_dir / "config.yaml")
    _run(loop, run.run_dir)


def _log_to(path: Path) -> None:
    """Log to the console and append to ``path``, as Hydra's job logging does for a run."""
    import logging

    fmt = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in (logging.StreamHandler(sys.stdout), logging.FileHandler(path)):
        handler.setFormatter(fmt)
        root.addHandler(handler)


def _print_summary(
    summary: dict, run_dir: Path, report: Path | None, videos: list[Path] | None = None
) -> None:
    import math

    print()
    print(
        f"mbrm: {summary['task']} seed {summary['seed']} finished after {summary['env_steps']} environment steps"
    )
    print(
        f"  true return (eval)     {summary['eval_return']:9.2f}   random {summary['random_return']:.2f}   oracle {summary['oracle_return']:.2f}"
    )
    score = summary["normalised_score"]
    if math.isnan(score):  # the reference does not beat random by a margin: no yardstick
        note = summary.get("normalised_score_note", "undefined")
        print(f"  normalised score       {'undefined':>9s}   (see the warning)")
        print(f"mbrm: warning: normalised score {note}", file=sys.stderr)
    else:
        print(f"  normalised score       {score:9.3f}   (R - R_random) / (R_oracle - R_random)")
    print(
        f"  unacceptable steps     eval {summary['eval_unacceptable_steps']}   during training {summary['train_unacceptable_steps']}   random policy {summary['random_unacceptable_steps']}"
    )
    print(
        f"  labels                 {json.dumps(summary['labels'])}  by source {json.dumps(summary['labels_by_source'])}"
    )
    print(f"  planning               {summary['plan_seconds_per_step'] * 1000:.0f} ms per step")
    if "wall_seconds" in summary:  # absent in summaries written before it was recorded
        print(
            f"  wall time              {_duration(summary['wall_seconds'])}   (the training job, all its sessions)"
        )
    print(f"  outputs                {run_dir}")
    if report is not None:
        print(f"  report                 {report}")
    if videos is None:  # a training run: the videos its evaluation filmed
        from mbrm.video import list_videos

        videos = list_videos(run_dir)
    for video in videos:
        print(f"  video                  {video}")


def _duration(seconds: float) -> str:
    """``seconds`` as people read a job's duration: 42 s, 7 min 05 s, 2 h 03 min."""
    s = round(seconds)
    if s < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _video_request(rest: list[str]) -> tuple[list[str], int | None]:
    """``--video [N]`` or ``--video=N`` taken out of ``rest``: the rest and N; None for a bare
    ``--video`` (every evaluation episode), 0 when it is not there."""
    out, count, i = [], 0, 0
    while i < len(rest):
        arg = rest[i]
        if arg == "--video" or arg.startswith("--video="):
            value = arg.partition("=")[2] or None
            if value is None and i + 1 < len(rest) and rest[i + 1].isdigit():
                value, i = rest[i + 1], i + 1
            if value is not None and not value.isdigit():
                raise UsageError(
                    f"--video takes a count of episodes (an integer >= 0), got {value!r}"
                )
            count = None if value is None else int(value)
        else:
            out.append(arg)
        i += 1
    return out, count


def _run_dir(rest: list[str], cmd: str) -> Any:
    from mbrm.run import FinishedRun

    if len(rest) != 1:
        raise UsageError(f"usage: mbrm {cmd} RUN_DIR{' [--video [N]]' if cmd == 'eval' else ''}")
    return FinishedRun(rest[0])


def _options(rest: list[str]) -> None:
    """``mbrm options [GROUP|TEXT]``: every key with its dotted path, default and help."""
    from mbrm.options import format_options
    from mbrm.resources import config_dir

    if len(rest) > 1:
        raise UsageError("usage: mbrm options [GROUP or part of a key, e.g. planner, risk]")
    print(format_options(config_dir(), rest[0] if rest else None))


def _dispatch(cmd: str, rest: list[str]) -> None:
    if cmd == "train":
        _train(rest)
    elif cmd == "demo":
        _train(rest, DEMO)
    elif cmd == "eval":
        from mbrm.video import list_videos

        rest, videos = _video_request(rest)
        run = _run_dir(rest, cmd)
        episodes = run.settings.experiment.eval_episodes
        videos = episodes if videos is None else videos
        if videos > episodes:
            s = "s" if episodes != 1 else ""
            raise UsageError(f"--video {videos}: the run has {episodes} evaluation episode{s}")
        summary = run.loop().final_evaluation(video_episodes=videos)
        _print_summary(summary, run.run_dir, None, list_videos(run.run_dir) if videos else [])
    elif cmd == "report":
        from mbrm.report import write_report

        run = _run_dir(rest, cmd)
        path = write_report(run.run_dir)
        print(f"mbrm: report written to {path} and {path.with_suffix('.html')}")
    elif cmd == "label":
        from mbrm.labeling.server import main as label_main

        label_main(rest)
    elif cmd == "options":
        _options(rest)
    elif cmd == "certify":
        from mbrm.certify.command import main as certify_main

        certify_main(rest)
    else:
        raise UsageError(
            f"unknown command {cmd!r}; commands: train, demo, eval, report, options, label, certify"
        )


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    logging.getLogger("OpenGL").setLevel(logging.WARNING)  # "No OpenGL_accelerate module"
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
        from mbrm.resources import explain_missing_launcher

        print(f"mbrm: error: {explain_missing_launcher(str(e)) or _one_line(e)}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
