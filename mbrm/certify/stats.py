"""The certificate's statistics: exact binomial bounds and a t interval.

A certificate states how often the agent may end an episode unacceptably with a stated
confidence, from a finite number of episodes: the exact (Clopper-Pearson) bound is the
largest failure probability under which seeing at most ``k`` failures in ``n`` episodes
still has probability ``1 - confidence`` (Clopper and Pearson 1934).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats


def clopper_pearson_upper(k: int, n: int, confidence: float = 0.95) -> float:
    """One-sided exact upper bound on a binomial probability from ``k`` of ``n``.

    The ``p`` with ``P(X <= k; n, p) = 1 - confidence`` (1.0 when ``k == n``); e.g. 0
    failures in 20 episodes bound the failure rate by ``1 - 0.05 ** (1 / 20) = 0.1391``.
    """
    if not (isinstance(n, int | np.integer) and n >= 1):
        raise ValueError(f"need n >= 1 episodes, got {n!r}")
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if k == n:
        return 1.0
    return float(stats.beta.ppf(confidence, k + 1, n - k))


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the two-sided Student-t interval of the mean of ``values``
    (low == high == mean for a single value or values that do not vary)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("need at least one value")
    mean = float(x.mean())
    if x.size == 1 or np.all(x == x[0]):
        return mean, mean, mean
    half = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))
    return mean, mean - half, mean + half
