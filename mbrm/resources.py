"""Files the installed package ships, and the OmegaConf resolvers its configs use.

The Hydra configs live in the repository's top-level ``configs/`` folder and install as the
package ``mbrm.configs`` (``pyproject.toml`` maps one onto the other), so a regular and an
editable install find them the same way: :func:`config_dir`.

A sweep job's folder is named by :func:`sweep_subdir`: the job number and the overrides of
the keys the sweep varies, not every override of the command line (a run with a few dozen
fixed overrides would otherwise get a folder name longer than a file system allows).
Resolving ``hydra.sweep.subdir`` happens inside each job, in whatever process a launcher
starts, where the command line is no longer known: the :class:`SweepNames` callback records
the swept keys when the sweep starts and carries them, and the resolvers, into every
process its launcher pickles it to.

Slurm sweeps (``hydra/launcher=slurm``) and their local check (``hydra/launcher=local``) use
the launchers of the submitit plugin, an optional extra: :func:`explain_missing_launcher`
turns Hydra's error for a launcher that is not installed into the command that installs it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

CONFIG_PACKAGE = "mbrm.configs"
SUBDIR_RESOLVER = "mbrm.sweep_subdir"
# Folder names stay far below the usual 255-byte limit, leaving room for a path around them.
MAX_SUBDIR_LENGTH = 96
# Hydra's composition error for a launcher whose config is not there, and the launcher the
# user chose (a config of ours, e.g. hydra/launcher/slurm.yaml, that extends it) if any.
_MISSING_SUBMITIT = re.compile(
    r"(?:In 'hydra/launcher/(?P<chosen>[^']+)': )?"
    r"Could not (?:load|find) 'hydra/launcher/(?P<launcher>submitit_(?:slurm|local))'"
)

# Keys the running sweep varies, recorded by SweepNames; None outside a sweep that has one.
_swept_keys: frozenset[str] | None = None


def config_dir() -> Path:
    """The folder holding ``config.yaml`` and the config groups (``task/``, ``planner/``...)."""
    try:
        marker = resources.files(CONFIG_PACKAGE).joinpath("config.yaml")
    except ModuleNotFoundError:
        marker = None
    if marker is None or not marker.is_file():
        raise FileNotFoundError(
            f"mbrm: the configuration files (package {CONFIG_PACKAGE}) are not installed; "
            "reinstall mbrm with `pip install .` from its repository"
        )
    return Path(str(marker)).parent


def register_resolvers() -> None:
    """Register the resolvers ``configs/`` uses; calling it again changes nothing."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(SUBDIR_RESOLVER):
        OmegaConf.register_new_resolver(SUBDIR_RESOLVER, _resolve_sweep_subdir)


def swept_keys(overrides: Iterable[str], params: Mapping[str, Any] | None = None) -> frozenset[str]:
    """The keys that ``overrides`` (a command line's) and a sweeper's ``params`` give as
    sweeps (``seed=0,1``, ``lr=range(1,3)``, ``planner=glob(*)``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = [*overrides, *(f"{k}={v}" for k, v in (params or {}).items())]
    return frozenset(
        _key(o) for o in OverridesParser.create().parse_overrides(lines) if o.is_sweep_override()
    )


def sweep_subdir(job_num: int, overrides: Iterable[str], swept: Iterable[str] | None) -> str:
    """A sweep job's folder name: ``3_seed=2,task=hopper_safe``.

    ``overrides`` are the job's own (``hydra.overrides.task``); only those of a key in
    ``swept`` name the folder, sorted by key. With ``swept`` None (no sweep recorded) every
    override does, as Hydra's ``override_dirname``. Each stretch of characters other than
    letters, digits and ``._=,+-`` becomes one ``_``; the job number keeps a truncated name
    unique.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    chosen = None if swept is None else set(swept)
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    pairs = sorted(
        (_key(o), o.get_value_element_as_str())
        for o in parsed
        if chosen is None or _key(o) in chosen
    )
    name = ",".join(f"{k}={v}" for k, v in pairs)
    name = re.sub(r"[^A-Za-z0-9._=,+-]+", "_", name)
    return f"{job_num}_{name}"[:MAX_SUBDIR_LENGTH] if name else str(job_num)


def explain_missing_launcher(message: str) -> str | None:
    """What to install when ``message`` (a Hydra composition error) names a launcher of the
    submitit plugin (``submitit_slurm``, ``submitit_local``) that is not installed; None for
    any other message."""
    found = _MISSING_SUBMITIT.search(message)
    if found is None:
        return None
    launcher = found["chosen"] or found["launcher"]
    return (
        f"the {launcher} launcher needs the submitit plugin: pip install 'mbrm[slurm]' "
        "(or pip install -e '.[slurm]' in a checkout)"
    )


class SweepNames(Callback):
    """Hydra callback (``hydra.callbacks`` in ``configs/config.yaml``) that registers the
    resolvers and records the keys a sweep varies, in the process that starts the sweep
    and in every process a launcher unpickles it in (joblib, submitit)."""

    def __init__(self, swept: Iterable[str] | None = None) -> None:
        self.swept = None if swept is None else frozenset(swept)
        register_resolvers()
        if self.swept is not None:
            _record(self.swept)

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        from omegaconf import OmegaConf

        overrides = OmegaConf.to_container(config.hydra.overrides.task)
        params = OmegaConf.select(config, "hydra.sweeper.params")
        params = OmegaConf.to_container(params) if params is not None else None
        self.swept = swept_keys(overrides, params)
        _record(self.swept)

    def __reduce__(self) -> tuple[Any, ...]:
        # Unpickling calls __init__ again: a worker process gets the resolvers and the keys.
        return (type(self), (self.swept,))


def _record(swept: frozenset[str]) -> None:
    global _swept_keys
    _swept_keys = swept


def _resolve_sweep_subdir(job_num: Any, overrides: Any) -> str:
    return sweep_subdir(int(job_num), [str(o) for o in overrides], _swept_keys)


def _key(override: Any) -> str:
    """An override's key without its ``+``/``~`` prefix, with its ``@package`` if any."""
    key = override.key_or_group
    return f"{key}@{override.package}" if override.package is not None else key
