"""Invertible elementwise activations: Softlog, Softsquare, Sigmoid, Logit."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchnf.diagnostics import check
from torchnf.layers import Logit, Sigmoid, Softlog, Softsquare

IMAGE = (2, 3, 3)


def test_softlog_values() -> None:
    x = torch.tensor([[0.0, math.e - 1, -(math.e**2 - 1)]], dtype=torch.float64)
    y, log_det = Softlog(3)(x)
    torch.testing.assert_close(y, torch.tensor([[0.0, 1.0, -2.0]], dtype=torch.float64))
    torch.testing.assert_close(log_det, torch.tensor([-3.0], dtype=torch.float64))


def test_softsquare_values() -> None:
    layer = Softsquare(2).double()
    with torch.no_grad():
        layer.log_a.fill_(math.log(2.0))
        layer.b_raw.fill_(math.log(math.e - 1))  # b = 1
    x = torch.tensor([[3.0, -3.0]], dtype=torch.float64)
    y, log_det = layer(x)
    torch.testing.assert_close(y, torch.tensor([[15.0, -15.0]], dtype=torch.float64))
    torch.testing.assert_close(log_det, torch.tensor([2 * math.log(8.0)], dtype=torch.float64))


def test_sigmoid_and_logit_match_torch() -> None:
    x = torch.randn(5, 4, dtype=torch.float64)
    y, _ = Sigmoid(4)(x)
    torch.testing.assert_close(y, torch.sigmoid(x))
    torch.testing.assert_close(Logit(4)(y)[0], x)
    torch.testing.assert_close(Logit(4).inverse(x), y)


def test_logit_squeeze_keeps_endpoints_finite() -> None:
    layer = Logit(3, alpha=0.05)
    y, log_det = layer(torch.tensor([[0.0, 0.5, 1.0]]))
    bound = math.log(0.05 / 0.95)
    torch.testing.assert_close(y, torch.tensor([[bound, 0.0, -bound]]))
    assert torch.isfinite(log_det).all()
    assert layer.codomain.check(y).all()


@pytest.mark.parametrize("alpha", [-0.1, 0.5])
def test_logit_refuses_bad_alpha(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        Logit(3, alpha=alpha)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Softlog(IMAGE),
        lambda: Softsquare(IMAGE),
        lambda: Sigmoid(IMAGE),
        lambda: Logit(IMAGE),
        lambda: Logit(IMAGE, alpha=1e-3),
    ],
    ids=["softlog", "softsquare", "sigmoid", "logit", "logit-alpha"],
)
def test_image_events(make) -> None:
    # Image flows use these on (C, H, W) events: log_det sums over the whole event.
    layer = make()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    report = check(layer, batch_size=2)
    assert report.passed, report.failures
    x = torch.distributions.transform_to(layer.domain)(torch.randn(4, *IMAGE))
    y, log_det = layer(x)
    assert y.shape == x.shape and log_det.shape == (4,)


@settings(max_examples=40, deadline=None)
@given(st.floats(-20, 5), st.floats(-20, 20), st.floats(-1e3, 1e3))
def test_softsquare_is_increasing_and_invertible(log_a: float, b_raw: float, y: float) -> None:
    layer = Softsquare(1).double()
    with torch.no_grad():
        layer.log_a.fill_(log_a)
        layer.b_raw.fill_(b_raw)
    a, b = (c.detach() for c in layer._coefficients())
    assert float(a) > 0 and float(b) >= 0
    y_ = torch.tensor([[y]], dtype=torch.float64)
    x = layer.inverse(y_)
    torch.testing.assert_close(layer(x)[0], y_, rtol=1e-12, atol=1e-12)
    xs = torch.linspace(-10, 10, 101, dtype=torch.float64).unsqueeze(-1)
    assert bool((layer(xs)[0].diff(dim=0) > 0).all())
