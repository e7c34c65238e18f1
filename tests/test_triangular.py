"""TriangularAffine: structure of W, both orientations, and what a chain of them can fit."""

from __future__ import annotations

import pytest
import torch

from torchnf import Flow, fit
from torchnf.core.chain import Chain
from torchnf.diagnostics import check
from torchnf.layers import TriangularAffine


def _perturbed(upper: bool, size: int = 4) -> TriangularAffine:
    layer = TriangularAffine(size, upper=upper).double()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return layer


@pytest.mark.parametrize("upper", [False, True], ids=["lower", "upper"])
def test_weight_is_triangular_with_positive_diagonal(upper: bool) -> None:
    w = _perturbed(upper).weight()
    off = w.tril(-1) if upper else w.triu(1)
    assert torch.equal(off, torch.zeros_like(off))
    assert (w.diagonal() > 0).all()


@pytest.mark.parametrize("upper", [False, True], ids=["lower", "upper"])
def test_affine_map_inverse_and_log_det(upper: bool) -> None:
    layer = _perturbed(upper)
    x = torch.randn(7, 4, dtype=torch.float64)
    y, log_det = layer(x)
    w = layer.weight()
    torch.testing.assert_close(y, x @ w.mT + layer.bias)
    torch.testing.assert_close(log_det, torch.linalg.slogdet(w)[1].expand(7))
    torch.testing.assert_close(layer.inverse(y), x)


def test_upper_passes_the_numeric_checks() -> None:
    # The registry's example is lower-triangular; the contract checks run on the upper one here.
    report = check(_perturbed(upper=True))
    assert report.passed, report


def test_starts_as_identity_with_d_times_d_plus_3_over_2_weights() -> None:
    layer = TriangularAffine(3)
    x = torch.randn(5, 3)
    y, log_det = layer(x)
    assert torch.equal(y, x) and torch.equal(log_det, torch.zeros(5))
    assert sum(p.numel() for p in layer.parameters()) == 3 * 6 // 2


def test_lower_upper_pair_fits_a_correlated_gaussian() -> None:
    torch.manual_seed(0)
    cov = torch.tensor([[3.0, 2.0], [2.0, 3.0]])
    target = torch.distributions.MultivariateNormal(torch.tensor([4.5, -4.5]), cov)
    x = target.sample((4000,))
    flow = Flow(Chain(TriangularAffine(2, upper=True), TriangularAffine(2)))
    fit(flow, x, steps=400, batch_size=500, lr=0.05, progress=False, initialize=False)
    with torch.no_grad():
        held_out = target.sample((4000,))
        kl = (target.log_prob(held_out) - flow.log_prob(held_out)).mean()
    assert kl < 0.01
