"""The batched ensemble equals a loop over independent members."""

import numpy as np
import pytest
import torch

from mbrm.nn import (
    DerivedFeature,
    EnsembleLinear,
    EnsembleMLP,
    Normalizer,
    StateFeatures,
    bootstrap_indices,
    inference_copy,
    member_mean_std,
)


def _member_forward(mlp: EnsembleMLP, e: int, x: torch.Tensor) -> torch.Tensor:
    h = x
    for i, lin in enumerate(mlp.linears):
        h = h @ lin.weight[e] + lin.bias[e, 0]
        if i < len(mlp.linears) - 1:
            h = mlp.act(h)
    return h


@pytest.mark.parametrize("activation", ["silu", "relu", "tanh"])
def test_ensemble_mlp_equals_loop_over_members(torch_gen, activation):
    mlp = EnsembleMLP(5, 7, 3, hidden=32, layers=3, activation=activation, generator=torch_gen)
    x = torch.randn(5, 11, 7, generator=torch_gen)
    y = mlp(x)
    for e in range(5):
        torch.testing.assert_close(y[e], _member_forward(mlp, e, x[e]), atol=1e-6, rtol=0)


def test_members_are_initialised_independently(torch_gen):
    lin = EnsembleLinear(4, 8, 8, generator=torch_gen)
    w = lin.weight.detach().reshape(4, -1)
    assert torch.corrcoef(w).fill_diagonal_(0).abs().max() < 0.5


def test_bfloat16_copy_is_close_and_float32_input_accepted(torch_gen):
    mlp = EnsembleMLP(3, 6, 4, hidden=64, layers=2, generator=torch_gen)
    x = torch.randn(3, 50, 6, generator=torch_gen)
    bf = inference_copy(mlp, "bfloat16")
    assert next(bf.parameters()).dtype == torch.bfloat16
    assert not any(p.requires_grad for p in bf.parameters())
    torch.testing.assert_close(bf(x).float(), mlp(x), atol=0.05, rtol=0.05)
    assert next(mlp.parameters()).dtype == torch.float32  # the original is untouched


def test_select_keeps_chosen_members(torch_gen):
    mlp = EnsembleMLP(5, 4, 2, hidden=16, layers=2, generator=torch_gen)
    x = torch.randn(5, 9, 4, generator=torch_gen)
    sub = mlp.select([3, 1])
    torch.testing.assert_close(sub(x[[3, 1]]), mlp(x)[[3, 1]])


def test_bad_shapes_and_names_are_clear_errors(torch_gen):
    mlp = EnsembleMLP(2, 4, 1, hidden=8, layers=1, generator=torch_gen)
    with pytest.raises(ValueError, match="expected input"):
        mlp(torch.zeros(3, 5, 4))
    with pytest.raises(ValueError, match="unknown activation"):
        EnsembleMLP(2, 4, 1, activation="swish-ish")
    with pytest.raises(ValueError, match="unknown dtype"):
        inference_copy(mlp, "float8")


def test_normalizer_keeps_constant_dimensions_finite():
    n = Normalizer(3)
    x = torch.tensor([[1.0, 5.0, 2.0], [3.0, 5.0, 4.0]])
    n.fit(x)
    y = n(x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(n.inverse(y), x)
    with pytest.raises(ValueError, match="non-finite"):
        n.fit(torch.tensor([[float("nan"), 0.0, 0.0]]))


def test_bootstrap_is_seeded(torch_gen):
    a = bootstrap_indices(100, 4, torch.Generator().manual_seed(3))
    b = bootstrap_indices(100, 4, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (4, 100)
    assert not torch.equal(a[0], a[1])


def test_state_features_drop_excluded_and_encode_periodic_angles():
    feats = StateFeatures(
        np.array([False, True, True, True]), np.array([False, True, False, False])
    )
    assert feats.out_dim == 4
    s = torch.tensor([[5.0, 0.3, 2.0, -1.0]])
    torch.testing.assert_close(
        feats(s), torch.tensor([[2.0, -1.0, np.sin(0.3), np.cos(0.3)]], dtype=torch.float32)
    )
    # a full turn of a periodic angle gives the same features; the dropped position never matters
    turned = s + torch.tensor([[100.0, 2 * np.pi, 0.0, 0.0]])
    torch.testing.assert_close(feats(turned), feats(s), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="periodic_mask"):
        StateFeatures(np.ones(3, bool), np.ones(4, bool))


@pytest.mark.parametrize("unbiased", [True, False])
def test_member_mean_std_equals_torch(torch_gen, unbiased):
    y = torch.randn(5, 7, 3, 4, generator=torch_gen) * 3 + 1
    mean, std = member_mean_std(y, unbiased=unbiased)
    torch.testing.assert_close(mean, y.mean(0), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(std, y.std(0, unbiased=unbiased), atol=1e-6, rtol=1e-5)
    _, one = member_mean_std(y[:1], unbiased=False)
    assert torch.equal(one, torch.zeros(7, 3, 4))


@pytest.mark.parametrize("activation", ["silu", "relu", "tanh", "elu", "leaky_relu"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_infer_into_scratch_equals_forward(torch_gen, activation, dtype):
    mlp = inference_copy(
        EnsembleMLP(3, 7, 4, hidden=16, layers=3, activation=activation, generator=torch_gen),
        dtype,
    )
    scratch = mlp.scratch(11)
    for rows in (11, 5):  # a smaller batch reuses the front of the same buffer
        x = torch.randn(3, rows, 7, generator=torch_gen)
        tol = {"atol": 1e-6, "rtol": 1e-5} if dtype == "float32" else {}  # bfloat16: its defaults
        torch.testing.assert_close(mlp.infer(x, scratch), mlp(x), **tol)
    with pytest.raises(ValueError, match="too few"):
        mlp.infer(torch.randn(3, 12, 7, generator=torch_gen), scratch)
    linear = EnsembleMLP(2, 3, 1, layers=0, generator=torch_gen)  # no hidden layer
    x = torch.randn(2, 4, 3, generator=torch_gen)
    torch.testing.assert_close(linear.infer(x, linear.scratch(4)), linear(x).detach())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_infer_activation_into_another_buffer_is_bit_identical_to_in_place(
    torch_gen, dtype, monkeypatch
):
    """SiLU written into the other scratch region (faster) changes no bit of the result,
    so runs recorded with the in-place form replay exactly."""
    import mbrm.nn

    mlp = inference_copy(EnsembleMLP(3, 7, 4, hidden=32, layers=3, generator=torch_gen), dtype)
    x = torch.randn(3, 50, 7, generator=torch_gen) * 3
    fast = mlp.infer(x, mlp.scratch(50)).clone()
    monkeypatch.setattr(mbrm.nn, "OUT_ACTIVATIONS", {})
    assert torch.equal(mlp.infer(x, mlp.scratch(50)), fast)


def test_derived_features_join_only_when_their_inputs_are_kept():
    total = DerivedFeature("sum01", (0, 1), lambda s: s[..., 0] + s[..., 1])
    third = DerivedFeature("twice2", (2,), lambda s: 2 * s[..., 2])
    s = torch.tensor([[1.0, 2.0, 3.0]])
    both = StateFeatures(np.ones(3, bool), None, [total, third])
    assert both.out_dim == 5 and both.derived_names == ["sum01", "twice2"]
    torch.testing.assert_close(both(s), torch.tensor([[1.0, 2.0, 3.0, 3.0, 6.0]]))
    # dimension 1 dropped: the feature reading it is dropped too, so nothing leaks through it
    some = StateFeatures(np.array([True, False, True]), None, [total, third])
    assert some.derived_names == ["twice2"]
    torch.testing.assert_close(some(s), torch.tensor([[1.0, 3.0, 6.0]]))
    with pytest.raises(ValueError, match="reads dimensions"):
        StateFeatures(np.ones(3, bool), None, [DerivedFeature("bad", (5,), lambda s: s[..., 0])])
