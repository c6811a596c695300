"""Reward-model ensemble learned from pairwise preferences over segments.

E members each predict a per-step reward ``r(s, a)``; a segment's predicted
return is the sum over its steps. Members are trained with the Bradley-Terry
model of Christiano et al. 2017 (Sec. 2.2.3),

    P(a > b) = exp(sum_t r(a_t)) / (exp(sum_t r(a_t)) + exp(sum_t r(b_t)))
             = sigmoid(R_a - R_b),

by cross-entropy against the teacher's answer (1 left, 0 right, 0.5 equal;
"cannot tell" is excluded). Each member sees its own bootstrap resample of the
pairs, so their disagreement estimates epistemic uncertainty (Leike et al.
2018, Sec. 5.6). After every fit each member's output is standardised on the
training steps (Christiano et al. 2017, Sec. 2.2.3: "normalized to have zero
mean and constant standard deviation"), which keeps the reward scale the
planner sees stable across refits.

Devices: initialised on the CPU from the seed, then moved to ``device``; a fit moves
its padded pairs there once; predictions move their inputs there and answer there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mbrm.ensemble_training import EnsembleTrainer
from mbrm.feedback.segments import Segment
from mbrm.nn import (
    INFERENCE_CHUNK,
    DerivedFeature,
    config_mismatch,
    inference_copy,
    member_mean_std,
    resolve_dtype,
    row_slices,
)
from mbrm.preference_pairs import (
    PairTensors,
    PreferencePair,
    bradley_terry_logits,
    check_segment,
    preference_loss,
    usable_pairs,
)
from mbrm.reward_metrics import preference_accuracy, reward_spearman
from mbrm.reward_net import RewardNet, input_mask_or_all

__all__ = [
    "PreferencePair",
    "RewardEnsemble",
    "RewardFitReport",
    "preference_accuracy",
    "reward_spearman",
]


@dataclass(frozen=True)
class RewardFitReport:
    """What one call to :meth:`RewardEnsemble.fit` did.

    n_pairs:         pairs used (strict preferences plus ties)
    n_ties:          pairs answered "equal" (target 0.5)
    n_excluded:      pairs answered "cannot tell" (not used)
    epochs:          passes over each member's bootstrap sample
    loss_history:    mean Bradley-Terry cross-entropy per epoch, over members
    train_accuracy:  ensemble-mean agreement with strict training preferences
    out_scale:       per-member standard deviation of the raw reward on the training steps
    """

    n_pairs: int
    n_ties: int
    n_excluded: int
    epochs: int
    loss_history: list[float]
    train_accuracy: float
    out_scale: list[float]


class RewardEnsemble:
    """An ensemble of E reward models trained on preferences (see module doc).

    ``state="current"`` learns ``r(s_t, a_t)``; ``state="next"`` learns ``r(a_t, s_{t+1})``,
    the form of every gymnasium MuJoCo reward (distance or velocity measured after the
    step), so a segment's return is a sum over exactly the states the teacher judged.
    Network inputs are the state dimensions where ``input_mask`` is True
    (``task.layout.input_mask``: unbounded root positions are left out) and the action.
    ``weight_decay`` is AdamW's decoupled decay (shrink per step ``lr * weight_decay``):
    noise-free preferences are separable, so some decay keeps the Bradley-Terry logits
    bounded; too much underfits (on the reacher, decay 1.0 learned the distance term
    too weakly against the control cost: Spearman 0.77 vs 0.88 on late states).
    ``lapse`` is the chance that an answer is uniformly random (:func:`preference_loss`).
    """

    def __init__(
        self,
        state_dim: int,
        action_dim: int,
        *,
        input_mask: np.ndarray | None = None,
        periodic_mask: np.ndarray | None = None,
        derived: Sequence[DerivedFeature] = (),
        ensemble_size: int = 5,
        hidden: int = 64,
        layers: int = 2,
        activation: str = "silu",
        lr: float = 3e-3,
        weight_decay: float = 0.01,
        state: str = "next",
        lapse: float = 0.0,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        if state not in ("current", "next"):
            raise ValueError(
                f"state must be 'current' (r(s_t, a_t)) or 'next' (r(a_t, s_t+1)), got {state!r}"
            )
        if state_dim < 1 or action_dim < 1:
            raise ValueError(
                f"need positive sizes, got state_dim={state_dim}, action_dim={action_dim}"
            )
        if ensemble_size < 1:
            raise ValueError(f"ensemble_size must be >= 1, got {ensemble_size}")
        if not lr > 0 or not 0.0 <= lapse < 1.0:
            raise ValueError(f"need lr > 0 and lapse in [0, 1), got lr={lr}, lapse={lapse}")
        self.state_dim = state_dim
        self.action_dim = action_dim
        self.input_mask = input_mask_or_all(input_mask, state_dim)
        self.state = state
        self.ensemble_size = ensemble_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.lapse = float(lapse)
        self._config = {
            "state_dim": state_dim,
            "action_dim": action_dim,
            "input_mask": self.input_mask.tolist(),
            "periodic_mask": None
            if periodic_mask is None
            else np.asarray(periodic_mask, bool).tolist(),
            "ensemble_size": ensemble_size,
            "hidden": hidden,
            "layers": layers,
            "activation": activation,
            "state": state,
        }
        init_gen = torch.Generator(device="cpu").manual_seed(int(seed))
        self.net = RewardNet(
            state_dim,
            action_dim,
            self.input_mask,
            periodic_mask,
            derived,
            ensemble_size,
            hidden,
            layers,
            activation,
            init_gen,
        ).to(device)
        self.device = torch.device(device)
        if self.net.state_features.derived:  # absent from older checkpoints' configs
            self._config["derived"] = self.net.state_features.derived_names
        # Adam's moments carry over from one fit to the next (and into checkpoints).
        self.trainer = EnsembleTrainer(
            self.net.mlp.parameters(), lr=lr, weight_decay=weight_decay, keep_optimizer=True
        )
        self.fitted = False
        self._inference: dict[torch.dtype, RewardNet] = {}

    # ------------------------------------------------------------------ data

    def _check_segment(self, seg: Segment) -> None:
        check_segment(seg, self.state_dim, self.action_dim)

    def _pad(self, segments: Sequence[Segment]) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw inputs [N, T, S+A] (zero padded) and validity mask [N, T] (bool)."""
        t_max = max(seg.length for seg in segments)
        cpu = torch.device("cpu")
        x = torch.zeros(len(segments), t_max, self.state_dim + self.action_dim, device=cpu)
        mask = torch.zeros(len(segments), t_max, dtype=torch.bool, device=cpu)
        for i, seg in enumerate(segments):
            self._check_segment(seg)
            # one row per step t < T: (s_t or s_{t+1}, a_t)
            step = np.concatenate([self._step_states(seg.states), seg.actions], axis=1)
            x[i, : seg.length] = torch.as_tensor(step, dtype=torch.float32, device=cpu)
            mask[i, : seg.length] = True
        return x.to(self.device), mask.to(self.device)  # padded on the CPU, moved at once

    def _step_states(self, states: np.ndarray) -> np.ndarray:
        """The state each step's reward reads, from a segment's states [T+1, S] -> [T, S]."""
        return states[1:] if self.state == "next" else states[:-1]

    def _features(self, raw: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[N, T, S+A] -> normalised network inputs [N, T, in], padding left at zero."""
        N, T, _ = raw.shape
        flat = raw.reshape(N * T, -1)
        feats = self.net.features(flat[:, : self.state_dim], flat[:, self.state_dim :])
        return feats.reshape(N, T, -1) * mask[..., None]

    # ------------------------------------------------------------------ training

    def fit(
        self,
        pairs: Sequence[PreferencePair],
        *,
        generator: torch.Generator,
        epochs: int = 60,
        batch_size: int = 32,
    ) -> RewardFitReport:
        """Fit every member on its bootstrap resample of ``pairs`` (Christiano et al. 2017, 2.2.3).

        Refit on all feedback so far, as the reward model of Leike et al. 2018
        (Sec. 5.2). Training continues from the current weights and Adam moments
        (warm start) with the input normaliser refitted on the new data; the output
        scale is recomputed at the end. Pairs answered ``CANNOT_TELL`` are
        excluded, ``EQUAL`` is a 0.5 target.
        """
        if epochs < 1 or batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
        used = usable_pairs(pairs)
        n_excluded, targets = len(pairs) - len(used), [p[2].target for p in used]
        self._inference.clear()

        left_raw, left_mask = self._pad([p[0] for p in used])
        right_raw, right_mask = self._pad([p[1] for p in used])
        valid = torch.cat([left_raw[left_mask], right_raw[right_mask]])  # [rows, S+A]
        all_inputs = torch.cat(
            [self.net.state_features(valid[:, : self.state_dim]), valid[:, self.state_dim :]], 1
        )
        self.net.normalizer.fit(all_inputs)
        data = PairTensors(
            left=self._features(left_raw, left_mask),
            right=self._features(right_raw, right_mask),
            left_mask=left_mask,
            right_mask=right_mask,
            target=torch.tensor(targets, dtype=torch.float32, device=self.device),
        )

        def bradley_terry(idx: torch.Tensor) -> torch.Tensor:  # idx [E, b]
            logits = bradley_terry_logits(self.net.raw, data, idx)
            return preference_loss(logits, data.target[idx], self.lapse)

        E, N = self.ensemble_size, len(used)
        history = self.trainer.fit(
            self.net,
            bradley_terry,
            rows=N,
            ensemble_size=E,
            generator=generator,
            epochs=epochs,
            batch_size=batch_size,
            loss_average="rows",
            nonfinite_loss_name="Bradley-Terry loss",
        ).epoch_loss

        with torch.no_grad():
            # Output normalisation on the (unique) training steps, per member.
            x = self.net.normalizer(all_inputs)
            raw = self.net.raw(x)  # [E, rows]
            self.net.out_shift.copy_(raw.mean(1))
            self.net.out_scale.copy_(raw.std(1, unbiased=False).clamp_min(1e-6))
            every = torch.arange(N, device=self.device).expand(E, N)
            logits = bradley_terry_logits(self.net.raw, data, every).mean(0)  # [N]
        strict = data.target != 0.5
        agree = (logits[strict] > 0) == (data.target[strict] > 0.5)
        self.fitted = True
        return RewardFitReport(
            n_pairs=N,
            n_ties=int((~strict).sum()),
            n_excluded=n_excluded,
            epochs=epochs,
            loss_history=history,
            train_accuracy=float(agree.float().mean()) if strict.any() else float("nan"),
            out_scale=self.net.out_scale.tolist(),
        )

    # ------------------------------------------------------------------ inference

    def _inference_net(self, dtype: str | torch.dtype) -> RewardNet:
        dt = resolve_dtype(dtype)
        if dt not in self._inference:
            self._inference[dt] = inference_copy(self.net, dt)  # type: ignore[assignment]
        return self._inference[dt]

    @torch.no_grad()
    def predict_members(
        self,
        states: np.ndarray | torch.Tensor,
        actions: np.ndarray | torch.Tensor,
        next_states: np.ndarray | torch.Tensor | None = None,
        *,
        dtype: str | torch.dtype = "float32",
    ) -> torch.Tensor:
        """Standardised reward of every member for transitions (s_t, a_t, s_{t+1}).

        states [..., S], actions [..., A], next_states [..., S] -> [E, ...] (on the
        model's device).
        ``next_states`` is required when the model reads ``s_{t+1}`` and may be
        omitted when it reads ``s_t``.
        """
        if self.state == "next":
            if next_states is None:
                raise ValueError(
                    "this reward model reads the next state r(a_t, s_t+1): pass next_states"
                )
            states = next_states
        s = torch.as_tensor(states, device=self.device)
        a = torch.as_tensor(actions, device=self.device)
        if s.shape[-1] != self.state_dim or a.shape[-1] != self.action_dim:
            raise ValueError(
                f"predict expects states [..., {self.state_dim}] and actions "
                f"[..., {self.action_dim}], got {tuple(s.shape)} and {tuple(a.shape)}"
            )
        if s.shape[:-1] != a.shape[:-1]:
            raise ValueError(
                f"states {tuple(s.shape)} and actions {tuple(a.shape)} differ in leading dimensions"
            )
        lead = s.shape[:-1]
        net = self._inference_net(dtype)
        s2, a2 = s.reshape(-1, self.state_dim), a.reshape(-1, self.action_dim)
        out = torch.empty(self.ensemble_size, s2.shape[0], device=self.device)  # [E, B]
        scratch = net.mlp.scratch(min(s2.shape[0], INFERENCE_CHUNK))
        for sl in row_slices(s2.shape[0]):
            out[:, sl] = net.infer_scaled(net.features(s2[sl], a2[sl]), scratch)
        return out.reshape(self.ensemble_size, *lead)

    @torch.no_grad()
    def predict(
        self,
        states: np.ndarray | torch.Tensor,
        actions: np.ndarray | torch.Tensor,
        next_states: np.ndarray | torch.Tensor | None = None,
        *,
        dtype: str | torch.dtype = "float32",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Ensemble mean and std of the standardised reward of transitions: both [...] float32.

        Shapes as in :meth:`predict_members`.

        ``dtype="bfloat16"`` runs the networks in bfloat16 (input normalisation and
        the mean/std stay float32). The std is over members (population std, so
        E=1 gives 0, not NaN).
        """
        r = self.predict_members(states, actions, next_states, dtype=dtype)  # [E, ...]
        return member_mean_std(r, unbiased=False)

    @torch.no_grad()
    def preference_probability(self, left: Segment, right: Segment) -> torch.Tensor:
        """Per-member Bradley-Terry P(left > right) on the training scale: [E].

        Uses the raw (not standardised) rewards, the scale the probabilities were
        fitted on; computed as sigmoid(R_left - R_right), finite for any gap.
        """
        return torch.sigmoid(self.return_difference(left, right))

    @torch.no_grad()
    def return_difference(self, left: Segment, right: Segment) -> torch.Tensor:
        """Per-member raw predicted return of ``left`` minus ``right``: [E]."""
        returns, dev = [], self.device
        for seg in (left, right):
            self._check_segment(seg)
            s = torch.as_tensor(self._step_states(seg.states), dtype=torch.float32, device=dev)
            a = torch.as_tensor(seg.actions, dtype=torch.float32, device=dev)
            returns.append(self.net.raw(self.net.features(s, a)).sum(-1))  # [E]
        return returns[0] - returns[1]

    # ------------------------------------------------------------------ persistence

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild this model: config, weights, normaliser,
        output scale, optimiser state and whether it has been fitted."""
        return {
            "config": dict(self._config),
            "net": {k: v.clone() for k, v in self.net.state_dict().items()},
            "optimizer": self.trainer.optimizer.state_dict(),
            "fitted": self.fitted,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; the architectures must match."""
        missing = {"config", "net", "optimizer", "fitted"} - set(state)
        if missing:
            raise KeyError(f"reward-ensemble state is missing {sorted(missing)}")
        diff = config_mismatch(state["config"], self._config)
        if diff:
            raise ValueError(
                f"reward-ensemble state does not match this model: {diff} (saved, here)"
            )
        self.net.load_state_dict(state["net"])
        self.trainer.optimizer.load_state_dict(state["optimizer"])
        self.fitted = bool(state["fitted"])
        self._inference.clear()
