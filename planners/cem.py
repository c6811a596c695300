"""Constraint-aware cross-entropy method: PETS CEM and its iCEM refinements.

CEM (Chua et al. 2018, "Deep RL in a handful of trials", PETS, Sec. 5 and App. A)
keeps a Gaussian over action sequences, imagines a population drawn from it
(truncated to the action box), and refits the Gaussian to the best (elite)
sequences with momentum. iCEM (Pinneri et al. 2020, "Sample-efficient
cross-entropy method for real-time planning", Sec. 3) adds coloured noise, keeps
a fraction of the elites, shrinks the population over iterations, adds the mean
in the last iteration and executes the best sequence seen. Every option defaults
to plain PETS CEM.

Rejection, not penalty (Leike et al. 2018, Sec. 5.2): only feasible sequences may
be elites, and the executed plan is feasible whenever any imagined one was.
"""

from __future__ import annotations

import math

import torch
from numpy.typing import ArrayLike

from planners.base import (
    Imagination,
    PlanResult,
    RejectionTally,
    TopK,
    action_box,
    check_generator,
    check_state,
    finish,
    imagine,
    merge_top,
    rank,
    score_candidates,
    warm_start,
)
from planners.settings import CEMSettings


def coloured_noise(
    n: int, horizon: int, action_dim: int, beta: float, generator: torch.Generator
) -> torch.Tensor:
    """Gaussian noise [n, H, A] with power spectrum ~ 1/f^beta along time.

    beta = 0 is white noise; larger beta puts more power in slow changes, which
    suits the low-pass dynamics of robots (iCEM Sec. 3.1). Each (sample, action
    dimension) gets an independent sequence: Gaussian real and imaginary parts
    per frequency, scaled by f^(-beta/2), summed over the real Fourier basis (an
    inverse real DFT written as two small matmuls, much faster than many tiny FFTs).
    The marginal variance of every step is exactly 1, so the noise can feed a
    Gaussian copula. Drawn and computed on the generator's device (the caller moves
    it), so a seed gives the same noise whichever device plans.
    """
    device = generator.device
    if beta == 0.0:
        return torch.randn(n, horizon, action_dim, generator=generator, device=device)
    cos, sin = _fourier_basis(horizon, beta, device)  # [F, H] each
    F = cos.shape[0]
    re = torch.randn(n * action_dim, F, generator=generator, dtype=torch.float64, device=device)
    im = torch.randn(n * action_dim, F, generator=generator, dtype=torch.float64, device=device)
    x = re @ cos + im @ sin  # [n * A, H]
    return x.reshape(n, action_dim, horizon).transpose(1, 2).float()


def _fourier_basis(
    horizon: int, beta: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled real Fourier basis whose random combinations have unit variance per step."""
    k = torch.arange(horizon // 2 + 1, dtype=torch.float64, device=device)  # [F]
    t = torch.arange(horizon, dtype=torch.float64, device=device)  # [H]
    # The lowest frequency H steps can resolve stands in for 0, where 1/f^beta diverges.
    freqs = torch.clamp(k / horizon, min=1.0 / horizon)
    amp = freqs.pow(-beta / 2.0)[:, None]  # [F, 1]
    angle = 2.0 * math.pi * k[:, None] * t[None, :] / horizon  # [F, H]
    # Frequencies other than 0 and Nyquist stand for a conjugate pair: twice the weight.
    pair = torch.full((k.shape[0], 1), 2.0, dtype=torch.float64, device=device)
    pair[0] = 1.0
    if horizon % 2 == 0:
        pair[-1] = 1.0
    cos = amp * pair * torch.cos(angle)  # [F, H]
    sin = -amp * pair * torch.sin(angle)  # [F, H]; zero at 0 and Nyquist as a real signal needs
    sigma = torch.sqrt(cos.square().sum(0) + sin.square().sum(0))  # [H]
    return cos / sigma, sin / sigma


def truncated_normal(
    mean: torch.Tensor,  # [H, A]
    std: torch.Tensor,  # [H, A]
    low: torch.Tensor,  # [A]
    high: torch.Tensor,  # [A]
    noise: torch.Tensor,  # [n, H, A] standard normal (white or coloured)
) -> torch.Tensor:
    """Samples [n, H, A] of N(mean, std^2) truncated to [low, high].

    Inverse-CDF sampling through a Gaussian copula: Phi(noise) is uniform, and
    mapping it into [Phi(a), Phi(b)] gives the exact truncated marginal while the
    temporal correlation of coloured noise carries over. Computed in float64,
    where the CDF resolves about 8 standard deviations; rounding beyond that is
    clamped to the box.
    """
    m, s = mean.double(), std.double().clamp_min(1e-12)
    lo, hi = low.double(), high.double()
    cdf_lo = _phi((lo - m) / s)  # [H, A]
    cdf_hi = _phi((hi - m) / s)  # [H, A]
    u = cdf_lo + _phi(noise.double()) * (cdf_hi - cdf_lo)  # [n, H, A]
    x = m + s * math.sqrt(2.0) * torch.erfinv(2.0 * u - 1.0)
    return torch.minimum(torch.maximum(x, lo), hi).float()


def _phi(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.erfc(-z / math.sqrt(2.0))


class CEMPlanner:
    """CEM over action sequences with feasibility-first elites (PETS; iCEM options).

    Every option is a field of :class:`CEMSettings`; the action box comes from the
    task at run time. Defaults are PETS CEM: white noise, no kept elites, a constant population, and
    the mean of the final distribution executed (imagined once more so that its
    feasibility is checked, never assumed). Plans on ``device``; the sampling noise is
    drawn on the generator's device and moved once per iteration.
    """

    def __init__(
        self,
        settings: CEMSettings,
        action_low: ArrayLike,
        action_high: ArrayLike,
        device: torch.device | str = "cpu",
    ) -> None:
        if not isinstance(settings, CEMSettings):
            raise TypeError(f"CEMPlanner needs CEMSettings, got {type(settings).__name__}")
        self.settings = settings
        self.device = torch.device(device)
        self.low, self.high = action_box(action_low, action_high, self.device)
        # iCEM's xi as a count: the best elites re-imagined in the next iteration.
        self.n_keep = math.ceil(settings.keep_elites * settings.elites)

    def population_size(self, iteration: int) -> int:
        """iCEM Sec. 3.3: N_i = max(N * decay^-i, 2 * elites)."""
        s = self.settings
        n = int(s.population * s.population_decay ** (-iteration))
        return max(n, 2 * s.elites)

    def plan(
        self,
        state: torch.Tensor,
        imagination: Imagination,
        *,
        generator: torch.Generator,
        previous_plan: torch.Tensor | None = None,
    ) -> PlanResult:
        """Plan from ``state`` [S]; ``previous_plan`` [H, A] is shifted to warm-start."""
        state = check_state(state, self.device)
        check_generator(generator)
        s = self.settings
        H, A = s.horizon, self.low.shape[0]
        mean = warm_start(
            previous_plan, horizon=H, low=self.low, high=self.high, fill=s.warm_start_fill
        )  # [H, A]
        half_range = (self.high - self.low) / 2.0  # [A]
        var = (s.init_std * half_range).square().expand(H, A).clone()  # [H, A]
        kept = mean.new_empty(0, H, A)  # elites carried into the next iteration
        top: TopK | None = None
        tally = RejectionTally()
        history: list[torch.Tensor] = []  # best score so far, per iteration

        for i in range(s.iterations):
            # Sample: fresh sequences plus the ones iCEM re-imagines (kept elites,
            # the shifted previous solution first, the mean last).
            extra = [kept]
            if i == 0 and self.n_keep > 0 and previous_plan is not None:
                extra.append(mean[None])
            if s.add_mean and i == s.iterations - 1:
                extra.append(mean[None])
            extra_actions = torch.cat(extra)  # [n_extra, H, A]
            n_new = max(self.population_size(i) - extra_actions.shape[0], 1)
            noise = coloured_noise(n_new, H, A, s.noise_beta, generator).to(self.device)
            fresh = truncated_normal(mean, var.sqrt(), self.low, self.high, noise)
            actions = torch.cat([fresh, extra_actions])  # [N_i, H, A]

            # Score: risk-adjusted return and feasibility of every candidate.
            batch = imagine(imagination, state, actions)
            scores = score_candidates(
                batch, risk_aversion=s.risk_aversion, reject_above=s.reject_above
            )
            tally.add(scores)
            top = merge_top(top, batch, actions, scores, s.top_k)
            history.append(top.score[0])

            # Elites: feasible candidates only; the least risky while none is feasible.
            order = rank(scores.score, scores.risk, scores.exposure, scores.feasible)
            n_feasible = int(scores.feasible.sum())
            n_elites = min(s.elites, n_feasible) if n_feasible > 0 else s.elites
            elite = actions[order[:n_elites]]  # [K, H, A]
            kept = elite[: self.n_keep]

            # Refit the Gaussian with momentum (PETS App. A: alpha on mean and variance).
            m = s.momentum
            mean = m * mean + (1.0 - m) * elite.mean(0)
            if elite.shape[0] >= 2:
                # One feasible elite has zero spread: refitting to it would collapse the
                # search onto one marginal plan next to a constraint; keep the variance.
                var = m * var + (1.0 - m) * elite.var(0, unbiased=False)

        assert top is not None  # iterations >= 1
        if not s.execute_best:
            # PETS executes the final mean; imagine it so feasibility is known.
            mean_batch = imagine(imagination, state, mean[None])
            mean_scores = score_candidates(
                mean_batch, risk_aversion=s.risk_aversion, reject_above=s.reject_above
            )
            tally.add(mean_scores)
            top = merge_top(top, mean_batch, mean[None], mean_scores, s.top_k)
            if bool(mean_scores.feasible[0]):
                return finish(
                    plan=mean.clone(),
                    plan_score=float(mean_scores.score[0]),
                    plan_risk=float(mean_scores.risk[0]),
                    plan_feasible=True,
                    top=top,
                    tally=tally,
                    history=history,
                )
        # The best candidate seen: feasible if any was, else the least risky.
        return finish(
            plan=top.actions[0].clone(),
            plan_score=float(top.score[0]),
            plan_risk=float(top.risk[0]),
            plan_feasible=bool(top.feasible[0]),
            top=top,
            tally=tally,
            history=history,
        )
