"""The seeds' options: a conditioner's activation, and a fixed Gaussian-mixture base."""

from __future__ import annotations

import pytest
import torch
from torch import distributions as D
from torch import nn

from torchnf import Flow
from torchnf.core.registry import build
from torchnf.distributions import GaussianMixture
from torchnf.layers import Reverse
from torchnf.models import IAF, MAF, RealNVP
from torchnf.nets import MLP
from torchnf.nets.made import MADE
from torchnf.nets.mlp import ACTIVATIONS


@pytest.mark.parametrize("name", sorted(ACTIVATIONS), ids=sorted(ACTIVATIONS))
def test_mlp_uses_the_named_activation(name: str) -> None:
    net = MLP(2, 3, hidden_sizes=(4, 4), activation=name)
    hidden = [m for m in net.net if not isinstance(m, nn.Linear)]
    assert [type(m) for m in hidden] == [ACTIVATIONS[name]] * 2


def test_mlp_refuses_an_unknown_activation() -> None:
    with pytest.raises(ValueError, match="expected activation in"):
        MLP(2, 3, activation="swish")


def test_realnvp_activation_is_in_its_config_and_rebuilds() -> None:
    flow = RealNVP(2, n_layers=2, hidden_sizes=(8,), activation="tanh")
    assert flow.config["activation"] == "tanh"
    assert any(isinstance(m, nn.Tanh) for m in flow.modules())
    rebuilt = build("RealNVP", flow.config)
    rebuilt.load_state_dict(flow.state_dict())
    x = torch.randn(5, 2)
    torch.testing.assert_close(rebuilt.log_prob(x), flow.log_prob(x))


@pytest.mark.parametrize("model", [MAF, IAF], ids=["MAF", "IAF"])
def test_autoregressive_activation_is_in_its_config_and_rebuilds(model: type) -> None:
    flow = model(3, n_layers=2, hidden_sizes=(8,), activation="tanh")
    assert flow.config["activation"] == "tanh"
    assert [type(m.activation) for m in flow.modules() if isinstance(m, MADE)] == [nn.Tanh] * 2
    nn.init.normal_(next(m for m in flow.modules() if isinstance(m, MADE)).output.weight)
    rebuilt = build(model.__name__, flow.config)
    rebuilt.load_state_dict(flow.state_dict())
    x = torch.randn(5, 3)
    torch.testing.assert_close(rebuilt.log_prob(x), flow.log_prob(x))


@pytest.mark.parametrize("model", [MAF, IAF], ids=["MAF", "IAF"])
def test_autoregressive_refuses_an_unknown_activation(model: type) -> None:
    with pytest.raises(ValueError, match="expected activation in"):
        model(2, activation="swish")


LOC = [[-2.0, 0.0], [2.0, 1.0], [0.0, 3.0]]
SCALE = [[0.5, 1.0], [1.0, 0.3], [0.7, 0.7]]
WEIGHTS = [0.2, 0.3, 0.5]


def test_fixed_mixture_has_no_parameters_and_saves_its_values() -> None:
    base = GaussianMixture(2, loc=LOC, scale=SCALE, weights=WEIGHTS, trainable=False)
    assert list(base.parameters()) == []
    assert set(base.state_dict()) == {"logits", "loc", "log_scale"}
    flow = Flow(Reverse(2), base)
    assert all(p.requires_grad for p in flow.parameters())  # nothing of the base's


def test_given_mixture_log_prob_matches_torch() -> None:
    base = GaussianMixture(2, loc=LOC, scale=SCALE, weights=WEIGHTS, trainable=False)
    ref = D.MixtureSameFamily(
        D.Categorical(torch.tensor(WEIGHTS)),
        D.Independent(D.Normal(torch.tensor(LOC), torch.tensor(SCALE)), 1),
    )
    z = torch.randn(10, 2) * 3
    torch.testing.assert_close(base.log_prob(z), ref.log_prob(z))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"loc": [[0.0, 0.0]], "n_components": 2},
        {"loc": [[0.0, 0.0, 0.0]]},
        {"loc": LOC, "scale": [1.0, -1.0]},
        {"loc": LOC, "weights": [1.0, 1.0]},
        {"loc": LOC, "weights": [1.0, 0.0, 1.0]},
    ],
    ids=["count-mismatch", "wrong-dim", "negative-scale", "few-weights", "zero-weight"],
)
def test_mixture_refuses_bad_values(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="expected"):
        GaussianMixture(2, **kwargs)
