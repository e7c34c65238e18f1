"""NSF's options: the conditioners' activation (GELU by default)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchnf.core import registry
from torchnf.models import NSF

AUTOREGRESSIVE = [pytest.param(True, id="made"), pytest.param(False, id="coupling")]


@pytest.mark.parametrize("autoregressive", AUTOREGRESSIVE)
def test_activation_reaches_every_conditioner_and_the_config(autoregressive: bool) -> None:
    flow = NSF(3, n_layers=2, hidden_sizes=(8,), autoregressive=autoregressive, activation="elu")
    kinds = {type(m) for m in flow.modules()}
    assert nn.ELU in kinds and nn.ReLU not in kinds
    assert flow.config["activation"] == "elu"
    rebuilt = registry.build("NSF", flow.config)
    rebuilt.load_state_dict(flow.state_dict())
    x = torch.randn(5, 3)
    torch.testing.assert_close(rebuilt.log_prob(x), flow.log_prob(x))


@pytest.mark.parametrize("autoregressive", AUTOREGRESSIVE)
def test_default_activation_is_gelu(autoregressive: bool) -> None:
    flow = NSF(3, n_layers=2, hidden_sizes=(8,), autoregressive=autoregressive)
    kinds = {type(m) for m in flow.modules()}
    assert nn.GELU in kinds and nn.ReLU not in kinds
    assert flow.config["activation"] == "gelu"


@pytest.mark.parametrize("autoregressive", AUTOREGRESSIVE)
def test_unknown_activation_is_refused(autoregressive: bool) -> None:
    with pytest.raises(ValueError, match="expected activation in .*'swish'"):
        NSF(3, hidden_sizes=(8,), autoregressive=autoregressive, activation="swish")


def test_a_config_recorded_before_activation_existed_rebuilds_with_relu() -> None:
    flow = NSF(3, n_layers=2, hidden_sizes=(8,), activation="relu")
    old_config = {k: v for k, v in flow.config.items() if k != "activation"}
    rebuilt = registry.build("NSF", old_config)
    assert rebuilt.config["activation"] == "relu"
    rebuilt.load_state_dict(flow.state_dict())
    x = torch.randn(5, 3)
    torch.testing.assert_close(rebuilt.log_prob(x), flow.log_prob(x))
