"""MADE's autoregressive structure and the masked autoregressive layers' sequential inverse."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchnf.layers import (
    MaskedAffineAutoregressive,
    MaskedAutoregressive,
    SplineAutoregressive,
)
from torchnf.layers.transformers import AffineTransformer
from torchnf.nets.made import MADE


def _perturb(module: torch.nn.Module, scale: float, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


@settings(max_examples=25, deadline=None)
@given(
    input_size=st.integers(1, 6),
    params_per_feature=st.integers(1, 3),
    hidden=st.lists(st.integers(1, 12), min_size=1, max_size=3),
    context_size=st.sampled_from([0, 2]),
    residual=st.booleans(),
    reverse=st.booleans(),
)
def test_made_output_i_depends_exactly_on_inputs_before_i_in_its_order(
    input_size, params_per_feature, hidden, context_size, residual, reverse
) -> None:
    if residual:
        hidden = [hidden[0]] * len(hidden)
    made = MADE(
        input_size, params_per_feature, hidden, context_size, residual, activation="tanh"
    ).double()
    _perturb(made, 1.0)
    if reverse:  # then output i depends on inputs j > i: the same checks on flipped axes
        made.reverse_()
    x = torch.randn(input_size, dtype=torch.float64)
    context = torch.randn(context_size, dtype=torch.float64) if context_size else None
    jacobian = torch.autograd.functional.jacobian(lambda v: made(v, context), x)
    depends = jacobian.abs().sum(1) > 0  # (D, D): output i on input j
    if reverse:
        depends = depends.flip(0, 1)
    assert not torch.triu(depends).any()
    if min(hidden) >= input_size:  # wide enough for every connection to exist
        assert torch.tril(depends, -1)[1:].sum() == input_size * (input_size - 1) // 2


@pytest.mark.parametrize("reverse", [False, True], ids=["in-order", "reversed"])
def test_made_starts_at_zero_and_conditioner_rows_match(reverse) -> None:
    made = MADE(4, 3, (16, 16), context_size=2)
    x, context = torch.randn(5, 4), torch.randn(5, 2)
    assert torch.equal(made(x, context), torch.zeros(5, 4, 3))
    _perturb(made, 0.5)
    if reverse:
        made.reverse_()
    net = made.conditioner(context)
    full = made(x, context)
    for i in range(4):
        torch.testing.assert_close(net(x, i), full[:, i])


@pytest.mark.parametrize("context_size", [0, 2], ids=["plain", "context"])
@pytest.mark.parametrize("residual", [False, True], ids=["mlp", "resid"])
def test_made_reverse_is_the_conjugate_by_the_reversal(context_size, residual) -> None:
    # reverse_() makes g into x -> R g(R x), R the feature reversal, at any parameters.
    made = _perturb(MADE(5, 3, (12, 12), context_size, residual).double(), 0.5)
    state = {k: v.clone() for k, v in made.state_dict().items()}
    x = torch.randn(7, 5, dtype=torch.float64)
    context = torch.randn(7, context_size, dtype=torch.float64) if context_size else None
    expected = made(x.flip(-1), context).flip(-2)
    assert list(made.reverse_().order) == [4, 3, 2, 1, 0]
    torch.testing.assert_close(made(x, context), expected, rtol=1e-12, atol=1e-12)
    made.reverse_()  # twice: the original, bit for bit
    assert list(made.order) == list(range(5))
    assert all(torch.equal(v, state[k]) for k, v in made.state_dict().items())


@pytest.mark.parametrize("reverse", [False, True], ids=["in-order", "reversed"])
def test_made_weights_get_no_gradient_where_masked(reverse) -> None:
    made = _perturb(MADE(4, 2, (8, 8), context_size=2), 0.5)
    if reverse:
        made.reverse_()
    made(torch.randn(16, 4), torch.randn(16, 2)).square().sum().backward()
    masks = [made.mask0, made.mask1, made.mask_out]
    weights = [made.layers[0].weight, made.layers[1].weight, made.output.weight]
    for weight, mask in zip(weights, masks, strict=True):
        assert weight.grad[mask == 0].eq(0).all() and weight.grad[mask == 1].ne(0).any()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        pytest.param({"input_size": 0}, "input_size", id="input-size"),
        pytest.param({"hidden_sizes": ()}, "hidden", id="no-hidden"),
        pytest.param({"hidden_sizes": (8, 4), "residual": True}, "equal", id="residual-sizes"),
    ],
)
def test_made_refuses_bad_arguments(kwargs, match) -> None:
    arguments = {"input_size": 3, "params_per_feature": 2} | kwargs
    with pytest.raises(ValueError, match=match):
        MADE(**arguments)


def test_made_refuses_missing_context() -> None:
    with pytest.raises(ValueError, match="context"):
        MADE(3, 2, (8,), context_size=2)(torch.randn(4, 3))


def test_layer_refuses_mismatched_made() -> None:
    with pytest.raises(ValueError, match="params_per_feature=2"):
        MaskedAutoregressive(AffineTransformer(), MADE(3, 5, (8,)))


def _reversed(layer: MaskedAutoregressive) -> MaskedAutoregressive:
    layer.made.reverse_()
    return layer


LAYERS = [
    pytest.param(lambda c: MaskedAffineAutoregressive(6, (32, 32), c), id="affine"),
    pytest.param(lambda c: MaskedAffineAutoregressive(6, (32, 32), c, residual=True), id="resid"),
    pytest.param(
        lambda c: SplineAutoregressive(6, (32, 32), c, n_bins=6, tail_bound=3.0), id="rqs"
    ),
    pytest.param(
        lambda c: _reversed(MaskedAffineAutoregressive(6, (32, 32), c)), id="affine-reversed"
    ),
    pytest.param(
        lambda c: _reversed(SplineAutoregressive(6, (32, 32), c, n_bins=6, tail_bound=3.0)),
        id="rqs-reversed",
    ),
]


@pytest.mark.parametrize("context_size", [0, 3], ids=["plain", "context"])
@pytest.mark.parametrize("make", LAYERS)
def test_sampling_inverts_to_float32_precision(make, context_size) -> None:
    # A well-conditioned layer (as after training): errors are a few float32 ulps both ways.
    torch.manual_seed(0)
    layer = _perturb(make(context_size), 0.1)
    context = torch.randn(512, context_size) if context_size else None
    z = torch.randn(512, 6)
    with torch.no_grad():
        x, log_det_inv = layer.inverse_and_log_det(z, context)
        z_again, log_det = layer(x, context)
        x_again = layer.inverse(z_again, context)
    tol = {"atol": 100 * torch.finfo(torch.float32).eps, "rtol": 0}
    torch.testing.assert_close(z_again, z, **tol)
    torch.testing.assert_close(x_again, x, **tol)
    torch.testing.assert_close(log_det_inv, -log_det, **tol)


@pytest.mark.parametrize("make", LAYERS)
def test_inverse_is_exact_in_float64_far_from_identity(make) -> None:
    torch.manual_seed(0)
    layer = _perturb(make(3), 0.3).double()
    x, context = torch.randn(256, 6, dtype=torch.float64), torch.randn(256, 3, dtype=torch.float64)
    y, log_det = layer(x, context)
    x_back, log_det_inv = layer.inverse_and_log_det(y, context)
    torch.testing.assert_close(x_back, x, atol=1e-9, rtol=0)
    torch.testing.assert_close(log_det_inv, -log_det, atol=1e-9, rtol=0)


@pytest.mark.parametrize("make", LAYERS)
def test_inverse_with_and_without_autograd_agree(make) -> None:
    layer = _perturb(make(0), 0.3).double()
    y = torch.randn(16, 6, dtype=torch.float64, requires_grad=True)
    x, log_det = layer.inverse_and_log_det(y)
    (x.sum() + log_det.sum()).backward()
    assert y.grad.isfinite().all()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in layer.parameters())
    with torch.no_grad():
        x_fast, log_det_fast = layer.inverse_and_log_det(y)
    assert torch.equal(x.detach(), x_fast) and torch.equal(log_det.detach(), log_det_fast)


@pytest.mark.parametrize("make", LAYERS)
def test_fresh_layer_is_the_identity(make) -> None:
    layer = make(0)
    x = torch.randn(32, 6)
    y, log_det = layer(x)
    torch.testing.assert_close(y, x, atol=1e-6, rtol=0)
    torch.testing.assert_close(log_det, torch.zeros(32), atol=1e-6, rtol=0)
