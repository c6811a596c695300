"""Side-constraint classifier: an ensemble estimate of p(unacceptable | s), conformally calibrated.

E members each output a logit; the ensemble mean of their probabilities is the
score and their spread the disagreement (Leike et al. 2018, Sec. 5.6). Members
are trained on bootstrap resamples with a class-balanced cross-entropy, because
unacceptable states are rare. The decision threshold is not a hand-picked 0.5:
it is set by split-conformal calibration on held-out unacceptable examples so
that recall of unacceptable states is at least ``1 - alpha`` (Vovk et al. 2005;
Angelopoulos & Bates 2021, Sec. 1.1). Saunders et al. 2018 ("Trial without
Error", Sec. 3) set their blocker's threshold for zero missed catastrophes on
its labels; ``alpha`` makes that trade-off explicit.

Devices: initialised on the CPU from the seed, then moved to ``device``; every method
moves its states and labels there (once per call) and answers there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from constraints.classifier_net import ClassifierNet
from mbrm.ensemble_training import EnsembleTrainer
from mbrm.nn import (
    INFERENCE_CHUNK,
    DerivedFeature,
    config_mismatch,
    inference_copy,
    member_mean_std,
    resolve_dtype,
    row_slices,
)


@dataclass(frozen=True)
class ClassifierFitReport:
    """What one call to :meth:`ConstraintClassifier.fit` did.

    n_states, n_unacceptable: training set size and its positives
    pos_weight, neg_weight:   per-example loss weights that balance the classes
    loss_history:             weighted cross-entropy per epoch, mean over members
    """

    n_states: int
    n_unacceptable: int
    pos_weight: float
    neg_weight: float
    loss_history: list[float]


@dataclass(frozen=True)
class Calibration:
    """The split-conformal calibration behind the current threshold.

    alpha: target miss rate; n: held-out unacceptable examples; rank: k, the
    order statistic used; threshold: the k-th smallest score; dtype: the
    inference precision the scores were computed in.
    """

    alpha: float
    n: int
    rank: int
    threshold: float
    dtype: str


def _as_states(
    states: np.ndarray | torch.Tensor, state_dim: int, device: torch.device
) -> torch.Tensor:
    s = torch.as_tensor(states, device=device)
    if s.dim() < 1 or s.shape[-1] != state_dim:
        raise ValueError(f"expected states [..., {state_dim}], got {tuple(s.shape)}")
    return s


def _as_labels(labels: np.ndarray | torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    if isinstance(labels, torch.Tensor):
        labels = labels.cpu()
    y = torch.as_tensor(np.asarray(labels), device=device)
    if y.dtype != torch.bool:
        raise TypeError(f"labels must be boolean (True = unacceptable), got {y.dtype}")
    if y.shape != (n,):
        raise ValueError(f"expected labels [{n}] matching the states, got {tuple(y.shape)}")
    return y


class ConstraintClassifier:
    """Ensemble classifier of ``p(unacceptable | s)`` with a conformal threshold.

    Networks see the state dimensions where ``input_mask`` is True
    (``task.layout.input_mask``). ``threshold`` is None until :meth:`calibrate`
    has run; it is reset by :meth:`fit`, because new weights change the scores
    it was computed from.
    """

    def __init__(
        self,
        state_dim: int,
        *,
        input_mask: np.ndarray | None = None,
        periodic_mask: np.ndarray | None = None,
        derived: Sequence[DerivedFeature] = (),
        ensemble_size: int = 5,
        hidden: int = 64,
        layers: int = 2,
        activation: str = "silu",
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        if state_dim < 1 or ensemble_size < 1:
            raise ValueError(
                f"need state_dim >= 1 and ensemble_size >= 1, got {state_dim}, {ensemble_size}"
            )
        mask = np.ones(state_dim, dtype=bool) if input_mask is None else np.asarray(input_mask)
        if mask.dtype != bool or mask.shape != (state_dim,) or not mask.any():
            raise ValueError(
                f"input_mask must be a boolean array of shape ({state_dim},) selecting at least "
                f"one dimension, got dtype {mask.dtype}, shape {mask.shape}"
            )
        self.state_dim = state_dim
        self.input_mask = mask.copy()
        self.ensemble_size = ensemble_size
        self._config = {
            "state_dim": state_dim,
            "input_mask": self.input_mask.tolist(),
            "periodic_mask": None
            if periodic_mask is None
            else np.asarray(periodic_mask, bool).tolist(),
            "ensemble_size": ensemble_size,
            "hidden": hidden,
            "layers": layers,
            "activation": activation,
        }
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        self.net = ClassifierNet(
            self.input_mask, periodic_mask, derived, ensemble_size, hidden, layers, activation, gen
        ).to(device)
        self.device = torch.device(device)
        if self.net.state_features.derived:  # absent from older checkpoints' configs
            self._config["derived"] = self.net.state_features.derived_names
        # Adam's moments carry over from one fit to the next (and into checkpoints).
        self.trainer = EnsembleTrainer(
            self.net.mlp.parameters(), lr=lr, weight_decay=weight_decay, keep_optimizer=True
        )
        self.calibration: Calibration | None = None
        self._inference: dict[torch.dtype, ClassifierNet] = {}

    @property
    def threshold(self) -> float | None:
        """Score at or above which a state counts as unacceptable; None until calibrated."""
        return None if self.calibration is None else self.calibration.threshold

    # ------------------------------------------------------------------ training

    def fit(
        self,
        states: np.ndarray | torch.Tensor,
        labels: np.ndarray | torch.Tensor,
        *,
        generator: torch.Generator,
        epochs: int = 30,
        batch_size: int = 256,
    ) -> ClassifierFitReport:
        """Fit every member on its bootstrap resample with a class-balanced loss.

        states [M, S], labels bool [M] (True = unacceptable). Each class gets half
        the total weight (weights M / (2 M_class)), so the rare unacceptable states
        are not drowned out. Warm-starts from the current weights; clears the
        threshold.
        """
        s = _as_states(states, self.state_dim, self.device)
        if s.dim() != 2:
            raise ValueError(f"fit expects states [M, {self.state_dim}], got {tuple(s.shape)}")
        y = _as_labels(labels, s.shape[0], self.device)
        n_pos = int(y.sum())
        n_neg = len(y) - n_pos
        if n_pos == 0 or n_neg == 0:
            raise ValueError(
                f"fit needs both classes, got {n_pos} unacceptable and {n_neg} acceptable states"
            )
        if epochs < 1 or batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
        if not torch.isfinite(s).all():
            raise ValueError("fit got non-finite states")
        self._inference.clear()
        self.calibration = None

        self.net.normalizer.fit(self.net.state_features(s.float()))
        x = self.net.features(s)  # [M, in]
        target = y.float()  # [M]
        pos_w, neg_w = len(y) / (2 * n_pos), len(y) / (2 * n_neg)
        weight = torch.where(y, pos_w, neg_w)  # [M]

        def balanced_bce(idx: torch.Tensor) -> torch.Tensor:  # idx [E, b]
            logits = self.net.logits(x[idx])  # [E, b]
            return F.binary_cross_entropy_with_logits(logits, target[idx], weight=weight[idx])

        result = self.trainer.fit(
            self.net,
            balanced_bce,
            rows=len(y),
            ensemble_size=self.ensemble_size,
            generator=generator,
            epochs=epochs,
            batch_size=batch_size,
            loss_average="rows",
            nonfinite_loss_name="classifier loss",
        )
        return ClassifierFitReport(len(y), n_pos, pos_w, neg_w, result.epoch_loss)

    # ------------------------------------------------------------------ inference

    def _inference_net(self, dtype: str | torch.dtype) -> ClassifierNet:
        dt = resolve_dtype(dtype)
        if dt not in self._inference:
            self._inference[dt] = inference_copy(self.net, dt)  # type: ignore[assignment]
        return self._inference[dt]

    @torch.no_grad()
    def predict_members(
        self, states: np.ndarray | torch.Tensor, dtype: str | torch.dtype = "float32"
    ) -> torch.Tensor:
        """Per-member p(unacceptable | s): states [..., S] -> [E, ...] float32."""
        s = _as_states(states, self.state_dim, self.device)
        lead = s.shape[:-1]
        flat = s.reshape(-1, self.state_dim)
        net = self._inference_net(dtype)
        out = torch.empty(self.ensemble_size, flat.shape[0], device=self.device)  # [E, B]
        scratch = net.mlp.scratch(min(flat.shape[0], INFERENCE_CHUNK))
        for sl in row_slices(flat.shape[0]):
            out[:, sl] = torch.sigmoid(net.mlp.infer_shared(net.features(flat[sl]), scratch))
        return out.reshape(self.ensemble_size, *lead)

    @torch.no_grad()
    def predict(
        self, states: np.ndarray | torch.Tensor, dtype: str | torch.dtype = "float32"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Ensemble mean and std (population, over members) of p(unacceptable | s): [...]."""
        p = self.predict_members(states, dtype)
        return member_mean_std(p, unbiased=False)

    def _require_threshold(self) -> float:
        if self.calibration is None:
            raise RuntimeError(
                "ConstraintClassifier has no threshold: call calibrate() on held-out labels "
                "after fit() (fit() clears any earlier threshold)"
            )
        return self.calibration.threshold

    @torch.no_grad()
    def flags(
        self, states: np.ndarray | torch.Tensor, dtype: str | torch.dtype = "float32"
    ) -> torch.Tensor:
        """bool [...]: True where the mean score reaches the calibrated threshold."""
        threshold = self._require_threshold()
        return self.predict(states, dtype)[0] >= threshold

    # ------------------------------------------------------------------ calibration

    @torch.no_grad()
    def calibrate(
        self,
        states: np.ndarray | torch.Tensor,
        labels: np.ndarray | torch.Tensor,
        alpha: float = 0.05,
        dtype: str | torch.dtype = "float32",
    ) -> float:
        """Set ``threshold`` by split-conformal calibration; returns it.

        Rule: let s_(1) <= ... <= s_(n) be the ensemble-mean scores of the n
        unacceptable states among ``states`` (held out from ``fit``) and
        k = floor(alpha (n + 1)). The threshold is s_(k), and a state is flagged
        when its score is >= s_(k). For a new unacceptable state exchangeable with
        the calibration ones, P(score < s_(k)) <= k / (n + 1) <= alpha, so expected
        recall is at least 1 - alpha (split conformal; Angelopoulos & Bates 2021,
        Sec. 1.1, with the score's lower tail). k >= 1 needs n >= 1/alpha - 1
        (19 at alpha = 0.05); fewer unacceptable examples is an error rather than
        a threshold that flags everything. Acceptable states do not enter the rule.
        Score with the same ``dtype`` the threshold will be used with.
        """
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        s = _as_states(states, self.state_dim, self.device)
        if s.dim() != 2:
            raise ValueError(
                f"calibrate expects states [M, {self.state_dim}], got {tuple(s.shape)}"
            )
        y = _as_labels(labels, s.shape[0], self.device)
        n = int(y.sum())
        k = math.floor(alpha * (n + 1))
        if k < 1:
            need = math.ceil(1.0 / alpha - 1.0)
            raise ValueError(
                f"calibration needs at least {need} unacceptable examples for alpha={alpha}, "
                f"got {n}"
            )
        scores = self.predict(s[y], dtype)[0]  # [n]
        if not torch.isfinite(scores).all():
            raise ValueError("classifier scores on the calibration set are not finite")
        threshold = float(torch.sort(scores).values[k - 1])
        dtype_name = str(resolve_dtype(dtype)).removeprefix("torch.")
        self.calibration = Calibration(float(alpha), n, k, threshold, dtype_name)
        return threshold

    @torch.no_grad()
    def evaluate(
        self,
        states: np.ndarray | torch.Tensor,
        labels: np.ndarray | torch.Tensor,
        dtype: str | torch.dtype = "float32",
    ) -> dict[str, float | int]:
        """Confusion counts and rates of the calibrated classifier on labelled states.

        Returns tp, fp, tn, fn, recall, precision, false_negative_rate, threshold.
        A rate whose denominator is zero (no unacceptable states; nothing flagged)
        is NaN, not a number made up.
        """
        s = _as_states(states, self.state_dim, self.device)
        y = _as_labels(labels, int(np.prod(s.shape[:-1])), self.device)
        flagged = self.flags(s, dtype).reshape(-1)
        tp = int((flagged & y).sum())
        fp = int((flagged & ~y).sum())
        fn = int((~flagged & y).sum())
        tn = int((~flagged & ~y).sum())
        recall = tp / (tp + fn) if tp + fn else float("nan")
        return {
            "tp": tp,
            "fp": fp,
            "tn": tn,
            "fn": fn,
            "recall": recall,
            "precision": tp / (tp + fp) if tp + fp else float("nan"),
            "false_negative_rate": 1.0 - recall if tp + fn else float("nan"),
            "threshold": self._require_threshold(),
        }

    # ------------------------------------------------------------------ persistence

    def state_dict(self) -> dict[str, Any]:
        """Config, weights, normaliser, optimiser state and calibration (threshold included)."""
        cal = self.calibration
        return {
            "config": dict(self._config),
            "net": {k: v.clone() for k, v in self.net.state_dict().items()},
            "optimizer": self.trainer.optimizer.state_dict(),
            "calibration": None if cal is None else dict(cal.__dict__),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; the architectures must match."""
        missing = {"config", "net", "optimizer", "calibration"} - set(state)
        if missing:
            raise KeyError(f"classifier state is missing {sorted(missing)}")
        diff = config_mismatch(state["config"], self._config)
        if diff:
            raise ValueError(f"classifier state does not match this model: {diff} (saved, here)")
        self.net.load_state_dict(state["net"])
        self.trainer.optimizer.load_state_dict(state["optimizer"])
        cal = state["calibration"]
        self.calibration = None if cal is None else Calibration(**cal)
        self._inference.clear()
