"""The labelling page's assistance: the run's reward model and classifier, loaded alone.

The assistant reads two state dicts from a run's checkpoint; it never builds a
training loop, a planner or a constraint set, and never opens the feedback store
(the server keeps its own connections). A newer checkpoint is loaded on the next
request; one that cannot be read gives a reason, not a crash.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mbrm.feedback.store import FeedbackStore
from mbrm.labeling import Assistant, make_sample_run
from mbrm.rundir import CHECKPOINT


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return make_sample_run(
        tmp_path_factory.mktemp("template") / "run",
        preference_queries=2,
        unacceptable_queries=1,
        segment_length=6,
    )


@pytest.fixture
def run(template, tmp_path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "run"))


@pytest.fixture
def segment(run):
    store = FeedbackStore(run / "feedback.sqlite")
    try:
        return store.get_segment(1)
    finally:
        store.close()


def _refuse(what: str):
    def refuse(*args, **kwargs):
        raise AssertionError(f"the assistant built {what}")

    return refuse


def test_loads_the_models_without_store_planner_or_loop(run, segment, monkeypatch):
    import planners
    from mbrm.loop import Loop
    from mbrm.run import compose

    monkeypatch.setattr(FeedbackStore, "__init__", _refuse("a feedback store"))
    monkeypatch.setattr(compose, "build_parts", _refuse("a run's parts"))
    monkeypatch.setattr(compose, "build_gatherer", _refuse("a gatherer"))
    monkeypatch.setattr(planners, "make_planner", _refuse("a planner"))
    monkeypatch.setattr(Loop, "__init__", _refuse("a loop"))
    assistant = Assistant(run)
    ok, note = assistant.available()
    assert ok, note
    out = assistant.for_segment(1, segment)
    assert out is not None
    assert len(out.reward_mean) == 6 and len(out.p_unacceptable) == 7


def test_a_newer_checkpoint_is_loaded_on_the_next_request(run, segment, monkeypatch):
    from mbrm.run import FinishedRun

    loads = []
    original = FinishedRun.reward_model

    def counted(self):
        loads.append(self.run_dir)
        return original(self)

    monkeypatch.setattr(FinishedRun, "reward_model", counted)
    assistant = Assistant(run)
    first = assistant.for_segment(1, segment)
    assert assistant.for_segment(1, segment) is first  # cached: same checkpoint
    assert len(loads) == 1
    ckpt = run / CHECKPOINT
    stat = ckpt.stat()
    os.utime(ckpt, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    again = assistant.for_segment(1, segment)
    assert len(loads) == 2 and again is not first
    assert again == first  # the same weights predict the same values


def test_an_unreadable_checkpoint_gives_a_reason(run, segment):
    (run / CHECKPOINT).write_bytes(b"not a checkpoint")
    assistant = Assistant(run)
    ok, note = assistant.available()
    assert not ok
    assert note.startswith("the run's models could not be loaded (CheckpointError:"), note
    assert assistant.for_segment(1, segment) is None
