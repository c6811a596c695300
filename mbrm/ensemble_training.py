"""One bootstrap training loop for every ensemble in mbrm.

The world model, the reward ensemble and the constraint classifier are all E
members trained side by side, each on its own bootstrap resample of the data,
so that their disagreement estimates epistemic uncertainty (Chua et al. 2018,
PETS, Sec. 4.1; Lakshminarayanan et al. 2017; for the reward ensemble
Christiano et al. 2017, Sec. 2.2.3, and Leike et al. 2018, Sec. 5.2). The
mechanics they share live here; a model brings only its loss over
member-batched row indices ``[E, b]``:

* draw one bootstrap resample per member from the caller's generator;
* every epoch, shuffle each member's resample and cut it into minibatches;
* take AdamW steps on the loss (plus an optional penalty that is optimised
  but not reported);
* optionally, after every epoch, score each member on held-out data, keep each
  member's best weights and stop once no member has improved for ``patience``
  epochs (PETS' held-out early stopping, as in mbrl-lib's ``ModelTrainer``).

Random draws come only from the generator passed to :meth:`EnsembleTrainer.fit`,
in a fixed order: the bootstrap draw, then one shuffle per epoch. They are drawn on
the generator's device (the CPU) and each epoch's shuffled indices move to the
module's device at once, so a seed trains the same on every device; the data the
loss indexes are the caller's, moved to that device once per fit.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from mbrm.device import device_of
from mbrm.nn import bootstrap_indices

LOSS_AVERAGES = ("batches", "rows")


def holdout_split(
    n: int, ratio: float, max_rows: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random split of rows ``0..n-1`` into held-out and training indices.

    ``int(n * ratio)`` rows are held out, at least one and at most ``max_rows``.
    Returns (held_out [n_hold], train [n - n_hold]), both from one permutation, on the
    generator's device.
    """
    perm = torch.randperm(n, generator=generator, device=generator.device)
    n_hold = min(max(int(n * ratio), 1), max_rows)
    return perm[:n_hold], perm[n_hold:]


def minibatches(
    indices: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> list[torch.Tensor]:
    """Shuffle each member's row of ``indices [E, n]`` and cut it into ``[E, b]`` batches.

    Shuffled on the generator's device (where ``indices`` are), then moved to ``device``
    (default: stay) in one copy: an epoch's minibatches cross together, not one by one.
    """
    E, n = indices.shape
    perm = torch.argsort(torch.rand(E, n, generator=generator, device=generator.device), dim=1)
    shuffled = torch.gather(indices, 1, perm)
    if device is not None:
        shuffled = shuffled.to(device)
    return list(torch.split(shuffled, batch_size, dim=1))


@dataclass(frozen=True)
class EarlyStopping:
    """Held-out evaluation after every epoch, keeping each member's best weights.

    holdout_error:             () -> [E] per-member error on held-out data (lower is better)
    patience:                  stop after this many epochs in which no member improved
    min_relative_improvement:  a member improves when its error drops below
                               ``best * (1 - min_relative_improvement)``
    member_prefix:             state_dict prefix of the stacked ``[E, ...]`` member weights.
                               Each member's slice is kept from its own best epoch; entries
                               outside the prefix (shared parameters, normalisers) are kept
                               from the last epoch in which any member improved.
    """

    holdout_error: Callable[[], torch.Tensor]
    patience: int
    member_prefix: str
    min_relative_improvement: float = 1e-3


@dataclass
class TrainingResult:
    """What one call to :meth:`EnsembleTrainer.fit` did.

    epochs:              epochs run (fewer than asked when early stopping ended training)
    epoch_loss:          per epoch, the mean reported loss over its minibatches
    holdout_error:       per epoch, the per-member held-out error [E] (empty without
                         early stopping)
    best_holdout_error:  [E] each member's best held-out error, the weights kept
                         (None without early stopping)
    """

    epochs: int = 0
    epoch_loss: list[float] = field(default_factory=list)
    holdout_error: list[torch.Tensor] = field(default_factory=list)
    best_holdout_error: torch.Tensor | None = None


class EnsembleTrainer:
    """Bootstrap minibatch training of an ensemble with AdamW (see the module doc).

    parameters:      the tensors the optimiser updates; the same tensors are trained
                     by every fit (``load_state_dict`` copies into them)
    lr, weight_decay: AdamW's learning rate and decoupled weight decay
    keep_optimizer:  True keeps one optimiser, and its Adam moments, across fits
                     (it is part of a checkpoint); False starts a fresh optimiser
                     at every fit
    """

    def __init__(
        self,
        parameters: Iterable[nn.Parameter],
        *,
        lr: float,
        weight_decay: float,
        keep_optimizer: bool,
    ) -> None:
        self.parameters = list(parameters)
        self.lr = lr
        self.weight_decay = weight_decay
        self.keep_optimizer = keep_optimizer
        self.optimizer = self._new_optimizer()

    def _new_optimizer(self) -> torch.optim.AdamW:
        return torch.optim.AdamW(self.parameters, lr=self.lr, weight_decay=self.weight_decay)

    def fit(
        self,
        module: nn.Module,
        loss: Callable[[torch.Tensor], torch.Tensor],
        *,
        rows: int | torch.Tensor,
        ensemble_size: int,
        generator: torch.Generator,
        epochs: int,
        batch_size: int,
        penalty: Callable[[], torch.Tensor] | None = None,
        loss_average: str = "rows",
        nonfinite_loss_name: str | None = None,
        early_stopping: EarlyStopping | None = None,
        on_epoch: Callable[[TrainingResult], None] | None = None,
    ) -> TrainingResult:
        """Train every member on its own bootstrap resample of ``rows``.

        module:               put in train mode for each epoch and in eval mode at the end;
                              early stopping snapshots and restores its ``state_dict``
        loss:                 member-batched row indices [E, b] -> scalar loss (the mean
                              over members and rows); rows index the caller's data
        rows:                 the rows members resample from: a count n (rows 0..n-1)
                              or a tensor of row indices (e.g. the training split)
        penalty:              () -> scalar added to the loss for the gradient step only;
                              the reported loss leaves it out
        loss_average:         how an epoch's loss averages its minibatches: "batches"
                              (each minibatch counts once) or "rows" (weighted by
                              minibatch width, so a short last batch counts less)
        nonfinite_loss_name:  if given, an epoch loss that is not finite raises
                              FloatingPointError naming this loss; None trains on
        early_stopping:       held-out evaluation, best-member snapshot and stopping
        on_epoch:             called with the result so far after every epoch
        """
        if loss_average not in LOSS_AVERAGES:
            raise ValueError(f"loss_average must be one of {LOSS_AVERAGES}, got {loss_average!r}")
        if not self.keep_optimizer:
            self.optimizer = self._new_optimizer()
        opt = self.optimizer
        device = device_of(module)
        if isinstance(rows, int):
            boot = bootstrap_indices(rows, ensemble_size, generator)  # [E, n]
        else:
            rows = rows.to(generator.device)  # the resample is drawn where the generator is
            boot = rows[bootstrap_indices(len(rows), ensemble_size, generator)]  # [E, n]

        result = TrainingResult()
        if early_stopping is not None:
            best = torch.full((ensemble_size,), math.inf, device=device)  # [E]
            best_state = copy.deepcopy(module.state_dict())
            stale = 0
        for _ in range(epochs):
            module.train()
            reported_losses: list[torch.Tensor] = []
            widths: list[int] = []
            for idx in minibatches(boot, batch_size, generator, device):  # idx [E, b]
                reported = loss(idx)
                objective = reported if penalty is None else reported + penalty()
                opt.zero_grad(set_to_none=True)
                objective.backward()
                opt.step()
                reported_losses.append(reported.detach())
                widths.append(idx.shape[1])
            # read back once per epoch, not once per minibatch (a device sync each)
            values: list[float] = torch.stack(reported_losses).tolist()
            total, count = 0.0, 0
            for value, width in zip(values, widths, strict=True):
                total += value * width
                count += width
            result.epochs += 1
            epoch_loss = float(np.mean(values)) if loss_average == "batches" else total / count
            result.epoch_loss.append(epoch_loss)
            if nonfinite_loss_name is not None and not math.isfinite(epoch_loss):
                raise FloatingPointError(f"{nonfinite_loss_name} became {epoch_loss} while fitting")
            if early_stopping is not None:
                error = early_stopping.holdout_error()  # [E]
                result.holdout_error.append(error)
                # relative improvement; best starts at inf
                improved = error < best * (1 - early_stopping.min_relative_improvement)
                if improved.any():
                    _keep_improved(
                        best_state, module.state_dict(), improved, early_stopping.member_prefix
                    )
                    best = torch.where(improved, error, best)
                    stale = 0
                else:
                    stale += 1
            if on_epoch is not None:
                on_epoch(result)
            if early_stopping is not None and stale >= early_stopping.patience:
                break
        if early_stopping is not None:
            module.load_state_dict(best_state)
            result.best_holdout_error = best
        module.eval()
        return result


def _keep_improved(
    best_state: dict[str, torch.Tensor],
    state: dict[str, torch.Tensor],
    improved: torch.Tensor,
    member_prefix: str,
) -> None:
    """Copy the improved members' slices (and every shared entry) of ``state`` into ``best_state``."""
    E = improved.shape[0]
    for k, v in state.items():
        if k.startswith(member_prefix) and v.dim() >= 1 and v.shape[0] == E:
            best_state[k][improved] = v[improved].clone()
        elif not k.startswith(member_prefix):
            best_state[k] = v.clone()
