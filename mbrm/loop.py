"""The online loop: act, model the world, ask, learn what is wanted, repeat.

Leike et al. 2018, Sec. 3.1 and 5.6-5.7 in one iteration (one episode):

1. act in the real environment -- random exploration first (already filtered by
   the configured hard action constraints), then the planning agent, which rejects
   plans whose imagined futures are unacceptable;
2. fit the world model on everything seen (warm start);
3. solicit feedback on real, imagined and synthesised segments;
4. fit the reward ensemble and the side-constraint classifier (calibrated by split
   conformal prediction on held-out labels) on every label so far;
5. record metrics, checkpoint atomically.

The loop is a schedule over parts it is given (:class:`mbrm.parts.RunParts`, built by
:mod:`mbrm.run`). The hidden ``true_reward`` / ``unacceptable`` are read only by the
synthetic teachers and by evaluation (metrics), never by the agent.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.contrib.logging import logging_redirect_tqdm

from constraints.sets import ConstraintSet
from mbrm.agent import Agent
from mbrm.calibration import refit_on_labels
from mbrm.episodes import RandomExplorer, Recorder, run_episode
from mbrm.evaluation import model_metrics, summarise
from mbrm.feedback.store import FeedbackStore
from mbrm.imagination import ModelImagination
from mbrm.loop_state import loop_payload, restore_loop
from mbrm.parts import RunParts
from mbrm.plan_review import ACQUISITION as PLAN_REVIEW
from mbrm.plan_review import ReviewedAgent, reviewed
from mbrm.progress import JobClock, StepProgress, job_progress
from mbrm.replay import ReplayBuffer
from mbrm.rundir import (
    FEEDBACK,
    REPLAY,
    SUMMARY,
    MetricsLog,
    load_run_checkpoint,
    save_run_checkpoint,
    write_summary,
)
from mbrm.solicit import RoundReport, solicit_round
from mbrm.synthesis import synthesise_round
from mbrm.video import film
from mbrm.workers import run_evaluation

Transitions = tuple[np.ndarray, np.ndarray, np.ndarray]  # s [N, S], a [N, A], s' [N, S]
log = logging.getLogger(__name__)


class Loop:
    """One training run in ``run_dir``; :meth:`resume` continues from its checkpoint."""

    def __init__(self, parts: RunParts, run_dir: str | Path) -> None:
        self.clock = JobClock()  # the job's wall time, over its sessions
        self.parts = parts
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.task, self.seed, self.settings = parts.task, parts.seed, parts.settings
        self.world_model, self.planner = parts.world_model, parts.planner
        self.reward_model, self.classifier = parts.reward_model, parts.classifier
        self.length = parts.episode_length
        s = self.settings
        self.store = FeedbackStore(
            self.run_dir / FEEDBACK, state_dim=self.task.state_dim, action_dim=self.task.action_dim
        )
        self.replay = ReplayBuffer(
            self.task.state_dim,
            self.task.action_dim,
            capacity=(s.iterations + s.explore_episodes) * self.length + 1,
        )
        self.torch_gen = torch.Generator().manual_seed(self.seed)
        self.rng = np.random.default_rng(self.seed)
        self.classifier_ready = False  # calibrated and not flagging most acceptable states
        self.iteration = 0  # next iteration to run
        self.episodes = 0
        self.metrics = MetricsLog(self.run_dir)
        self.imagined: list = []  # segments from planning, consumed by each round
        self._bar: StepProgress | None = None  # the bar of a running :meth:`run`
        self.constraint_set = self._constraint_set()

    # ------------------------------------------------------------------ the parts in use

    def _constraint_set(self) -> ConstraintSet:
        return self.parts.constraint_set(self.classifier_ready)

    def _imagination(self, constraint_set: ConstraintSet) -> ModelImagination:
        return self.parts.imagination(constraint_set, self.torch_gen)

    def agent(self, *, reference: bool = False) -> Agent:
        """The planning agent on the current models, or the reference agent."""
        cset = self.parts.reference_constraint_set() if reference else self.constraint_set
        return self.parts.agent(cset, self.torch_gen, reference=reference)

    def _reviewed(self, agent: Agent) -> Agent | ReviewedAgent:
        """The acting agent, its plans reviewed where ``experiment.plan_review`` says."""
        return reviewed(
            agent,
            self.settings,
            self.parts.plan_reviewer,
            self.store,
            loop_round=self.iteration,
            refit=self.refit_classifier,
        )

    def _episode(self, policy: Agent | ReviewedAgent | None, *, seed: int, progress: StepProgress):
        recorder = Recorder(
            self.replay,
            self.episodes,
            self.imagined,
            self.settings.imagined_every,
            self.settings.solicit.segment_length,
        )
        out = run_episode(
            self.task,
            policy
            if policy is not None
            else RandomExplorer(self.task, self.constraint_set, self.rng),
            seed=seed,
            length=self.length,
            generator=self.torch_gen,
            recorder=recorder,
            reward_model=self.reward_model,
            on_step=progress.step,
            reset_on_unacceptable=self.settings.reset_on_unacceptable,
        )
        if isinstance(policy, ReviewedAgent):
            out.update(policy.counts.as_metrics())
        progress.episode_ended(out["steps"], self.length)
        self.episodes += 1
        return out

    # ------------------------------------------------------------------ the run

    def run(self) -> dict[str, Any]:
        """Iterate the schedule to its end, then evaluate (Sec. 3.1, 5.6-5.7); one bar
        over every environment step of both (a resumed run's starts at the steps done)."""
        s = self.settings
        total = s.explore_episodes + s.iterations
        log.info(
            "%s seed %d: %d exploration + %d acting episodes of %d steps, from iteration %d",
            self.task.name,
            self.seed,
            s.explore_episodes,
            s.iterations,
            self.length,
            self.iteration,
        )
        self._bar = job_progress(
            s, self.iteration, self.length, len(self.replay), self._desc(), self.parts.progress
        )
        try:
            with logging_redirect_tqdm():
                self._iterate(self._bar, total)
                return self.final_evaluation()
        finally:
            self._bar.close()
            self._bar = None

    def _desc(self, doing: str = "") -> str:
        return f"{self.task.name} seed {self.seed}{doing}"

    def _iterate(self, bar: StepProgress, total: int) -> None:
        s = self.settings
        while self.iteration < total:
            t0 = time.perf_counter()
            exploring = self.iteration < s.explore_episodes
            # 1. act
            ep = self._episode(
                None if exploring else self._reviewed(self.agent()),
                seed=self.seed * 100_003 + self.iteration,
                progress=bar,
            )
            data = self.replay.arrays()  # one copy a round, read by every step below
            fit: dict[str, Any] = {"act_seconds": time.perf_counter() - t0}
            if not exploring or self.iteration == s.explore_episodes - 1:
                # 2. model the world (synthesis imagines with it)
                t1 = time.perf_counter()
                fit.update(self.fit_world_model(data))
                # 3. ask; a run killed after asking but before its checkpoint has this
                # round's queries stored already: asking again would store them twice
                t2 = time.perf_counter()
                asked = self.store.count_queries(
                    loop_round=self.iteration, excluding_acquisition=PLAN_REVIEW
                )  # the episode's plan reviews are not this round's queries
                if asked == 0:
                    self.solicit(data)
                # 4. learn what is wanted
                t3 = time.perf_counter()
                fit.update(self.fit_feedback_models())
                fit.update(
                    world_model_seconds=t2 - t1,
                    solicit_seconds=t3 - t2,
                    learn_seconds=time.perf_counter() - t3,
                )
            # 5. record
            self.record(ep, fit, data, t0, exploring)
            row = self.metrics.rows[-1]
            log.info(
                "iteration %d/%d %s: return %.2f, unacceptable steps %d, labels %d, %.1f s",
                row["iteration"] + 1,
                total,
                row["phase"],
                ep["true_return"],
                ep["unacceptable_steps"],
                row["labels"],
                row["seconds"],
            )
            bar.show(
                R=f"{ep['true_return']:.1f}", unacc=ep["unacceptable_steps"], labels=row["labels"]
            )

    def fit_world_model(self, data: Transitions) -> dict[str, Any]:
        """Refit the world model on every real transition (warm start)."""
        rep = self.world_model.fit(
            *data, generator=self.torch_gen, max_epochs=self.settings.world_model_epochs
        )
        return {
            "wm_holdout_mse": rep.holdout_mse[-1] if rep.holdout_mse else float("nan"),
            "wm_epochs": rep.epochs,
        }

    def solicit(self, data: Transitions) -> RoundReport:
        """One round of queries: imagined, real and synthesised candidates (Sec. 5.2, 5.7)."""
        s = self.settings.solicit
        # models that can score candidates yet: a fitted reward model, a calibrated classifier
        rm = self.reward_model
        rm = rm if rm is not None and rm.fitted else None
        clf = self.classifier
        clf = clf if clf is not None and clf.threshold is not None else None
        plans = list(self.imagined)  # the agent's own plans: candidates, near_miss starts
        self.imagined.clear()
        pool = plans + self.replay.sample_segments(s.real_candidates, s.segment_length, self.rng)
        judged, _ = self.store.unacceptable_states()  # once a round, before asking
        replay_states = data[0] if len(self.replay) else None
        if replay_states is not None:
            pool += synthesise_round(
                s,
                self.planner,
                self._imagination(self.constraint_set),
                replay_states,
                judged,
                task=self.task,
                reward_model=rm,
                classifier=clf,
                feature_classifier=self.classifier,
                learning=self.reward_model is not None or self.classifier is not None,
                rng=self.rng,
                generator=self.torch_gen,
                plans=plans,
            )
        report = solicit_round(
            store=self.store,
            pool=pool,
            settings=s,
            round_index=self.iteration,
            rng=self.rng,
            reward_model=rm,
            classifier=clf,
            gatherer=self.parts.gatherer,
            labelled_states=judged,
            replay_states=replay_states,
        )
        self.parts.gatherer.after_round(self.store, report.pending)
        return report

    def fit_feedback_models(self) -> dict[str, Any]:
        """Refit the reward ensemble and the classifier on every label so far."""
        s = self.settings
        out: dict[str, Any] = {}
        frozen = s.frozen_reward_after is not None and self.iteration > s.frozen_reward_after
        pairs = [p for p in self.store.preference_pairs() if p[2].target is not None]
        if self.reward_model is not None and pairs and not frozen:
            self.reward_model.fit(pairs, generator=self.torch_gen, epochs=s.reward_epochs)
        if self.classifier is not None:
            out.update(self._fit_classifier())
        self.constraint_set = self._constraint_set()
        return out

    def _fit_classifier(self) -> dict[str, Any]:
        """Fit and calibrate the classifier on every unacceptable label so far."""
        ready, figures = refit_on_labels(
            self.classifier,
            self.store,
            self.settings,
            rng=np.random.default_rng([self.seed, self.iteration, 1]),
            generator=self.torch_gen,
        )
        if ready is not None:
            self.classifier_ready = ready
        return figures

    def refit_classifier(self) -> Agent:
        """After a rejected plan review: the classifier refitted on every label (the
        review's marks included) and the acting agent on it."""
        if self.classifier is not None:
            self._fit_classifier()
        self.constraint_set = self._constraint_set()
        return self.agent()

    def _labels(self) -> int:
        return sum(self.store.label_counts("kind").values())

    def record(
        self, ep: dict[str, Any], fit: dict[str, Any], data: Transitions, t0: float, exploring: bool
    ) -> None:
        """The iteration's metrics row, then the checkpoint."""
        row = {
            "iteration": self.iteration,
            "phase": "explore" if exploring else "act",
            "env_steps": len(self.replay),
            **{k: v for k, v in ep.items() if k != "blocked"},
            "blocked": sum(ep["blocked"].values()),
            **{f"blocked_by_{k}": v for k, v in ep["blocked"].items()},
            **{f"labels_{k}": v for k, v in self.store.label_counts("source").items()},
            "labels": self._labels(),
            **fit,
            **model_metrics(
                self.task,
                self.replay,
                data,
                reward_model=self.reward_model,
                classifier=self.classifier,
                segment_length=self.settings.solicit.segment_length,
                # its own generator: switching metrics on or off must not change the run
                rng=np.random.default_rng([self.seed, self.iteration, 2]),
            ),
            "seconds": time.perf_counter() - t0,
        }
        self.iteration += 1
        self.metrics.append(row)
        self.save()

    def final_evaluation(self, video_episodes: int | None = None) -> dict[str, Any]:
        """Evaluation episodes of the final agent, a random policy and the reference agent
        (hidden reward and rule, same world model), on the same environment seeds, in
        ``experiment.eval_workers`` processes; the learned agent's first ``video_episodes``
        (default: ``experiment.video_episodes``) are filmed. Called alone (``mbrm eval``),
        on a bar of its own, it keeps the job's ``wall_seconds`` (:class:`JobClock`)."""
        job = self._bar is not None
        s = self.settings
        with self._bar or job_progress(s, None, self.length, 0, "", self.parts.progress) as bar:
            bar.describe(self._desc(" evaluate"))
            filmed = s.video_episodes if video_episodes is None else video_episodes
            rows, captures = run_evaluation(self.parts, self.classifier_ready, filmed, bar)
        summary = {
            "task": self.task.name,
            "seed": self.seed,
            "env_steps": len(self.replay),
            "labels": self.store.label_counts("kind"),
            "labels_by_source": self.store.label_counts("source"),
            **summarise(rows, self.metrics.rows),
            **self.clock.summary_figure(self.run_dir / SUMMARY, running=job),
        }
        write_summary(self.run_dir, summary)
        film(self.task, captures, self.run_dir, strict=video_episodes is not None)
        return summary

    # ------------------------------------------------------------------ persistence

    def save(self) -> None:
        """Replay first, then the checkpoint that says how much of it counts."""
        self.replay.save(self.run_dir / REPLAY)
        save_run_checkpoint(self.run_dir, loop_payload(self), self.parts.signature)

    def resume(self) -> None:
        """Continue from ``run_dir``'s checkpoint; labels are in the store already."""
        restore_loop(self, load_run_checkpoint(self.run_dir, self.parts.signature))
        self.constraint_set = self._constraint_set()
