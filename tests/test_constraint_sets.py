"""ConstraintSet: hand-computed evaluation for every kind, and every configuration error."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from constraints.entries import LearnedEntrySpec
from constraints.sets import ConfigError, ConstraintSet
from constraints.spec import ConstraintSpec, constraint_set
from mbrm.tasks import StateLayout, get_task
from planners.base import ImaginedBatch

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
LAYOUT = StateLayout(("qpos.x", "qvel.x", "qvel.y"), nq=1, nv=2, excluded=(), dt=0.1)


class FakeClassifier:
    """p_mean = first state entry, p_std = second; a settable threshold."""

    def __init__(self, threshold: float | None = 0.3) -> None:
        self.threshold = threshold
        self.calls: list[str] = []

    def predict(self, states: torch.Tensor, dtype: str = "float32"):
        self.calls.append(dtype)
        return states[..., 0].clone(), states[..., 1].clone()


def make(entries, classifier=None, action_dim=2, action_bounds=None) -> ConstraintSet:
    return constraint_set(
        entries,
        layout=LAYOUT,
        action_dim=action_dim,
        classifier=classifier,
        action_bounds=action_bounds,
    )


# --------------------------------------------------------------------------- evaluation by hand


def test_state_bounds_judge_the_next_state():
    cs = make(
        {
            "v": {
                "kind": "state_bounds",
                "dims": ["qvel.x", "qvel.y"],
                "lower": [None, -1.0],
                "upper": [2.0, None],
            }
        }
    )
    states = torch.tensor(
        [
            [
                [0.0, 9.0, -9.0],  # s_0 is never judged
                [0.0, 2.0, -1.0],  # on both bounds: acceptable
                [0.0, 2.5, 0.0],  # qvel.x above 2
                [5.0, 0.0, -1.5],  # qvel.y below -1
                [0.0, -100.0, 100.0],
            ]
        ]
    )  # unbounded sides
    actions = torch.zeros(1, 4, 2)
    ev = cs.evaluate(states, actions)
    assert ev.violations["v"].tolist() == [[0.0, 1.0, 1.0, 0.0]]
    assert ev.p_unacceptable.tolist() == [[0.0, 1.0, 1.0, 0.0]]


def test_linear_over_state_action_and_both():
    cs = make(
        {
            "s": {
                "kind": "linear",
                "over": "state",
                "dims": ["qvel.x", "qpos.x"],
                "A": [[1.0, 2.0]],
                "b": [3.0],
            },
            "a": {
                "kind": "linear",
                "over": "action",
                "A": [[1.0, -1.0], [0.0, 1.0]],
                "b": [0.0, 0.5],
            },
            "both": {
                "kind": "linear",
                "over": "both",
                "dims": ["qvel.y"],
                "A": [[1.0, 1.0, 1.0]],
                "b": [1.0],
            },
            "all": {
                "kind": "linear",
                "A": [[0.0, 0.0, 1.0]],
                "b": [10.0],
            },  # default: state, all dims
        }
    )
    # step 0: s1=(1,1,0)  a0=(0,0):   s: 1+2=3<=3 ok; a: ok; both: 0+0+0 ok
    # step 1: s2=(1,2,0)  a1=(1,0):   s: 2+2=4>3;     a: 1-0=1>0;  both: 0+1+0=1 ok
    # step 2: s3=(0,0,0.6) a2=(0.2,0.6): s ok; a: 0.6>0.5; both: 0.6+0.2+0.6=1.4>1
    states = torch.tensor([[0.0, 0, 0], [1, 1, 0], [1, 2, 0], [0, 0, 0.6]])
    actions = torch.tensor([[0.0, 0], [1, 0], [0.2, 0.6]])
    ev = cs.evaluate(states, actions)
    assert ev.violations["s"].tolist() == [0.0, 1.0, 0.0]
    assert ev.violations["a"].tolist() == [0.0, 1.0, 1.0]
    assert ev.violations["both"].tolist() == [0.0, 0.0, 1.0]
    assert ev.violations["all"].tolist() == [0.0, 0.0, 0.0]
    assert ev.p_unacceptable.tolist() == [0.0, 1.0, 1.0]
    assert ev.rejecting() == ["s", "a", "both"]
    assert ev.worst_entry() == ["s", "s", "a"]  # ties go to the first entry


def test_action_box_and_polytope_and_task_default():
    bounds = (np.array([-1.0, -2.0]), np.array([1.0, 2.0]))
    cs = make(
        {
            "actuators": {"kind": "action_box"},  # the actuator range
            "tight": {"kind": "action_box", "low": [-0.5, -0.5], "high": 0.5},
            "poly": {"kind": "action_polytope", "A": [[1.0, 1.0]], "b": [0.8]},
        },
        action_bounds=bounds,
    )
    states = torch.zeros(5, 3)
    actions = torch.tensor([[0.5, 0.3], [0.6, 0.0], [0.5, -1.5], [-0.5, 2.5]])
    ev = cs.evaluate(states, actions)
    assert ev.violations["actuators"].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert ev.violations["tight"].tolist() == [0.0, 1.0, 1.0, 1.0]
    assert ev.violations["poly"].tolist() == [0.0, 0.0, 0.0, 1.0]  # 0.8 is on the boundary


def test_learned_entry_logit_shift_maps_threshold_to_half():
    clf = FakeClassifier(threshold=0.3)
    cs = make({"clf": {"kind": "learned", "alpha": 0.1}}, classifier=clf)
    p = torch.tensor([0.0, 0.3, 0.6, 1.0])
    states = torch.stack([p, torch.zeros(4), torch.zeros(4)], -1)  # [4, 3]
    got = cs.evaluate(states).violations["clf"]
    # sigmoid(logit(p) - logit(tau)) = p (1 - tau) / (p (1 - tau) + (1 - p) tau)
    want = [0.0, 0.5, 0.6 * 0.7 / (0.6 * 0.7 + 0.4 * 0.3), 1.0]
    torch.testing.assert_close(got, torch.tensor(want))
    assert cs.learned[0].alpha == 0.1
    # the decision boundary is the same: p > tau  <=>  reported > 0.5
    grid = torch.linspace(0, 1, 1001, dtype=torch.float64)
    grid = grid[(grid - 0.3).abs() > 1e-6]
    shifted = cs.evaluate(torch.stack([grid, 0 * grid, 0 * grid], -1)).p_unacceptable
    assert torch.equal(shifted > 0.5, grid > 0.3)


def test_learned_entry_ties_and_extreme_thresholds_follow_p_at_least_tau():
    clf = FakeClassifier(threshold=0.3)
    cs = make({"clf": {"kind": "learned"}}, classifier=clf)
    tau32 = float(torch.tensor(0.3))  # a calibrated threshold is a float32 score
    clf.threshold = tau32
    p = torch.tensor([tau32, float(np.nextafter(np.float32(tau32), np.float32(0)))])
    got = cs.evaluate(torch.stack([p, 0 * p, 0 * p], -1)).p_unacceptable
    assert got[0] > 0.5 and got[1] <= 0.5  # the tie is rejected, one ulp below is not
    p = torch.tensor([0.0, 0.5, 1.0 - 1e-7, 1.0, math.nan])
    states = torch.stack([p, 0 * p, 0 * p], -1)
    clf.threshold = 1.0
    v = cs.evaluate(states).violations["clf"]
    assert v[:4].tolist() == [0.0, 0.0, 0.0, 1.0] and v[4].isnan()
    clf.threshold = 0.0
    v = cs.evaluate(states).violations["clf"]
    assert v[:4].tolist() == [1.0, 1.0, 1.0, 1.0] and v[4].isnan()
    clf.threshold = 1.5
    with pytest.raises(RuntimeError, match=r"'clf': threshold 1.5 is outside \[0, 1\]"):
        cs.evaluate(states)


def test_learned_entry_threshold_override_pessimism_and_dtype():
    clf = FakeClassifier(threshold=0.9)
    cs = make(
        {"clf": {"kind": "learned", "threshold": 0.5, "pessimism": 2.0, "dtype": "bfloat16"}},
        classifier=clf,
    )
    states = torch.tensor([[0.2, 0.1, 0.0], [0.2, 0.2, 0.0], [0.9, 0.5, 0.0]])
    got = cs.evaluate(states).violations["clf"]  # tau 0.5: the shift is the identity
    torch.testing.assert_close(got, torch.tensor([0.4, 0.6, 1.0]))  # clamped to 1
    assert clf.calls == ["bfloat16"]


def test_uncalibrated_classifier_is_an_error_at_use():
    cs = make({"clf": {"kind": "learned"}}, classifier=FakeClassifier(threshold=None))
    with pytest.raises(RuntimeError, match=r"'clf'.*not calibrated"):
        cs.evaluate(torch.zeros(2, 3))


def test_combined_is_max_over_entries_with_horizon_and_broadcast():
    clf = FakeClassifier(threshold=0.5)
    cs = make(
        {
            "clf": {"kind": "learned"},
            "speed": {"kind": "state_bounds", "dims": ["qvel.y"], "upper": 1.0},
            "box": {"kind": "action_box", "low": -1.0, "high": 1.0},
        },
        classifier=clf,
    )
    N, P, H = 2, 3, 4
    g = torch.Generator().manual_seed(0)
    states = torch.rand(N, P, H + 1, 3, generator=g)
    states[..., 1] = 0.0  # p_std = 0
    states[1, 2, 3, 2] = 1.5  # speed violated at step 2 of candidate 1, particle 2
    actions = torch.zeros(N, 1, H, 2)
    actions[0, 0, 1, 0] = 2.0  # box violated at step 1 of candidate 0, every particle
    batch = ImaginedBatch(states, *(torch.zeros(N, P, H),) * 3)
    ev = cs.evaluate(batch, actions)
    assert ev.p_unacceptable.shape == (N, P, H)
    assert all(v.shape == (N, P, H) for v in ev.violations.values())
    torch.testing.assert_close(ev.violations["clf"], states[..., 1:, 0])
    want = states[..., 1:, 0].clone()
    want[1, 2, 2] = 1.0
    want[0, :, 1] = 1.0
    torch.testing.assert_close(ev.p_unacceptable, want)
    assert ev.violations["speed"].sum() == 1 and ev.violations["box"].sum() == P


def test_nan_propagates_and_is_never_acceptable():
    cs = make(
        {
            "v": {"kind": "state_bounds", "dims": ["qvel.x"], "upper": 1.0},
            "lin": {"kind": "linear", "dims": ["qvel.y"], "A": [[1.0]], "b": [5.0]},
        }
    )
    states = torch.tensor([[0.0, 0.0, 0.0], [0.0, math.nan, 0.0], [0.0, 0.0, math.nan]])
    ev = cs.evaluate(states, torch.zeros(2, 2))
    assert ev.violations["v"][0].isnan() and ev.violations["v"][1] == 0.0
    assert ev.violations["lin"][1].isnan() and ev.violations["lin"][0] == 0.0
    assert ev.p_unacceptable.isnan().all()
    assert ev.rejecting() == ["v", "lin"]


def test_states_only_skip_action_entries_and_empty_set_is_zero():
    cs = make(
        {
            "v": {"kind": "state_bounds", "dims": ["qvel.x"], "upper": 1.0},
            "box": {"kind": "action_box", "low": -1.0, "high": 1.0},
        }
    )
    ev = cs.evaluate(torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 0.0]]))
    assert list(ev.violations) == ["v"] and ev.p_unacceptable.tolist() == [1.0, 0.0]
    empty = make({})
    ev = empty.evaluate(torch.zeros(4, 6, 3), torch.zeros(4, 5, 2))
    assert ev.p_unacceptable.shape == (4, 5) and not ev.p_unacceptable.any()
    assert ev.violations == {} and ev.worst_entry() == []


def test_shape_errors_name_the_shapes():
    cs = make({"v": {"kind": "state_bounds", "dims": ["qvel.x"], "upper": 1.0}})
    with pytest.raises(ValueError, match=r"H\+1 = 4"):
        cs.evaluate(torch.zeros(2, 3, 3), torch.zeros(2, 3, 2))
    with pytest.raises(ValueError, match=r"expected states \[\.\.\., 3\]"):
        cs.evaluate(torch.zeros(2, 4), torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"expected actions \[\.\.\., H, 2\]"):
        cs.evaluate(torch.zeros(2, 3), torch.zeros(1, 3))


def test_list_and_mapping_configs_agree_and_null_disables():
    as_list = make([{"name": "v", "kind": "state_bounds", "dims": "qvel.x", "upper": 1.0}])
    as_map = make({"v": {"kind": "state_bounds", "dims": ["qvel.x"], "upper": [1.0]}, "off": None})
    assert as_list.names == as_map.names == ("v",)
    x = torch.tensor([[0.0, 0.5, 0.0], [0.0, 1.5, 0.0]])
    assert torch.equal(as_list.evaluate(x).p_unacceptable, as_map.evaluate(x).p_unacceptable)


def test_linear_rows_for_the_filter():
    cs = make(
        {
            "v": {"kind": "state_bounds", "dims": ["qvel.x"], "lower": -1.0, "upper": 2.0},
            "both": {
                "kind": "linear",
                "over": "both",
                "dims": ["qvel.y"],
                "A": [[1.0, 2.0, 3.0]],
                "b": [4.0],
            },
            "poly": {"kind": "action_polytope", "A": [[1.0, 1.0]], "b": [1.5]},
            "box": {"kind": "action_box", "low": [-0.5, -3.0], "high": [0.5, 3.0]},
        },
        action_bounds=(np.array([-1.0, -1.0]), np.array([1.0, 1.0])),
    )
    rows = cs.linear_rows()
    np.testing.assert_array_equal(rows.C_s, [[0, 1, 0], [0, -1, 0], [0, 0, 1]])
    np.testing.assert_array_equal(rows.C_a, [[0, 0], [0, 0], [2, 3]])
    np.testing.assert_array_equal(rows.d, [2.0, 1.0, 4.0])
    np.testing.assert_array_equal(rows.G, [[1, 1]])
    np.testing.assert_array_equal(rows.low, [-0.5, -1.0])  # the tighter of box and actuators
    np.testing.assert_array_equal(rows.high, [0.5, 1.0])
    assert rows.state_names[0] == "v[qvel.x <= 2]" and rows.low_names[1].startswith("actuator")


# --------------------------------------------------------------------------- configuration errors

BAD = [
    (
        {"v": {"kind": "state_bounds", "dims": ["qvel.z"], "upper": 1.0}},
        r"'v': unknown state name 'qvel.z'; valid names: \['qpos.x', 'qvel.x', 'qvel.y'\]",
    ),
    (
        {"l": {"kind": "linear", "dims": ["speed"], "A": [[1.0]], "b": [1.0]}},
        r"'l': unknown state name 'speed'",
    ),
    (
        {
            "l": {
                "kind": "linear",
                "over": "both",
                "dims": ["qvel.x"],
                "A": [[1.0, 1.0]],
                "b": [1.0],
            }
        },
        r"'l': `A` has shape \(1, 2\), expected \[M, 3\]",
    ),
    (
        {"l": {"kind": "linear", "A": [[1.0, 0.0, 0.0]], "b": [1.0, 2.0]}},
        r"'l': `b` has 2 values, expected 1",
    ),
    (
        {"box": {"kind": "action_box", "low": [-1.0, -1.0, -1.0], "high": 1.0}},
        r"'box': `low` has 3 values, expected 2",
    ),
    (
        {"p": {"kind": "action_polytope", "A": [[1.0, 0.0, 0.0]], "b": [1.0]}},
        r"'p': `A` has shape \(1, 3\), expected \[M, 2\]",
    ),
    (
        {
            "v": {
                "kind": "state_bounds",
                "dims": ["qvel.x", "qvel.y"],
                "lower": [0.0, 2.0],
                "upper": [1.0, 1.0],
            }
        },
        r"'v': contradictory bounds on 'qvel.y': lower 2.0 > upper 1.0",
    ),
    (
        {"box": {"kind": "action_box", "low": [0.0, 1.0], "high": [1.0, 0.5]}},
        r"'box': contradictory bounds on a1: low 1.0 > high 0.5",
    ),
    (
        {"p": {"kind": "action_polytope", "A": [[1.0, 0.0], [-1.0, 0.0]], "b": [-1.0, -1.0]}},
        r"'p': empty polytope: no action satisfies A a <= b",
    ),
    (
        {"l": {"kind": "linear", "dims": ["qvel.x"], "A": [[1.0], [-1.0]], "b": [0.0, -0.5]}},
        r"'l': empty polytope: no state satisfies A x <= b",
    ),
    ({"x": {"kind": "barrier"}}, r"'x': unknown kind 'barrier'; valid kinds: \['learned', "),
    ({"c": {"kind": "learned"}}, r"'c': kind 'learned' needs a classifier, and none was given"),
    (
        {"v": {"kind": "state_bounds", "dims": ["qvel.x"], "uper": 1.0}},
        r"'v': unknown field\(s\) \['uper'\] for kind 'state_bounds'",
    ),
    ({"v": {"kind": "state_bounds", "dims": ["qvel.x"]}}, r"'v': give `lower`, `upper` or both"),
    ({"box": {"kind": "action_box"}}, r"'box': no `low`/`high` given and no actuator range"),
    (
        {"p": {"kind": "action_polytope", "A": [[1.0, 1.0]], "b": [math.nan]}},
        r"'p': `b` contains NaN",
    ),
    (
        {
            "box": {"kind": "action_box", "low": -1.0, "high": 1.0},
            "p": {"kind": "action_polytope", "A": [[1.0, 1.0]], "b": [-3.0]},
        },
        r"the action constraints \['box', 'p'\] together admit no action",
    ),
    (
        {
            "a": {"kind": "action_box", "low": 0.5, "high": 1.0},
            "b": {"kind": "action_box", "low": -1.0, "high": 0.0},
        },
        r"no action satisfies both a\[a0 >= 0.5\] and b\[a0 <= 0\]",
    ),
]


@pytest.mark.parametrize(("entries", "message"), BAD)
def test_bad_configuration_names_entry_and_problem(entries, message):
    with pytest.raises(ConfigError, match=message):
        make(entries)


def test_more_bad_configurations():
    with pytest.raises(ConfigError, match=r"entries \['v'\] are defined more than once"):
        make([{"name": "v", "kind": "action_box", "low": -1.0, "high": 1.0}] * 2)
    with pytest.raises(ConfigError, match=r"'c': give `alpha` .* not both"):
        make({"c": {"kind": "learned", "alpha": 0.1, "threshold": 0.3}}, FakeClassifier())
    with pytest.raises(ConfigError, match=r"'c': alpha 1.5 is outside \(0, 1\)"):
        make({"c": {"kind": "learned", "alpha": 1.5}}, FakeClassifier())
    with pytest.raises(ConfigError, match=r"'c': pessimism -1.0 must be >= 0"):
        make({"c": {"kind": "learned", "pessimism": -1.0}}, FakeClassifier())
    with pytest.raises(
        ConfigError, match=r"'c': unknown field\(s\) \['kappa'\] for kind 'learned'"
    ):
        make({"c": {"kind": "learned", "kappa": 1.0}}, FakeClassifier())
    with pytest.raises(ConfigError, match=r"'c': unknown state name 'qvel.q'"):
        make({"c": {"kind": "learned", "inputs": ["qvel.x", "qvel.q"]}}, FakeClassifier())
    with pytest.raises(ConfigError, match=r"'c': `inputs` must list at least one state name"):
        make({"c": {"kind": "learned", "inputs": "qvel.x"}}, FakeClassifier())
    assert make({"c": {"kind": "learned", "inputs": ["qvel.x"]}}, FakeClassifier()).learned
    with pytest.raises(ConfigError, match=r"'c': object lacks predict"):
        make({"c": {"kind": "learned"}}, classifier=object())
    with pytest.raises(ConfigError, match=r"entry #0 needs a mapping with a `name`"):
        make([{"kind": "action_box"}])
    with pytest.raises(ConfigError, match=r"'x' has a different name 'y'"):
        make({"x": {"name": "y", "kind": "action_box", "low": 0.0, "high": 1.0}})


# --------------------------------------------------------------------------- shipped configs


@pytest.mark.parametrize(
    "task_name", ["inverted_pendulum", "reacher_keepout", "half_cheetah_safe", "hopper_safe"]
)
def test_every_task_set_builds_against_its_task(task_name):
    task = get_task(task_name)
    entries = OmegaConf.to_container(OmegaConf.load(CONFIGS / "constraints" / f"{task_name}.yaml"))
    cs = constraint_set(
        entries["entries"],
        layout=task.layout,
        action_dim=task.action_dim,
        classifier=FakeClassifier(0.5),
        action_bounds=task.action_bounds,
    )
    kinds = {type(e).__name__ for e in cs.entries}
    assert {"LearnedEntry", "StateBoundsEntry", "ActionBoxEntry"} <= kinds
    H = 3
    states = torch.zeros(2, H + 1, task.state_dim)
    ev = cs.evaluate(states, torch.zeros(2, H, task.action_dim))
    assert ev.p_unacceptable.shape == (2, H) and not (ev.p_unacceptable > 0.5).any()


def test_half_cheetah_speed_bound_blocks_the_hidden_speed_limit():
    task = get_task("half_cheetah_safe")
    entries = OmegaConf.to_container(OmegaConf.load(CONFIGS / "constraints/half_cheetah_safe.yaml"))
    cs = constraint_set(
        entries["entries"],
        layout=task.layout,
        action_dim=6,
        classifier=FakeClassifier(0.5),
        action_bounds=task.action_bounds,
    )
    s = torch.zeros(2, 2, 18)
    s[0, 1, task.layout.index("qvel.rootx")] = 3.2
    s[1, 1, task.layout.index("qvel.rootx")] = 3.3
    ev = cs.evaluate(s, torch.zeros(2, 1, 6))
    assert ev.violations["speed"].flatten().tolist() == [0.0, 1.0]
    assert task.unacceptable(s[:, 1].numpy()).tolist() == [False, True]


def test_hydra_group_selection_override_add_and_remove():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base=None, config_dir=str(CONFIGS)):
        cfg = compose(
            overrides=[
                "+constraints=half_cheetah_safe",
                "constraints.entries.speed.upper=[3.0]",
                "+constraints.entries.slow={kind:state_bounds,dims:[qvel.rootz],upper:1.0}",
                "~constraints.entries.unacceptable",
            ]
        )
        none = compose(overrides=["+constraints=none"])
    task = get_task("half_cheetah_safe")
    entries = OmegaConf.to_container(cfg.constraints.entries)
    cs = constraint_set(entries, layout=task.layout, action_dim=6, action_bounds=task.action_bounds)
    assert cs.names == ("speed", "box", "slow")
    assert cs.entries[0].upper.tolist() == [3.0]
    empty = constraint_set(
        OmegaConf.to_container(none.constraints.entries), layout=task.layout, action_dim=6
    )
    assert len(empty) == 0


def test_learned_entry_rejects_exactly_what_the_real_classifier_flags(torch_gen):
    from constraints.classifier import ConstraintClassifier

    task = get_task("half_cheetah_safe")
    clf = ConstraintClassifier(task.state_dim, input_mask=task.layout.input_mask, seed=0)
    entries = OmegaConf.to_container(OmegaConf.load(CONFIGS / "constraints/half_cheetah_safe.yaml"))
    cs = constraint_set(
        entries["entries"], layout=task.layout, action_dim=6, classifier=clf,
        action_bounds=task.action_bounds,
    )  # fmt: skip
    states = torch.randn(2, 64, task.state_dim, generator=torch_gen) * 3.0  # [2, 64, S]
    with pytest.raises(RuntimeError, match="not calibrated"):
        cs.evaluate(states[0])
    labels = torch.ones(64, dtype=torch.bool)  # untrained scores: any labels calibrate
    clf.calibrate(states[0], labels, alpha=cs.learned[0].alpha)
    ev = cs.evaluate(states[1])
    assert torch.equal(ev.violations["unacceptable"] > 0.5, clf.flags(states[1]))
    # the calibration states themselves: the k-th smallest score is a tie, rejected
    ev = cs.evaluate(states[0])
    assert torch.equal(ev.violations["unacceptable"] > 0.5, clf.flags(states[0]))
    assert int((ev.violations["unacceptable"] > 0.5).sum()) == 64 - clf.calibration.rank + 1


@pytest.mark.parametrize(
    "task_name", ["inverted_pendulum", "reacher_keepout", "half_cheetah_safe", "hopper_safe"]
)
def test_oracle_set_rejects_exactly_the_hidden_unacceptable_states(task_name, rng):
    from mbrm.imagination import HiddenRuleClassifier

    task = get_task(task_name)
    cfg = OmegaConf.to_container(OmegaConf.load(CONFIGS / "constraints/oracle.yaml"))
    cs = constraint_set(
        cfg["entries"], layout=task.layout, action_dim=task.action_dim,
        classifier=HiddenRuleClassifier(task), action_bounds=task.action_bounds,
    )  # fmt: skip
    states = rng.uniform(-4.0, 4.0, size=(2000, 2, task.state_dim))  # [N, H+1, S], H = 1
    hidden = task.unacceptable(states[:, 1])
    assert 0 < hidden.sum() < len(hidden)  # both outcomes occur
    ev = cs.evaluate(torch.as_tensor(states), torch.zeros(2000, 1, task.action_dim))
    assert np.array_equal((ev.p_unacceptable[:, 0] > 0.5).numpy(), hidden)


# --------------------------------------------------------------------------- the parsed spec


def spec_of(entries, layout=LAYOUT, action_dim=2, action_bounds=None) -> ConstraintSpec:
    return ConstraintSpec.from_config(
        entries, layout=layout, action_dim=action_dim, action_bounds=action_bounds
    )


MIXED = {
    "clf": {"kind": "learned", "alpha": 0.1},
    "v": {"kind": "state_bounds", "dims": ["qvel.x"], "upper": 1.0},
    "off": None,
    "box": {"kind": "action_box", "low": -1.0, "high": 1.0},
}


def test_spec_builds_with_and_without_the_learned_entry():
    spec = spec_of(MIXED)
    assert spec.names == ("clf", "v", "box") and [e.name for e in spec.learned] == ["clf"]
    clf = FakeClassifier(0.3)
    full = spec.build(clf, include_learned=True)
    hard = spec.build(None, include_learned=False)
    assert full.names == make(MIXED, clf).names == ("clf", "v", "box")
    assert hard.names == ("v", "box") and hard.learned == ()
    assert full.learned[0].classifier is clf and full.learned[0].alpha == 0.1
    assert full.entries[1] is hard.entries[0]  # parsed once, shared by every set
    x = torch.tensor([[0.5, 0.0, 2.0], [0.1, 0.0, 0.0]])
    assert torch.equal(full.evaluate(x).p_unacceptable, make(MIXED, clf).evaluate(x).p_unacceptable)
    with pytest.raises(ConfigError, match=r"'clf': kind 'learned' needs a classifier"):
        spec.build(None, include_learned=True)
    with pytest.raises(ConfigError, match=r"'clf': object lacks predict"):
        spec.build(object(), include_learned=True)


def test_spec_validates_learned_entries_without_a_classifier():
    with pytest.raises(ConfigError, match=r"'c': alpha 1.5 is outside \(0, 1\)"):
        spec_of({"c": {"kind": "learned", "alpha": 1.5}})
    with pytest.raises(ConfigError, match=r"the action constraints \['box', 'p'\]"):
        spec_of(
            {
                "c": {"kind": "learned"},
                "box": {"kind": "action_box", "low": -1.0, "high": 1.0},
                "p": {"kind": "action_polytope", "A": [[1.0, 1.0]], "b": [-3.0]},
            }
        )


@pytest.mark.parametrize("as_list", [False, True])
def test_hidden_rule_entry_is_added_once_and_only_when_missing(as_list):
    hard = {k: v for k, v in MIXED.items() if k != "clf"}
    entries = [{"name": k, **v} for k, v in hard.items() if v] if as_list else hard
    spec = spec_of(entries)
    oracle = spec.with_hidden_learned_entry()
    assert oracle.names == ("v", "box", "unacceptable (hidden rule)")
    assert oracle.learned == (LearnedEntrySpec("unacceptable (hidden rule)"),)
    assert oracle.with_hidden_learned_entry() is oracle
    assert spec.names == ("v", "box")  # the spec itself is unchanged
    configured = spec_of(MIXED)
    assert configured.with_hidden_learned_entry() is configured
    built = oracle.build(FakeClassifier(0.5), include_learned=True)
    assert built.names == oracle.names and built.entries[:2] == spec.build(None, False).entries
    with pytest.raises(ConfigError, match=r"\['v'\] are defined more than once"):
        spec.with_hidden_learned_entry("v")


@pytest.mark.parametrize("name", ["half_cheetah_safe", "none", "oracle"])
@pytest.mark.parametrize(("oracle_baseline", "calibrated"), [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_spec_composes_the_sets_the_loop_composed_from_raw_entries(
    name, oracle_baseline, calibrated
):
    task = get_task("half_cheetah_safe")
    entries = OmegaConf.to_container(OmegaConf.load(CONFIGS / "constraints" / f"{name}.yaml"))
    entries = entries["entries"]
    spec = ConstraintSpec.from_config(
        entries, layout=task.layout, action_dim=6, action_bounds=task.action_bounds
    )
    if oracle_baseline:
        spec = spec.with_hidden_learned_entry()
    clf = FakeClassifier(0.5)
    new = spec.build(clf, include_learned=bool(calibrated))
    old = constraint_set(
        _old_entries(entries, oracle_baseline, calibrated),
        layout=task.layout,
        action_dim=6,
        classifier=clf,
        action_bounds=task.action_bounds,
    )
    assert new.names == old.names
    assert [type(e) for e in new.entries] == [type(e) for e in old.entries]
    s = torch.randn(3, 5, 18, generator=torch.Generator().manual_seed(0)) * 3.0
    a = torch.randn(3, 4, 6, generator=torch.Generator().manual_seed(1))
    assert torch.equal(new.evaluate(s, a).p_unacceptable, old.evaluate(s, a).p_unacceptable)


def _old_entries(entries, oracle_baseline, calibrated) -> dict:
    """How the training loop edited the raw entries before there was a spec."""
    entries = {k: v for k, v in entries.items() if v is not None}
    if oracle_baseline and "learned" not in [e.get("kind") for e in entries.values()]:
        entries = {**entries, "unacceptable (hidden rule)": {"kind": "learned"}}
    if not calibrated:
        entries = {k: v for k, v in entries.items() if v.get("kind") != "learned"}
    return entries


# --------------------------------------------------------------------------- the shared classifier


def test_learned_alpha_is_shared_by_every_learned_entry():
    assert spec_of({}).learned_alpha() is None
    assert spec_of({"c": {"kind": "learned"}}).learned_alpha() is None
    two = {"c": {"kind": "learned", "alpha": 0.1}, "d": {"kind": "learned", "alpha": 0.1}}
    assert spec_of(two).learned_alpha() == 0.1
    fixed = {"c": {"kind": "learned", "alpha": 0.1}, "d": {"kind": "learned", "threshold": 0.4}}
    assert spec_of(fixed).learned_alpha() == 0.1
    two["d"] = {"kind": "learned", "alpha": 0.2}
    with pytest.raises(
        ConfigError,
        match=r"different alpha \{'c': 0.1, 'd': 0.2\}: one classifier serves them all; "
        r"give them the same alpha or a fixed `threshold`",
    ):
        spec_of(two)


def test_inputs_narrow_the_classifier_mask_to_listed_state_names():
    layout = StateLayout(("qpos.x", "qvel.x", "qvel.y"), nq=1, nv=2, excluded=(0,), dt=0.1)
    everything = spec_of({"c": {"kind": "learned"}}, layout)
    assert everything.learned_inputs() is None
    assert everything.classifier_input_mask().tolist() == [False, True, True]
    assert spec_of({}, layout).classifier_input_mask().tolist() == [False, True, True]
    narrowed = spec_of({"c": {"kind": "learned", "inputs": ["qpos.x", "qvel.y"]}}, layout)
    assert narrowed.learned_inputs() == ("qpos.x", "qvel.y")
    assert narrowed.classifier_input_mask().tolist() == [False, False, True]
    with pytest.raises(ConfigError, match=r"'c': inputs \['qpos.x'\] are all excluded"):
        spec_of({"c": {"kind": "learned", "inputs": ["qpos.x"]}}, layout)
    with pytest.raises(ConfigError, match=r"'c': unknown state name 'qvel.q'; valid names"):
        spec_of({"c": {"kind": "learned", "inputs": ["qvel.q"]}}, layout)
    with pytest.raises(ConfigError, match=r"'c': `inputs` must list at least one state name"):
        spec_of({"c": {"kind": "learned", "inputs": []}}, layout)
    conflict = {
        "c": {"kind": "learned", "inputs": ["qvel.x"]},
        "d": {"kind": "learned", "inputs": ["qvel.y"]},
    }
    with pytest.raises(
        ConfigError,
        match=r"different inputs \{'c': \['qvel.x'\], 'd': \['qvel.y'\]\}.*give them the same inputs",
    ):
        spec_of(conflict, layout)
    conflict["d"] = {"kind": "learned", "inputs": ["qvel.x"]}
    assert spec_of(conflict, layout).classifier_input_mask().tolist() == [False, True, False]
