"""The closed loop end to end, with tiny models: every task x planner, blindness,
kill and resume, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mbrm.run import build_loop, compose_config
from mbrm.tasks import TASKS, get_task

TINY = [
    "progress=false",
    "world_model.ensemble_size=2",
    "world_model.elites=2",
    "world_model.hidden=16",
    "world_model.layers=1",
    "reward_model.hidden=16",
    "reward_model.layers=1",
    "reward_model.ensemble_size=2",
    "classifier.hidden=16",
    "classifier.layers=1",
    "classifier.ensemble_size=2",
    "task.episode_length=12",
    "experiment.iterations=1",
    "experiment.explore_episodes=1",
    "experiment.eval_episodes=1",
    "experiment.video_episodes=0",  # filming is tested in tests/test_video_report.py
    "experiment.particles=2",
    "experiment.world_model_epochs=2",
    "experiment.reward_epochs=2",
    "experiment.classifier_epochs=2",
    "experiment.imagined_every=3",
    "experiment.solicit.segment_length=4",
    "experiment.solicit.real_candidates=6",
    "experiment.solicit.synthesised=2",
    "experiment.solicit.unacceptable=2",
    "experiment.solicit.preferences={disagreement: 2, novelty: 1, min_reward: 1}",
]
PLANNER = {
    "cem": [
        "planner.population=12",
        "planner.elites=3",
        "planner.iterations=2",
        "planner.horizon=4",
    ],
    "icem": [
        "planner.population=12",
        "planner.elites=3",
        "planner.iterations=2",
        "planner.horizon=4",
    ],
    "mcts": ["planner.simulations=16", "planner.batch_size=8", "planner.horizon=4"],
}


def tiny_cfg(task: str = "reacher_keepout", planner: str = "cem", *extra: str):
    return compose_config([f"task={task}", f"planner={planner}", *TINY, *PLANNER[planner], *extra])


def run(cfg, run_dir: Path) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    from omegaconf import OmegaConf

    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    return build_loop(cfg, run_dir).run()


@pytest.mark.parametrize("planner", sorted(PLANNER))
@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_and_planner_runs_end_to_end(task, planner, tmp_path):
    summary = run(tiny_cfg(task, planner), tmp_path)
    assert summary["env_steps"] == 2 * 12
    assert np.isfinite(summary["eval_return"]) and np.isfinite(summary["oracle_return"])
    assert sum(summary["labels"].values()) > 0
    assert (tmp_path / "metrics.csv").exists() and (tmp_path / "checkpoint.pt").exists()
    assert json.loads((tmp_path / "summary.json").read_text())["task"] == task


def test_agent_is_blind_to_the_hidden_objective(tmp_path, monkeypatch):
    """true_reward / unacceptable raise inside agent.act and planning; the loop still runs."""
    cfg = tiny_cfg("reacher_keepout", "cem", "experiment.iterations=2")
    loop = build_loop(cfg, tmp_path)
    from mbrm import agent as agent_mod

    task = loop.task
    original_act = agent_mod.Agent.act
    calls = {"act": 0}

    def forbidden(*_a, **_k):
        raise AssertionError("the agent read the hidden objective")

    def guarded_act(self, state, generator):
        calls["act"] += 1
        with monkeypatch.context() as m:
            m.setattr(type(task), "true_reward", forbidden)
            m.setattr(type(task), "unacceptable", forbidden)
            m.setattr(type(task), "reward_fn", property(forbidden), raising=False)
            return original_act(self, state, generator)

    monkeypatch.setattr(agent_mod.Agent, "act", guarded_act)
    # the final evaluation includes the oracle agent, which may read them by design
    monkeypatch.setattr(type(loop), "final_evaluation", lambda self: {})
    loop.run()
    assert calls["act"] >= 2 * 12


def test_kill_and_resume_keeps_every_label(tmp_path):
    cfg = tiny_cfg("reacher_keepout", "cem", "experiment.iterations=3")
    loop = build_loop(cfg, tmp_path)

    class Killed(Exception):
        pass

    original = type(loop).solicit
    state = {"rounds": 0}

    def solicit_then_die(self, data):
        out = original(self, data)
        state["rounds"] += 1
        if state["rounds"] == 3:  # after labels are stored, before the checkpoint
            raise Killed
        return out

    type(loop).solicit = solicit_then_die
    try:
        with pytest.raises(Killed):
            loop.run()
    finally:
        type(loop).solicit = original
    labels_before = sum(loop.store.label_counts("kind").values())
    assert labels_before > 0
    from omegaconf import OmegaConf

    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    resumed = build_loop(cfg, tmp_path)
    resumed.resume()
    assert resumed.iteration == 2
    assert sum(resumed.store.label_counts("kind").values()) == labels_before
    summary = resumed.run()
    assert summary["env_steps"] == 4 * 12
    # the interrupted round (2) is not asked twice: up to it, per-round counts match an
    # uninterrupted run (later rounds draw from a generator that took another path)
    whole = build_loop(cfg, tmp_path / "whole")
    whole.run()
    assert resumed.store.count_labels(loop_round=3) > 0
    for r in range(3):
        assert resumed.store.count_labels(loop_round=r) == whole.store.count_labels(loop_round=r), r


def test_same_seed_same_run(tmp_path):
    a = run(tiny_cfg("inverted_pendulum", "cem"), tmp_path / "a")
    b = run(tiny_cfg("inverted_pendulum", "cem"), tmp_path / "b")
    run(tiny_cfg("inverted_pendulum", "cem", "seed=1"), tmp_path / "c")
    for key in ("eval_return", "oracle_return", "labels", "env_steps"):
        assert a[key] == b[key], key
    ra = np.load(tmp_path / "a" / "replay.npz")["states"]
    rb = np.load(tmp_path / "b" / "replay.npz")["states"]
    np.testing.assert_array_equal(ra, rb)
    assert not np.array_equal(ra, np.load(tmp_path / "c" / "replay.npz")["states"])


def test_checkpoint_of_another_task_is_refused(tmp_path):
    run(tiny_cfg("inverted_pendulum", "cem"), tmp_path)
    other = build_loop(tiny_cfg("hopper_safe", "cem"), tmp_path / "other")
    (tmp_path / "other").mkdir(exist_ok=True)
    import shutil

    shutil.copy(tmp_path / "checkpoint.pt", tmp_path / "other" / "checkpoint.pt")
    from mbrm.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="another task or model size"):
        other.resume()


def test_resume_drops_transitions_written_after_the_checkpoint(tmp_path):
    cfg = tiny_cfg("inverted_pendulum", "cem")
    run(cfg, tmp_path)
    loop = build_loop(cfg, tmp_path)
    loop.resume()
    n = len(loop.replay)
    # a run killed between writing replay.npz and checkpoint.pt
    s = loop.replay.states[0]
    loop.replay.add(s, np.zeros(loop.task.action_dim), s, 99, 0)
    loop.replay.save(tmp_path / "replay.npz")
    again = build_loop(cfg, tmp_path)
    again.resume()
    assert len(again.replay) == n


def test_qp_filter_runs_inside_the_loop(tmp_path):
    summary = run(tiny_cfg("half_cheetah_safe", "cem", "qp_filter.enabled=true"), tmp_path)
    assert np.isfinite(summary["eval_return"])


def test_planner_rejection_level_must_stay_at_the_calibrated_cut(tmp_path):
    with pytest.raises(ValueError, match=r"reject_above=0\.3: with a learned constraint entry"):
        build_loop(tiny_cfg("reacher_keepout", "cem", "planner.reject_above=0.3"), tmp_path)


def test_calibration_split_keeps_segments_whole_and_merges_duplicates(tmp_path, rng):
    from mbrm.calibration import calibration_split
    from mbrm.feedback.segments import FeedbackKind, Labeller, Segment, UnacceptableLabel

    loop = build_loop(tiny_cfg("inverted_pendulum", "cem"), tmp_path)
    S, A = loop.task.state_dim, loop.task.action_dim
    teacher = Labeller.teacher("test")
    segments = []
    for i in range(40):
        seg = Segment(rng.normal(size=(6, S)), rng.normal(size=(5, A)))
        flags = np.zeros(6, bool)
        flags[3:] = i % 2 == 0  # half the segments end unacceptable
        seg_id = loop.store.add_segment(seg)
        loop.store.add_labelled_query(
            FeedbackKind.UNACCEPTABLE, [seg_id], UnacceptableLabel(flags), teacher
        )
        segments.append((seg, flags))
    # the same segment judged again, once with a missed flag: merged, flagged if ever flagged
    seg, flags = segments[0]
    again = loop.store.add_segment(seg)
    loop.store.add_labelled_query(
        FeedbackKind.UNACCEPTABLE, [again], UnacceptableLabel(np.zeros(6, bool)), teacher
    )

    states, flags, segs = loop.store.unacceptable_states(with_segments=True)
    split = calibration_split(states, flags, segs, alpha=0.05, fraction=0.3, rng=rng)
    (s_tr, f_tr), (s_cal, f_cal), n_pos = split.train, split.calibration, split.positives
    assert n_pos == 20 * 3
    assert len(s_tr) + len(s_cal) == 40 * 6  # duplicates merged
    rows_tr = {r.tobytes() for r in s_tr}
    for seg, _ in segments:  # every segment wholly on one side
        sides = {s.tobytes() in rows_tr for s in seg.states}
        assert len(sides) == 1
    assert f_cal.sum() >= 19  # ceil(1/alpha - 1) held-out unacceptable states for alpha=0.05
    dup = np.flatnonzero((np.concatenate([s_tr, s_cal]) == segments[0][0].states[3]).all(1))
    assert len(dup) == 1 and np.concatenate([f_tr, f_cal])[dup[0]]


def test_learned_entry_waits_until_the_classifier_is_ready(tmp_path, rng, torch_gen):
    loop = build_loop(tiny_cfg("inverted_pendulum", "cem"), tmp_path)
    states = rng.normal(size=(400, loop.task.state_dim))
    flags = states[:, 1] > 0.0
    loop.classifier.fit(states[:300], flags[:300], generator=torch_gen, epochs=2)
    loop.classifier.calibrate(states[300:], flags[300:], alpha=0.05)
    assert "unacceptable" not in loop.parts.constraint_set(classifier_ready=False).names
    assert "unacceptable" in loop.parts.constraint_set(classifier_ready=True).names


def test_penalty_mode_subtracts_instead_of_rejecting(tmp_path):
    """constraint_mode=penalty: the imagination reports nothing unacceptable and lowers the
    reward by penalty * p_unacceptable; the oracle baseline still rejects."""
    import torch

    cfg = tiny_cfg("reacher_keepout", "cem", "experiment.constraint_mode=penalty")
    loop = build_loop(cfg, tmp_path)
    loop.run()
    cset, gen = loop.constraint_set, loop.torch_gen
    penalising = loop.parts.imagination(cset, gen)
    assert penalising.penalty == 10.0
    rejecting = loop.parts.imagination(cset, gen)
    rejecting.penalty = None  # the same models, rejecting
    state = torch.as_tensor(loop.replay.arrays()[0][0], dtype=torch.float32)
    actions = torch.rand(6, 4, loop.task.action_dim, generator=torch.Generator().manual_seed(0))
    actions = actions * 2 - 1
    for im in (rejecting, penalising):
        im.particles = 1
        im.propagation = "expectation"  # deterministic: both see the same imagined states
    a, b = rejecting(state, actions), penalising(state, actions)
    torch.testing.assert_close(a.states, b.states)
    assert not b.p_unacceptable.any() and b.violations == {}
    torch.testing.assert_close(b.reward_mean, a.reward_mean - 10.0 * a.p_unacceptable)
    # the reference agent always rejects
    assert loop.parts.imagination(cset, gen, reference=True).penalty is None


def test_real_only_queries_and_bad_schedule_options(tmp_path):
    cfg = tiny_cfg(
        "reacher_keepout", "cem", "experiment.imagined_every=0", "experiment.solicit.synthesised=0"
    )
    loop = build_loop(cfg, tmp_path / "real")
    loop.run()
    sources = loop.store.label_counts("source")
    assert set(sources) == {"real"}, sources
    with pytest.raises(ValueError, match="constraint_mode"):
        build_loop(tiny_cfg("reacher_keepout", "cem", "experiment.constraint_mode=soft"), tmp_path)
    with pytest.raises(ValueError, match="imagined_every"):
        build_loop(tiny_cfg("reacher_keepout", "cem", "experiment.imagined_every=-1"), tmp_path)


def test_demo_takes_hydra_flags_after_its_own_overrides(capsys):
    """`mbrm demo --cfg job seed=3`: the user's flags go before the demo's overrides."""
    from mbrm.cli import main

    main(["demo", "seed=3", "--cfg", "job"])
    out = capsys.readouterr().out
    assert "seed: 3" in out and "population: 48" in out  # planner=cem_fast from the demo


def test_oracle_baseline_rejects_the_hidden_rule_without_a_learned_entry(tmp_path):
    loop = build_loop(tiny_cfg("reacher_keepout", "cem", "constraints=none"), tmp_path)
    assert len(loop.parts.constraint_set(classifier_ready=True).entries) == 0
    names = [e.name for e in loop.parts.reference_constraint_set().entries]
    assert names == ["unacceptable (hidden rule)"]


def test_freezing_before_the_first_reward_fit_is_refused(tmp_path):
    with pytest.raises(ValueError, match="frozen_reward_after must be an integer >= 0"):
        build_loop(
            tiny_cfg("reacher_keepout", "cem", "experiment.frozen_reward_after=-1"), tmp_path
        )
    cfg = tiny_cfg(
        "reacher_keepout",
        "cem",
        "experiment.explore_episodes=4",
        "experiment.frozen_reward_after=2",
    )
    with pytest.raises(ValueError, match=r"never be trained.*iteration 3|iteration 3.*never"):
        build_loop(cfg, tmp_path)


def test_a_bad_learned_entry_stops_the_run_at_start_up(tmp_path):
    """The learned entry joins the set only once calibrated, but it is checked at once."""
    bad = tiny_cfg("reacher_keepout", "cem", "constraints.entries.unacceptable.alpha=2")
    with pytest.raises(ValueError, match=r"'unacceptable'.*alpha 2"):
        build_loop(bad, tmp_path)
    both = tiny_cfg("reacher_keepout", "cem", "+constraints.entries.unacceptable.threshold=0.3")
    with pytest.raises(ValueError, match="not both"):
        build_loop(both, tmp_path)


def test_the_learned_entry_alpha_calibrates_the_classifier(tmp_path):
    cfg = tiny_cfg("reacher_keepout", "cem", "constraints.entries.unacceptable.alpha=0.1")
    assert build_loop(cfg, tmp_path / "a").settings.alpha == 0.1
    # without an alpha of its own, the entry is calibrated for experiment.alpha
    cfg = tiny_cfg(
        "reacher_keepout",
        "cem",
        "~constraints.entries.unacceptable.alpha",
        "experiment.alpha=0.2",
    )
    assert build_loop(cfg, tmp_path / "b").settings.alpha == 0.2
    two = tiny_cfg(
        "reacher_keepout",
        "cem",
        "+constraints.entries.second={kind: learned, alpha: 0.2}",
    )
    with pytest.raises(ValueError, match="different alpha"):
        build_loop(two, tmp_path / "c")


def test_the_learned_entry_inputs_narrow_what_the_classifier_reads(tmp_path):
    """`inputs` lists the state dimensions the unacceptable rule may depend on."""
    task = get_task("reacher_keepout")
    joints = ["qpos.joint0", "qpos.joint1"]
    # reacher_keepout's set already says the disc depends on the arm's pose alone
    feats = build_loop(tiny_cfg("reacher_keepout", "cem"), tmp_path / "a").classifier
    feats = feats.net.state_features
    read = sorted({*feats.plain_idx.tolist(), *feats.periodic_idx.tolist()})
    assert read == sorted(task.layout.index(n) for n in joints)
    # derived features that read the target are dropped with it
    assert feats.derived_names == ["fingertip.x", "fingertip.y"]
    # the reward model reads every derived feature: the fingertip-to-target vector too
    reward_feats = build_loop(tiny_cfg("reacher_keepout", "cem"), tmp_path / "r").reward_model
    assert reward_feats.net.state_features.derived_names == [
        "fingertip.x",
        "fingertip.y",
        "fingertip_to_target.x",
        "fingertip_to_target.y",
    ]
    everything = build_loop(
        tiny_cfg("reacher_keepout", "cem", "~constraints.entries.unacceptable.inputs"),
        tmp_path / "b",
    ).classifier
    full = everything.net.state_features
    assert len(full.plain_idx) + len(full.periodic_idx) == int(task.layout.input_mask.sum())
    assert len(full.derived_names) == 4
    typo = tiny_cfg(
        "reacher_keepout", "cem", "constraints.entries.unacceptable.inputs=[qpos.joint9]"
    )
    with pytest.raises(ValueError, match=r"'qpos\.joint9'"):
        build_loop(typo, tmp_path / "c")
    two = tiny_cfg(
        "reacher_keepout",
        "cem",
        "constraints.entries.unacceptable.inputs=[qpos.joint0]",
        "+constraints.entries.second={kind: learned, inputs: [qpos.joint1]}",
    )
    with pytest.raises(ValueError, match="different inputs"):
        build_loop(two, tmp_path / "d")
