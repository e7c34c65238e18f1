"""Planar, radial, Sylvester and generalized Sylvester flows, and the monotone solver."""

from __future__ import annotations

import pytest
import torch
from cases import Case
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import functional_call

from torchnf.core.registry import get
from torchnf.diagnostics import check
from torchnf.functional.residual import planar_constrain, solve_tanh_residual
from torchnf.functional.solvers import ConvergenceError, solve_increasing
from torchnf.layers import ActNorm, GeneralizedSylvesterBlock, Planar, Radial, SylvesterBlock
from torchnf.models import GeneralizedSylvesterNet, PlanarFlow, SylvesterNet

LAYERS = ["Planar", "Radial", "SylvesterBlock", "GeneralizedSylvesterBlock"]
MODELS = ["PlanarFlow", "RadialFlow", "SylvesterNet", "GeneralizedSylvesterNet"]
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}


def _build(name: str, dtype: torch.dtype = torch.float64):
    """The registered example, its parameters perturbed as in the contract test."""
    return Case(get(name), 0, False).build().to(dtype)


def _perturbed(bijector, scale: float = 0.5):
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in bijector.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return bijector.double()


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs() / (1 + b.abs())).max())


def test_seed_snippet_runs_verbatim() -> None:
    net = SylvesterNet(n_layers=4, input_size=32, hidden_size=32)
    x = torch.randn(100, 32)
    y, log_det = net(x)
    z = net.inverse(y)
    assert torch.allclose(x, z)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", LAYERS + MODELS)
def test_inverse_reaches_tolerance(name: str, dtype: torch.dtype) -> None:
    bijector = _build(name, dtype)
    g = torch.Generator().manual_seed(3)
    x = 2 * torch.randn(256, *bijector.event_shape, generator=g).to(dtype)
    y = 2 * torch.randn(256, *bijector.event_shape, generator=g).to(dtype)
    with torch.no_grad():
        x_back = bijector.inverse(bijector(x)[0])
        y_back = bijector(bijector.inverse(y))[0]
    assert _relative(x_back, x) < TOLERANCE[dtype]
    assert _relative(y_back, y) < TOLERANCE[dtype]


ONE_ITERATION = {
    "Planar": lambda: Planar(4, max_iter=1, seed=1),
    "SylvesterBlock": lambda: SylvesterBlock(4, hidden_size=3, max_iter=1, seed=1),
    "GeneralizedSylvesterBlock": lambda: GeneralizedSylvesterBlock(
        3, hidden_sizes=(8,), max_iter=1
    ),
    "PlanarFlow": lambda: PlanarFlow(3, n_layers=2, max_iter=1),
    "SylvesterNet": lambda: SylvesterNet(2, 3, q="householder", max_iter=1),
    "GeneralizedSylvesterNet": lambda: GeneralizedSylvesterNet(2, 3, hidden_sizes=(8,), max_iter=1),
}


@pytest.mark.parametrize("name", sorted(ONE_ITERATION))
def test_unmet_iteration_limit_raises_with_residual(name: str) -> None:
    bijector = _perturbed(ONE_ITERATION[name]())
    y = torch.randn(8, *bijector.event_shape, dtype=torch.float64)
    with pytest.raises(ConvergenceError, match=r"max_iter=1 .* residual up to"):
        bijector.inverse(y)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Planar(3, tol=0.0),
        lambda: Planar(3, max_iter=0),
        lambda: SylvesterBlock(3, hidden_size=4),
        lambda: SylvesterBlock(3, q="givens"),
        lambda: SylvesterBlock(3, q="householder", n_reflections=0),
        lambda: SylvesterNet(2, 3, q="identity"),
        lambda: SylvesterNet(2, 3, init="identity"),
        lambda: SylvesterBlock(3, init="permutation"),
        lambda: GeneralizedSylvesterBlock(3, init="rotation"),
        lambda: GeneralizedSylvesterBlock(3, tol=-1.0),
    ],
    ids=[
        "tol",
        "max_iter",
        "hidden_size",
        "q",
        "n_reflections",
        "net_q",
        "net_init",
        "init",
        "gs_init",
        "gs_tol",
    ],
)
def test_invalid_arguments_are_refused(make) -> None:
    with pytest.raises(ValueError, match="expected"):
        make()


STRESSED = LAYERS + MODELS + ["Softsquare"]


@pytest.mark.parametrize("name", STRESSED)
def test_contract_holds_after_large_learning_rate(name: str) -> None:
    # Fifty Adam steps at lr=0.5 on the likelihood of heavy-tailed, shifted data move the
    # parameters by several units (up to ~20): far from their initial values.
    torch.manual_seed(0)
    bijector = get(name).example(0).double()
    start = [p.detach().clone() for p in bijector.parameters()]
    optimizer = torch.optim.Adam(bijector.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(64, *bijector.event_shape, generator=g, dtype=torch.float64) ** 3 + 2
    for _ in range(50):
        y, log_det = bijector(x)
        loss = (0.5 * y.square().sum(-1) - log_det).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    moved = max(
        float((p - s).abs().max()) for p, s in zip(bijector.parameters(), start, strict=True)
    )
    assert moved > 4
    report = check(bijector, atol=1e-6)
    assert report.passed, report.failures


@pytest.mark.parametrize("objective", ["expand", "contract"])
@pytest.mark.parametrize("name", ["Planar", "Radial", "SylvesterBlock", "Softsquare"])
def test_structured_layers_survive_unbounded_objectives(name: str, objective: str) -> None:
    # Maximizing the spread (or minimizing the volume) has no optimum: parameters run off by
    # ~30 units, and the parametrizations still keep these layers invertible and accurate.
    torch.manual_seed(0)
    bijector = get(name).example(0).double()
    optimizer = torch.optim.Adam(bijector.parameters(), lr=0.5)
    x = torch.randn(64, *bijector.event_shape, dtype=torch.float64)
    for _ in range(50):
        y, log_det = bijector(x)
        loss = log_det.mean()
        if objective == "expand":
            loss = -(y.square().sum(-1) + log_det).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    report = check(bijector, atol=1e-6)
    assert report.passed, report.failures


@pytest.mark.parametrize("hidden_size", [2, 4])
@pytest.mark.parametrize("q", ["orthogonal", "householder", "identity", "reverse"])
def test_sylvester_q_forms(q: str, hidden_size: int) -> None:
    block = _perturbed(SylvesterBlock(4, hidden_size, q=q, n_reflections=3))
    matrix = block.q()
    assert matrix.shape == (4, hidden_size)
    eye = torch.eye(hidden_size, dtype=torch.float64)
    torch.testing.assert_close(matrix.mT @ matrix, eye, atol=1e-12, rtol=0)
    report = check(block, batch_size=4)
    assert report.passed, report.failures


def test_triangular_sylvester_alternates_permutations() -> None:
    net = SylvesterNet(n_layers=4, input_size=3, q="triangular", actnorm=False)
    blocks = list(net.bijector)[1:]
    assert [b.q_form for b in blocks] == ["identity", "reverse", "identity", "reverse"]
    assert not any(p.requires_grad for b in blocks for p in b.q.buffers())


@pytest.mark.parametrize("context_size", [0, 2])
@pytest.mark.parametrize("init", ["identity", "reverse"])
def test_orthogonal_q_starts_at_a_permutation_and_learns(init: str, context_size: int) -> None:
    block = SylvesterBlock(5, 3, init=init, context_size=context_size).double()
    eye = torch.eye(5, dtype=torch.float64)
    start = (eye.flip(1) if init == "reverse" else eye)[:, :3]
    context = torch.randn(4, context_size, dtype=torch.float64) if context_size else None
    q = block.params(context)[0]
    torch.testing.assert_close(q, start.expand_as(q), atol=0, rtol=0)
    report = check(_perturbed(block), context=context, batch_size=4)  # away from the start
    assert report.passed, report.failures
    assert block.params(context)[0].requires_grad


@pytest.mark.parametrize("init", ["identity", "reverse"])
def test_generalized_w_starts_at_a_permutation(init: str) -> None:
    block = GeneralizedSylvesterBlock(4, hidden_sizes=(8,), init=init).double()
    eye = torch.eye(4, dtype=torch.float64)
    torch.testing.assert_close(block.weight.weight(), eye.flip(1) if init == "reverse" else eye)
    report = check(_perturbed(block), batch_size=4)
    assert report.passed, report.failures


@pytest.mark.parametrize(
    "make",
    [
        lambda init: SylvesterNet(4, 3, init=init, actnorm=True),
        lambda init: GeneralizedSylvesterNet(4, 3, (8,), init=init, actnorm=True),
    ],
    ids=["SylvesterNet", "GeneralizedSylvesterNet"],
)
def test_nets_alternate_permutation_starts_with_actnorms_between(make) -> None:
    layers = list(make("permutation").bijector)
    assert [type(layer).__name__ for layer in layers[::2]] == ["ActNorm"] * 5
    blocks = layers[1::2]
    weights = [b.q() if isinstance(b, SylvesterBlock) else b.weight.weight() for b in blocks]
    eye = torch.eye(3)
    for i, weight in enumerate(weights):
        torch.testing.assert_close(weight.detach(), eye.flip(1) if i % 2 else eye)
    random = [b for b in make("random").bijector if not type(b).__name__ == "ActNorm"]
    first = random[0].q() if isinstance(random[0], SylvesterBlock) else random[0].weight.weight()
    assert not torch.allclose(first.detach().abs(), eye)


@pytest.mark.parametrize("name", ["SylvesterBlock", "GeneralizedSylvesterBlock"])
def test_blocks_start_as_identity(name: str) -> None:
    block = get(name).example(0)
    x = torch.randn(6, *block.event_shape)
    y, log_det = block(x)
    assert torch.equal(y, x) and torch.equal(log_det, torch.zeros(6))


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(-3, 3), min_size=3, max_size=3),
    st.lists(st.floats(-3, 3), min_size=3, max_size=3),
)
def test_planar_constraint_holds_for_any_parameters(u: list[float], w: list[float]) -> None:
    # In float64 the margin softplus(w.u) above -1 is lost to rounding below w.u ~ -37.
    u_, w_ = torch.tensor(u, dtype=torch.float64), torch.tensor(w, dtype=torch.float64)
    if w_.square().sum() < 1e-6:
        return
    assert float(w_ @ planar_constrain(u_, w_)) > -1


@settings(max_examples=50, deadline=None)
@given(st.floats(-30, 30), st.floats(-30, 30))
def test_sylvester_diagonal_constraint_holds(rho: float, sigma: float) -> None:
    block = SylvesterBlock(2, seed=0).double()
    with torch.no_grad():
        block.r1.diagonal().fill_(rho)
        block.r2.diagonal().fill_(sigma)
    r1, r2 = block.triangular()
    assert bool((r1.diagonal() * r2.diagonal() > -1).all())
    assert torch.equal(r1, r1.triu()) and torch.equal(r2, r2.triu())


def test_radial_fixes_its_center() -> None:
    layer = _perturbed(Radial(3))
    center = layer.x0.detach().unsqueeze(0)
    torch.testing.assert_close(layer(center)[0], center)
    torch.testing.assert_close(layer.inverse(center), center)


GRADCHECKED = {
    "Planar": lambda: Planar(3),
    "SylvesterBlock": lambda: SylvesterBlock(3, hidden_size=2),
    "GeneralizedSylvesterBlock": lambda: GeneralizedSylvesterBlock(2, hidden_sizes=(3,)),
}


@pytest.mark.parametrize("name", sorted(GRADCHECKED))
def test_inverse_gradients_match_finite_differences(name: str) -> None:
    # The last Newton step, taken with gradients, gives the implicit derivative with respect
    # to the parameters and to y.
    layer = _perturbed(GRADCHECKED[name]())
    names = [n for n, _ in layer.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in layer.parameters())
    y = torch.randn(2, *layer.event_shape, dtype=torch.float64, requires_grad=True)

    def run(y: torch.Tensor, *values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        state = {f"bijector.{n}": v for n, v in zip(names, values, strict=True)}
        return functional_call(layer.inv, state, (y,))

    assert torch.autograd.gradcheck(run, (y, *params), atol=1e-6, fast_mode=True)


# -- the solver ------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    st.floats(-20, 20),
    st.floats(0.01, 20),
    st.floats(-1 + 1e-9, 50),
    st.floats(-20, 20),
)
def test_tanh_residual_solve(target: float, gain: float, kappa: float, shift: float) -> None:
    t = torch.tensor([target], dtype=torch.float64)
    scale = torch.tensor(kappa / gain, dtype=torch.float64)
    x = solve_tanh_residual(t, scale, gain, shift, None, 100)
    residual = x + scale * torch.tanh(gain * x + shift) - t
    # The residual is exact up to the rounding of its terms (the solver may stop on a
    # bracket a few ulps wide).
    rounding = 8 * torch.finfo(torch.float64).eps * (x.abs() + scale.abs())
    assert bool((residual.abs() <= 1e-12 * (1 + abs(target)) + rounding).all())


def test_solver_is_accurate_at_a_nearly_flat_root() -> None:
    # g(x) = x - (1 - 1e-12) tanh(x): slope 1e-12 at the root x = 0 (a near triple root).
    t = torch.tensor([0.0, 1e-14, -3e-13], dtype=torch.float64)
    x = solve_tanh_residual(t, torch.tensor(-1 + 1e-12, dtype=torch.float64), 1.0, 0.0, None, 100)
    exact = torch.sign(t) * (3 * t.abs()) ** (1 / 3)  # x^3 / 3 ~ t for tiny x
    assert float((x - exact).abs().max()) < 1e-5


def test_solver_raises_with_residual() -> None:
    t = torch.linspace(-5, 5, 7, dtype=torch.float64)
    fn = lambda x: (x**3 + x, 3 * x**2 + 1)  # noqa: E731
    with pytest.raises(ConvergenceError, match=r"max_iter=2 iterations: \d+ of 7 points"):
        solve_increasing(fn, t, t.abs().neg() - 1, t.abs() + 1, max_iter=2)
    with pytest.raises(ValueError, match="max_iter >= 1"):
        solve_increasing(fn, t, t - 10, t + 10, max_iter=0)


def test_solver_gradient_is_implicit() -> None:
    t = torch.tensor([0.3, -2.0], dtype=torch.float64, requires_grad=True)
    c = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    x = solve_increasing(lambda x: (x + c * x**3, 1 + 3 * c * x**2), t, t - 5, t + 5)
    grad_t, grad_c = torch.autograd.grad(x.sum(), (t, c))
    slope = 1 + 3 * c * x**2
    torch.testing.assert_close(grad_t, 1 / slope.detach())
    torch.testing.assert_close(grad_c, (-(x**3) / slope).sum().detach())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_solver_follows_dtype(dtype: torch.dtype) -> None:
    t = torch.randn(100, dtype=dtype) * 10
    fn = lambda x: (x + 5 * torch.tanh(x), 1 + 5 / torch.cosh(x) ** 2)  # noqa: E731
    x = solve_increasing(fn, t, t - 5, t + 5)
    assert x.dtype == dtype
    assert float(((fn(x)[0] - t).abs() / (1 + t.abs())).max()) < TOLERANCE[dtype]


@pytest.mark.parametrize("name", ["SylvesterNet", "GeneralizedSylvesterNet"])
def test_configs_recorded_before_init_and_actnorm_rebuild_as_trained(name: str) -> None:
    from torchnf.core.registry import build

    flow = build(name, {"n_layers": 2, "input_size": 3})
    assert flow.config["init"] == "random" and flow.config["actnorm"] is False
    assert not any(isinstance(layer, ActNorm) for layer in list(flow.bijector)[1:])
