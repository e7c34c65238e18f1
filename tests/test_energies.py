"""Energies: unnormalized targets whose log normalizer is known, for variational inference."""

from __future__ import annotations

import math

import pytest
import torch

from torchnf.data import (
    ENERGIES,
    TARGET_LOG_NORMALIZER,
    TARGETS,
    Energy,
    Potential,
    TargetEnergy,
    get_energy,
    grid_log_normalizer,
)
from torchnf.diagnostics.importance import ImportanceEstimate

# Quadrature boxes (mass outside below 1e-12) and points per side for the 1-D and 2-D
# targets; the midpoint rule is exact for the checkerboard on a grid aligned with its squares.
QUADRATURE = {
    "mixture1d": ([(-6.0, 8.0)], 801),
    "moons": ([(-3.0, 3.0), (-2.5, 2.5)], 401),
    "circles": ([(-1.8, 1.8), (-1.8, 1.8)], 401),
    "ring": ([(-10.0, 10.0), (-10.0, 10.0)], 801),
    "spirals": ([(-4.5, 4.5), (-4.5, 4.5)], 301),
    "pinwheel": ([(-4.5, 4.5), (-4.5, 4.5)], 401),
    "checkerboard": ([(-2.0, 2.0), (-2.0, 2.0)], 800),
    "banana": ([(-14.0, 14.0), (-101.0, 7.0)], 801),
}
# The funnel's neck is too narrow for a grid, and the others are not 2-D.
SAMPLED = ["funnel", "funnel10", "student8", "gaussian16"]
DIFFERENTIABLE = [name for name in ENERGIES if name != "checkerboard"]


def _points(energy: Energy, n: int, dtype: torch.dtype) -> torch.Tensor:
    if energy.has_sample:
        return energy.sample(n, seed=1, dtype=dtype)
    g = torch.Generator().manual_seed(1)
    return 2 * torch.randn(n, energy.dim, generator=g, dtype=dtype)


def test_the_registry_has_the_potentials_and_every_target() -> None:
    assert set(ENERGIES) == {"u1", "u2", "u3", "u4", *TARGETS}
    assert get_energy("u3") is ENERGIES["u3"] and not get_energy("u3").has_sample
    assert all(ENERGIES[name].log_normalizer == TARGET_LOG_NORMALIZER for name in TARGETS)


@pytest.mark.parametrize("k", [1, 2, 3, 4], ids=["u1", "u2", "u3", "u4"])
def test_potential_log_normalizer_is_reproduced_by_quadrature(k: int) -> None:
    u = Potential(k)
    assert u.name == f"u{k}"
    # stored from 4000 points per side; 801 already agree to rounding
    assert grid_log_normalizer(u, u.bounds, 801) == pytest.approx(u.log_normalizer, abs=1e-9)
    wider = [(lo - 2, hi + 2) for lo, hi in u.bounds]  # nothing is left outside the bounds
    assert grid_log_normalizer(u, wider, 801) == pytest.approx(u.log_normalizer, abs=1e-9)


def _box(z1: float) -> float:
    """log sigma(4 (4 - z1)) + log sigma(4 (4 + z1)), the box of u2 to u4."""
    return -math.log1p(math.exp(-4 * (4 - z1))) - math.log1p(math.exp(-4 * (4 + z1)))


def _log_add(a: float, b: float) -> float:
    return math.log(math.exp(a) + math.exp(b))


# -U(z) from table 1 of Rezende and Mohamed (2015) at points where w1, w2, w3 are simple:
# w1(0) = 0, w1(1) = sin(pi / 2) = 1, w2(1) = 3, w3(1) = 3 sigma(0) = 1.5.
PAPER = {
    "u1": ([2.0, 0.0], _log_add(0.0, -0.5 * (4 / 0.6) ** 2)),
    "u2": ([0.0, 1.0], -0.5 * (1 / 0.4) ** 2 + _box(0.0)),
    "u3": ([1.0, 0.0], _log_add(-0.5 * (1 / 0.35) ** 2, -0.5 * (2 / 0.35) ** 2) + _box(1.0)),
    "u4": ([1.0, 0.0], _log_add(-0.5 * (1 / 0.4) ** 2, -0.5 * (0.5 / 0.35) ** 2) + _box(1.0)),
}


@pytest.mark.parametrize("name", list(PAPER), ids=list(PAPER))
def test_potentials_follow_the_paper(name: str) -> None:
    z, expected = PAPER[name]
    log_p = get_energy(name).log_prob(torch.tensor(z, dtype=torch.float64))
    assert float(log_p) == pytest.approx(expected, rel=1e-13, abs=1e-15)


@pytest.mark.parametrize("name", list(QUADRATURE), ids=list(QUADRATURE))
def test_target_energy_log_normalizer_by_quadrature(name: str) -> None:
    bounds, n = QUADRATURE[name]
    log_z = grid_log_normalizer(get_energy(name), bounds, n)
    assert log_z == pytest.approx(TARGET_LOG_NORMALIZER, abs=1e-6)


@pytest.mark.parametrize("name", SAMPLED, ids=SAMPLED)
def test_target_energy_log_normalizer_by_importance_sampling(name: str) -> None:
    # Defensive importance sampling: half the points from the target, half from a Gaussian
    # twice as broad, q = (p + g) / 2, so the weights are bounded by 2 Z.
    energy = get_energy(name)
    n = 20000
    x_p = energy.sample(n // 2, seed=0, dtype=torch.float64)
    loc, scale = x_p.mean(0), 2 * x_p.std(0)
    g = torch.Generator().manual_seed(0)
    x_g = loc + scale * torch.randn(n // 2, energy.dim, generator=g, dtype=torch.float64)
    x = torch.cat([x_p, x_g])
    broad = torch.distributions.Independent(torch.distributions.Normal(loc, scale), 1)
    log_q = torch.logaddexp(energy.target.log_prob(x), broad.log_prob(x)) - math.log(2)
    est = ImportanceEstimate.from_log_weights(x, energy.log_prob(x) - log_q)
    assert abs(est.log_evidence - energy.log_normalizer) < 4 * est.stderr < 0.04


@pytest.mark.parametrize("name", sorted(TARGETS), ids=sorted(TARGETS))
def test_target_energy_is_the_target_shifted_by_its_log_normalizer(name: str) -> None:
    energy, target = get_energy(name), TARGETS[name]
    x = target.sample(50, seed=2, dtype=torch.float64)
    assert torch.equal(energy.sample(50, seed=2, dtype=torch.float64), x)
    difference = energy.log_prob(x) - target.log_prob(x)
    finite = torch.isfinite(target.log_prob(x))
    assert torch.allclose(difference[finite], torch.full_like(difference[finite], 2.5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", sorted(ENERGIES), ids=sorted(ENERGIES))
def test_energy_shapes_and_dtype(name: str, dtype: torch.dtype) -> None:
    energy = get_energy(name)
    x = _points(energy, 12, dtype).reshape(3, 4, energy.dim)
    log_p = energy.log_prob(x)
    assert log_p.shape == (3, 4) and log_p.dtype == dtype
    assert energy.log_prob(x[0, 0]).shape == ()


@pytest.mark.parametrize("name", DIFFERENTIABLE, ids=DIFFERENTIABLE)
def test_energy_is_differentiable(name: str) -> None:
    energy = get_energy(name)
    x = _points(energy, 16, torch.float64).requires_grad_()
    (grad,) = torch.autograd.grad(energy.log_prob(x).sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    eps = 1e-6  # central differences along the first coordinate agree
    step = torch.zeros_like(x)
    step[:, 0] = eps
    with torch.no_grad():
        numeric = (energy.log_prob(x + step) - energy.log_prob(x - step)) / (2 * eps)
    assert torch.allclose(grad[:, 0], numeric, rtol=1e-5, atol=1e-5)


def test_target_energy_takes_any_target_and_offset() -> None:
    from torchnf.data import Funnel

    energy = TargetEnergy(Funnel("funnel5", dim=5), log_normalizer=-1.0)
    x = energy.sample(7, seed=0, dtype=torch.float64)
    assert x.shape == (7, 5) and energy.log_normalizer == -1.0
    assert torch.allclose(energy.log_prob(x), energy.target.log_prob(x) - 1.0)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: get_energy("nope"), r"unknown energy 'nope'; expected one of \['banana'"),
        (lambda: Potential(5), "expected a potential index k in 1..4, got 5"),
        (lambda: get_energy("u1").sample(3), "expected an energy with an exact sampler"),
        (lambda: get_energy("ring").sample(-1), "expected a number of samples n >= 0"),
        (lambda: get_energy("u1").log_prob(torch.zeros(4, 3)), r"x of shape \(..., 2\)"),
        (lambda: get_energy("u1").log_prob(torch.zeros(4, 2, dtype=torch.long)), "floating"),
        (lambda: TargetEnergy("ring"), "expected a torchnf Target with an exact log_prob"),
        (
            lambda: grid_log_normalizer(get_energy("u1"), [(-1, 1)], 10),
            r"expected bounds of 2 pairs \(low, high\) with low < high",
        ),
        (
            lambda: grid_log_normalizer(get_energy("u1"), [(-1, 1), (2, 1)], 10),
            r"expected bounds of 2 pairs",
        ),
        (
            lambda: grid_log_normalizer(get_energy("u1"), [(-1, 1), (-1, 1)], 0),
            "expected a number of points per dimension n >= 1",
        ),
    ],
    ids=[
        "unknown-name",
        "potential-index",
        "no-sampler",
        "negative-n",
        "wrong-size",
        "integer-x",
        "not-a-target",
        "bounds-count",
        "bounds-order",
        "grid-size",
    ],
)
def test_bad_input_is_refused(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
