"""Importance sampling with a flow as the proposal: evidence, ESS, standard error, Pareto k."""

from __future__ import annotations

import math

import pytest
import torch

from torchnf import Flow
from torchnf.data import get_energy
from torchnf.diagnostics import ImportanceEstimate, importance_sample, pareto_k
from torchnf.distributions.base import DiagonalNormal
from torchnf.layers import Reverse
from torchnf.models import RealNVP

D = torch.distributions
F64 = torch.float64


def _gaussian_flow(loc: list[float], log_scale: list[float]) -> Flow:
    """q = N(reverse(loc), diag(reverse(exp(log_scale))^2)) in float64."""
    base = DiagonalNormal(len(loc)).double()
    with torch.no_grad():
        base.loc.copy_(torch.tensor(loc, dtype=F64))
        base.log_scale.copy_(torch.tensor(log_scale, dtype=F64))
    return Flow(Reverse(len(loc)), base)


def _gpd_log_weights(k: float, n: int, seed: int) -> torch.Tensor:
    """log of n draws of a generalized Pareto of shape k and scale 1 (inverse CDF)."""
    u = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return torch.log(torch.expm1(-k * torch.log1p(-u)) / k)


# n = 10^6: M = 3000 tail weights; the estimator's standard error is (1 + k) / sqrt(M).
@pytest.mark.parametrize("seed", [0, 1, 2], ids=["seed0", "seed1", "seed2"])
@pytest.mark.parametrize("k", [0.2, 0.5, 0.9, -0.5], ids=["k0.2", "k0.5", "k0.9", "k-0.5"])
def test_pareto_k_recovers_the_shape_of_generalized_pareto_weights(k: float, seed: int) -> None:
    estimate = pareto_k(_gpd_log_weights(k, 10**6, seed))
    assert abs(estimate - k) < 3 * (1 + k) / math.sqrt(3000), estimate


def test_pareto_k_of_uniform_weights_is_negative() -> None:
    u = torch.rand(10**5, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert -1.1 < pareto_k(torch.log(u)) < -0.8  # bounded, k = -1


@pytest.mark.parametrize(
    "log_weights, expected",
    [
        (torch.zeros(20, dtype=F64), math.nan),
        (torch.full((100,), 3.0, dtype=F64), -math.inf),
        (1e-5 * torch.randn(100, generator=torch.Generator().manual_seed(0)), -math.inf),
    ],
    ids=["n20-too-few", "equal", "rounding-noise"],
)
def test_pareto_k_without_a_tail(log_weights: torch.Tensor, expected: float) -> None:
    assert pareto_k(log_weights) == pytest.approx(expected, nan_ok=True)


def test_pareto_k_survives_ties_at_the_threshold() -> None:
    # 990 equal weights and 10 larger ones: most exceedances of the 96 tail weights are 0.
    lw = torch.cat([torch.zeros(990, dtype=F64), torch.linspace(1, 3, 10, dtype=F64)])
    assert math.isfinite(pareto_k(lw))


@pytest.mark.parametrize("offset", [0.0, 800.0, -800.0], ids=["0", "+800", "-800"])
def test_estimate_matches_the_direct_formulas(offset: float) -> None:
    # exp(log w) overflows (or underflows) at +-800: the estimate must not.
    lw = 2 * torch.randn(500, generator=torch.Generator().manual_seed(0), dtype=F64)
    est = ImportanceEstimate.from_log_weights(torch.zeros(500, 3), lw + offset)
    w = torch.exp(lw)
    assert est.n == 500 and est.samples.shape == (500, 3)
    assert est.ess == pytest.approx(float(w.sum() ** 2 / w.square().sum()), rel=1e-12)
    assert est.log_evidence == pytest.approx(float(w.mean().log()) + offset, rel=1e-12)
    assert est.stderr == pytest.approx(float(w.std() / (math.sqrt(500) * w.mean())), rel=1e-12)
    assert est.pareto_k == pytest.approx(pareto_k(lw), rel=1e-12)  # k ignores a common factor
    assert est.pareto_k_threshold == min(1 - 1 / math.log10(500), 0.7)
    assert str(est).startswith(f"log Z = {est.log_evidence:.4f} ± ")


def _exact_target(kind: str):
    """(flow, log_prob, log Z) with q equal to p~ / Z."""
    flow = _gaussian_flow([0.5, -1.0, 2.0], [0.3, -0.2, 0.1])
    loc, scale = flow.base.loc.detach().flip(0), flow.base.log_scale.detach().exp().flip(0)
    target = D.Independent(D.Normal(loc, scale), 1)
    if kind == "distribution":
        return flow, target, 0.0
    if kind == "callable":
        return flow, lambda x: target.log_prob(x) + 1.7, 1.7
    torch.manual_seed(0)
    realnvp = RealNVP(3, n_layers=2, hidden_sizes=(8,)).double()
    with torch.no_grad():
        for p in realnvp.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return realnvp, lambda x: realnvp.log_prob(x) - 2.0, -2.0


@pytest.mark.parametrize("kind", ["distribution", "callable", "realnvp"])
def test_the_exact_proposal_gives_ess_n_and_the_exact_evidence(kind: str) -> None:
    flow, log_prob, log_z = _exact_target(kind)
    est = importance_sample(flow, log_prob, 1000, seed=0)
    assert est.samples.shape == (1000, 3) and est.log_weights.dtype == F64
    assert est.ess == pytest.approx(1000, rel=1e-12)
    assert est.log_evidence == pytest.approx(log_z, abs=1e-12)
    assert est.stderr < 1e-12 and est.pareto_k == -math.inf


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4], ids=[f"seed{s}" for s in range(5)])
def test_a_broader_proposal_finds_log_z_within_three_standard_errors(seed: int) -> None:
    cov = torch.tensor([[1.0, 0.5], [0.5, 0.8]], dtype=F64)
    target = D.MultivariateNormal(torch.tensor([0.3, -0.2], dtype=F64), cov)
    flow = _gaussian_flow([0.0, 0.0], [math.log(1.5)] * 2)
    est = importance_sample(flow, lambda x: target.log_prob(x) - 3.0, 2000, seed=seed)
    assert abs(est.log_evidence + 3.0) < 3 * est.stderr < 0.1
    assert 600 < est.ess < 1500 and est.pareto_k < 0  # broader proposal: bounded weights


# Target N(0, 1), proposal N(0, s^2) with s < 1: the weights' tail has k = 1 - s^2
# (0.36 and 0.75), approached slowly (log factors), so only the side of 0.5 is checked.
@pytest.mark.parametrize("seed", [0, 1, 2], ids=["seed0", "seed1", "seed2"])
@pytest.mark.parametrize("scale", [0.8, 0.5], ids=["s0.8", "s0.5"])
def test_pareto_k_flags_a_too_narrow_proposal(scale: float, seed: int) -> None:
    flow = _gaussian_flow([0.0], [math.log(scale)])
    est = importance_sample(flow, lambda x: -0.5 * x[:, 0] ** 2, 10000, seed=seed)
    assert (est.pareto_k >= 0.5) == (scale == 0.5) and est.pareto_k > 0, est


@pytest.mark.parametrize("name", ["u1", "u2", "u3", "u4", "ring"])
def test_an_energy_log_normalizer_by_importance_sampling(name: str) -> None:
    energy = get_energy(name)
    flow = _gaussian_flow([-1.0, 0.0], [math.log(3.0), math.log(4.0)])  # x ~ N((0, -1), (4, 3))
    est = importance_sample(flow, energy, 20000, seed=0)
    assert abs(est.log_evidence - energy.log_normalizer) < 3 * est.stderr < 0.1


@pytest.mark.parametrize("shape", [(3,), (1, 3)], ids=["(3,)", "(1,3)"])
def test_a_conditional_flow_is_a_proposal_for_one_context(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    flow = RealNVP(2, n_layers=2, hidden_sizes=(8,), context_size=3).double()
    context = torch.tensor([0.5, -1.0, 2.0], dtype=F64)
    target = D.MultivariateNormal(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64))
    est = importance_sample(flow, target, 300, context=context.reshape(shape), seed=1)
    assert est.samples.shape == (300, 2)
    with torch.no_grad():
        log_q = flow.log_prob(est.samples, context.expand(300, 3))
    assert torch.allclose(est.log_weights, target.log_prob(est.samples) - log_q)


class _RecordsMode(Reverse):
    """Reverse that records whether it was in training mode when sampled through."""

    def _inverse(self, y: torch.Tensor, context: torch.Tensor | None):
        self.modes.append(self.training)
        return super()._inverse(y, context)


def test_importance_sample_is_seeded_batched_and_leaves_the_flow_and_rng_alone() -> None:
    layer = _RecordsMode(2)
    layer.modes = []
    flow = Flow(layer)
    target = get_energy("u1")
    rng = torch.get_rng_state()
    a = importance_sample(flow, target, 50, batch_size=7, seed=3)
    b = importance_sample(flow, target, 50, batch_size=7, seed=3)
    c = importance_sample(flow, target, 50, seed=4)
    assert torch.equal(torch.get_rng_state(), rng) and flow.training
    assert a.samples.shape == c.samples.shape == (50, 2) and a.log_weights.shape == (50,)
    assert torch.equal(a.log_weights, b.log_weights)
    assert not torch.equal(a.log_weights, c.log_weights)
    assert not a.log_weights.requires_grad and not a.samples.requires_grad
    assert layer.modes == [False] * 17  # 8 + 8 batches of 7, 1 of 50: all in eval mode


@pytest.mark.parametrize(
    "args, match",
    [
        ((torch.nn.Linear(2, 2), get_energy("u1"), 10), "expected a torchnf Flow"),
        ((None, 3.0, 10), "expected log_prob to be a callable"),
        ((None, get_energy("u1"), 1), "expected a number of samples n >= 2"),
        ((None, get_energy("u1"), 10, None, 0), "expected batch_size >= 1"),
        ((None, D.Normal(torch.zeros(2), 1.0), 10), r"shape \(10,\) .* got torch.Size\(\[10, 2"),
        ((None, lambda x: x[:, 0] / 0, 10), "expected log weights in"),
        ((None, lambda x: x.new_full((len(x),), -math.inf), 10), "at least one finite"),
    ],
    ids=["not-a-flow", "not-callable", "n1", "batch0", "wrong-shape", "nan", "all-inf"],
)
def test_bad_input_is_refused(args: tuple, match: str) -> None:
    flow = Flow(Reverse(2))
    args = (flow if args[0] is None else args[0], *args[1:])
    with pytest.raises(ValueError, match=match):
        importance_sample(*args)


def test_a_conditional_flow_needs_one_context() -> None:
    flow = RealNVP(2, n_layers=2, hidden_sizes=(8,), context_size=3)
    with pytest.raises(ValueError, match=r"one context of shape \(3,\) or \(1, 3\), got \(2, 3\)"):
        importance_sample(flow, get_energy("u1"), 10, context=torch.zeros(2, 3))


@pytest.mark.parametrize(
    "log_weights",
    [torch.zeros(5, 2), torch.zeros(1), [0.0, 1.0]],
    ids=["2-d", "n1", "list"],
)
def test_from_log_weights_refuses_bad_shapes(log_weights) -> None:
    with pytest.raises(ValueError, match=r"expected log_weights of shape \(n,\)"):
        ImportanceEstimate.from_log_weights(torch.zeros(5, 2), log_weights)
