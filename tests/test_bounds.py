"""BoundedSupport and the models' ``bounds``: float32 at, next to and far from each bound."""

from __future__ import annotations

import json
import math

import pytest
import torch

from torchnf import Flow
from torchnf.core.registry import build
from torchnf.layers import BoundedSupport
from torchnf.models import (
    IAF,
    MAF,
    NICE,
    NSF,
    GeneralizedSylvesterNet,
    PlanarFlow,
    RadialFlow,
    RealNVP,
    SylvesterNet,
)

torch.set_num_threads(1)

# (bounds of one dimension, the bound tested, the side it is on)
EDGES = {
    "interval01-low": ((0.0, 1.0), 0.0, "low"),
    "interval01-high": ((0.0, 1.0), 1.0, "high"),
    "interval12-low": ((1.0, 2.0), 1.0, "low"),
    "interval-2-3-high": ((-2.0, 3.0), 3.0, "high"),
    "above0": ((0.0, None), 0.0, "low"),
    "above-2": ((-2.0, None), -2.0, "low"),
    "above1e6": ((1e6, None), 1e6, "low"),
    "below5": ((None, 5.0), 5.0, "high"),
    "below0": ((None, 0.0), 0.0, "high"),
}
POINTS = ("at", "outside", "1ulp", "far")


def _point(bound: float, side: str, where: str) -> torch.Tensor:
    edge = torch.tensor(bound, dtype=torch.float32)
    inward = 1.0 if side == "low" else -1.0
    if where == "at":
        return edge
    if where == "outside":
        return edge - inward
    if where == "1ulp":
        return torch.nextafter(edge, torch.tensor(inward * math.inf))
    return edge + inward * 0.25  # far inside: 0.25 from the bound


@pytest.mark.parametrize("where", POINTS)
@pytest.mark.parametrize("edge", EDGES.values(), ids=EDGES.keys())
def test_float32_log_prob_and_gradient_at_and_next_to_a_bound(edge, where) -> None:
    bounds, bound, side = edge
    flow = Flow(BoundedSupport([bounds, None]))
    x = torch.stack([_point(bound, side, where), torch.tensor(0.3)]).reshape(1, 2)
    x.requires_grad_()
    log_prob = flow.log_prob(x)
    log_prob.sum().backward()
    z, _ = flow(x.detach())
    assert log_prob.dtype == torch.float32 and torch.isfinite(z).all()
    if where in ("at", "outside"):
        assert log_prob.item() == -math.inf
        assert x.grad[0, 0] == 0 and torch.isfinite(x.grad).all()
        return
    assert torch.isfinite(log_prob).all()
    # 1 ulp above or below 0 is the subnormal 1.4e-45: the exact gradient, ~|y| / 1.4e-45,
    # is beyond float32's range, so it is inf there (never NaN); finite everywhere else.
    if where == "1ulp" and bound == 0.0:
        assert x.grad[0, 0].isinf() and torch.isfinite(x.grad[0, 1])
    else:
        assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("edge", EDGES.values(), ids=EDGES.keys())
def test_float32_exact_density_far_inside(edge) -> None:
    bounds, bound, side = edge
    layer = BoundedSupport([bounds])
    x = _point(bound, side, "far").reshape(1, 1)
    y, log_det = layer(x)
    jac = torch.autograd.functional.jacobian(lambda v: layer(v)[0], x.double().reshape(1, 1))
    expected = jac.reshape(()).abs().log()
    assert torch.allclose(log_det.double(), expected, atol=1e-5)
    assert torch.allclose(layer.inverse(y), x, rtol=1e-6)


LATENTS = (-1e4, -200.0, -104.0, -17.0, -1e-3, 0.0, 1e-3, 17.0, 104.0, 200.0, 1e4)


@pytest.mark.parametrize("edge", EDGES.values(), ids=EDGES.keys())
def test_float32_samples_never_leave_the_support(edge) -> None:
    bounds, _, _ = edge
    layer = BoundedSupport([bounds])
    y = torch.tensor(LATENTS).reshape(-1, 1).requires_grad_()
    x, log_det = layer.inverse_and_log_det(y)
    (x.sum() + log_det.sum()).backward()
    low, high = bounds
    assert low is None or (x > low).all()
    assert high is None or (x < high).all()
    assert torch.isfinite(x).all() and torch.isfinite(log_det).all()
    assert torch.isfinite(y.grad).all()
    assert torch.isfinite(layer(x)[1]).all()  # every sample has a finite density


def test_nan_stays_nan_and_outside_is_minus_inf_per_row() -> None:
    layer = BoundedSupport([(0, 1), (0, None), None])
    x = torch.tensor([[0.5, 2.0, -1.0], [1.5, 2.0, -1.0], [0.5, -2.0, 7.0], [math.nan, 1.0, 0.0]])
    y, log_det = layer(x)
    assert log_det[1:3].eq(-math.inf).all() and torch.isfinite(log_det[0])
    assert log_det[3].isnan() and torch.isfinite(y[:3]).all()


BAD_BOUNDS = {
    "empty": [],
    "string": "0:1",
    "reversed": [(1, 0)],
    "equal": [(1, 1)],
    "nan": [(0, math.nan)],
    "infinite": [(0, math.inf)],
    "three-ends": [(0, 1, 2)],
    "text-end": [("a", 1)],
    "no-float32-room": [(1.0, 1.0 + 1e-9)],
    "width-overflows": [(-1.7e308, 1.7e308)],
}


@pytest.mark.parametrize("bounds", BAD_BOUNDS.values(), ids=BAD_BOUNDS.keys())
def test_bad_bounds_are_one_clear_value_error(bounds) -> None:
    with pytest.raises(ValueError, match="expected bounds"):
        BoundedSupport(bounds)


BOUNDS = [(0, 1), (-1, None), None]
MODELS = {
    "RealNVP": lambda b: RealNVP(3, n_layers=2, hidden_sizes=(8,), bounds=b),
    "NICE": lambda b: NICE(3, n_layers=2, hidden_sizes=(8,), bounds=b),
    "PlanarFlow": lambda b: PlanarFlow(3, n_layers=2, bounds=b),
    "RadialFlow": lambda b: RadialFlow(3, n_layers=2, bounds=b),
    "SylvesterNet": lambda b: SylvesterNet(2, 3, bounds=b),
    "GeneralizedSylvesterNet": lambda b: GeneralizedSylvesterNet(2, 3, hidden_sizes=(8,), bounds=b),
    "MAF": lambda b: MAF(3, n_layers=2, hidden_sizes=(8,), bounds=b),
    "IAF": lambda b: IAF(3, n_layers=2, hidden_sizes=(8,), bounds=b),
    "NSF": lambda b: NSF(3, n_layers=2, hidden_sizes=(8,), bounds=b),
    "NSF-coupling": lambda b: NSF(3, n_layers=2, hidden_sizes=(8,), autoregressive=False, bounds=b),
}


@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
def test_model_bounds_first_domain_samples_and_config(make) -> None:
    torch.manual_seed(0)
    flow = make(BOUNDS)
    assert isinstance(flow.bijector[0], BoundedSupport)
    x = torch.stack([torch.rand(64), torch.rand(64).mul(5).sub(0.9), torch.randn(64)], -1)
    assert flow.domain.check(x).all()
    flow.initialize(x)
    samples = flow.sample(500)
    assert flow.domain.check(samples).all() and torch.isfinite(flow.log_prob(samples)).all()
    outside = x[:2].clone()
    outside[0, 0], outside[1, 1] = 1.0, -3.0
    assert flow.log_prob(outside).eq(-math.inf).all()
    config = json.loads(json.dumps(flow.config))
    assert config["bounds"] == [[0, 1], [-1, None], None]
    rebuilt = build(type(flow).__name__, config)
    rebuilt.load_state_dict(flow.state_dict())
    assert torch.equal(rebuilt.log_prob(x), flow.log_prob(x))


@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
def test_model_without_bounds_has_no_layer_and_bad_length_is_refused(make) -> None:
    assert not isinstance(make(None).bijector[0], BoundedSupport)
    with pytest.raises(ValueError, match="one bound per dimension, 3"):
        make([(0, 1)])
