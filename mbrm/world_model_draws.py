"""The random numbers of trajectory sampling, drawn where the generator is.

A PETS rollout (Chua et al. 2018, Sec. 5) draws, step by step, a dealing of the
particles to the ensemble members (every step for TS1, once for TS-infinity) and
the Gaussian noise of each predicted delta. The generator is a CPU one: on the CPU
the numbers are drawn in place as the rollout needs them; for a model on another
device every draw of the rollout is made first, in the same order, and moved in one
copy per rollout (per planner iteration), never one per imagined step. Either way a
seed gives the same samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def deal(B: int, pad: int, generator: torch.Generator) -> torch.Tensor:
    """A random assignment of B rows to E equal groups [B + pad] (padding repeats rows),
    drawn on the generator's device."""
    perm = torch.randperm(B, generator=generator, device=generator.device)
    return torch.cat([perm, perm[:pad]]) if pad else perm


def draws_ahead(generator: torch.Generator, device: torch.device) -> bool:
    """Draw a rollout's numbers before it: the generator is on another device."""
    return generator.device != device


class RolloutDraws:
    """The deals and noise of one rollout of ``H`` steps, in the order a rollout reads them:
    ``deal(0)``, then per step ``t`` ``deal(t)`` (TS1, t > 0) and ``noise(t, buffer)``.

    B, pad:  rows and padding of a deal (:func:`deal`)
    shape:   [E, per, S] of each step's noise
    device:  where the rollout runs; the draws come back there
    """

    def __init__(
        self,
        H: int,
        B: int,
        pad: int,
        shape: Sequence[int],
        propagation: str,
        generator: torch.Generator,
        device: torch.device,
    ) -> None:
        self.B, self.pad, self.shape, self.generator = B, pad, tuple(shape), generator
        self.ahead = draws_ahead(generator, device)
        if self.ahead:
            deals, noises = [], []
            for t in range(H):
                if t == 0 or propagation == "ts1":
                    deals.append(deal(B, pad, generator))
                noises.append(
                    torch.randn(*self.shape, generator=generator, device=generator.device)
                )
            self._deals = torch.stack(deals).to(device)  # [H or 1, B + pad]
            self._noises = torch.stack(noises).to(device)  # [H, E, per, S]

    def deal(self, t: int) -> torch.Tensor:
        """The dealing [B + pad] read at step ``t``."""
        if self.ahead:
            return self._deals[t]
        return deal(self.B, self.pad, self.generator)

    def noise(self, t: int, buffer: torch.Tensor) -> torch.Tensor:
        """Step ``t``'s standard normal noise [E, per, S], drawn into ``buffer`` on the CPU
        (the caller may overwrite the result: it is read once)."""
        if self.ahead:
            return self._noises[t]
        return torch.randn(self.shape, generator=self.generator, out=buffer)
