"""Fitting the side-constraint classifier with a split-conformal threshold.

Leike et al. 2018 (Sec. 5.7) ask for side-constraints that block unacceptable
outcomes; the classifier's threshold is set on held-out labels so that the recall
of unacceptable states is at least ``1 - alpha`` (split conformal prediction,
Angelopoulos & Bates 2021), not a hand-picked 0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from constraints.classifier import ConstraintClassifier

Labelled = tuple[np.ndarray, np.ndarray]  # states [N, S], flags bool [N]


@dataclass(frozen=True)
class CalibrationSplit:
    """Training and calibration sets, or None for both while labels are too few."""

    train: Labelled | None
    calibration: Labelled | None
    positives: int  # distinct unacceptable states among the labels


def calibration_split(
    states: np.ndarray,
    flags: np.ndarray,
    segments: np.ndarray,
    *,
    alpha: float,
    fraction: float,
    rng: np.random.Generator,
) -> CalibrationSplit:
    """Split judged states by segment into training and calibration sets.

    Split conformal calibration needs held-out states exchangeable with new ones
    (Angelopoulos & Bates 2021, Sec. 1.1): exact duplicates (a state judged twice)
    are merged first -- flagged if ever flagged -- and a segment's correlated states
    go wholly to one side. The calibration side gets at least ceil(1/alpha - 1)
    unacceptable states (and ``fraction`` of them); until the labels allow that plus
    4 unacceptable and 8 acceptable training states, both sets are None.

    states [N, S], flags bool [N], segments [N] (the segment id of each judged state).
    """
    if len(states) == 0:
        return CalibrationSplit(None, None, 0)
    uniq, first, inv = np.unique(states, axis=0, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    uflags = np.zeros(len(uniq), dtype=bool)
    np.logical_or.at(uflags, inv, flags)
    useg = segments[first]
    n_pos = int(uflags.sum())
    need = max(math.ceil(1 / alpha - 1), int(n_pos * fraction))
    cal_segments: list[int] = []
    cal_pos = 0
    order = rng.permutation(np.unique(useg))
    for seg in order:
        if cal_pos >= need and len(cal_segments) >= fraction * len(order):
            break
        cal_segments.append(int(seg))
        cal_pos += int(uflags[useg == seg].sum())
    cal = np.isin(useg, cal_segments)
    if cal_pos < need or int(uflags[~cal].sum()) < 4 or int((~uflags[~cal]).sum()) < 8:
        return CalibrationSplit(None, None, n_pos)
    return CalibrationSplit((uniq[~cal], uflags[~cal]), (uniq[cal], uflags[cal]), n_pos)


def fit_and_calibrate(
    classifier: ConstraintClassifier,
    split: CalibrationSplit,
    *,
    alpha: float,
    epochs: int,
    max_false_positive_rate: float,
    generator: torch.Generator,
) -> tuple[bool | None, dict[str, Any]]:
    """Fit on the training side, calibrate on the held-out side.

    Returns whether the learned entry may join the constraint set (None: no fit this
    round, keep the previous decision) and the figures to log. A threshold low enough
    to keep recall >= 1 - alpha may flag most acceptable states too (a classifier that
    has seen few unacceptable ones); such a constraint would reject every plan, so it
    waits for more labels while its false-positive rate exceeds the maximum.
    """
    out: dict[str, Any] = {"classifier_positives": split.positives}
    if split.train is None or split.calibration is None:
        return None, out
    (s_tr, f_tr), (s_cal, f_cal) = split.train, split.calibration
    classifier.fit(s_tr, f_tr, generator=generator, epochs=epochs)
    out["threshold"] = classifier.calibrate(s_cal, f_cal, alpha=alpha)
    ev = classifier.evaluate(s_cal, f_cal)
    fpr = ev["fp"] / max(ev["fp"] + ev["tn"], 1)
    out["classifier_calibration_fpr"] = fpr
    return fpr <= max_false_positive_rate, out


def refit_on_labels(
    classifier: ConstraintClassifier,
    store: Any,
    settings: Any,
    *,
    rng: np.random.Generator,
    generator: torch.Generator,
) -> tuple[bool | None, dict[str, Any]]:
    """:func:`fit_and_calibrate` on every unacceptable label in ``store`` (a
    :class:`mbrm.feedback.store.FeedbackStore`), split as ``settings`` (the run's
    :class:`mbrm.settings.LoopSettings`) say: alpha, calibration fraction, epochs."""
    states, flags, segments = store.unacceptable_states(with_segments=True)
    split = calibration_split(
        states,
        flags,
        segments,
        alpha=settings.alpha,
        fraction=settings.calibration_fraction,
        rng=rng,
    )
    return fit_and_calibrate(
        classifier,
        split,
        alpha=settings.alpha,
        epochs=settings.classifier_epochs,
        max_false_positive_rate=settings.max_false_positive_rate,
        generator=generator,
    )
