"""Model assistance for the person labelling: what the agent's models think of a clip.

Recursive reward modeling has the agent help the person evaluate its behaviour
(Leike et al. 2018, Sec. 3.2): beside each clip the page shows the reward
ensemble's predicted reward per step with its uncertainty (ensemble std, Sec. 5.6)
and the states the side-constraint classifier flags as unacceptable at its
calibrated threshold (Sec. 5.9). The models are the run's latest checkpoint; when
the training loop writes a newer one, the next request loads it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mbrm.feedback.segments import Segment
from mbrm.rundir import CHECKPOINT


@dataclass(frozen=True)
class Assistance:
    """The models' view of one segment; every array is a plain list for JSON."""

    reward_mean: list[float] | None  # [T] standardised reward of (s_t, a_t); None: no reward model
    reward_std: list[float] | None  # [T] ensemble std of it
    p_unacceptable: list[float] | None  # [T+1] classifier ensemble mean; None: no classifier
    p_std: list[float] | None  # [T+1] classifier ensemble std
    threshold: float | None  # calibrated threshold; None: not calibrated, nothing flagged
    risky: list[int]  # state indices whose p_unacceptable reaches the threshold
    note: str  # what is missing, in words, or ""

    def as_json(self) -> dict[str, Any]:
        return {
            "reward_mean": self.reward_mean,
            "reward_std": self.reward_std,
            "p_unacceptable": self.p_unacceptable,
            "p_std": self.p_std,
            "threshold": self.threshold,
            "risky": self.risky,
            "note": self.note,
        }


class Assistant:
    """Loads a run's reward model and classifier from its checkpoint, on demand.

    ``available()`` says whether assistance can be given and, if not, why (no
    checkpoint yet, models not fitted, a checkpoint this mbrm cannot read).
    Thread-safe: one lock around loading and inference.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._lock = threading.Lock()
        self._loaded_mtime: float | None = None
        self._reward_model: Any = None
        self._classifier: Any = None
        self._reason = "models not loaded yet"
        self._cache: dict[int, Assistance] = {}

    def _refresh(self) -> None:
        """Load the checkpoint if it is new or changed since the last load (lock held)."""
        ckpt = self.run_dir / CHECKPOINT
        try:
            mtime = ckpt.stat().st_mtime
        except FileNotFoundError:
            self._reward_model = self._classifier = None
            self._loaded_mtime = None
            self._reason = "no model checkpoint in this run yet (the loop has not saved one)"
            self._cache.clear()
            return
        if mtime == self._loaded_mtime:
            return
        self._cache.clear()
        self._loaded_mtime = mtime
        try:
            from mbrm.run import FinishedRun

            # Two state dicts: no planner, no constraint set, no store connection.
            run = FinishedRun(self.run_dir)
            rm, clf = run.reward_model(), run.classifier()
        except (OSError, ValueError, KeyError, RuntimeError, TypeError) as e:
            self._reward_model = self._classifier = None
            detail = str(e).splitlines()[0] if str(e) else ""
            if len(detail) > 160:  # a state_dict mismatch lists every tensor
                detail = detail[:157] + "..."
            self._reason = f"the run's models could not be loaded ({type(e).__name__}: {detail})"
            return
        self._reward_model = rm if rm is not None and rm.fitted else None
        self._classifier = clf if clf is not None and _classifier_fitted(clf) else None
        missing = []
        if self._reward_model is None:
            missing.append("reward model not fitted yet" if rm is not None else "oracle reward")
        if self._classifier is None:
            missing.append("classifier not fitted yet" if clf is not None else "no classifier")
        elif self._classifier.threshold is None:
            missing.append("classifier not calibrated (no risky frames flagged)")
        self._reason = "; ".join(missing)

    def available(self) -> tuple[bool, str]:
        """(whether any assistance can be given, what is missing in words)."""
        with self._lock:
            self._refresh()
            return (self._reward_model is not None or self._classifier is not None), self._reason

    def for_segment(self, segment_id: int, segment: Segment) -> Assistance | None:
        """Predictions for a segment, or None when no model is available."""
        import torch

        with self._lock:
            self._refresh()
            if self._reward_model is None and self._classifier is None:
                return None
            if segment_id in self._cache:
                return self._cache[segment_id]
            r_mean = r_std = p_mean = p_std = None
            threshold, risky = None, []
            if self._reward_model is not None:
                m, s = self._reward_model.predict(
                    torch.as_tensor(segment.states[:-1], dtype=torch.float32),
                    torch.as_tensor(segment.actions, dtype=torch.float32),
                    torch.as_tensor(segment.states[1:], dtype=torch.float32),
                )  # [T], [T]
                r_mean, r_std = _floats(m), _floats(s)
            if self._classifier is not None:
                pm, ps = self._classifier.predict(
                    torch.as_tensor(segment.states, dtype=torch.float32)
                )  # [T+1], [T+1]
                p_mean, p_std = _floats(pm), _floats(ps)
                threshold = self._classifier.threshold
                if threshold is not None:
                    risky = [int(i) for i in np.flatnonzero(pm.numpy() >= threshold)]
            out = Assistance(r_mean, r_std, p_mean, p_std, threshold, risky, self._reason)
            self._cache[segment_id] = out
            return out


def _classifier_fitted(clf: Any) -> bool:
    fitted = getattr(clf, "fitted", None)
    if fitted is not None:
        return bool(fitted)
    # A classifier without a 'fitted' flag counts as fitted once it is calibrated.
    return clf.threshold is not None


def _floats(t: Any) -> list[float | None]:
    """A tensor as a list of floats; NaN stays visible as null, never a number."""
    a = t.detach().cpu().numpy().astype(np.float64)
    return [float(x) if np.isfinite(x) else None for x in a]


__all__ = ["Assistance", "Assistant"]
