"""The shared bootstrap ensemble trainer, through its public interface, on tiny ensembles."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mbrm.ensemble_training import EarlyStopping, EnsembleTrainer, TrainingResult, holdout_split
from mbrm.nn import EnsembleMLP

E, N, IN = 3, 40, 4


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, IN, generator=g)
    y = x @ torch.randn(IN, 1, generator=g) + 0.1 * torch.randn(N, 1, generator=g)
    return x, y  # [N, IN], [N, 1]


def _seen_rows(seed: int, rows: int | torch.Tensor = N) -> list[list[int]]:
    """Each member's rows over one epoch, sorted: its bootstrap resample."""
    seen: list[torch.Tensor] = []
    w = nn.Parameter(torch.zeros(E))

    def loss(idx: torch.Tensor) -> torch.Tensor:
        seen.append(idx.clone())
        return (w**2).sum()

    trainer = EnsembleTrainer([w], lr=1e-3, weight_decay=0.0, keep_optimizer=False)
    trainer.fit(
        nn.Module(),
        loss,
        rows=rows,
        ensemble_size=E,
        generator=torch.Generator().manual_seed(seed),
        epochs=1,
        batch_size=7,
    )
    return torch.cat(seen, dim=1).sort(dim=1).values.tolist()


def test_bootstrap_draws_differ_per_member_and_repeat_for_a_seed() -> None:
    first = _seen_rows(0)
    assert first == _seen_rows(0)
    assert first != _seen_rows(1)
    assert all(len(member) == N for member in first)
    assert len({tuple(member) for member in first}) == E  # members resample differently
    assert any(len(set(member)) < N for member in first)  # with replacement
    subset = torch.tensor([3, 5, 8, 13, 21])
    for member in _seen_rows(0, rows=subset):
        assert set(member) <= set(subset.tolist()) and len(member) == len(subset)


def test_holdout_split_is_a_seeded_partition() -> None:
    hold, train = holdout_split(50, 0.1, 3, torch.Generator().manual_seed(0))
    assert len(hold) == 3 and len(train) == 47
    assert sorted(torch.cat([hold, train]).tolist()) == list(range(50))
    again = holdout_split(50, 0.1, 3, torch.Generator().manual_seed(0))
    assert torch.equal(hold, again[0]) and torch.equal(train, again[1])
    assert len(holdout_split(5, 0.01, 10, torch.Generator().manual_seed(0))[0]) == 1


class _Drifting(nn.Module):
    """Per-member weights ``net.w [E]`` and a shared ``b``, all pushed steadily upwards."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Module()
        self.net.w = nn.Parameter(torch.zeros(E))
        self.b = nn.Parameter(torch.zeros(()))


def test_early_stopping_keeps_each_members_best_snapshot() -> None:
    model = _Drifting()
    targets = torch.tensor([0.5, 1.0, 1.5])  # each member's held-out optimum is passed in turn
    history: list[tuple[torch.Tensor, torch.Tensor]] = []

    def record(so_far: TrainingResult) -> None:
        history.append((model.net.w.detach().clone(), model.b.detach().clone()))

    trainer = EnsembleTrainer(model.parameters(), lr=0.1, weight_decay=0.0, keep_optimizer=False)
    result = trainer.fit(
        model,
        lambda idx: ((model.net.w - 10.0) ** 2).mean() + ((model.b - 10.0) ** 2),
        rows=4,
        ensemble_size=E,
        generator=torch.Generator().manual_seed(0),
        epochs=100,
        batch_size=4,  # one Adam step per epoch
        early_stopping=EarlyStopping(
            lambda: (model.net.w.detach() - targets) ** 2, patience=3, member_prefix="net."
        ),
        on_epoch=record,
    )
    errors = torch.stack(result.holdout_error)  # [epochs, E]
    best_epoch = errors.argmin(0)  # [E]
    assert best_epoch.tolist() == sorted(best_epoch.tolist()) and len(set(best_epoch.tolist())) == E
    assert result.epochs == int(best_epoch.max()) + 1 + 3 < 100  # stopped `patience` epochs late
    assert result.best_holdout_error is not None
    assert torch.equal(result.best_holdout_error, errors.min(0).values)
    for e in range(E):
        assert model.net.w[e] == history[int(best_epoch[e])][0][e]
    # shared entries come from the last epoch in which any member improved
    assert model.b == history[int(best_epoch.max())][1]
    assert not model.training


@pytest.mark.parametrize("keep", [True, False])
def test_kept_optimizer_keeps_adam_state_between_fits(keep: bool) -> None:
    x, y = _data()
    net = EnsembleMLP(E, IN, 1, hidden=8, layers=1, generator=torch.Generator().manual_seed(0))
    trainer = EnsembleTrainer(net.parameters(), lr=1e-2, weight_decay=0.0, keep_optimizer=keep)
    g = torch.Generator().manual_seed(0)
    fits = []
    for _ in range(2):
        trainer.fit(
            net,
            lambda idx: ((net(x[idx]) - y[idx]) ** 2).mean(),
            rows=N,
            ensemble_size=E,
            generator=g,
            epochs=2,
            batch_size=16,  # 3 steps per epoch
        )
        fits.append(trainer.optimizer)
    steps = int(trainer.optimizer.state[trainer.parameters[0]]["step"])
    assert steps == (12 if keep else 6)
    assert (fits[0] is fits[1]) == keep


def test_member_batched_loss_equals_a_loop_over_members() -> None:
    """Training the ensemble at once equals training each member alone on its own batches."""
    x, y = _data()
    net = EnsembleMLP(E, IN, 1, hidden=8, layers=1, generator=torch.Generator().manual_seed(0))
    alone = [net.select([e]) for e in range(E)]
    batches: list[torch.Tensor] = []

    def loss(idx: torch.Tensor) -> torch.Tensor:  # idx [E, b]
        batches.append(idx.clone())
        return ((net(x[idx]) - y[idx]) ** 2).mean()

    EnsembleTrainer(net.parameters(), lr=1e-2, weight_decay=0.01, keep_optimizer=False).fit(
        net,
        loss,
        rows=N,
        ensemble_size=E,
        generator=torch.Generator().manual_seed(0),
        epochs=3,
        batch_size=16,
    )
    for e, member in enumerate(alone):
        for p in member.parameters():
            p.requires_grad_(True)
        opt = torch.optim.AdamW(member.parameters(), lr=1e-2, weight_decay=0.01)
        for idx in batches:
            # the ensemble mean over members gives each member 1/E of its own batch loss
            member_loss = ((member(x[idx[e]][None]) - y[idx[e]][None]) ** 2).mean() / E
            opt.zero_grad()
            member_loss.backward()
            opt.step()
        for ens, own in zip(net.linears, member.linears, strict=True):
            torch.testing.assert_close(ens.weight[e], own.weight[0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(ens.bias[e], own.bias[0], rtol=1e-5, atol=1e-6)


def test_reported_loss_leaves_the_penalty_out_and_averages_as_asked() -> None:
    w = nn.Parameter(torch.ones(E))
    widths: list[int] = []

    def loss(idx: torch.Tensor) -> torch.Tensor:
        widths.append(idx.shape[1])
        return torch.full((), float(idx.shape[1])) + 0.0 * w.sum()

    def fit(average: str) -> list[float]:
        trainer = EnsembleTrainer([w], lr=1e-3, weight_decay=0.0, keep_optimizer=False)
        return trainer.fit(
            nn.Module(),
            loss,
            rows=10,
            ensemble_size=E,
            generator=torch.Generator().manual_seed(0),
            epochs=1,
            batch_size=4,  # widths 4, 4, 2
            penalty=lambda: 100.0 * w.sum(),
            loss_average=average,
        ).epoch_loss

    assert fit("batches") == [10 / 3]
    assert fit("rows") == [(16 + 16 + 4) / 10]
    assert widths == [4, 4, 2] * 2
    with pytest.raises(ValueError, match="loss_average"):
        fit("members")


def test_nonfinite_loss_raises_only_when_named() -> None:
    w = nn.Parameter(torch.ones(E))

    def fit(name: str | None) -> list[float]:
        trainer = EnsembleTrainer([w], lr=1e-3, weight_decay=0.0, keep_optimizer=False)
        return trainer.fit(
            nn.Module(),
            lambda idx: w.sum() * math.inf,
            rows=5,
            ensemble_size=E,
            generator=torch.Generator().manual_seed(0),
            epochs=2,
            batch_size=5,
            nonfinite_loss_name=name,
        ).epoch_loss

    with pytest.raises(FloatingPointError, match="toy loss became"):
        fit("toy loss")
    assert len(fit(None)) == 2
