"""Circular splines, the mixed transformer, CircularNSF, and the targets on the torus."""

from __future__ import annotations

import json
import math

import pytest
import torch

from torchnf import cli
from torchnf.data import get_target
from torchnf.diagnostics.kl import kl_divergence
from torchnf.distributions import ProductBase, StandardNormal, Uniform
from torchnf.functional.splines import rqs_forward, rqs_knots
from torchnf.layers import (
    CircularRQSTransformer,
    CircularSplineCoupling,
    MixedTransformer,
    RQSTransformer,
    wrap_angle,
)
from torchnf.layers.circular import check_angles
from torchnf.models import CircularNSF
from torchnf.train.fit import fit

PI = math.pi


def _params(tau, n: int, scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, 1, tau.params_per_feature, generator=g, dtype=torch.float64)


def _perturbed(flow, scale: float = 0.3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return flow


def _circle_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return wrap_angle(a - b).abs()


def _torus_grid(n: int) -> tuple[torch.Tensor, float]:
    """Midpoints of an n x n grid on [-pi, pi)^2 and the area of a cell."""
    g = -PI + (torch.arange(n, dtype=torch.float64) + 0.5) * 2 * PI / n
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    return grid, (2 * PI / n) ** 2


def test_periodic_knots_share_the_end_derivative() -> None:
    g = torch.Generator().manual_seed(0)
    widths, heights, derivatives = torch.randn(3, 5, 6, generator=g, dtype=torch.float64)
    knots_x, knots_y, d = rqs_knots(widths, heights, derivatives, PI, periodic=True)
    assert torch.equal(d[:, 0], d[:, -1])
    assert not torch.allclose(d[:, 0], torch.ones(5, dtype=torch.float64))
    assert torch.equal(knots_x[:, 0], knots_y[:, 0]) and (knots_y[:, -1] == PI).all()


def test_circular_spline_density_is_continuous_across_the_seam() -> None:
    tau = CircularRQSTransformer(n_bins=6)
    params = _params(tau, 8, scale=2.0)
    knots = tau._split(params)[0]
    ends = torch.tensor([-PI, PI], dtype=torch.float64).expand(8, 1, 2)
    _, log_det_ends = rqs_forward(ends, *(k.unsqueeze(-2) for k in knots))
    torch.testing.assert_close(log_det_ends[..., 0], log_det_ends[..., 1], atol=1e-12, rtol=0)
    eps = 1e-12
    x = torch.full((8, 1), -PI + eps, dtype=torch.float64)
    y_lo, log_det_lo = tau(x, params)
    y_hi, log_det_hi = tau(torch.full_like(x, PI - eps), params)
    torch.testing.assert_close(log_det_lo, log_det_hi, atol=1e-6, rtol=0)
    assert (_circle_distance(y_lo, y_hi) < 1e-6).all()  # the map is continuous on the circle
    assert (_circle_distance(y_lo, -PI + params[..., -1]) < 1e-6).all()  # -pi goes to -pi + phi


def test_circular_spline_is_periodic_and_maps_onto_the_interval() -> None:
    tau = CircularRQSTransformer(n_bins=5)
    params = _params(tau, 200, scale=2.0, seed=1)
    g = torch.Generator().manual_seed(2)
    x = (2 * torch.rand(200, 1, generator=g, dtype=torch.float64) - 1) * PI
    y, log_det = tau(x, params)
    for turns in (-2, 1, 3):
        y_shift, log_det_shift = tau(x + 2 * PI * turns, params)
        assert (_circle_distance(y_shift, y) < 1e-12).all()
        torch.testing.assert_close(log_det_shift, log_det, atol=1e-9, rtol=0)
    assert ((y >= -PI) & (y < PI)).all()


def test_circular_spline_inverse_is_exact_and_log_det_matches_autograd() -> None:
    tau = CircularRQSTransformer(n_bins=7)
    params = _params(tau, 300, scale=1.5, seed=3)
    g = torch.Generator().manual_seed(4)
    x = ((2 * torch.rand(300, 1, generator=g, dtype=torch.float64) - 1) * PI).requires_grad_()
    y, log_det = tau(x, params)
    (slope,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(log_det, slope.log(), atol=1e-10, rtol=1e-10)
    x_back, log_det_inv = tau.inverse(y, params)
    # As accurate as the conditioning allows: dx/dy = exp(-log_det).
    assert ((x_back - x.detach()).abs() <= 1e-12 * (1 + torch.exp(-log_det.detach()))).all()
    torch.testing.assert_close(log_det_inv, -log_det, atol=1e-10, rtol=0)


def test_circular_spline_is_the_identity_at_zero_parameters() -> None:
    tau = CircularRQSTransformer(n_bins=4)
    x = torch.linspace(-PI, PI, 50, dtype=torch.float64)[:-1, None]
    y, log_det = tau(x, torch.zeros(49, 1, tau.params_per_feature, dtype=torch.float64))
    torch.testing.assert_close(y, x, atol=1e-14, rtol=0)
    assert log_det.abs().max() < 1e-14


def test_mixed_transformer_dispatches_each_group() -> None:
    circ, real = CircularRQSTransformer(4), RQSTransformer(4, tail_bound=3.0)
    mixed = MixedTransformer([circ, real], [[0, 2], [1]])
    g = torch.Generator().manual_seed(5)
    params = torch.randn(6, 3, mixed.params_per_feature, generator=g, dtype=torch.float64)
    x = torch.rand(6, 3, generator=g, dtype=torch.float64) * 2 - 1
    y, log_det = mixed(x, params)
    y_circ, ld_circ = circ(x[:, [0, 2]], params[:, [0, 2]])
    y_real, ld_real = real(x[:, [1]], params[:, [1]])
    torch.testing.assert_close(y, torch.stack([y_circ[:, 0], y_real[:, 0], y_circ[:, 1]], -1))
    torch.testing.assert_close(log_det[:, [0, 2]], ld_circ)
    torch.testing.assert_close(log_det[:, [1]], ld_real)
    torch.testing.assert_close(mixed.inverse(y, params)[0], x)


def test_flow_density_is_continuous_on_the_torus_and_normalized() -> None:
    flow = _perturbed(CircularNSF(2, n_layers=3, hidden_sizes=(16,), n_bins=5).double())
    eps = 1e-9
    t = torch.linspace(-3, 3, 7, dtype=torch.float64)
    for column in (0, 1):
        lo, hi = torch.stack([t, t], -1), torch.stack([t, t], -1)
        lo[:, column], hi[:, column] = -PI + eps, PI - eps
        torch.testing.assert_close(flow.log_prob(lo), flow.log_prob(hi), atol=1e-6, rtol=0)
    grid, cell = _torus_grid(200)
    with torch.no_grad():
        mass = flow.log_prob(grid).exp().sum() * cell
    assert abs(float(mass) - 1) < 1e-3


def test_mixed_flow_samples_stay_on_the_cylinder_and_round_trip() -> None:
    flow = _perturbed(CircularNSF(3, circular=[1], n_layers=2, hidden_sizes=(8,), n_bins=4))
    flow = flow.double()
    torch.manual_seed(0)
    x, log_prob = flow.sample_and_log_prob(500)
    assert ((x[:, 1] >= -PI) & (x[:, 1] < PI)).all() and x[:, [0, 2]].abs().max() > PI
    torch.testing.assert_close(flow.log_prob(x), log_prob)
    torch.testing.assert_close(flow.inverse(flow(x)[0]), x)
    assert flow.circular == [1] and flow.config["circular"] == [1]


@pytest.mark.parametrize("name", ["torus", "cylinder"])
def test_target_log_prob_normalizes_and_matches_its_samples(name) -> None:
    target = get_target(name)
    grid, cell = _torus_grid(300)
    if name == "cylinder":  # the second column is real: a grid on [-8, 8]
        grid[:, 1] = grid[:, 1] * 8 / PI
        cell *= 8 / PI
    density = target.log_prob(grid).exp()
    assert abs(float(density.sum() * cell) - 1) < 1e-6
    x = target.sample(20000, seed=0, dtype=torch.float64)
    assert ((x[:, 0] >= -PI) & (x[:, 0] < PI)).all()
    expected = (density[:, None] * torch.cos(grid)).sum(0) * cell  # E[cos x] under the density
    torch.testing.assert_close(torch.cos(x).mean(0), expected, atol=0.02, rtol=0)


def test_fit_on_the_torus_gets_a_small_kl_quickly() -> None:
    target = get_target("torus")
    torch.manual_seed(0)
    flow = CircularNSF(2, n_layers=2, hidden_sizes=(32,), n_bins=8)
    data = target.sample(4000, seed=0)
    fit(flow, data, steps=100, batch_size=256, lr=1e-2, val_fraction=0, progress=False)
    kl = kl_divergence(flow.eval(), target, 4000, seed=1)
    # A uniform flow has KL = 2 log 2 pi - H = 1.07 nats.
    assert kl.value < 0.15, kl


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match=r"expected circular as distinct column indices in \[0, 2"):
        CircularNSF(2, circular=[0, 2])
    with pytest.raises(ValueError, match="distinct column indices"):
        CircularSplineCoupling(3, circular=[1, 1])
    with pytest.raises(ValueError, match="needs input_size >= 2"):
        CircularNSF(1)
    with pytest.raises(ValueError, match="a partition of range"):
        MixedTransformer([CircularRQSTransformer(4)], [[1]])
    with pytest.raises(ValueError, match="a partition of range"):
        ProductBase([StandardNormal(1), Uniform(1)], [[0], [0]])
    with pytest.raises(ValueError, match="expected a base over vectors of size 2"):
        ProductBase([StandardNormal(1)], [[0, 1]])
    with pytest.raises(ValueError, match=r"derivatives \(\.\.\., K\), got"):
        z = torch.zeros(4)
        rqs_knots(z, z, torch.zeros(3), PI, periodic=True)
    with pytest.raises(ValueError, match=r"column 2 is an angle but row 1 holds 3.5"):
        check_angles(torch.tensor([[0.0, 9.0, 1.0], [0.0, 9.0, 3.5]]), [0, 2])
    with pytest.raises(ValueError, match=r"column 0 is an angle but row 0 holds nan"):
        check_angles(torch.tensor([[math.nan, 0.0]]), [0])


def test_train_command_takes_the_angle_columns_of_the_data_set(tmp_path) -> None:
    argv = ["train", "--data", "cylinder", "--model", "CircularNSF", "--steps", "3"]
    argv += ["--n-points", "300", "--n-layers", "2", "--hidden-sizes", "8", "--no-plots"]
    assert cli.main([*argv, "--out", str(tmp_path), "--quiet"]) == 0
    config = json.loads((tmp_path / "cylinder-circularnsf" / "config.json").read_text())
    assert config["config"]["circular"] == [0]


def test_circular_actnorm_standardizes_the_reals_and_never_moves_the_angles() -> None:
    flow = CircularNSF(2, circular=[0], n_layers=2, hidden_sizes=(8,), n_bins=4)
    g = torch.Generator().manual_seed(0)
    theta = (2 * torch.rand(2000, generator=g) - 1) * PI
    data = torch.stack([theta, 1000 + 50 * torch.sin(theta) + torch.randn(2000, generator=g)], -1)
    fit(flow, data, steps=20, batch_size=256, lr=1e-2, val_fraction=0, progress=False)
    norm = flow.bijector[0]
    assert norm.center[0] == 0 and norm.log_inv_scale[0] == 0 and norm.center[1] > 900
    assert norm.loc[0] == 0 and norm.log_scale[0] == 0 and norm.log_scale[1] != 0
    assert flow.log_prob(data).mean() > -7  # a real column at 1000 +- 35, fitted


@pytest.mark.parametrize("name", ["torus", "cylinder"])
def test_target_samples_satisfy_the_periodic_stein_identity(name) -> None:
    r"""For x ~ p and f_j = sin x_j on an angle, x_j on a real column (periodic or decaying
    boundary terms vanish): E[d_i log p] = 0 and E[d_i log p f_j(x)] = -delta_ij E[f_j'(x)]."""
    target = get_target(name)
    x = target.sample(20000, seed=2, dtype=torch.float64).requires_grad_(True)
    (score,) = torch.autograd.grad(target.log_prob(x).sum(), x)
    x = x.detach()
    angle = torch.zeros(2, dtype=torch.bool)
    angle[list(target.circular)] = True
    f = torch.where(angle, torch.sin(x), x)
    df = torch.where(angle, torch.cos(x), torch.ones_like(x))
    terms = torch.cat([score, (score.unsqueeze(-1) * f.unsqueeze(-2)).flatten(1)], -1)
    expected = torch.cat([torch.zeros(2), -torch.diag_embed(df).flatten(1).mean(0)], -1)
    mean, stderr = terms.mean(0), terms.std(0) / math.sqrt(len(x))
    assert ((mean - expected).abs() < 5 * stderr + 1e-9).all()


def test_vi_command_takes_the_angle_columns_of_the_target(tmp_path) -> None:
    argv = ["vi", "--target", "cylinder", "--model", "CircularNSF", "--steps", "2"]
    argv += ["--n-layers", "2", "--hidden-sizes", "8", "--no-plots", "--quiet"]
    assert cli.main([*argv, "--out", str(tmp_path)]) == 0
    config = json.loads((tmp_path / "vi-cylinder-circularnsf" / "config.json").read_text())
    assert config["config"]["circular"] == [0]
