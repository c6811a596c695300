"""Segments and feedback value types."""

import numpy as np
import pytest

from mbrm.feedback.segments import (
    FeedbackKind,
    Labeller,
    Preference,
    Segment,
    SegmentSource,
    UnacceptableLabel,
)


def test_segment_checks_shapes_and_converts(rng: np.random.Generator) -> None:
    seg = Segment(rng.normal(size=(6, 3)).astype(np.float32), rng.normal(size=(5, 2)), "imagined")
    assert seg.states.dtype == np.float64 and seg.length == 5
    assert seg.source is SegmentSource.IMAGINED
    with pytest.raises(ValueError, match="expected T\\+1 states"):
        Segment(np.zeros((5, 3)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="states \\[T\\+1, S\\]"):
        Segment(np.zeros(5), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="at least one action"):
        Segment(np.zeros((1, 3)), np.zeros((0, 2)))


def test_preference_targets_and_string_values() -> None:
    assert [Preference(v).target for v in ("left", "right", "equal", "cannot_tell")] == [
        1.0,
        0.0,
        0.5,
        None,
    ]
    assert str(Preference.LEFT) == "left" and FeedbackKind("preference") is FeedbackKind.PREFERENCE


def test_first_step_label_leaves_later_states_unjudged() -> None:
    lab = UnacceptableLabel.from_first_step(2, 5)
    np.testing.assert_array_equal(lab.flags, [False, False, True, False, False])
    np.testing.assert_array_equal(lab.known, [True, True, True, False, False])
    assert lab.first_step == 2 and lab.n_states == 5
    none = UnacceptableLabel.from_first_step(None, 4)
    assert none.first_step is None and none.known.all() and not none.flags.any()


def test_per_state_flags_are_all_judged_and_copied() -> None:
    flags = np.array([0, 1, 0, 1])
    lab = UnacceptableLabel(flags)
    assert lab.flags.dtype == np.bool_ and lab.known.all() and lab.first_step == 1
    flags[0] = 1
    assert not lab.flags[0]  # the label does not alias the caller's array


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((np.array([0.0, 1.0]),), "must be bool"),
        ((np.array([0, 2]),), "must be bool"),
        ((np.zeros((2, 2), dtype=bool),), "1-D"),
        ((np.array([True, False]), np.array([True])), "2 flags but 1 known"),
        ((np.array([True, False]), np.array([False, True])), "not judged"),
    ],
)
def test_unacceptable_label_rejects_bad_arrays(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        UnacceptableLabel(*args)


def test_first_step_out_of_range_or_not_int() -> None:
    with pytest.raises(ValueError, match=r"outside the segment.s states 0\.\.3"):
        UnacceptableLabel.from_first_step(4, 4)
    with pytest.raises(TypeError, match="int or None"):
        UnacceptableLabel.from_first_step(True, 4)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="int or None"):
        UnacceptableLabel.from_first_step(1.0, 4)  # type: ignore[arg-type]


def test_labeller_identities() -> None:
    t = Labeller.teacher("bpref", beta=1.0, gamma=0.9)
    assert t.key == "teacher:bpref" and t.params == {"beta": 1.0, "gamma": 0.9}
    assert Labeller.person("ada").key == "person:ada"
    with pytest.raises(ValueError, match="'teacher' or 'person'"):
        Labeller("robot", "x")
    with pytest.raises(ValueError, match="non-empty name"):
        Labeller.person("")
    with pytest.raises(ValueError, match="no parameters"):
        Labeller("person", "ada", {"beta": 1})
