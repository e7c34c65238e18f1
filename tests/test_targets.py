"""Targets of known density: normalized, seeded, and their samples agree with log_prob."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from torchnf.data import TARGETS, Target, get_target

NAMES = list(TARGETS)
LOW_DIM = [n for n in NAMES if TARGETS[n].dim <= 2 and n != "funnel"]  # grid-integrable
# Densities on the torus jump to 0 at +-pi (the midpoint rule then errs by O(cell width)) and
# their Stein identities have periodic boundary terms: tests/test_circular.py checks them.
CIRCULAR = {n for n in NAMES if TARGETS[n].circular}
SMOOTH = [n for n in NAMES if n != "checkerboard" and n not in CIRCULAR]  # differentiable


def test_at_least_eight_targets_from_1d_to_16d() -> None:
    dims = {t.dim for t in TARGETS.values()}
    assert len(TARGETS) >= 8 and min(dims) == 1 and max(dims) >= 16
    assert all(t.has_log_prob for t in TARGETS.values())


def test_unknown_name_lists_the_names() -> None:
    with pytest.raises(ValueError, match="expected one of"):
        get_target("nope")


@pytest.mark.parametrize("name", NAMES)
def test_sample_is_seeded(name: str) -> None:
    t = get_target(name)
    a, b, c = t.sample(64, seed=5), t.sample(64, seed=5), t.sample(64, seed=6)
    assert a.shape == (64, t.dim) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert t.sample(3, seed=1, dtype=torch.float64).dtype == torch.float64


@pytest.mark.parametrize("name", NAMES)
def test_log_prob_shapes_and_errors(name: str) -> None:
    t = get_target(name)
    x = t.sample(6, seed=0).reshape(2, 3, t.dim)
    lp = t.log_prob(x)
    assert lp.shape == (2, 3) and lp.dtype == torch.float32 and torch.isfinite(lp).all()
    with pytest.raises(ValueError, match=f"expected x of shape \\(..., {t.dim}\\)"):
        t.log_prob(torch.zeros(4, t.dim + 1))
    with pytest.raises(ValueError, match="floating-point"):
        t.log_prob(torch.zeros(4, t.dim, dtype=torch.long))


def _grid(t: Target, n: int) -> tuple[torch.Tensor, float, torch.Tensor, float]:
    """Midpoints of n^dim cells covering the samples' range (integer edges, padded by 1).

    Returns the points, the cell volume, the lower edges and the cell width.
    """
    x = t.sample(20000, seed=0, dtype=torch.float64)
    lo, hi = x.min(0).values.floor() - 1, x.max(0).values.ceil() + 1
    width = float((hi - lo).max()) / n
    axes = [low + width * (torch.arange(n, dtype=torch.float64) + 0.5) for low in lo]
    points = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, t.dim)
    return points, width**t.dim, lo, width


@pytest.mark.parametrize("name", [n for n in LOW_DIM if n not in CIRCULAR])
def test_log_prob_integrates_to_one_on_a_grid(name: str) -> None:
    t = get_target(name)
    points, volume, _, _ = _grid(t, 4000 if t.dim == 1 else 240)
    total = float(t.log_prob(points).exp().sum()) * volume
    assert total == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("v", [-4.0, 0.0, 4.0])
def test_funnel_conditionals_are_normalized(v: float) -> None:
    t = get_target("funnel")
    x = torch.linspace(-8, 8, 4001, dtype=torch.float64) * math.exp(v / 2)
    p = t.log_prob(torch.stack([torch.full_like(x, v), x], -1)).exp()
    integral = float(p.sum() * (x[1] - x[0]))
    assert integral == pytest.approx(stats.norm(0, 3).pdf(v), rel=1e-6)


@pytest.mark.parametrize("name", ["gaussian16", "student8", "funnel10"])
def test_high_dimensional_log_prob_matches_scipy(name: str) -> None:
    t = get_target(name)
    x = t.sample(20, seed=3, dtype=torch.float64)
    if name == "gaussian16":
        ref = stats.multivariate_normal(t.loc.numpy(), (t.scale_tril @ t.scale_tril.T).numpy())
        expected = ref.logpdf(x.numpy())
    elif name == "student8":
        cov = (t.scale_tril @ t.scale_tril.T).numpy()
        expected = stats.multivariate_t(np.zeros(t.dim), cov, df=t.df).logpdf(x.numpy())
    else:
        v, rest = x[:, 0].numpy(), x[:, 1:].numpy()
        expected = stats.norm(0, 3).logpdf(v) + stats.norm.logpdf(
            rest, scale=np.exp(v / 2)[:, None]
        ).sum(-1)
    np.testing.assert_allclose(t.log_prob(x).numpy(), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", LOW_DIM)
def test_sample_histogram_matches_density(name: str) -> None:
    """Counts of 20000 samples in 8^dim cells against the density integrated over each cell."""
    t = get_target(name)
    n, sub = 20000, 24 if t.dim == 2 else 64
    points, volume, lo, width = _grid(t, 8 * sub)
    p = (t.log_prob(points).exp() * volume).reshape((8, sub) * t.dim)
    expected = n * p.sum(dim=tuple(range(1, 2 * t.dim, 2))).flatten()
    x = t.sample(n, seed=11, dtype=torch.float64)
    cells = ((x - lo) / (width * sub)).floor().long().clamp(0, 7)
    index = cells[:, 0] * 8 + cells[:, 1] if t.dim == 2 else cells[:, 0]
    counts = torch.bincount(index, minlength=8**t.dim).double()
    assert ((counts - expected).abs() <= 5 * expected.sqrt() + 5).all(), (counts, expected)


@pytest.mark.parametrize("name", SMOOTH)
def test_samples_satisfy_the_stein_identity(name: str) -> None:
    r"""For x ~ p: E[\nabla log p(x)] = 0 and E[\nabla log p(x) x^T] = -I (by parts).

    Ties the sampler to the density in every dimension, whatever the normalizer.
    """
    t = get_target(name)
    x = t.sample(20000, seed=2, dtype=torch.float64).requires_grad_(True)
    (score,) = torch.autograd.grad(t.log_prob(x).sum(), x)
    x = x.detach()
    terms = torch.cat([score, (score.unsqueeze(-1) * x.unsqueeze(-2)).flatten(1)], -1)
    target = torch.cat([torch.zeros(t.dim), -torch.eye(t.dim, dtype=torch.float64).flatten()])
    mean, stderr = terms.mean(0), terms.std(0) / math.sqrt(len(x))
    z = (mean - target).abs() / (stderr + 1e-12)
    assert (z < 5.0).all(), f"worst |z| = {float(z.max()):.2f}"
