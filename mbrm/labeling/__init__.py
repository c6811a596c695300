"""The labelling web UI: people answer the agent's queries (``mbrm label RUN_DIR``).

``LabelServer`` serves one run's feedback store; ``ClipCache`` renders and caches
the clips; ``Assistant`` gives the models' view of a clip; ``make_sample_run``
builds a small run directory to try it on.
"""

from mbrm.labeling.assist import Assistance, Assistant
from mbrm.labeling.clips import ClipCache, ClipNotFoundError, default_format, encode_clip
from mbrm.labeling.sample import make_sample_run
from mbrm.labeling.server import LabelingApp, LabelServer, main

__all__ = [
    "Assistance",
    "Assistant",
    "ClipCache",
    "ClipNotFoundError",
    "LabelServer",
    "LabelingApp",
    "default_format",
    "encode_clip",
    "main",
    "make_sample_run",
]
