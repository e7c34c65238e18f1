"""Coupling layers: the strided split of alternating masks equals the general gather path."""

from __future__ import annotations

import pytest
import torch

from torchnf.layers import Coupling
from torchnf.layers.coupling import checkerboard_mask
from torchnf.layers.splines import RQSTransformer
from torchnf.layers.transformers import AdditiveTransformer, AffineTransformer
from torchnf.nets import MLP

TRANSFORMERS = {
    "affine": AffineTransformer,
    "additive": AdditiveTransformer,
    "spline": lambda: RQSTransformer(n_bins=4, tail_bound=3.0),
}
MASKS = {
    "alternating-even-6": (checkerboard_mask(6, 0), 0),
    "alternating-odd-6": (checkerboard_mask(6, 1), 1),
    "alternating-5": (checkerboard_mask(5, 0), None),  # odd length: the general path
    "halves-6": (torch.tensor([True, True, True, False, False, False]), None),
    "scattered-6": (torch.tensor([False, True, True, False, True, False]), None),
}


def _layer(transformer: str, mask: torch.Tensor) -> Coupling:
    torch.manual_seed(0)
    tau = TRANSFORMERS[transformer]()
    n_out = int((~mask).sum()) * tau.params_per_feature
    layer = Coupling(tau, MLP(int(mask.sum()), n_out, (8,), context_size=2), mask).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return layer


@pytest.mark.parametrize("mask", list(MASKS), ids=list(MASKS))
def test_alternating_masks_take_the_strided_path(mask: str) -> None:
    values, parity = MASKS[mask]
    assert _layer("affine", values).parity == parity


@pytest.mark.parametrize("transformer", list(TRANSFORMERS), ids=list(TRANSFORMERS))
@pytest.mark.parametrize("mask", list(MASKS), ids=list(MASKS))
def test_split_paths_agree_with_gradients(transformer: str, mask: str) -> None:
    fast = _layer(transformer, MASKS[mask][0])
    general = _layer(transformer, MASKS[mask][0])
    general.parity = None  # force index_select / index_copy
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, len(fast.mask), generator=g, dtype=torch.float64, requires_grad=True)
    context = torch.randn(7, 2, generator=g, dtype=torch.float64)
    results = []
    for layer in (fast, general):
        y, log_det = layer(x, context)
        x_back, inverse_log_det = layer.inverse_and_log_det(y, context)
        grads = torch.autograd.grad((y.sin().sum() + log_det.sum()), [x, *layer.parameters()])
        results.append((y, log_det, x_back, inverse_log_det, *grads))
    for actual, expected in zip(*results, strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(results[0][2], x.detach(), rtol=1e-10, atol=1e-10)
    # The kept features pass through unchanged.
    kept = MASKS[mask][0]
    assert torch.equal(results[0][0][:, kept], x.detach()[:, kept])
