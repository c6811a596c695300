"""The online loop: act, model the world, ask, learn what is wanted, repeat.

Leike et al. 2018, Sec. 3.1 and 5.6-5.7 in one iteration (one episode):

1. act in the real environment -- random exploration first (already filtered by
   the configured hard action constraints), then the planning agent, which rejects
   plans whose imagined futures are unacceptable;
2. fit the world model on everything seen (warm start);
3. solicit feedback on real, imagined and synthesised segments;
4. fit the reward ensemble and the side-constraint classifier (calibrated by split
   conformal prediction on held-out labels) on every label so far;
5. log metrics, checkpoint atomically.

The hidden ``true_reward`` / ``unacceptable`` are read only by the synthetic
teachers and by evaluation (metrics), never by the agent.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from constraints.qp_filter import QPFilter
from constraints.sets import ConstraintSet
from mbrm.agent import Agent
from mbrm.checkpoint import load_checkpoint, save_checkpoint
from mbrm.feedback.store import FeedbackStore
from mbrm.imagination import ModelImagination, OracleClassifier, learned_reward, oracle_reward
from mbrm.nn import StateFeatures
from mbrm.replay import ReplayBuffer
from mbrm.solicit import (
    SolicitSettings,
    imagined_segment,
    novelty_reference,
    solicit_round,
    synthesise,
)
from mbrm.tasks import Task
from mbrm.world_model import WorldModel


@dataclass
class LoopSettings:
    """Schedule and budgets of a run (see ``configs/experiment``)."""

    iterations: int = 12  # acting episodes after exploration
    explore_episodes: int = 4  # random-action episodes first
    episode_length: int | None = None  # None: the task's default
    eval_episodes: int = 5  # evaluation episodes at the end
    particles: int = 10
    propagation: str = "ts1"
    dtype: str = "float32"
    world_model_epochs: int = 40
    reward_epochs: int = 100
    classifier_epochs: int = 100
    calibration_fraction: float = 0.3  # of unacceptable labels held out for the threshold
    alpha: float = 0.05  # target miss rate of the calibrated classifier
    imagined_every: int = 5  # keep the planner's best imagined future every k steps (0: never)
    # stop updating the reward model after this iteration (iterations count exploration episodes)
    frozen_reward_after: int | None = None
    # the learned entry stays off while it flags more held-out acceptable states than this
    max_false_positive_rate: float = 0.3
    # reject: plans with an unacceptable imagined step are rejected; penalty: the baseline that
    # subtracts constraint_penalty * p_unacceptable from each step's reward instead
    constraint_mode: str = "reject"
    constraint_penalty: float = 10.0
    human_wait_seconds: float = (
        0.0  # human mode: wait this long for the queue to be labelled (0: go on)
    )
    solicit: SolicitSettings = field(default_factory=SolicitSettings)

    def __post_init__(self) -> None:
        if self.constraint_mode not in ("reject", "penalty"):
            raise ValueError(
                f"experiment.constraint_mode must be 'reject' or 'penalty', got {self.constraint_mode!r}"
            )
        if self.constraint_penalty < 0:
            raise ValueError(
                f"experiment.constraint_penalty must be >= 0, got {self.constraint_penalty}"
            )
        first_fit = self.explore_episodes - 1  # the reward model is first fitted here
        if self.frozen_reward_after is not None and self.frozen_reward_after < max(first_fit, 0):
            raise ValueError(
                f"experiment.frozen_reward_after={self.frozen_reward_after} freezes the reward model "
                f"before its first fit (iteration {first_fit}, the last of "
                f"{self.explore_episodes} exploration episodes; iterations count them): it would "
                "never be trained"
            )
        if self.imagined_every < 0:
            raise ValueError(
                f"experiment.imagined_every must be >= 0 (0: no imagined candidates), got {self.imagined_every}"
            )


class Loop:
    """One training run in ``run_dir``; ``resume=True`` continues from its checkpoint."""

    def __init__(
        self,
        *,
        run_dir: str | Path,
        task: Task,
        seed: int,
        world_model: WorldModel,
        planner: Any,
        constraint_entries: dict | list,
        reward_model: Any | None,  # None: oracle reward
        classifier: Any | None,
        oracle_constraints: bool,
        preference_teacher: Any | None,  # None: human mode, queries wait in the store
        unacceptable_teacher: Any | None,
        settings: LoopSettings,
        qp_filter: dict[str, Any] | None = None,  # QPFilter keyword arguments; None: no filter
        progress: bool = True,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.task, self.seed, self.settings = task, seed, settings
        self.world_model, self.planner = world_model, planner
        self.reward_model, self.classifier = reward_model, classifier
        self.oracle_constraints = oracle_constraints
        self.constraint_entries = constraint_entries
        self.preference_teacher, self.unacceptable_teacher = (
            preference_teacher,
            unacceptable_teacher,
        )
        self.progress = progress
        self.qp_filter = qp_filter
        self.length = settings.episode_length or task.episode_length
        self.store = FeedbackStore(
            self.run_dir / "feedback.sqlite", state_dim=task.state_dim, action_dim=task.action_dim
        )
        self.replay = ReplayBuffer(
            task.state_dim,
            task.action_dim,
            capacity=(settings.iterations + settings.explore_episodes) * self.length + 1,
        )
        self.torch_gen = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.classifier_ready = False  # calibrated and not flagging most acceptable states
        self.iteration = 0  # next iteration to run
        self.episodes = 0
        self.metrics: list[dict[str, Any]] = []
        self.imagined: list = []  # segments from planning, consumed by each round
        # Every entry is checked now, the learned one too (it joins the set only once
        # the classifier is calibrated): a bad entry stops the run before any work.
        self._build_constraints(keep_learned=True)
        self.constraint_set = self._build_constraints()
        self._tb = None  # TensorBoard writer, opened with the first metrics row

    # ------------------------------------------------------------------ components

    def _signature(self) -> dict[str, Any]:
        wm = self.world_model
        return {
            "task": self.task.name,
            "state_dim": self.task.state_dim,
            "action_dim": self.task.action_dim,
            "world_model": [
                wm.ensemble_size,
                wm.num_elites,
                wm.net.linears[0].out_features,
                len(wm.net.linears),
            ],
            "oracle_reward": self.reward_model is None,
            "oracle_constraints": self.oracle_constraints,
        }

    def _build_constraints(
        self, oracle_baseline: bool = False, keep_learned: bool = False
    ) -> ConstraintSet:
        """The configured set; the learned entry is left out until the classifier is calibrated.

        ``oracle_baseline``: the set of the oracle that scores are normalised against. It
        always rejects the task's unacceptable states (the hidden rule), also in runs
        configured without a learned entry (``constraints=none``), so that no arm of a
        comparison is normalised against an oracle that may enter them (the arm's hard
        entries still come with it). ``keep_learned``: the
        learned entry stays in before calibration too (a start-up check of every entry;
        such a set is not for planning).
        """
        entries = self.constraint_entries
        if isinstance(entries, dict):
            entries = {k: v for k, v in entries.items() if v is not None}
        if oracle_baseline:
            kinds = [
                e.get("kind") for e in (entries.values() if isinstance(entries, dict) else entries)
            ]
            if "learned" not in kinds:
                hidden = {"kind": "learned"}
                if isinstance(entries, dict):
                    entries = {**entries, "unacceptable (hidden rule)": hidden}
                else:
                    entries = [*entries, hidden]
        clf = OracleClassifier(self.task) if self.oracle_constraints else self.classifier
        calibrated = clf is not None and getattr(clf, "threshold", None) is not None
        calibrated = calibrated and (self.oracle_constraints or self.classifier_ready)
        if not calibrated and not keep_learned:
            if isinstance(entries, dict):
                entries = {k: v for k, v in entries.items() if v.get("kind") != "learned"}
            else:
                entries = [e for e in entries if e.get("kind") != "learned"]
        return ConstraintSet.from_config(
            entries,
            layout=self.task.layout,
            action_dim=self.task.action_dim,
            classifier=clf,
            action_bounds=self.task.action_bounds,
        )

    def _imagination(self) -> ModelImagination:
        """The current models as the planners' imagination (oracle functions in oracle mode)."""
        reward = (
            oracle_reward(self.task)
            if self.reward_model is None
            else learned_reward(self.reward_model, self.settings.dtype)
        )
        # the oracle baseline (reward_model None) always rejects
        penalise = self.settings.constraint_mode == "penalty" and self.reward_model is not None
        return ModelImagination(
            self.world_model,
            reward,
            self.constraint_set,
            self.settings.particles,
            self.torch_gen,
            self.settings.propagation,
            self.settings.dtype,
            penalty=self.settings.constraint_penalty if penalise else None,
        )

    def agent(self) -> Agent:
        imagination = self._imagination()
        qp = None
        if self.qp_filter is not None:
            # linearised through the world model's mean prediction (Dalal et al. 2018, Sec. 4)
            qp = QPFilter(self.constraint_set, self.world_model.mean_next_state, **self.qp_filter)
        return Agent(self.planner, imagination, qp_filter=qp)

    # ------------------------------------------------------------------ acting

    def _random_action(self) -> np.ndarray:
        """Uniform in the action box, resampled until the hard action constraints hold."""
        low, high = self.task.action_bounds
        action_entries = [e for e in self.constraint_set.entries if not e.uses_states]
        for _ in range(1000):
            a = self.rng.uniform(low, high)
            act = torch.as_tensor(a[None, None])  # [1, 1, A]: one step
            if all(float(e.evaluate(None, act).max()) <= 0.5 for e in action_entries):
                return a
        raise RuntimeError(
            "no random action satisfies the configured action constraints after 1000 tries"
        )

    def run_episode(self, agent: Agent | None, *, seed: int, record: bool = True) -> dict[str, Any]:
        """One episode; ``agent=None`` acts randomly. Evaluation figures use the hidden task functions."""
        env = self.task.make_env(seed)
        s, _ = env.reset(seed=seed)
        states, actions = [s], []
        stats = {"blocked": {}, "no_safe_plan": 0, "plan_seconds": [], "predicted": []}
        if agent is not None:
            agent.reset()
        for t in range(self.length):
            if agent is None:
                a = self._random_action()
            else:
                a, info = agent.act(s, self.torch_gen)
                plan = info.plan
                stats["no_safe_plan"] += int(info.no_safe_plan)
                stats["plan_seconds"].append(info.seconds)
                for name, n in plan.rejected_by.items():
                    stats["blocked"][name] = stats["blocked"].get(name, 0) + n
                every = self.settings.imagined_every
                if record and every > 0 and t % every == 0:
                    self.imagined.append(
                        imagined_segment(
                            plan.top_states, plan.top_actions, self.settings.solicit.segment_length
                        )
                    )
            s2, _, terminated, truncated, _ = env.step(a)
            if record:
                self.replay.add(s, a, s2, self.episodes, t)
            states.append(s2)
            actions.append(a)
            s = s2
            if terminated or truncated:
                break
        env.close()
        S, A = np.array(states), np.array(actions)
        out = {
            "true_return": float(self.task.true_reward(S[:-1], A, S[1:]).sum()),
            "unacceptable_steps": int(self.task.unacceptable(S[1:]).sum()),
            "steps": len(A),
            "no_safe_plan": stats["no_safe_plan"],
            "blocked": stats["blocked"],
            "plan_seconds": float(np.median(stats["plan_seconds"]))
            if stats["plan_seconds"]
            else 0.0,
        }
        if self.reward_model is not None and self.reward_model.fitted:
            mean, _ = self.reward_model.predict(
                torch.as_tensor(S[:-1], dtype=torch.float32),
                torch.as_tensor(A, dtype=torch.float32),
                torch.as_tensor(S[1:], dtype=torch.float32),
            )
            out["predicted_return"] = float(mean.sum())
        if record:
            self.episodes += 1
        return out

    # ------------------------------------------------------------------ learning

    def fit_world_model(self) -> dict[str, Any]:
        """Refit the world model on every real transition (warm start)."""
        rep = self.world_model.fit(
            *self.replay.arrays(),
            generator=self.torch_gen,
            max_epochs=self.settings.world_model_epochs,
        )
        return {
            "wm_holdout_mse": rep.holdout_mse[-1] if rep.holdout_mse else float("nan"),
            "wm_epochs": rep.epochs,
        }

    def fit_feedback_models(self) -> dict[str, Any]:
        """Refit the reward ensemble and the classifier on every label so far."""
        s = self.settings
        out: dict[str, Any] = {}
        frozen = s.frozen_reward_after is not None and self.iteration > s.frozen_reward_after
        pairs = [p for p in self.store.preference_pairs() if p[2].target is not None]
        if self.reward_model is not None and pairs and not frozen:
            self.reward_model.fit(pairs, generator=self.torch_gen, epochs=s.reward_epochs)
        if self.classifier is not None:
            split = self._calibration_split()
            out["classifier_positives"] = split[-1]
            if split[0] is not None:
                (s_tr, f_tr), (s_cal, f_cal), _ = split
                self.classifier.fit(
                    s_tr, f_tr, generator=self.torch_gen, epochs=s.classifier_epochs
                )
                out["threshold"] = self.classifier.calibrate(s_cal, f_cal, alpha=s.alpha)
                # A threshold low enough to keep recall >= 1 - alpha may flag most acceptable
                # states too (a classifier that has seen few unacceptable ones); such a
                # constraint would reject every plan, so it waits for more labels.
                ev = self.classifier.evaluate(s_cal, f_cal)
                fpr = ev["fp"] / max(ev["fp"] + ev["tn"], 1)
                out["classifier_calibration_fpr"] = fpr
                self.classifier_ready = fpr <= s.max_false_positive_rate
        self.constraint_set = self._build_constraints()
        return out

    def _calibration_split(self):
        """Training and calibration sets for the classifier, split by segment.

        Split conformal calibration needs held-out states exchangeable with new ones
        (Angelopoulos & Bates 2021, Sec. 1.1): exact duplicates (a state judged twice)
        are merged first -- flagged if ever flagged -- and a segment's correlated states
        go wholly to one side. The calibration side gets at least ceil(1/alpha - 1)
        unacceptable states (and ``calibration_fraction`` of them); until the labels
        allow that plus 4 unacceptable training states, returns (None, None, n_pos).
        """
        s = self.settings
        states, flags, segs = self.store.unacceptable_states(with_segments=True)
        if len(states) == 0:
            return None, None, 0
        uniq, first, inv = np.unique(states, axis=0, return_index=True, return_inverse=True)
        inv = inv.reshape(-1)
        uflags = np.zeros(len(uniq), dtype=bool)
        np.logical_or.at(uflags, inv, flags)
        useg = segs[first]
        n_pos = int(uflags.sum())
        need = max(math.ceil(1 / s.alpha - 1), int(n_pos * s.calibration_fraction))
        rng = np.random.default_rng([self.seed, self.iteration, 1])
        cal_segments: list[int] = []
        cal_pos = 0
        order = rng.permutation(np.unique(useg))
        for seg in order:
            if cal_pos >= need and len(cal_segments) >= s.calibration_fraction * len(order):
                break
            cal_segments.append(int(seg))
            cal_pos += int(uflags[useg == seg].sum())
        cal = np.isin(useg, cal_segments)
        if cal_pos < need or int(uflags[~cal].sum()) < 4 or int((~uflags[~cal]).sum()) < 8:
            return None, None, n_pos
        return (uniq[~cal], uflags[~cal]), (uniq[cal], uflags[cal]), n_pos

    def evaluate_models(self) -> dict[str, Any]:
        """Held-out figures of the learned models on the agent's own data (evaluation only)."""
        from mbrm.feedback.teachers import PreferenceTeacher
        from mbrm.reward_model import preference_accuracy, reward_spearman

        out: dict[str, Any] = {}
        # its own generator: switching metrics on or off must not change the run
        rng = np.random.default_rng([self.seed, self.iteration, 2])
        if self.reward_model is not None and self.reward_model.fitted and len(self.replay) > 50:
            segs = self.replay.sample_segments(200, self.settings.solicit.segment_length, rng)
            oracle = PreferenceTeacher(self.task, seed=int(rng.integers(1 << 31)))
            pairs = [
                (a, b, oracle.answer(a, b)) for a, b in zip(segs[::2], segs[1::2], strict=False)
            ]
            out["reward_accuracy"] = preference_accuracy(self.reward_model, pairs)
            s, a, s2 = self.replay.arrays()
            pick = rng.choice(len(s), min(len(s), 2000), replace=False)
            out["reward_spearman"] = reward_spearman(
                self.reward_model, self.task, s[pick], a[pick], s2[pick]
            )
        if self.classifier is not None and self.classifier.threshold is not None:
            s, _, _ = self.replay.arrays()
            flags = self.task.unacceptable(s)
            if flags.any():
                ev = self.classifier.evaluate(s, flags)
                out["classifier_recall"] = ev["recall"]
                out["classifier_fnr"] = ev["false_negative_rate"]
        return out

    # ------------------------------------------------------------------ the run

    def run(self) -> dict[str, Any]:
        s = self.settings
        total = s.explore_episodes + s.iterations
        bar = tqdm(
            total=total,
            initial=self.iteration,
            desc=f"{self.task.name} seed {self.seed}",
            disable=not self.progress,
        )
        while self.iteration < total:
            t0 = time.perf_counter()
            exploring = self.iteration < s.explore_episodes
            agent = None if exploring else self.agent()
            ep = self.run_episode(agent, seed=self.seed * 100_003 + self.iteration)
            fit: dict[str, Any] = {"act_seconds": time.perf_counter() - t0}
            if not exploring or self.iteration == s.explore_episodes - 1:
                t1 = time.perf_counter()
                fit.update(self.fit_world_model())  # synthesis imagines with it
                t2 = time.perf_counter()
                # a run killed after asking but before its checkpoint has this round's
                # queries stored already: asking again would store them twice
                if self.store.count_queries(loop_round=self.iteration) == 0:
                    self.solicit()
                t3 = time.perf_counter()
                fit.update(self.fit_feedback_models())
                fit.update(
                    world_model_seconds=t2 - t1,
                    solicit_seconds=t3 - t2,
                    learn_seconds=time.perf_counter() - t3,
                )
            row = {
                "iteration": self.iteration,
                "phase": "explore" if exploring else "act",
                "env_steps": len(self.replay),
                **{k: v for k, v in ep.items() if k != "blocked"},
                "blocked": sum(ep["blocked"].values()),
                **{f"blocked_by_{k}": v for k, v in ep["blocked"].items()},
                **{f"labels_{k}": v for k, v in self.store.label_counts("source").items()},
                "labels": sum(self.store.label_counts("kind").values()),
                **fit,
                **self.evaluate_models(),
                "seconds": time.perf_counter() - t0,
            }
            self.metrics.append(row)
            self.iteration += 1
            self._write_metrics()
            self.save()
            bar.set_postfix(
                R=f"{ep['true_return']:.1f}", unacc=ep["unacceptable_steps"], labels=row["labels"]
            )
            bar.update(1)
        bar.close()
        return self.final_evaluation()

    def solicit(self):
        s = self.settings.solicit
        # models that can score candidates yet: a fitted reward model, a calibrated classifier
        reward_model = (
            self.reward_model
            if self.reward_model is not None and self.reward_model.fitted
            else None
        )
        classifier = (
            self.classifier
            if self.classifier is not None and self.classifier.threshold is not None
            else None
        )
        pool = list(self.imagined)
        self.imagined.clear()
        pool += self.replay.sample_segments(s.real_candidates, s.segment_length, self.rng)
        counts = {o: n for o, n in s.synthesis_counts().items() if n > 0}
        if reward_model is None:  # uncertainty and min_reward score with the reward model
            counts.pop("uncertainty", None)
            counts.pop("min_reward", None)
        if self.reward_model is None and self.classifier is None:  # oracle mode: nothing to learn
            counts = {}
        if counts and len(self.replay):
            imagination = self._imagination()
            replay_states = self.replay.arrays()[0]  # a copy: take it once
            features, reference = None, None
            if "novelty" in counts:
                features = self._novelty_features()
                judged, _ = self.store.unacceptable_states()
                reference = novelty_reference(
                    judged if len(judged) else replay_states, features, rng=self.rng
                )
            for objective, n in counts.items():
                starts = replay_states[self.rng.choice(len(replay_states), n)]
                pool += synthesise(
                    self.planner,
                    imagination,
                    starts,
                    objective=objective,
                    reward_model=reward_model,
                    classifier=classifier,
                    realism=s.realism,
                    length=s.segment_length,
                    generator=self.torch_gen,
                    features=features,
                    reference=reference,
                )
        report = solicit_round(
            store=self.store,
            pool=pool,
            settings=s,
            round_index=self.iteration,
            rng=self.rng,
            reward_model=reward_model,
            classifier=classifier,
            preference_teacher=self.preference_teacher,
            unacceptable_teacher=self.unacceptable_teacher,
            replay=self.replay,
        )
        if report.pending and self.settings.human_wait_seconds > 0:
            self._wait_for_labels(self.settings.human_wait_seconds)
        return report

    def _novelty_features(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """Features the novelty objective measures distance in: the classifier's inputs."""
        if self.classifier is not None:
            return self.classifier.net.state_features
        layout = self.task.layout
        return StateFeatures(layout.input_mask, layout.periodic_mask, layout.derived)

    def _wait_for_labels(self, seconds: float) -> None:
        """Human mode: pause until the queue is labelled or ``seconds`` pass, then go on."""
        deadline = time.monotonic() + seconds
        bar = tqdm(desc="waiting for labels (mbrm label RUN_DIR)", disable=not self.progress)
        while time.monotonic() < deadline:
            pending = self.store.count_queries("pending")
            bar.set_postfix(pending=pending)
            if pending == 0:
                break
            time.sleep(2.0)
        bar.close()

    def final_evaluation(self) -> dict[str, Any]:
        """Evaluation episodes with the final agent, a random policy and (same world model) the oracle."""
        s = self.settings
        seeds = [10_000_000 + self.seed * 1000 + i for i in range(s.eval_episodes)]
        agent = self.agent()
        learned = [
            self.run_episode(agent, seed=k, record=False)
            for k in tqdm(seeds, desc="evaluate", disable=not self.progress)
        ]
        random = [self.run_episode(None, seed=k, record=False) for k in seeds]
        oracle_loop_reward, oracle_clf = self.reward_model, self.oracle_constraints
        self.reward_model, self.oracle_constraints = None, True
        self.constraint_set = self._build_constraints(oracle_baseline=True)
        oracle = [
            self.run_episode(self.agent(), seed=k, record=False)
            for k in tqdm(seeds, desc="oracle", disable=not self.progress)
        ]
        self.reward_model, self.oracle_constraints = oracle_loop_reward, oracle_clf
        self.constraint_set = self._build_constraints()

        def mean(rows, k):
            return float(np.mean([r[k] for r in rows]))

        R, R_rand, R_orc = (
            mean(learned, "true_return"),
            mean(random, "true_return"),
            mean(oracle, "true_return"),
        )
        summary = {
            "task": self.task.name,
            "seed": self.seed,
            "env_steps": len(self.replay),
            "labels": self.store.label_counts("kind"),
            "labels_by_source": self.store.label_counts("source"),
            "eval_return": R,
            "random_return": R_rand,
            "oracle_return": R_orc,
            "normalised_score": (R - R_rand) / (R_orc - R_rand)
            if R_orc != R_rand
            else float("nan"),
            "eval_unacceptable_steps": int(sum(r["unacceptable_steps"] for r in learned)),
            "oracle_unacceptable_steps": int(sum(r["unacceptable_steps"] for r in oracle)),
            "random_unacceptable_steps": int(sum(r["unacceptable_steps"] for r in random)),
            "train_unacceptable_steps": int(sum(m["unacceptable_steps"] for m in self.metrics)),
            "plan_seconds_per_step": mean(learned, "plan_seconds"),
        }
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    # ------------------------------------------------------------------ persistence

    def _write_metrics(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if self._tb is None:
            self._tb = SummaryWriter(str(self.run_dir / "tb"))
        row = self.metrics[-1]
        for k, v in row.items():
            if isinstance(v, int | float) and not isinstance(v, bool) and k != "iteration":
                self._tb.add_scalar(k, v, row["iteration"])
        self._tb.flush()
        keys: list[str] = []
        for row in self.metrics:
            keys += [k for k in row if k not in keys]
        tmp = self.run_dir / "metrics.csv.tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(self.metrics)
        tmp.replace(self.run_dir / "metrics.csv")

    def save(self) -> None:
        self.replay.save(self.run_dir / "replay.npz")
        payload = {
            "world_model": self.world_model.state_dict(),
            "reward_model": self.reward_model.state_dict() if self.reward_model is not None else {},
            "classifier": self.classifier.state_dict() if self.classifier is not None else {},
            "loop": {
                "replay_size": len(self.replay),
                "classifier_ready": self.classifier_ready,
                "iteration": self.iteration,
                "episodes": self.episodes,
                "metrics": json.dumps(self.metrics),
            },
            "rng": {
                "teachers": json.dumps(
                    [
                        t.rng_state() if t is not None else None
                        for t in (self.preference_teacher, self.unacceptable_teacher)
                    ]
                ),
                "torch": self.torch_gen.get_state(),
                "numpy": json.dumps(self.rng.bit_generator.state),
            },
            "settings": json.dumps(asdict(self.settings)),
        }
        save_checkpoint(self.run_dir / "checkpoint.pt", payload, self._signature())

    def resume(self) -> None:
        """Continue from ``run_dir``'s checkpoint; labels are in the store already."""
        ckpt = load_checkpoint(self.run_dir / "checkpoint.pt", self._signature())
        self.world_model.load_state_dict(ckpt["world_model"])
        if self.reward_model is not None and ckpt["reward_model"]:
            self.reward_model.load_state_dict(ckpt["reward_model"])
        if self.classifier is not None and ckpt["classifier"]:
            self.classifier.load_state_dict(ckpt["classifier"])
        self.iteration = int(ckpt["loop"]["iteration"])
        self.episodes = int(ckpt["loop"]["episodes"])
        self.classifier_ready = bool(ckpt["loop"]["classifier_ready"])
        self.metrics = json.loads(ckpt["loop"]["metrics"])
        self.torch_gen.set_state(ckpt["rng"]["torch"])
        self.rng.bit_generator.state = json.loads(ckpt["rng"]["numpy"])
        teachers = (self.preference_teacher, self.unacceptable_teacher)
        for teacher, state in zip(teachers, json.loads(ckpt["rng"]["teachers"]), strict=True):
            if teacher is not None and state is not None:
                teacher.set_rng_state(state)
        self.replay = ReplayBuffer.load(self.run_dir / "replay.npz")
        # replay.npz is written just before the checkpoint: a run killed in between
        # has transitions the checkpoint does not know about yet
        self.replay.truncate(int(ckpt["loop"]["replay_size"]))
        self.constraint_set = self._build_constraints()
