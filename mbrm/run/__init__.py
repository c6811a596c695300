"""The composition root: builds a run's parts from a composed config, and reads
finished runs back. Applications (``mbrm.cli``, ``mbrm.report``, ``mbrm.labeling``,
``benchmarks/``) import it; it imports none of them."""

from mbrm.run.compose import build_loop, build_parts, compose_config, run_settings, run_signature
from mbrm.run.finished import FinishedRun, NotARunError
from mbrm.run.schema import ConfigValueError, RunConfig, register_schemas

__all__ = [
    "ConfigValueError",
    "FinishedRun",
    "NotARunError",
    "RunConfig",
    "build_loop",
    "build_parts",
    "compose_config",
    "register_schemas",
    "run_settings",
    "run_signature",
]
