"""Probabilistic ensemble world model with trajectory sampling (PETS).

Follows Chua et al. 2018, "Deep Reinforcement Learning in a Handful of Trials
using Probabilistic Dynamics Models":

* Sec. 4.1 -- each member outputs a Gaussian over the state *delta*
  ``s' - s`` with a learned log-variance kept inside soft bounds; members are
  trained on bootstrap resamples with the Gaussian negative log-likelihood;
* Sec. 5 -- imagined rollouts propagate particles with trajectory sampling:
  TS1 (a fresh random member per particle per step), TS-infinity (a fixed member
  per particle) or the ensemble expectation.

Positions that do not change the dynamics (a root x position) are not network
inputs (``input_mask``); their deltas are still predicted, so the model
generalises to places the agent has not been.

Training (:mod:`mbrm.ensemble_training`) holds out part of the data, stops early
when no member improves its held-out error, restores each member's best weights,
and keeps the members with the lowest held-out error as elites; only elites are
used for imagination.

Devices: the model is initialised on the CPU from its seed and moved to ``device``;
a fit moves its data there once; imagination draws its random numbers on the
generator's device (:mod:`mbrm.world_model_draws`), so a seed imagines the same
samples on every device.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from mbrm.ensemble_training import EarlyStopping, EnsembleTrainer, TrainingResult, holdout_split
from mbrm.nn import (
    EnsembleMLP,
    Normalizer,
    StateFeatures,
    inference_copy,
    make_generator,
    resolve_dtype,
)
from mbrm.world_model_draws import RolloutDraws, deal

PROPAGATIONS = ("ts1", "tsinf", "expectation")


@dataclass
class WorldModelFitReport:
    """What a call to :meth:`WorldModel.fit` did and measured."""

    epochs: int
    train_nll: list[float] = field(default_factory=list)  # per epoch, mean over members
    holdout_mse: list[float] = field(default_factory=list)  # per epoch, elites, normalised delta
    best_holdout_mse: list[float] = field(default_factory=list)  # per member, normalised
    elites: list[int] = field(default_factory=list)
    seconds: float = 0.0


class WorldModel(nn.Module):
    """PETS probabilistic ensemble ``p(s' - s | s, a)``. See the module docstring."""

    def __init__(
        self,
        state_dim: int,
        action_dim: int,
        *,
        input_mask: np.ndarray | None = None,
        periodic_mask: np.ndarray | None = None,
        ensemble_size: int = 7,
        elites: int = 5,
        hidden: int = 200,
        layers: int = 4,
        activation: str = "silu",
        lr: float = 1e-3,
        weight_decay: float = 5e-5,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        if not 1 <= elites <= ensemble_size:
            raise ValueError(f"need 1 <= elites <= ensemble_size, got {elites} and {ensemble_size}")
        mask = np.ones(state_dim, bool) if input_mask is None else np.asarray(input_mask, bool)
        if mask.shape != (state_dim,):
            raise ValueError(f"input_mask must have shape ({state_dim},), got {mask.shape}")
        self.state_dim = state_dim
        self.action_dim = action_dim
        self.ensemble_size = ensemble_size
        self.num_elites = elites
        self.lr = lr
        self.weight_decay = weight_decay
        self.features = StateFeatures(mask, periodic_mask)
        in_dim = self.features.out_dim + action_dim
        g = make_generator(seed)
        self.net = EnsembleMLP(
            ensemble_size,
            in_dim,
            2 * state_dim,
            hidden=hidden,
            layers=layers,
            activation=activation,
            generator=g,
        )
        # Soft log-variance bounds (PETS appendix A.1), in normalised-target units.
        self.max_logvar = nn.Parameter(torch.full((state_dim,), 0.5, device="cpu"))
        self.min_logvar = nn.Parameter(torch.full((state_dim,), -10.0, device="cpu"))
        self.input_norm = Normalizer(in_dim)
        self.target_norm = Normalizer(state_dim)
        self.register_buffer("elite_idx", torch.arange(elites, dtype=torch.long, device="cpu"))
        self._infer_cache: dict[torch.dtype, EnsembleMLP] = {}
        self.to(device)
        self.trainer = EnsembleTrainer(
            self.parameters(), lr=lr, weight_decay=weight_decay, keep_optimizer=False
        )

    @property
    def device(self) -> torch.device:
        """Where the model's tensors are (inputs are moved here, outputs stay here)."""
        return self.max_logvar.device

    # ------------------------------------------------------------------ network pieces

    def _inputs(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Normalised network input [..., in] from states [..., S] and actions [..., A]."""
        x = torch.cat([self.features(states), actions], dim=-1)
        return self.input_norm(x)

    def _gaussian(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Split [..., 2S] into mean and soft-bounded log-variance (normalised units)."""
        mean, logvar = raw.float().chunk(2, dim=-1)
        logvar = self.max_logvar - F.softplus(self.max_logvar - logvar)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        return mean, logvar

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised inputs [E, B, in] -> normalised delta mean, logvar [E, B, S]."""
        return self._gaussian(self.net(x))

    # ------------------------------------------------------------------ training

    def fit(
        self,
        states: np.ndarray,
        actions: np.ndarray,
        next_states: np.ndarray,
        *,
        generator: torch.Generator,
        max_epochs: int = 100,
        batch_size: int = 256,
        holdout_ratio: float = 0.1,
        max_holdout: int = 5000,
        patience: int = 5,
        progress: bool = False,
    ) -> WorldModelFitReport:
        """Fit on transitions (s, a, s') with Gaussian NLL, bootstrap and early stopping.

        Normalisers are refit on the data each call; weights continue from their
        current values (warm start), as in PETS' iterative refitting, with a
        fresh optimiser each call.
        """
        import time

        t0 = time.perf_counter()
        s, a, s2 = (  # the data move to the device once per fit
            torch.as_tensor(np.asarray(x), dtype=torch.float32, device=self.device)
            for x in (states, actions, next_states)
        )
        n = s.shape[0]
        if s.shape != s2.shape or s.shape[1] != self.state_dim or a.shape != (n, self.action_dim):
            raise ValueError(
                f"fit expects states [n, {self.state_dim}], actions [n, {self.action_dim}], "
                f"next_states [n, {self.state_dim}]; got {tuple(s.shape)}, {tuple(a.shape)}, "
                f"{tuple(s2.shape)}"
            )
        if n < 10:
            raise ValueError(f"need at least 10 transitions to fit the world model, got {n}")
        for name, t in (("states", s), ("actions", a), ("next_states", s2)):
            if not torch.isfinite(t).all():
                raise ValueError(f"fit got non-finite {name}")
        raw_in = torch.cat([self.features(s), a], dim=-1)
        delta = s2 - s

        hold, train = holdout_split(n, holdout_ratio, max_holdout, generator)  # generator's
        train_rows = train.to(self.device)
        self.input_norm.fit(raw_in[train_rows])
        self.target_norm.fit(delta[train_rows])
        x_all, y_all = self.input_norm(raw_in), self.target_norm(delta)
        hold_rows = hold.to(self.device)
        x_hold, y_hold = x_all[hold_rows], y_all[hold_rows]

        def nll(idx: torch.Tensor) -> torch.Tensor:  # idx [E, b]
            mean, logvar = self(x_all[idx])  # [E, b, S]
            inv_var = torch.exp(-logvar)
            return (((mean - y_all[idx]) ** 2) * inv_var + logvar).mean()

        def logvar_bound_penalty() -> torch.Tensor:  # keeps the soft bounds tight (PETS A.1)
            return 0.01 * (self.max_logvar.sum() - self.min_logvar.sum())

        bar = tqdm(total=max_epochs, desc="world model", disable=not progress, leave=False)

        def show(so_far: TrainingResult) -> None:
            bar.update()
            mse = self._elite_mse(so_far.holdout_error[-1])
            bar.set_postfix(nll=f"{so_far.epoch_loss[-1]:.3f}", mse=f"{mse:.4f}")

        result = self.trainer.fit(
            self,
            nll,
            rows=train,
            ensemble_size=self.ensemble_size,
            generator=generator,
            epochs=max_epochs,
            batch_size=batch_size,
            penalty=logvar_bound_penalty,
            loss_average="batches",
            early_stopping=EarlyStopping(
                lambda: self._holdout_mse(x_hold, y_hold), patience=patience, member_prefix="net."
            ),
            on_epoch=show,
        )
        bar.close()
        best = result.best_holdout_error
        assert best is not None
        self.elite_idx.copy_(torch.argsort(best)[: self.num_elites])
        self._infer_cache.clear()
        return WorldModelFitReport(
            epochs=result.epochs,
            train_nll=result.epoch_loss,
            holdout_mse=[self._elite_mse(mse) for mse in result.holdout_error],
            best_holdout_mse=best.tolist(),
            elites=self.elite_idx.tolist(),
            seconds=time.perf_counter() - t0,
        )

    def _elite_mse(self, mse: torch.Tensor) -> float:
        """Mean of the ``elites`` lowest per-member held-out errors [E]."""
        return float(mse.sort().values[: self.num_elites].mean())

    @torch.no_grad()
    def _holdout_mse(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.eval()
        mean, _ = self(x.unsqueeze(0).expand(self.ensemble_size, -1, -1))
        return ((mean - y) ** 2).mean(dim=(1, 2))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self._infer_cache.clear()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ------------------------------------------------------------------ prediction

    @torch.no_grad()
    def one_step_error(
        self, states: np.ndarray, actions: np.ndarray, next_states: np.ndarray
    ) -> dict:
        """Held-out one-step MSE of the elite-mean prediction vs. predicting 'no change'."""
        s, a, s2 = (
            torch.as_tensor(np.asarray(x), dtype=torch.float32, device=self.device)
            for x in (states, actions, next_states)
        )
        pred = self.mean_next_state(s, a)
        scale = self.target_norm.std  # per-dimension delta scale, so no dimension dominates
        mse = (((pred - s2) / scale) ** 2).mean().item()
        base = (((s - s2) / scale) ** 2).mean().item()
        return {"mse": mse, "no_change_mse": base, "ratio": base / max(mse, 1e-12)}

    def mean_next_state(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """[B, S], [B, A] -> [B, S]: mean over elites; differentiable w.r.t. the inputs."""
        x = self._inputs(states.float(), actions.float())
        mean, _ = self(x.unsqueeze(0).expand(self.ensemble_size, -1, -1))
        return states.float() + self.target_norm.inverse(mean[self.elite_idx].mean(0))

    def _elite_net(self, dtype: str | torch.dtype) -> EnsembleMLP:
        """The elite members as one network, frozen and cast for inference (cached)."""
        key = resolve_dtype(dtype)
        if key not in self._infer_cache:
            self._infer_cache[key] = inference_copy(self.net.select(self.elite_idx.tolist()), key)
        return self._infer_cache[key]

    @torch.no_grad()
    def rollout(
        self,
        state: torch.Tensor,
        actions: torch.Tensor,
        *,
        particles: int,
        generator: torch.Generator,
        propagation: str = "ts1",
        dtype: str = "float32",
    ) -> torch.Tensor:
        """Imagine ``particles`` futures of each action sequence (PETS Sec. 5).

        state: [S] or [N, S]; actions: [N, H, A]. Returns states [N, P, H+1, S]
        (float32, on the model's device; inputs elsewhere are moved there) with
        ``states[:, :, 0]`` the start state. Every step is one batched call over all
        N * P particles and all elite members.
        """
        if propagation not in PROPAGATIONS:
            raise ValueError(f"unknown propagation {propagation!r}; expected one of {PROPAGATIONS}")
        N, H, A = actions.shape
        if A != self.action_dim:
            raise ValueError(f"actions have {A} dimensions, the model expects {self.action_dim}")
        S, P, device = self.state_dim, particles, self.device
        state = state.to(device, torch.float32)
        if state.dim() == 1:
            state = state.unsqueeze(0).expand(N, S)
        if state.shape != (N, S):
            raise ValueError(f"state must be [{S}] or [{N}, {S}], got {tuple(state.shape)}")
        net = self._elite_net(dtype)
        E = len(self.elite_idx)
        B = N * P
        out = torch.empty(N, P, H + 1, S, device=device)
        out[:, :, 0] = state.unsqueeze(1)
        actions = actions.to(device, torch.float32)

        if propagation == "expectation":
            cur = out[:, :, 0].reshape(B, S).clone()  # [B, S] in (candidate, particle) order
            for t in range(H):
                x = self._inputs(cur, actions[:, t].repeat_interleave(P, dim=0))  # [B, in]
                mean, _ = self._gaussian(net(x.unsqueeze(0).expand(E, B, -1)))
                cur = cur + self.target_norm.inverse(mean.mean(0))
                out[:, :, t + 1] = cur.view(N, P, S)
            return out
        return self._sample_trajectories(net, out, actions, propagation, generator)

    def _sample_trajectories(
        self,
        net: EnsembleMLP,
        out: torch.Tensor,
        actions: torch.Tensor,
        propagation: str,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """TS1 / TS-infinity steps, writing states into ``out [N, P, H+1, S]`` in place.

        Rows are dealt to members in equal groups [E, B/E]. The arithmetic is
        ``_inputs``, ``_gaussian`` and ``target_norm.inverse`` operation for
        operation, done in place on buffers allocated once per rollout (at the PETS
        sizes the small passes over [B, S] with fresh tensors took about a fifth of
        the time of the networks themselves); the networks run member by member
        (:meth:`EnsembleMLP.infer`), which may differ from ``net(x)`` in the last bits.
        """
        N, P, H1, S = out.shape
        E, B, D = len(self.elite_idx), N * P, self.features.out_dim
        device = out.device
        per = -(-B // E)
        pad = per * E - B
        # rows[:, t]: [B, S] states at step t in (candidate, particle) order
        rows = out.view(B, H1, S)
        # The normaliser acts per dimension, so the action columns are normalised once: [H, N, A]
        norm_mean, norm_std = self.input_norm.mean, self.input_norm.std
        acts = actions.sub(norm_mean[D:]).div_(norm_std[D:]).transpose(0, 1).contiguous()
        x = torch.empty(E * per, D + self.action_dim, device=device)  # one row per slot
        noise = torch.empty(E, per, S, device=device)
        lv = torch.empty(E, per, S, device=device)
        scratch = net.scratch(per)  # the networks' activations, reused every step
        candidate = torch.arange(B, device=device) // P  # [B] action sequence of each row
        draws = RolloutDraws(H1 - 1, B, pad, noise.shape, propagation, generator, device)
        slot = draws.deal(0)  # [E * per] row index per slot
        slot_candidate = candidate[slot]  # [E * per]
        max_lv, min_lv = self.max_logvar.detach(), self.min_logvar.detach()
        for t in range(H1 - 1):
            if propagation == "ts1" and t > 0:
                slot = draws.deal(t)
                slot_candidate = candidate[slot]
            # gather raw rows first: features are computed once per slot, not per row and slot
            s_rows = rows[:, t].index_select(0, slot)  # [E * per, S]
            torch.sub(self.features(s_rows), norm_mean[:D], out=x[:, :D]).div_(norm_std[:D])
            torch.index_select(acts[t], 0, slot_candidate, out=x[:, D:])
            raw = net.infer(x.view(E, per, -1), scratch).float()  # [E, per, 2S]
            mean = raw[..., :S]
            # Soft log-variance bounds, as in _gaussian.
            torch.sub(max_lv, raw[..., S:], out=lv)
            torch.ops.aten.softplus.out(lv, 1, 20, out=lv)
            torch.sub(max_lv, lv, out=lv).sub_(min_lv)
            torch.ops.aten.softplus.out(lv, 1, 20, out=lv)
            lv.add_(min_lv)
            noise = draws.noise(t, noise)  # [E, per, S] standard normal
            # delta = target_norm.inverse(mean + noise * exp(logvar / 2))
            delta = noise.mul_(lv.mul_(0.5).exp_()).add_(mean)
            delta = delta.mul_(self.target_norm.std).add_(self.target_norm.mean).view(E * per, S)
            rows[:, t + 1].index_copy_(0, slot[:B], delta[:B].add_(s_rows[:B]))
        return out

    # A random assignment of B rows to E equal groups (padding repeats rows).
    _deal = staticmethod(deal)
