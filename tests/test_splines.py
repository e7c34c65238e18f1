"""Rational-quadratic splines against a plain float64 reference, and on inputs that break them."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchnf.functional import splines
from torchnf.functional.splines import rqs_forward, rqs_inverse, rqs_knots
from torchnf.layers import RQSTransformer

MIN_WIDTH = MIN_HEIGHT = MIN_DERIVATIVE = 1e-3
DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float64, id="float64")]


# -- an independent reference, written plainly: Python floats, one element and one bin at a time


def _reference_knots(raw: list[float], bound: float, minimum: float) -> list[float]:
    top = max(raw)
    exps = [math.exp(r - top) for r in raw]
    total = sum(exps)
    knots = [-bound]
    for e in exps[:-1]:
        knots.append(knots[-1] + 2 * bound * (minimum + (1 - minimum * len(raw)) * e / total))
    knots.append(bound)
    return knots


def _reference_derivatives(raw: list[float]) -> list[float]:
    # softplus(r + c) + m, with c such that r = 0 gives 1; the two boundary derivatives are 1.
    c = math.log(math.exp(1 - MIN_DERIVATIVE) - 1)
    inner = [MIN_DERIVATIVE + math.log1p(math.exp(r + c)) for r in raw]
    return [1.0, *inner, 1.0]


def reference_spline(widths, heights, derivatives, bound):
    kx = _reference_knots(widths, bound, MIN_WIDTH)
    ky = _reference_knots(heights, bound, MIN_HEIGHT)
    d = _reference_derivatives(derivatives)

    def forward(x: float) -> tuple[float, float]:
        if x < -bound or x > bound:
            return x, 0.0
        for k in range(len(kx) - 1):
            if kx[k] <= x <= kx[k + 1]:
                w, h = kx[k + 1] - kx[k], ky[k + 1] - ky[k]
                s = h / w
                t = (x - kx[k]) / w
                den = s + (d[k] + d[k + 1] - 2 * s) * t * (1 - t)
                y = ky[k] + h * (s * t * t + d[k] * t * (1 - t)) / den
                slope = s * s * (d[k + 1] * t * t + 2 * s * t * (1 - t) + d[k] * (1 - t) ** 2)
                return y, math.log(slope / den**2)
        raise AssertionError("unreachable")

    def inverse(y: float) -> float:
        if y < -bound or y > bound:
            return y
        lo, hi = -bound, bound
        for _ in range(200):  # bisection on the monotone forward
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if forward(mid)[0] < y else (lo, mid)
        return 0.5 * (lo + hi)

    return kx, ky, forward, inverse


def _random_params(seed: int, n_bins: int, scale: float, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    raw = scale * torch.randn(3 * n_bins - 1, generator=g, dtype=torch.float64)
    return [t.to(dtype) for t in raw.split([n_bins, n_bins, n_bins - 1])]


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n_bins=st.integers(1, 12),
    bound=st.floats(0.5, 10.0),
    # Extreme parameters make the spline ill-conditioned (slopes of 1e-8 .. 1e8), where no two
    # float64 evaluations agree tightly; they are covered by the robustness tests below.
    scale=st.sampled_from([0.1, 1.0, 3.0, 5.0]),
)
def test_matches_float64_reference(seed: int, n_bins: int, bound: float, scale: float) -> None:
    widths, heights, derivatives = _random_params(seed, n_bins, scale)
    kx, ky, forward, inverse = reference_spline(
        widths.tolist(), heights.tolist(), derivatives.tolist(), bound
    )
    knots = rqs_knots(widths, heights, derivatives, bound)
    exact = {"atol": 1e-13 * bound, "rtol": 1e-13}
    torch.testing.assert_close(knots[0], torch.tensor(kx, dtype=torch.float64), **exact)
    torch.testing.assert_close(knots[1], torch.tensor(ky, dtype=torch.float64), **exact)
    derivatives_ref = torch.tensor(
        _reference_derivatives(derivatives.tolist()), dtype=torch.float64
    )
    torch.testing.assert_close(knots[2], derivatives_ref, atol=0, rtol=1e-14)
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([(2 * torch.rand(20, generator=g, dtype=torch.float64) - 1) * 1.2 * bound])
    x = torch.cat([x, torch.tensor(kx, dtype=torch.float64)])
    y, log_det = rqs_forward(x, *knots)
    expected = [forward(v) for v in x.tolist()]
    torch.testing.assert_close(
        y, torch.tensor([e[0] for e in expected], dtype=torch.float64), **exact
    )
    torch.testing.assert_close(
        log_det, torch.tensor([e[1] for e in expected], dtype=torch.float64), atol=1e-9, rtol=1e-8
    )
    x_back, log_det_inv = rqs_inverse(y, *knots)
    reference_back = torch.tensor([inverse(v) for v in y.tolist()], dtype=torch.float64)
    # The inverse is as accurate as its conditioning allows: dx/dy = exp(-log_det).
    tol = 1e-12 * bound * (1 + torch.exp(-log_det))
    assert ((x_back - reference_back).abs() <= tol).all()
    assert ((x_back - x).abs() <= tol).all()
    y_again, log_det_again = rqs_forward(x_back, *knots)
    assert ((y_again - y).abs() <= 1e-13 * bound * (1 + torch.exp(log_det))).all()
    torch.testing.assert_close(log_det_inv, -log_det_again, atol=1e-8, rtol=1e-8)


def _hard_inputs(bound: float, knots_x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    b = torch.tensor(bound, dtype=dtype)
    inf = torch.tensor(math.inf, dtype=dtype)
    points = [
        knots_x.to(dtype),  # exactly on every knot, including +-bound
        torch.stack([torch.nextafter(b, inf), torch.nextafter(b, -inf)]),  # just out / in
        torch.stack([torch.nextafter(-b, -inf), torch.nextafter(-b, inf)]),
        torch.tensor([bound * (1 + 1e-6), -bound * (1 + 1e-6), 0.0], dtype=dtype),
        torch.tensor([1e4, -1e4, 2 * bound, -3 * bound], dtype=dtype),  # far in the tails
    ]
    return torch.cat(points)


# Parameters from gentle to extreme: bins squeezed to their minimum size, derivatives at their
# floor or huge.
PARAM_SCALES = [
    pytest.param(1.0, id="moderate"),
    pytest.param(30.0, id="extreme"),
    pytest.param(300.0, id="saturated"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", PARAM_SCALES)
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_hard_inputs_give_finite_values_and_gradients(dtype, scale, direction) -> None:
    bound = 3.0
    params = [p.requires_grad_() for p in _random_params(0, 8, scale, dtype)]
    knots = rqs_knots(*params, bound)
    x = _hard_inputs(bound, knots[0].detach(), dtype).requires_grad_()
    spline = rqs_forward if direction == "forward" else rqs_inverse
    out, log_det = spline(x, *knots)
    assert out.dtype == log_det.dtype == dtype
    assert out.isfinite().all() and log_det.isfinite().all()
    (out.sum() + log_det.sum()).backward()
    assert x.grad.isfinite().all()
    assert all(p.grad.isfinite().all() for p in params)
    # Outside [-B, B]: the identity, exactly, with log_det 0 and unit gradient.
    outside = x.detach().abs() > bound
    assert torch.equal(out[outside], x[outside]) and torch.equal(log_det[outside], 0 * x[outside])
    # Inside, monotone and within the interval.
    assert (out[~outside].abs() <= bound).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", PARAM_SCALES)
def test_round_trip_on_hard_inputs(dtype, scale) -> None:
    bound = 3.0
    knots = rqs_knots(*_random_params(1, 8, scale, dtype), bound)
    x = _hard_inputs(bound, knots[0], dtype)
    y, log_det = rqs_forward(x, *knots)
    x_back, log_det_inv = rqs_inverse(y, *knots)
    eps = torch.finfo(dtype).eps
    # Residual of the inverse: f(f^{-1}(y)) = y to a few ulps of the bound.
    y_again, log_det_again = rqs_forward(x_back, *knots)
    torch.testing.assert_close(y_again, y, atol=8 * eps * bound, rtol=0)
    # Error in x within the conditioning dx/dy = exp(-log_det) of the spline at x.
    assert ((x_back - x).abs() <= 8 * eps * bound * (1 + torch.exp(-log_det))).all()
    torch.testing.assert_close(log_det_inv, -log_det_again, atol=1e3 * eps, rtol=1e3 * eps)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n_bins=st.integers(1, 16),
    scale=st.floats(0.0, 100.0),
    float32=st.booleans(),
)
def test_dense_inputs_never_give_nan(seed: int, n_bins: int, scale: float, float32: bool) -> None:
    dtype = torch.float32 if float32 else torch.float64
    params = [p.requires_grad_() for p in _random_params(seed, n_bins, scale, dtype)]
    knots = rqs_knots(*params, 5.0)
    v = torch.linspace(-5.5, 5.5, 2001, dtype=dtype).requires_grad_()
    total = 0
    for spline in (rqs_forward, rqs_inverse):
        out, log_det = spline(v, *knots)
        assert out.isfinite().all() and log_det.isfinite().all()
        # Monotone, up to rounding where the spline is flat (slopes down to ~1e-8).
        assert (out.diff() >= -4 * torch.finfo(dtype).eps * 5.0).all()
        total = total + out.sum() + log_det.sum()
    total.backward()
    assert v.grad.isfinite().all() and all(p.grad.isfinite().all() for p in params)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_input_in_the_tails(dtype) -> None:
    knots = rqs_knots(*_random_params(2, 5, 1.0, dtype), 1.0)
    x = torch.tensor([[-5.0, 7.0], [1e4, -1e4]], dtype=dtype, requires_grad=True)
    for spline in (rqs_forward, rqs_inverse):
        out, log_det = spline(x, *knots)
        assert torch.equal(out, x) and torch.equal(log_det, torch.zeros_like(x))
        (grad,) = torch.autograd.grad(out.sum() + log_det.sum(), x)
        assert torch.equal(grad, torch.ones_like(x))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), n_bins=st.integers(2, 10))
def test_log_det_is_the_derivative(seed: int, n_bins: int) -> None:
    knots = rqs_knots(*_random_params(seed, n_bins, 2.0), 2.0)
    g = torch.Generator().manual_seed(seed)
    x = (4 * torch.rand(16, generator=g, dtype=torch.float64) - 2).requires_grad_()
    y, log_det = rqs_forward(x, *knots)
    (slope,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(log_det, slope.log())
    y = y.detach().requires_grad_()
    x_back, log_det_inv = rqs_inverse(y, *knots)
    (slope_inv,) = torch.autograd.grad(x_back.sum(), y)
    torch.testing.assert_close(log_det_inv, slope_inv.log())


def test_gradcheck_float64() -> None:
    params = [p.requires_grad_() for p in _random_params(3, 4, 1.5)]
    # Away from +-bound, where the log-det's derivative jumps (the spline is only C^1 there).
    x = torch.linspace(-2.7, 2.7, 12, dtype=torch.float64, requires_grad=True)

    def both(x, w, h, d):
        knots = rqs_knots(w, h, d, 2.0)
        y, ld = rqs_forward(x, *knots)
        x_back, ld_inv = rqs_inverse(y, *knots)
        return y, ld, x_back, ld_inv

    assert torch.autograd.gradcheck(both, (x, *params))


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_parameters_are_the_identity(dtype) -> None:
    transformer = RQSTransformer(n_bins=6, tail_bound=2.0)
    x = torch.linspace(-4, 4, 41, dtype=dtype).view(-1, 1)
    params = torch.zeros(41, 1, transformer.params_per_feature, dtype=dtype)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    for spline in (transformer.forward, transformer.inverse):
        y, log_det = spline(x, params)
        torch.testing.assert_close(y, x, atol=tol, rtol=0)
        torch.testing.assert_close(log_det, torch.zeros_like(x), atol=tol, rtol=0)


def test_transformer_broadcasts_params_over_batch() -> None:
    transformer = RQSTransformer(n_bins=3)
    params = torch.randn(2, transformer.params_per_feature, dtype=torch.float64)
    x = torch.randn(7, 2, dtype=torch.float64)
    y, log_det = transformer(x, params)
    y_full, log_det_full = transformer(x, params.expand(7, 2, -1))
    torch.testing.assert_close((y, log_det), (y_full, log_det_full), atol=1e-14, rtol=1e-14)


@pytest.mark.parametrize(
    "shapes",
    [pytest.param((4, 3, 3), id="heights"), pytest.param((4, 4, 4), id="derivatives")],
)
def test_mismatched_parameter_shapes_are_refused(shapes) -> None:
    w, h, d = (torch.zeros(n) for n in shapes)
    with pytest.raises(ValueError, match="expected widths"):
        rqs_knots(w, h, d, 1.0)


def test_too_large_minimum_bin_width_is_refused() -> None:
    with pytest.raises(ValueError, match="min_bin_width"):
        rqs_knots(torch.zeros(4), torch.zeros(4), torch.zeros(3), 1.0, min_bin_width=0.3)


# -- the hand-derived backward of the bin maps against autograd of the plain formulas

BIN_MAPS = {
    "forward": (rqs_forward, splines._in_bin_forward),
    "inverse": (rqs_inverse, splines._in_bin_inverse),
}


def _spline_inputs(seed: int, requires_grad: bool = True):
    g = torch.Generator().manual_seed(seed)
    params = torch.randn(5, 3, 3 * 6 - 1, generator=g, dtype=torch.float64)
    x = 2.5 * torch.randn(5, 3, generator=g, dtype=torch.float64)  # about a third outside
    return x.requires_grad_(requires_grad), params.requires_grad_(requires_grad)


def _apply(spline, x: torch.Tensor, params: torch.Tensor):
    return spline(x, *rqs_knots(*params.split([6, 6, 5], -1), 2.0))


@pytest.mark.parametrize("direction", list(BIN_MAPS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_analytic_gradients_equal_autograd_of_the_formulas(direction: str, seed: int) -> None:
    spline, plain = BIN_MAPS[direction]
    x, params = _spline_inputs(seed)
    knots = rqs_knots(*params.split([6, 6, 5], -1), 2.0)
    xb, *knots_b = splines._broadcast(x, *knots)
    source = knots_b[0] if direction == "forward" else knots_b[1]
    clamped, inside, *bin_ = splines._bin(xb, source, *knots_b)
    expected = plain(xb, clamped, inside, *bin_)
    actual = spline(x, *knots)
    g = torch.Generator().manual_seed(seed + 10)
    weights = [torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(2)]
    grads = [
        torch.autograd.grad(
            sum((w * o).sum() for w, o in zip(weights, out, strict=True)),
            [x, params],
            retain_graph=True,  # the knots are shared
        )
        for out in (expected, actual)
    ]
    for e, a in zip(expected, actual, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
    for e, a in zip(*grads, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("direction", list(BIN_MAPS))
def test_analytic_gradients_pass_gradcheck_and_gradgradcheck(direction: str) -> None:
    spline = BIN_MAPS[direction][0]
    inputs = _spline_inputs(3)
    assert torch.autograd.gradcheck(lambda x, p: _apply(spline, x, p), inputs)
    assert torch.autograd.gradgradcheck(lambda x, p: _apply(spline, x, p), inputs)


@pytest.mark.parametrize("direction", list(BIN_MAPS))
def test_vectorized_jacobian_equals_the_sequential_one(direction: str) -> None:
    spline = BIN_MAPS[direction][0]
    x, params = _spline_inputs(4, requires_grad=False)
    f = lambda v: _apply(spline, v, params)[0]  # noqa: E731
    jacobian = torch.autograd.functional.jacobian
    torch.testing.assert_close(jacobian(f, x, vectorize=True), jacobian(f, x), rtol=0, atol=0)


# -- the transformer's conditional affine map before the spline: u = (x + t) e^s, y = RQS(u)


def _transformer_params(seed: int, tau: RQSTransformer, scale: float, dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(6, tau.params_per_feature, generator=g, dtype=torch.float64).to(
        dtype
    )


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "spline-only"])
def test_params_per_feature(affine: bool) -> None:
    assert RQSTransformer(n_bins=5, affine=affine).params_per_feature == 14 + 2 * affine


def test_affine_transformer_is_the_spline_of_the_affine_map() -> None:
    tau = RQSTransformer(n_bins=5, tail_bound=2.0)
    params = _transformer_params(0, tau, 1.0, torch.float64)
    x = torch.tensor([-1e4, -3.0, -0.5, 0.0, 0.7, 2.5, 40.0], dtype=torch.float64)
    x = x.view(-1, 1).expand(-1, 6).requires_grad_()
    t, s = params[:, -2], 3.0 * torch.tanh(params[:, -1] / 3.0)
    knots = rqs_knots(*params[:, :-2].split([5, 5, 4], -1), 2.0)
    u_expected, log_det_spline = rqs_forward((x + t) * s.exp(), *knots)
    y, log_det = tau(x, params)
    torch.testing.assert_close(y, u_expected, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(log_det, log_det_spline + s, rtol=1e-14, atol=1e-14)
    (slope,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(log_det, slope.log(), rtol=1e-10, atol=1e-10)
    x_back, log_det_inv = tau.inverse(y.detach(), params)
    torch.testing.assert_close(x_back, x.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(log_det_inv, -log_det.detach(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", PARAM_SCALES)
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_affine_transformer_on_hard_inputs_is_finite(dtype, scale, direction) -> None:
    tau = RQSTransformer(n_bins=8, tail_bound=3.0)
    params = _transformer_params(1, tau, scale, dtype).requires_grad_()
    b = torch.tensor(3.0, dtype=dtype)
    v = torch.cat(
        [
            torch.tensor([0.0, 1e4, -1e4, 3.0, -3.0], dtype=dtype),
            torch.stack([torch.nextafter(b, 2 * b), torch.nextafter(b, 0 * b)]),
        ]
    )
    v = v.view(-1, 1).expand(-1, 6).clone().requires_grad_()
    out, log_det = (tau if direction == "forward" else tau.inverse)(v, params)
    assert out.dtype == log_det.dtype == dtype
    assert out.isfinite().all() and log_det.isfinite().all()
    (out.sum() + log_det.sum()).backward()
    assert v.grad.isfinite().all() and params.grad.isfinite().all()
