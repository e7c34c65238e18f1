"""CircularNSF(autoregressive=True): MADE-conditioned circular splines on the torus."""

from __future__ import annotations

import dataclasses
import math

import pytest
import test_contract as contract
import torch
from cases import Case

from torchnf.core import registry
from torchnf.layers import Reverse
from torchnf.layers.circular import (
    AngleEmbedding,
    CircularSplineAutoregressive,
    MixedTransformer,
    wrap_angle,
)
from torchnf.models import CircularNSF
from torchnf.nets.made import MADE

PI = math.pi


def _perturbed(module, scale: float = 0.2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def _flow(input_size: int = 3, circular=(0, 2), context_size: int = 0, n_layers: int = 3):
    torch.manual_seed(0)
    flow = CircularNSF(
        input_size,
        circular=None if circular is None else list(circular),
        n_layers=n_layers,
        hidden_sizes=(12,),
        n_bins=4,
        context_size=context_size,
        autoregressive=True,
    )
    return _perturbed(flow).double()


def _points(flow, n: int = 64, seed: int = 1):
    """Angles uniform on [-pi, pi), reals 2 N(0, 1); a context where the flow takes one."""
    return _data(flow.event_shape[0], flow.circular, flow.context_size, n, seed)


def _data(d: int, circular, context_size: int = 0, n: int = 64, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(n, d, generator=g, dtype=torch.float64)
    angles = (2 * torch.rand(n, len(circular), generator=g, dtype=torch.float64) - 1) * PI
    x[:, list(circular)] = angles
    c = torch.randn(n, context_size, generator=g, dtype=torch.float64)
    return x, (c if context_size else None)


# The contract of tests/test_contract.py, on the autoregressive model and its layer (the
# registered example of CircularNSF is built with the default, couplings).
_EXAMPLES = {
    "CircularNSF-autoregressive": lambda context_size: CircularNSF(
        3,
        circular=[0],
        n_layers=2,
        hidden_sizes=(8,),
        n_bins=4,
        context_size=context_size,
        autoregressive=True,
    ),
    "CircularSplineAutoregressive": lambda context_size: CircularSplineAutoregressive(
        4, circular=[0, 1, 3], hidden_sizes=(8,), context_size=context_size, n_bins=4
    ),
}
_CASES = [
    Case(
        dataclasses.replace(registry.get("CircularNSF"), name=name, example=example),
        context_size,
        inverse_view,
    )
    for name, example in _EXAMPLES.items()
    for context_size in (0, 3)
    for inverse_view in (False, True)
]
_CONTRACT = [
    contract.test_check_passes,
    contract.test_inverse_returns_tensor_and_round_trips,
    contract.test_dtype_follows_input,
    contract.test_state_dict_reload_gives_identical_outputs,
    contract.test_wrong_feature_size_is_refused,
    contract.test_non_floating_input_is_refused,
]


@pytest.mark.parametrize("case", _CASES, ids=[c.id for c in _CASES])
@pytest.mark.parametrize("check", _CONTRACT, ids=[t.__name__[5:] for t in _CONTRACT])
def test_contract(case, check) -> None:
    check(case)
    if case.context_size:
        contract.test_missing_context_is_refused(case)


@pytest.mark.parametrize("context_size", [0, 2])
def test_log_prob_is_periodic_in_every_angle(context_size) -> None:
    flow = _flow(context_size=context_size)
    x, c = _points(flow)
    log_prob = flow.log_prob(x, c)
    for column in flow.circular:
        for turns in (-2, -1, 1, 3):
            shifted = x.clone()
            shifted[:, column] += 2 * PI * turns
            torch.testing.assert_close(flow.log_prob(shifted, c), log_prob, atol=1e-9, rtol=0)
    assert log_prob.isfinite().all()


@pytest.mark.parametrize("input_size, circular", [(3, (0, 2)), (2, None), (4, (1, 2))])
def test_log_prob_is_continuous_across_the_seam_of_every_angle(input_size, circular) -> None:
    flow = _flow(input_size, circular, context_size=2)
    x, c = _points(flow, n=32, seed=2)
    eps = 1e-12  # the density is steep in places (a slope of 1e3 here), but with no jump
    for column in flow.circular:
        lo, hi = x.clone(), x.clone()
        lo[:, column], hi[:, column] = -PI + eps, PI - eps
        torch.testing.assert_close(flow.log_prob(lo, c), flow.log_prob(hi, c), atol=1e-7, rtol=0)


def test_density_on_the_torus_integrates_to_one() -> None:
    flow = _flow(2, None)
    n = 200
    g = -PI + (torch.arange(n, dtype=torch.float64) + 0.5) * 2 * PI / n
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        mass = flow.log_prob(grid).exp().sum() * (2 * PI / n) ** 2
    assert abs(float(mass) - 1) < 1e-3


@pytest.mark.parametrize(
    "input_size, circular, n_layers",
    [(3, (0, 2), 3), (3, (1,), 2), (1, None, 2), (2, (), 1), (4, None, 4)],
)
def test_round_trip_and_samples_on_the_torus(input_size, circular, n_layers) -> None:
    flow = _flow(input_size, circular, context_size=2, n_layers=n_layers)
    x, c = _points(flow, n=200, seed=3)
    y, log_det = flow.bijector(x, c)
    x_back, log_det_back = flow.bijector.inverse_and_log_det(y, c)
    torch.testing.assert_close(x_back, x, atol=1e-10, rtol=0)
    torch.testing.assert_close(log_det_back, -log_det, atol=1e-10, rtol=0)
    torch.manual_seed(4)
    samples, log_prob = flow.sample_and_log_prob(100, c[0])
    angles = samples[:, flow.circular]
    assert samples.shape == (100, input_size) and ((angles >= -PI) & (angles < PI)).all()
    torch.testing.assert_close(flow.log_prob(samples, c[0].expand(100, -1)), log_prob)


def test_layer_jacobian_is_lower_triangular_in_the_made_order() -> None:
    torch.manual_seed(0)
    layer = CircularSplineAutoregressive(4, circular=[0, 2], hidden_sizes=(16, 16), n_bins=4)
    layer = _perturbed(layer, 0.5).double()
    depends = torch.zeros(4, 4, dtype=torch.bool)
    for x in _data(4, [0, 2], n=8)[0]:
        jacobian = torch.autograd.functional.jacobian(lambda v: layer(v)[0], x)
        assert (torch.triu(jacobian, 1) == 0).all()  # y_i depends on x_j, j <= i, alone
        torch.testing.assert_close(layer(x)[1], torch.diagonal(jacobian).log().sum())
        depends |= jacobian != 0
    # ... and on every x_{<i} (somewhere: a ReLU unit may be off at one point)
    assert torch.equal(depends, torch.ones(4, 4, dtype=torch.bool).tril())


def test_made_with_angle_inputs_is_autoregressive_and_its_prefix_pass_matches() -> None:
    embedding = AngleEmbedding(5, circular=[0, 3, 4])
    assert embedding.features == [0, 0, 1, 2, 3, 3, 4, 4]
    made = MADE(
        5, 3, (20, 20), context_size=2, input_map=embedding, input_features=embedding.features
    )
    made = _perturbed(made, 1.0).double()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(5, dtype=torch.float64, generator=g)
    context = torch.randn(2, dtype=torch.float64, generator=g)
    jacobian = torch.autograd.functional.jacobian(lambda v: made(v, context), x)
    depends = jacobian.abs().sum(1) > 0  # (D, D): output i on input j
    assert torch.equal(depends, torch.ones(5, 5, dtype=torch.bool).tril(-1))
    # The D passes of an inverse: feature i's parameters from the inputs that x_{<i} feed.
    net, full = made.conditioner(context), made(x, context)
    for i in range(5):
        torch.testing.assert_close(net(x, i), full[i], atol=1e-12, rtol=0)
        later = x.clone()
        later[i:] = 7.0  # what comes after feature i is never read
        torch.testing.assert_close(net(later, i), full[i], atol=1e-12, rtol=0)


def test_inverse_runs_one_made_pass_per_feature() -> None:
    flow = _flow(4, (1, 2), n_layers=1)
    layer = flow.bijector[1]
    assert isinstance(layer, CircularSplineAutoregressive)
    assert isinstance(layer.transformer, MixedTransformer)
    calls: list[int | None] = []
    conditioner = layer.made.conditioner

    def counting(context=None):
        net = conditioner(context)
        return lambda x, feature=None: calls.append(feature) or net(x, feature)

    layer.made.conditioner = counting
    x, _ = _points(flow, 8)
    y = layer(x)[0]
    torch.testing.assert_close(layer.inverse(y), x, atol=1e-10, rtol=0)
    assert calls == [0, 1, 2, 3]


def test_layers_reverse_the_features_between_them_and_end_in_the_data_order() -> None:
    for n_layers in (1, 2, 3):
        flow = CircularNSF(4, circular=[0, 1], n_layers=n_layers, autoregressive=True)
        layers = list(flow.bijector)
        assert [type(m).__name__ for m in layers[1:]] == (
            ["CircularSplineAutoregressive", "Reverse"] * n_layers
        )[: 2 * n_layers - 1 + (n_layers % 2 == 0)]
        circulars = [m.circular for m in layers if isinstance(m, CircularSplineAutoregressive)]
        assert circulars == [[0, 1], [2, 3], [0, 1]][:n_layers]
        assert sum(isinstance(m, Reverse) for m in layers) % 2 == 0  # z in x's order


def test_config_records_the_variant_and_rebuilds() -> None:
    flow = _flow(3, (0, 2), context_size=2)
    assert flow.config["autoregressive"] is True
    rebuilt = registry.build("CircularNSF", flow.config).double()
    rebuilt.load_state_dict(flow.state_dict())
    x, c = _points(flow, 16)
    assert torch.equal(rebuilt.log_prob(x, c), flow.log_prob(x, c))
    # A config recorded before the argument existed rebuilds as couplings.
    old = {k: v for k, v in flow.config.items() if k != "autoregressive"}
    assert registry.build("CircularNSF", old).config["autoregressive"] is False


def test_one_feature_is_allowed_autoregressive_but_not_with_couplings() -> None:
    flow = _flow(1, None, n_layers=3)
    theta = -PI + (torch.arange(4000, dtype=torch.float64)[:, None] + 0.5) * 2 * PI / 4000
    with torch.no_grad():
        mass = flow.log_prob(theta).exp().mean() * 2 * PI
    assert abs(float(mass) - 1) < 1e-6
    with pytest.raises(ValueError, match="needs input_size >= 2"):
        CircularNSF(1, autoregressive=False)


def test_made_input_map_arguments_are_checked() -> None:
    embedding = AngleEmbedding(2, circular=[0])
    with pytest.raises(ValueError, match="together, or neither"):
        MADE(2, 1, (8,), input_map=embedding)
    with pytest.raises(ValueError, match="nondecreasing in"):
        MADE(2, 1, (8,), input_map=embedding, input_features=[1, 0, 0])
    with pytest.raises(ValueError, match="nondecreasing in"):
        MADE(2, 1, (8,), input_map=embedding, input_features=[0, 0, 2])
    made = MADE(2, 1, (8,), input_map=embedding, input_features=embedding.features)
    with pytest.raises(ValueError, match="reverse_ conjugates"):
        made.reverse_()


def test_low_precision_conditioners_keep_the_round_trip() -> None:
    from torchnf.nets.precision import set_conditioner_precision

    flow = _flow(3, (0, 2), context_size=2).float()
    set_conditioner_precision(flow, torch.bfloat16)
    x, c = _points(flow, 64)
    x, c = x.float(), c.float()
    y, _ = flow.bijector(x, c)
    x_back = flow.bijector.inverse(y, c)
    assert (wrap_angle(x_back - x)[:, [0, 2]].abs().max() < 1e-3) and (
        (x_back - x)[:, 1].abs().max() < 1e-3
    )
