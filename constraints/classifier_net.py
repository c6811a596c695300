"""The side-constraint classifier's network: state features, input normaliser, ensemble MLP.

:class:`constraints.classifier.ConstraintClassifier` trains it with a class-balanced
cross-entropy and calibrates its threshold; one module, so that
:func:`mbrm.nn.inference_copy` copies all of it at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from mbrm.nn import DerivedFeature, EnsembleMLP, Normalizer, StateFeatures


class ClassifierNet(nn.Module):
    """Input selection, normaliser and ensemble MLP: states [B, S] -> logits [E, B]."""

    def __init__(
        self,
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
        self.state_features = StateFeatures(input_mask, periodic_mask, derived)
        in_dim = self.state_features.out_dim
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

    def features(self, states: torch.Tensor) -> torch.Tensor:
        """states [B, S] -> normalised inputs [B, in] (float32)."""
        return self.normalizer(self.state_features(states.float()))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """x [E, B, in] or [B, in] (shared by all members) -> logits [E, B] (float32)."""
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.mlp.ensemble_size, -1, -1)
        return self.mlp(x).squeeze(-1).float()
