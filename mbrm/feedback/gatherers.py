"""Who answers the queries: one interface, a synthetic teacher or a person.

A round of solicitation hands each chosen query to a :class:`FeedbackGatherer`. A
:class:`SyntheticGatherer` answers at once from the task's hidden objective (the
B-Pref teachers of :mod:`mbrm.feedback.teachers`, judging the segment's own states
as a person looking at its rendering would; Leike et al. 2018, Sec. 5.2). A
:class:`HumanGatherer` answers nothing: the queries wait in the feedback store for
the labelling UI, and the loop may pause for them after the round. Callers never
test for a missing teacher.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from tqdm.auto import tqdm

from mbrm.feedback.segments import Labeller, Preference, Segment, UnacceptableLabel
from mbrm.feedback.store import FeedbackStore
from mbrm.feedback.teachers import PreferenceTeacher, UnacceptableTeacher


class FeedbackGatherer(Protocol):
    """Answers preference and unacceptable-state queries, now or later."""

    def preference(self, left: Segment, right: Segment) -> tuple[Preference, Labeller] | None:
        """The answer and who gave it; None: the query waits in the store."""
        ...

    def unacceptable(self, segment: Segment) -> tuple[UnacceptableLabel, Labeller] | None:
        """Per-state judgements and who gave them; None: the query waits in the store."""
        ...

    def after_round(self, store: FeedbackStore, pending: int) -> None:
        """Called once a round's queries are stored (``pending`` wait for an answer)."""
        ...

    def rng_states(self) -> list[Any]:
        """Random-generator states a checkpoint carries (empty when there are none)."""
        ...

    def set_rng_states(self, states: list[Any]) -> None: ...


class SyntheticGatherer:
    """Synthetic teachers answer every query at once."""

    def __init__(
        self, preference_teacher: PreferenceTeacher, unacceptable_teacher: UnacceptableTeacher
    ) -> None:
        self.preference_teacher = preference_teacher
        self.unacceptable_teacher = unacceptable_teacher

    def preference(self, left: Segment, right: Segment) -> tuple[Preference, Labeller]:
        answer = self.preference_teacher.answer(left, right)
        return answer, Labeller.teacher("preference", **self.preference_teacher.describe())

    def unacceptable(self, segment: Segment) -> tuple[UnacceptableLabel, Labeller]:
        flags = self.unacceptable_teacher.label(segment)
        who = Labeller.teacher("unacceptable", **self.unacceptable_teacher.describe())
        return UnacceptableLabel(flags), who

    def after_round(self, store: FeedbackStore, pending: int) -> None:
        return None

    def rng_states(self) -> list[Any]:
        return [self.preference_teacher.rng_state(), self.unacceptable_teacher.rng_state()]

    def set_rng_states(self, states: list[Any]) -> None:
        teachers = (self.preference_teacher, self.unacceptable_teacher)
        for teacher, state in zip(teachers, states, strict=True):
            if state is not None:
                teacher.set_rng_state(state)


class HumanGatherer:
    """A person answers in the labelling UI (``mbrm label RUN_DIR``).

    wait_seconds: after a round with pending queries, wait this long for the queue to
                  be labelled before planning on with the current labels (0: go on).
    """

    def __init__(self, wait_seconds: float = 0.0, progress: bool = True) -> None:
        if wait_seconds < 0:
            raise ValueError(f"wait_seconds must be >= 0, got {wait_seconds}")
        self.wait_seconds = float(wait_seconds)
        self.progress = progress

    def preference(self, left: Segment, right: Segment) -> None:
        return None

    def unacceptable(self, segment: Segment) -> None:
        return None

    def after_round(self, store: FeedbackStore, pending: int) -> None:
        """Pause until the queue is labelled or ``wait_seconds`` pass, then go on."""
        if not pending or self.wait_seconds <= 0:
            return
        deadline = time.monotonic() + self.wait_seconds
        bar = tqdm(desc="waiting for labels (mbrm label RUN_DIR)", disable=not self.progress)
        while time.monotonic() < deadline:
            waiting = store.count_queries("pending")
            bar.set_postfix(pending=waiting)
            if waiting == 0:
                break
            time.sleep(2.0)
        bar.close()

    def rng_states(self) -> list[Any]:
        return [None, None]

    def set_rng_states(self, states: list[Any]) -> None:
        return None
