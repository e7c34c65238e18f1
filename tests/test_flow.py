"""Flow, Chain and the torch.distributions view."""

from __future__ import annotations

import math

import pytest
import torch

from torchnf import Chain, Flow
from torchnf.core.registry import entries
from torchnf.distributions import DiagonalNormal, GaussianMixture, StandardNormal, StudentT, Uniform
from torchnf.distributions.base import BaseDistribution
from torchnf.layers import ActNorm, AffineCoupling, Logit, LULinear, Reverse
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


def _count_forward_passes(flow: Flow) -> list[int]:
    calls: list[int] = []
    flow.bijector.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_log_prob_of_an_rsample_reuses_the_sampling_pass() -> None:
    flow = _conditional_flow()
    calls = _count_forward_passes(flow)
    dist = flow.distribution(torch.randn(5, 3))
    x = dist.rsample((4,))
    log_prob = dist.log_prob(x)
    assert calls == [] and log_prob.grad_fn is not None
    torch.testing.assert_close(log_prob, flow.log_prob(x, dist.context.expand(4, 5, 3)))


def test_log_prob_is_recomputed_after_an_in_place_edit_or_for_a_sample() -> None:
    flow = _conditional_flow()
    calls = _count_forward_passes(flow)
    dist = flow.distribution(torch.randn(5, 3))
    x = dist.rsample()
    x.add_(1.0)
    dist.log_prob(x)
    y = dist.sample()
    assert dist.log_prob(y).grad_fn is not None and len(calls) == 2


EXPAND = {
    # an unconditional flow draws iid over the new batch
    "unconditional": (0, (), (4, 3)),
    # a conditional flow's context rows are broadcast: a new leading dim, a widened size-1 dim
    "conditional": (3, (1,), (4, 5)),
}


@pytest.mark.parametrize("context_size, batch, expanded", EXPAND.values(), ids=list(EXPAND))
def test_distribution_expand(context_size, batch, expanded) -> None:
    torch.manual_seed(0)
    flow = RealNVP(2, n_layers=2, hidden_sizes=(8,), context_size=context_size)
    context = torch.randn(*batch, 3) if context_size else None
    calls = _count_forward_passes(flow)
    dist = flow.distribution(context).expand(expanded)
    x = dist.rsample((2,))
    assert dist.batch_shape == expanded and x.shape == (2, *expanded, 2)
    assert dist.log_prob(x).shape == (2, *expanded) and calls == []
    contexts = None if context is None else context.expand(2, *expanded, 3)
    torch.testing.assert_close(dist.log_prob(x.clone()), flow.log_prob(x, contexts))


def test_distribution_expand_refuses_to_shrink_or_change_a_batch() -> None:
    dist = _conditional_flow().distribution(torch.randn(5, 3))
    with pytest.raises(
        ValueError, match=r"^cannot expand a distribution of batch shape \(5,\) to \(4,\)$"
    ):
        dist.expand((4,))


def test_distribution_support_is_the_flow_domain() -> None:
    support = Flow(Logit(2)).distribution().support
    assert support.event_dim == 1
    assert support.check(torch.tensor([[0.5, 0.5], [1.5, 0.5]])).tolist() == [True, False]


def test_distribution_of_a_conditional_flow_needs_a_context() -> None:
    with pytest.raises(ValueError, match=r"^this flow is conditional: expected context of shape"):
        _conditional_flow().distribution()


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


DTYPE_MISMATCH = {
    "log_prob": lambda flow, x: flow.log_prob(x),
    "forward": lambda flow, x: flow(x),
    "inverse": lambda flow, x: flow.inverse(x),
    "inverse_and_log_det": lambda flow, x: flow.inverse_and_log_det(x),
    "initialize": lambda flow, x: flow.initialize(x),
    "distribution": lambda flow, x: flow.distribution().log_prob(x),
}


@pytest.mark.parametrize("call", list(DTYPE_MISMATCH.values()), ids=list(DTYPE_MISMATCH))
def test_float64_batch_into_a_float32_flow_is_refused_with_the_fix(call) -> None:
    flow = RealNVP(2, n_layers=2, hidden_sizes=(8,))
    message = (
        r"expected [xy] of dtype torch.float32 like the flow's parameters, got torch.float64; "
        r"cast with [xy]\.float\(\) or convert the flow with flow\.double\(\)$"
    )
    with pytest.raises(ValueError, match=message):
        call(flow, torch.randn(3, 2, dtype=torch.float64))


def test_float32_batch_into_a_float64_flow_is_refused_with_the_fix() -> None:
    flow = RealNVP(2, n_layers=2, hidden_sizes=(8,)).double()
    with pytest.raises(
        ValueError, match=r"torch.float64 .* got torch.float32; cast with x\.double"
    ):
        flow.log_prob(torch.randn(3, 2))


@pytest.mark.parametrize(
    "flow",
    [Flow(Reverse(2), Uniform(2, low=-1.0, high=2.0).double()), Flow(Reverse(2)).double()],
    ids=["float64-buffers", "converted"],
)
def test_flow_dtype_comes_from_buffers_without_parameters(flow) -> None:
    assert flow.log_prob(torch.zeros(3, 2, dtype=torch.float64)).dtype == torch.float64


def test_flow_without_floating_parameters_or_buffers_takes_any_dtype() -> None:
    class Base(BaseDistribution):
        def log_prob(self, z: torch.Tensor) -> torch.Tensor:
            return -0.5 * z.square().sum(-1)

    flow = Flow(Reverse(2), Base(2))
    assert not any(t.is_floating_point() for t in [*flow.parameters(), *flow.buffers()])
    assert flow.log_prob(torch.zeros(3, 2, dtype=torch.float64)).dtype == torch.float64


UNCONDITIONAL_WITH_CONTEXT = {
    "log_prob": lambda flow, c: flow.log_prob(torch.zeros(4, 2), c),
    "forward": lambda flow, c: flow(torch.zeros(4, 2), c),
    "inverse": lambda flow, c: flow.inverse(torch.zeros(4, 2), c),
    "sample": lambda flow, c: flow.sample(3, c),
    "sample_and_log_prob": lambda flow, c: flow.sample_and_log_prob((), c),
    "distribution": lambda flow, c: flow.distribution(c).sample((2,)),
}


@pytest.mark.parametrize(
    "call", list(UNCONDITIONAL_WITH_CONTEXT.values()), ids=list(UNCONDITIONAL_WITH_CONTEXT)
)
def test_context_given_to_an_unconditional_flow_is_refused(call) -> None:
    flow = RealNVP(2, n_layers=2, hidden_sizes=(8,))
    message = (
        r"^the flow is unconditional \(context_size=0\) but a context was given; drop the "
        r"context or build the flow with context_size=3$"
    )
    with pytest.raises(ValueError, match=message):
        call(flow, torch.randn(4, 3))


CONTEXT_DTYPE = {
    "log_prob": lambda flow, c: flow.log_prob(torch.zeros(4, 2), c),
    "sample": lambda flow, c: flow.sample(3, c),
}


@pytest.mark.parametrize("call", list(CONTEXT_DTYPE.values()), ids=list(CONTEXT_DTYPE))
def test_float64_context_into_a_float32_flow_is_refused(call) -> None:
    with pytest.raises(ValueError, match=r"expected context of dtype torch.float32 .* context\."):
        call(_conditional_flow(), torch.randn(4, 3, dtype=torch.float64))
