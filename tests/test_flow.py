"""Flow, Chain and the torch.distributions view."""

from __future__ import annotations

import math

import pytest
import torch

from torchnf import Chain, Flow
from torchnf.core.registry import entries
from torchnf.distributions import DiagonalNormal, GaussianMixture, StandardNormal, StudentT, Uniform
from torchnf.layers import ActNorm, AffineCoupling, LULinear, Reverse
from torchnf.models import RealNVP

MODELS = entries("model")


@pytest.mark.parametrize("entry", MODELS, ids=[e.name for e in MODELS])
def test_model_round_trip_float32_and_distribution_log_prob(entry) -> None:
    torch.manual_seed(0)
    flow = entry.example(0)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.distributions.transform_to(flow.domain)(torch.randn(16, *flow.event_shape))
    y, log_det = flow(x)
    assert log_det.shape == (16,)
    torch.testing.assert_close(flow.inverse(y), x, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(flow.distribution().log_prob(x), flow.log_prob(x))


def _conditional_flow() -> Flow:
    torch.manual_seed(0)
    return RealNVP(2, n_layers=2, hidden_sizes=(8,), context_size=3)


def test_sample_shapes_follow_torch_distributions() -> None:
    flow = _conditional_flow()
    context = torch.randn(5, 3)
    assert flow.sample(4, context).shape == (4, 5, 2)
    assert flow.sample((), context).shape == (5, 2)
    assert flow.sample((2, 3), context).shape == (2, 3, 5, 2)
    dist = flow.distribution(context)
    assert dist.batch_shape == (5,) and dist.event_shape == (2,)
    assert dist.sample((7,)).shape == (7, 5, 2)


def test_sample_and_log_prob_matches_log_prob() -> None:
    flow = _conditional_flow()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    context = torch.randn(6, 3)
    x, log_prob = flow.sample_and_log_prob(3, context)
    torch.testing.assert_close(log_prob, flow.log_prob(x, context.expand(3, 6, 3)))


def test_distribution_log_prob_broadcasts_context_over_sample_dims() -> None:
    flow = _conditional_flow()
    context = torch.randn(5, 3)
    dist = flow.distribution(context)
    x = dist.sample((4,))
    torch.testing.assert_close(dist.log_prob(x), flow.log_prob(x, context.expand(4, 5, 3)))


def test_rsample_is_differentiable() -> None:
    flow = RealNVP(2, n_layers=2, hidden_sizes=(8,))
    x = flow.distribution().rsample((8,))
    x.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in flow.parameters())


def test_missing_context_is_refused_when_sampling() -> None:
    with pytest.raises(ValueError, match="context"):
        _conditional_flow().sample(3)


def test_context_batch_mismatch_is_refused() -> None:
    flow = _conditional_flow()
    with pytest.raises(ValueError, match="context"):
        flow.log_prob(torch.randn(4, 2), torch.randn(5, 3))


def test_context_encoder_is_applied_once() -> None:
    calls = []

    class Encoder(torch.nn.Module):
        def forward(self, c):
            calls.append(c.shape)
            return c[..., :2]

    layers = Chain(AffineCoupling(2, hidden_sizes=(4,), context_size=2), Reverse(2))
    flow = Flow(layers, context_encoder=Encoder(), context_size=5)
    flow.log_prob(torch.randn(3, 2), torch.randn(3, 5))
    assert calls == [(3, 5)]


def test_chain_indexing_slicing_and_trace() -> None:
    torch.manual_seed(0)
    chain = Chain(ActNorm(3), LULinear(3), Reverse(3))
    assert len(chain) == 3 and isinstance(chain[1], LULinear)
    assert len(chain[1:]) == 2
    x = torch.randn(4, 3)
    steps = chain.forward_trace(x)
    y, log_det = chain(x)
    assert len(steps) == 3
    torch.testing.assert_close(steps[-1][0], y)
    torch.testing.assert_close(sum(ld for _, ld in steps), log_det)


def test_chain_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="expects"):
        Chain(Reverse(3), Reverse(2))


def test_inverse_view_round_trip() -> None:
    layer = LULinear(3)
    assert layer.inv.inv is layer
    y = torch.randn(2, 3)
    x, ld = layer.inv(y)
    torch.testing.assert_close(layer(x)[0], y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ld, -layer(x)[1])


def test_initialize_standardizes_each_actnorm_on_what_it_receives() -> None:
    torch.manual_seed(0)
    flow = Flow(Chain(ActNorm(2), LULinear(2), ActNorm(2)))
    x = torch.randn(500, 2) * torch.tensor([100.0, 0.01]) + 50
    z = flow.initialize(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(2), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(2), atol=1e-4, rtol=0)
    assert bool(flow.bijector[0].initialized) and bool(flow.bijector[2].initialized)


@pytest.mark.parametrize(
    "base",
    [
        StandardNormal(2),
        DiagonalNormal(2),
        GaussianMixture(2, n_components=3),
        StudentT(2, df=6.0),
        Uniform(2, low=-1.0, high=2.0),
    ],
    ids=["standard", "diagonal", "mixture", "student-t", "uniform"],
)
def test_base_samples_and_log_prob_normalizes(base) -> None:
    with torch.no_grad():
        for p in base.parameters():
            p.add_(0.3 * torch.randn_like(p))
    z = base.sample((4000,))
    assert z.shape == (4000, 2)
    # log-density normalizes: integrate on a grid
    g = torch.linspace(-12, 12, 601, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    if isinstance(base, Uniform):
        assert bool(((z >= -1) & (z <= 2)).all())
        inside_outside = base.log_prob(torch.tensor([[0.0, 1.0], [0.0, 2.5]]))
        assert torch.equal(inside_outside, torch.tensor([-math.log(9.0), -math.inf]))
        return
    mass = base.double().log_prob(grid).exp().sum() * (g[1] - g[0]) ** 2
    torch.testing.assert_close(mass, torch.tensor(1.0, dtype=torch.float64), atol=1e-3, rtol=0)


def test_module_apply_works_on_models_with_lu_and_qr_weights() -> None:
    from torchnf.layers import QRLinear

    chain = Chain(LULinear(3), QRLinear(3))
    chain.apply(lambda m: None)
    assert chain(torch.randn(2, 3))[0].shape == (2, 3)
