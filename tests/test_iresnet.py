"""Invertible residual blocks and residual flows (i-ResNet, Residual Flows).

The contract test covers round trips, the exact log-det against autograd and reloads; these
tests cover what is specific to the family: the Lipschitz bound after training steps, the
fixed-point inverse and its failure, the implicit gradient of the inverse, and the
unbiasedness of the Russian-roulette log-det.
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian
from torch.func import functional_call

from torchnf.diagnostics import check
from torchnf.functional.lipschitz import (
    contraction_solve,
    elu,
    jacobian_product,
    lipswish,
    residual_log_det,
    roulette_log_det,
)
from torchnf.functional.solvers import ConvergenceError
from torchnf.layers import InvertibleResidualBlock
from torchnf.models import ResidualFlow


def _block(lipschitz: float = 0.9, **kwargs) -> InvertibleResidualBlock:
    """A float64 block pushed to its Lipschitz bound (raw weights scaled up 5 times)."""
    torch.manual_seed(0)
    block = InvertibleResidualBlock(3, hidden_sizes=(16, 16), lipschitz=lipschitz, **kwargs)
    with torch.no_grad():
        for linear in block.linears:
            linear.parametrizations.weight.original.mul_(5)
            linear.bias.normal_()
    return block.double()


def _descend(module: torch.nn.Module, loss_fn, steps: int, lr: float) -> None:
    """``steps`` plain gradient steps on ``loss_fn()`` (torch.optim's first step alone costs
    seconds of imports)."""
    params = list(module.parameters())
    for _ in range(steps):
        grads = torch.autograd.grad(loss_fn(), params)
        with torch.no_grad():
            for p, grad in zip(params, grads, strict=True):
                p -= lr * grad


def _residual(block: InvertibleResidualBlock, x: torch.Tensor) -> torch.Tensor:
    return block(x)[0] - x


@pytest.mark.parametrize("beta", [None, 0.0, 0.5, 1.0, 10.0], ids=lambda b: f"{b}")
def test_activation_slope_is_bounded_by_one_and_matches_autograd(beta: float | None) -> None:
    """``beta=None`` is ELU, the others LipSwish."""
    a = torch.linspace(-20, 20, 4001, dtype=torch.float64, requires_grad=True)
    if beta is None:
        value, slope = elu(a)
    else:
        value, slope = lipswish(a, torch.tensor(beta, dtype=torch.float64))
    (autograd,) = torch.autograd.grad(value.sum(), a)
    assert torch.allclose(slope, autograd, rtol=1e-12, atol=1e-14)
    assert float(slope.detach().abs().max()) <= 1.0


def test_lipswish_block_passes_the_checks() -> None:
    """The contract's numeric checks on the non-default activation (learned slopes)."""
    block = _block(activation="lipswish")
    report = check(block, atol=1e-6)
    assert report.passed, report.failures
    assert len(block.beta_raw) == 2


def test_lipschitz_bound_holds_after_optimizer_steps() -> None:
    block = _block()
    x = torch.randn(64, 3, dtype=torch.float64)
    dx = 0.1 * torch.randn(64, 3, dtype=torch.float64)

    def stretch() -> torch.Tensor:  # push Lip(g) up as hard as possible
        return -(_residual(block, x + dx) - _residual(block, x)).square().sum()

    _descend(block, stretch, steps=10, lr=0.5)
    bound = 0.9 ** (1 / 3)
    sigmas = [float(torch.linalg.matrix_norm(w.detach(), ord=2)) for w in block.weights()]
    assert max(sigmas) <= bound * (1 + 1e-12)
    assert min(sigmas) >= bound * (1 - 1e-9)  # the normalization is active on every weight
    with torch.no_grad():
        points = 3 * torch.randn(200, 3, dtype=torch.float64)
        g, slopes = block._residual(points, None, block.weights())
        eye = torch.eye(3, dtype=torch.float64)
        j = jacobian_product(eye, block.weights(), slopes)
        assert float(torch.linalg.matrix_norm(j, ord=2).max()) <= 0.9
        g_other = _residual(block, points.roll(1, 0))
        ratio = (g - g_other).norm(dim=-1) / (points - points.roll(1, 0)).norm(dim=-1)
        assert float(ratio.max()) <= 0.9


def test_analytic_jacobian_matches_autograd() -> None:
    block = _block()
    x = torch.randn(3, dtype=torch.float64)
    with torch.no_grad():
        weights = block.weights()
        slopes = block._residual(x, None, weights)[1]
        j = jacobian_product(torch.eye(3, dtype=torch.float64), weights, slopes)
    assert torch.allclose(j, jacobian(lambda v: _residual(block, v), x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_fixed_point_inverse_reaches_tolerance_on_wide_inputs(dtype: torch.dtype) -> None:
    block = _block(lipschitz=0.97).to(dtype)
    g = torch.Generator().manual_seed(3)
    x = (30 * torch.randn(512, 3, generator=g, dtype=torch.float64)).to(dtype)
    with torch.no_grad():
        y = block(x)[0]
        x_back = block.inverse(y)
    error = (x_back - x).norm(dim=-1) / (1 + x.norm(dim=-1))
    assert float(error.max()) < {torch.float32: 1e-5, torch.float64: 1e-10}[dtype]


def test_non_convergence_raises_with_the_residual() -> None:
    block = _block(max_iter=1)
    y = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(ConvergenceError, match=r"max_iter=1 .* residual up to"):
        block.inverse(y)


def test_contraction_solve_refuses_bad_iteration_limit() -> None:
    with pytest.raises(ValueError, match="max_iter >= 1"):
        contraction_solve(lambda x: x / 2, torch.ones(1, 2), 0.5, max_iter=0)


def test_inverse_gradients_are_the_implicit_ones() -> None:
    block = _block(lipschitz=0.8)
    y = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    bias = block.linears[0].bias.detach().clone().requires_grad_()
    inverse = block.inv

    def fn(y: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return functional_call(inverse, {"bijector.linears.0.bias": bias}, (y,))

    assert torch.autograd.gradcheck(fn, (y, bias), atol=1e-7)


def test_roulette_estimator_is_unbiased() -> None:
    """The mean of 2000 roulette estimates at a block's Jacobian matches the exact log-det
    within 4 standard errors at each of 4 points; probes and truncations from a fixed seed."""
    block = _block(lipschitz=0.8)
    x = torch.randn(4, 3, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        exact = block(x)[1]
        weights = block.weights()
        slopes = block._residual(x, None, weights)[1]
        estimates = torch.stack(
            [
                roulette_log_det(
                    lambda v: jacobian_product(v, weights, slopes),
                    (4, 3),
                    p=0.3,
                    dtype=torch.float64,
                    generator=g,
                )
                for _ in range(2000)
            ]
        )
    mean, error = estimates.mean(0), estimates.std(0) / 2000**0.5
    assert float(error.min()) > 1e-4  # random, so the test can fail
    assert bool(((mean - exact).abs() < 4 * error).all()), (mean, exact, error)
    assert float(exact.abs().min()) > 10 * float(error.max())  # and it can tell 0 apart


def test_roulette_of_a_known_matrix() -> None:
    j = torch.tensor([[0.5, 0.3, 0.0], [-0.2, 0.1, 0.4], [0.0, 0.3, -0.6]], dtype=torch.float64)
    j = 0.8 * j / torch.linalg.matrix_norm(j, ord=2)
    g = torch.Generator().manual_seed(0)
    estimates = torch.cat(
        [
            roulette_log_det(lambda v: j @ v, (100, 3), p=0.3, dtype=torch.float64, generator=g)
            for _ in range(400)
        ]
    )
    exact = residual_log_det(j)
    assert abs(float(estimates.mean() - exact)) < 4 * float(estimates.std()) / 40000**0.5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"p": 1.0}, "0 < p < 1"),
        ({"n_exact_terms": 0}, "n_exact_terms >= 1"),
    ],
    ids=["p", "n_exact_terms"],
)
def test_roulette_refuses_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        roulette_log_det(lambda v: v, (2, 3), **kwargs)


def test_roulette_training_mode_gives_finite_gradients_and_eval_is_exact() -> None:
    block = _block(log_det="roulette")
    x = torch.randn(8, 3, dtype=torch.float64)
    y, log_det = block(x)
    assert not torch.equal(log_det, block(x)[1])  # random in training mode
    (y.sum() + log_det.sum()).backward()
    grads = [p.grad for p in block.parameters()]
    assert all(g is not None and bool(g.isfinite().all()) for g in grads)
    block.eval()
    exact = InvertibleResidualBlock(3, hidden_sizes=(16, 16), log_det="exact").double()
    exact.load_state_dict(block.state_dict())
    assert torch.equal(block(x)[1], exact(x)[1])


def test_default_log_det_depends_on_the_size() -> None:
    assert InvertibleResidualBlock(16).log_det_mode == "exact"
    assert InvertibleResidualBlock(17).log_det_mode == "roulette"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lipschitz": 1.0}, "0 < lipschitz < 1"),
        ({"log_det": "power"}, "log_det in"),
        ({"roulette_p": 0.0}, "roulette_p"),
        ({"max_iter": 0}, "max_iter >= 1"),
        ({"hidden_sizes": (0,)}, "positive hidden_sizes"),
        ({"activation": "relu"}, "activation in"),
    ],
    ids=["lipschitz", "log_det", "roulette_p", "max_iter", "hidden_sizes", "activation"],
)
def test_bad_arguments_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        InvertibleResidualBlock(2, **kwargs)


def test_fit_learns_a_correlation_no_diagonal_map_can() -> None:
    """On a Gaussian of correlation 0.9 the NLL falls well below that of any elementwise map
    (the standardized data's NLL), towards the entropy."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    cov = torch.tensor([[1.0, 0.9], [0.9, 1.0]])
    x = torch.randn(256, 2, generator=g) @ torch.linalg.cholesky(cov).T
    flow = ResidualFlow(2, n_layers=3, hidden_sizes=(32,))
    flow.initialize(x)
    _descend(flow, lambda: -flow.log_prob(x).mean(), steps=30, lr=0.1)
    diagonal_best = float(-torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(-1).mean())
    entropy = float(torch.distributions.MultivariateNormal(torch.zeros(2), cov).entropy())
    nll = float(-flow.log_prob(x).mean().detach())
    assert nll < diagonal_best - 0.5 and nll > entropy - 0.2, (nll, diagonal_best, entropy)
    with torch.no_grad():
        assert torch.allclose(flow.inverse(flow(x)[0]), x, atol=1e-4, rtol=1e-4)
