"""The reward ensemble's network: state features, input normaliser, ensemble MLP, output scale.

:class:`mbrm.reward_model.RewardEnsemble` trains it on preferences; the per-member
output shift and scale standardise each member's reward on the training steps
(Christiano et al. 2017, Sec. 2.2.3).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from mbrm.nn import DerivedFeature, EnsembleMLP, Normalizer, StateFeatures


def input_mask_or_all(input_mask: np.ndarray | None, state_dim: int) -> np.ndarray:
    """A copy of ``input_mask`` checked against ``state_dim``; every dimension if None."""
    if input_mask is None:
        return np.ones(state_dim, dtype=bool)
    mask = np.asarray(input_mask)
    if mask.dtype != bool or mask.shape != (state_dim,):
        raise ValueError(
            f"input_mask must be a boolean array of shape ({state_dim},), "
            f"got dtype {mask.dtype} and shape {mask.shape}"
        )
    if not mask.any():
        raise ValueError("input_mask selects no state dimension")
    return mask.copy()


class RewardNet(nn.Module):
    """Input selection, input normaliser, ensemble MLP and per-member output scaling.

    One module so that :func:`mbrm.nn.inference_copy` copies all of it at once.
    """

    def __init__(
        self,
        state_dim: int,
        action_dim: int,
        input_mask: np.ndarray,
        periodic_mask: np.ndarray | None,
        derived: Sequence[DerivedFeature],
        ensemble_size: int,
        hidden: int,
        layers: int,
        activation: str,
        generator: torch.Generator,
    ) -> None:
        super().__init__()
        self.state_dim = state_dim
        self.action_dim = action_dim
        self.state_features = StateFeatures(input_mask, periodic_mask, derived)
        in_dim = self.state_features.out_dim + action_dim
        self.normalizer = Normalizer(in_dim)
        self.mlp = EnsembleMLP(
            ensemble_size,
            in_dim,
            1,
            hidden=hidden,
            layers=layers,
            activation=activation,
            generator=generator,
        )
        # Per-member affine map from the Bradley-Terry scale to the planning scale.
        self.register_buffer("out_shift", torch.zeros(ensemble_size, device="cpu"))  # [E]
        self.register_buffer("out_scale", torch.ones(ensemble_size, device="cpu"))  # [E]

    def features(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """states [B, S], actions [B, A] -> normalised inputs [B, in] (float32)."""
        x = torch.cat([self.state_features(states.float()), actions.float()], dim=-1)
        return self.normalizer(x)

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """Per-member Bradley-Terry-scale rewards: x [E, B, in] or [B, in] -> [E, B]."""
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.mlp.ensemble_size, -1, -1)
        return self.mlp(x).squeeze(-1).float()

    def scaled(self, x: torch.Tensor) -> torch.Tensor:
        """Per-member standardised rewards [E, B]."""
        return (self.raw(x) - self.out_shift[:, None]) / self.out_scale[:, None]

    @torch.no_grad()
    def infer_scaled(self, x: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
        """:meth:`scaled` for inputs [B, in] shared by all members, through
        :meth:`mbrm.nn.EnsembleMLP.infer_shared` (one member at a time, activations kept in
        cache): the same numbers up to the BLAS summation order, about twice as fast at
        planning batch sizes. ``scratch`` comes from ``self.mlp.scratch(B)``."""
        raw = self.mlp.infer_shared(x, scratch)  # [E, B]
        return (raw - self.out_shift[:, None]) / self.out_scale[:, None]
