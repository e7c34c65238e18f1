"""NAF's deep sigmoidal flow, UMNN's integral transformer and the Bernstein polynomial."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from torchnf import nll
from torchnf.data.targets import get_target
from torchnf.functional.polynomial import bernstein_basis
from torchnf.functional.quadrature import gauss_legendre
from torchnf.functional.solvers import ConvergenceError
from torchnf.layers import BernsteinTransformer, DSFTransformer, UMNNTransformer
from torchnf.layers.neural import MonotoneTransformer
from torchnf.models import NAF, UMNN, BernsteinFlow

TRANSFORMERS: dict[str, Callable[[], MonotoneTransformer]] = {
    "DSF": lambda: DSFTransformer(n_components=5),
    "UMNN": lambda: UMNNTransformer(embedding_size=3, hidden_sizes=(16, 16)),
    "Bernstein": lambda: BernsteinTransformer(degree=7, tail_bound=3.0),
    "Bernstein-noaffine": lambda: BernsteinTransformer(degree=5, affine=False),
}
every_transformer = pytest.mark.parametrize("name", list(TRANSFORMERS))
WIDE = torch.cat([torch.linspace(-50, 50, 201), torch.linspace(-3, 3, 61)]).double()


def _perturbed(name: str, seed: int = 0) -> MonotoneTransformer:
    torch.manual_seed(seed)
    tau = TRANSFORMERS[name]().double()
    with torch.no_grad():
        for p in tau.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return tau


def _params(tau: MonotoneTransformer, n: int, scale: float = 1.5, seed: int = 1) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, 2, tau.params_per_feature, generator=g, dtype=torch.float64)


def _wide_inputs() -> Tensor:
    return WIDE[:, None].expand(-1, 2).contiguous()


def test_dsf_starts_near_the_identity() -> None:
    tau = DSFTransformer(n_components=8).double()
    x = torch.linspace(-60, 60, 2401, dtype=torch.float64)[:, None]
    y, log_det = tau(x, torch.zeros(*x.shape, 24, dtype=torch.float64))
    slope = log_det.exp()
    torch.testing.assert_close(y, -y.flip(0))  # odd, so y(0) = 0
    assert 0.9 <= float(slope.min()) and float(slope.max()) <= 1 + 1e-12
    assert float((y - x).abs().max()) < 0.44


def test_dsf_with_one_component_is_affine() -> None:
    tau = DSFTransformer(n_components=1).double()
    params = torch.tensor([[0.7, -1.3, 5.0]], dtype=torch.float64)
    x = torch.tensor([[-40.0], [0.3], [25.0]], dtype=torch.float64)
    y, log_det = tau(x, params.expand(3, 1, 3))
    a = 1e-3 + torch.nn.functional.softplus(torch.tensor(0.7) + tau.slope_offset).double()
    torch.testing.assert_close(y, a * x - 1.3)
    torch.testing.assert_close(log_det, a.log().expand(3, 1))


@pytest.mark.parametrize("name", ["UMNN", "Bernstein", "Bernstein-noaffine"])
def test_zero_params_give_the_identity(name: str) -> None:
    tau = TRANSFORMERS[name]().double()
    x = _wide_inputs()
    y, log_det = tau(x, torch.zeros(*x.shape, tau.params_per_feature, dtype=torch.float64))
    torch.testing.assert_close(y, x, atol=1e-12, rtol=0)
    assert float(log_det.detach().abs().max()) < 1e-12


@every_transformer
def test_increasing_with_the_log_derivative_of_the_map(name: str) -> None:
    tau = _perturbed(name)
    x = torch.linspace(-50, 50, 4001, dtype=torch.float64)[:, None].expand(-1, 2).contiguous()
    params = _params(tau, 1).expand(len(x), 2, -1)
    x.requires_grad_()
    y, log_det = tau(x, params)
    (slope,) = torch.autograd.grad(y.sum(), x)
    assert bool((y.diff(dim=0) > 0).all())
    # UMNN: the derivative of the computed quadrature differs from g by its error.
    torch.testing.assert_close(slope.log(), log_det, atol=1e-9, rtol=0)


@every_transformer
def test_inverse_on_wide_inputs(name: str) -> None:
    tau = _perturbed(name)
    x = _wide_inputs()
    params = _params(tau, len(x))
    with torch.no_grad():
        y, log_det = tau(x, params)
        x_back, log_det_inv = tau.inverse(y, params)
    assert float(((x_back - x).abs() / (1 + x.abs())).max()) < 1e-11
    torch.testing.assert_close(log_det_inv, -log_det, atol=1e-11, rtol=0)


@every_transformer
def test_bracket_holds_the_solution(name: str) -> None:
    tau = _perturbed(name)
    params = _params(tau, len(WIDE), scale=3.0)
    prepared = tau._prepare(params)
    y = 2 * _wide_inputs()
    lower, upper = tau._bracket(y, prepared)
    assert bool((tau._evaluate(lower, prepared)[0] <= y + 1e-9).all())
    assert bool((tau._evaluate(upper, prepared)[0] >= y - 1e-9).all())


@every_transformer
def test_finite_values_and_gradients_at_extremes(name: str) -> None:
    tau = _perturbed(name).float()
    x = torch.tensor([-1e6, -1e3, 0.0, 1e3, 1e6]).repeat_interleave(2).reshape(5, 2)
    params = (30 * _params(tau, 5)).float().requires_grad_()
    y, log_det = tau(x, params)
    assert bool(y.isfinite().all() and log_det.isfinite().all())
    (grad,) = torch.autograd.grad((y.sum() + log_det.sum()), params)
    assert bool(grad.isfinite().all())


def test_umnn_quadrature_matches_a_fine_reference() -> None:
    coarse = _perturbed("UMNN")
    fine = _perturbed("UMNN")
    fine.nodes, fine.weights = gauss_legendre(256)
    x = torch.linspace(-6, 6, 241, dtype=torch.float64)[:, None].expand(-1, 2).contiguous()
    params = _params(coarse, len(x))
    with torch.no_grad():
        y, log_det = coarse(x, params)
        y_ref, log_det_ref = fine(x, params)
    assert float(((y - y_ref).abs() / (1 + y_ref.abs())).max()) < 1e-9
    torch.testing.assert_close(log_det, log_det_ref, atol=0, rtol=0)


def test_umnn_map_is_linear_beyond_the_tail_bound() -> None:
    tau = _perturbed("UMNN")
    x = torch.tensor([[5.0, -5.0], [7.0, -7.0], [60.0, -60.0]], dtype=torch.float64)
    params = _params(tau, 1).expand(3, 2, -1)
    y, log_det = tau(x, params)
    torch.testing.assert_close(y[2] - y[0], (x[2] - x[0]) * log_det[0].exp())
    torch.testing.assert_close(log_det[1], log_det[0])


def test_gradients_reach_the_umnn_integrand() -> None:
    torch.manual_seed(0)
    flow = UMNN(2, n_layers=2, hidden_sizes=(8,), embedding_size=2, integrand_sizes=(8,))
    with torch.no_grad():  # away from the zero last layers, which hide the first ones
        for p in flow.parameters():
            p.add_(0.2 * torch.randn_like(p))
    nll(flow, torch.randn(16, 2)).backward()
    integrand = [p for name, p in flow.named_parameters() if "transformer" in name]
    assert len(integrand) == 2 * 5  # per layer: first_t, first_h (2), the last linear (2)
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in integrand)


def test_gauss_legendre_is_exact_to_degree_2n_minus_1() -> None:
    nodes, weights = gauss_legendre(5)
    degrees = torch.arange(11, dtype=torch.float64)
    exact = 1 / (degrees + 1)
    errors = ((weights[:, None] * nodes[:, None] ** degrees).sum(0) - exact).abs()
    assert float(errors[:10].max()) < 1e-15 and float(errors[10]) > 1e-8


def test_bernstein_basis_is_a_partition_reproducing_lines() -> None:
    u = torch.linspace(0, 1, 11, dtype=torch.float64)
    basis = bernstein_basis(u, 6)
    torch.testing.assert_close(basis.sum(-1), torch.ones(11, dtype=torch.float64))
    torch.testing.assert_close(basis @ (torch.arange(7, dtype=torch.float64) / 6), u)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: DSFTransformer(n_components=0), "n_components >= 1"),
        (lambda: DSFTransformer(min_slope=0.0), "min_slope"),
        (lambda: DSFTransformer(tol=0.0), "tol > 0"),
        (lambda: UMNNTransformer(embedding_size=0), "embedding_size >= 1"),
        (lambda: UMNNTransformer(hidden_sizes=()), "hidden size"),
        (lambda: UMNNTransformer(tail_bound=-1.0), "tail_bound > 0"),
        (lambda: BernsteinTransformer(degree=0), "degree >= 1"),
        (lambda: BernsteinTransformer(max_iter=0), "max_iter >= 1"),
        (lambda: gauss_legendre(0), "n >= 1"),
        (lambda: bernstein_basis(torch.zeros(2), -1), "degree >= 0"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bad_arguments_are_refused(build: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_inverse_that_cannot_converge_reports_its_residual() -> None:
    tau = DSFTransformer(n_components=4, max_iter=2).double()
    y = _wide_inputs()
    with pytest.raises(ConvergenceError, match="residual up to"):
        tau.inverse(y, _params(tau, len(y)))


MODELS = {
    "NAF": lambda: NAF(2, n_layers=2, hidden_sizes=(16,), n_components=4),
    "NAF-coupling": lambda: NAF(2, n_layers=2, hidden_sizes=(16,), autoregressive=False),
    "UMNN": lambda: UMNN(2, n_layers=2, hidden_sizes=(16,), integrand_sizes=(16,), n_nodes=8),
    "BernsteinFlow": lambda: BernsteinFlow(2, n_layers=2, hidden_sizes=(16,), degree=6),
    "BernsteinFlow-coupling": lambda: BernsteinFlow(2, 2, (16,), autoregressive=False),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_fit_on_moons_reduces_the_nll_and_still_inverts(name: str) -> None:
    torch.manual_seed(0)
    flow = MODELS[name]()
    x = get_target("moons").sample(256, seed=0)
    flow.initialize(x)
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-2)
    with torch.no_grad():
        before = float(nll(flow, x))
    for _ in range(40):
        optimizer.zero_grad()
        nll(flow, x).backward()
        optimizer.step()
    with torch.no_grad():
        after = float(nll(flow, x))
        x_back = flow.inverse(flow(x)[0])
    assert after < before - 0.3
    assert float((x_back - x).abs().max()) < 1e-4
