"""MAF, IAF and NSF: raw-scale data, the coupling variant, configs and checkpoints."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import torchnf
from torchnf.core.chain import Chain
from torchnf.core.registry import build
from torchnf.diagnostics import check
from torchnf.layers import MaskedAutoregressive, Reverse
from torchnf.models import IAF, MAF, NSF


@pytest.fixture
def one_thread():
    # Short CPU trainings run far faster on one intra-op thread when cores are shared.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _far_modes(n: int, seed: int) -> torch.Tensor:
    """2-D data with modes at (+-100, +-100), spread 10: far outside any spline's bound."""
    g = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (n, 2), generator=g) * 2 - 1
    return 100.0 * signs + 10.0 * torch.randn(n, 2, generator=g)


def test_nsf_with_defaults_fits_raw_scale_data(one_thread) -> None:
    train, test = _far_modes(4000, 0), _far_modes(2000, 1)
    nll = {}
    for cls in (NSF, MAF):
        torch.manual_seed(0)
        flow = cls(2)
        torchnf.fit(flow, train, steps=150, lr=3e-3, progress=False, val_fraction=0)
        with torch.no_grad():
            log_prob = flow.log_prob(test)
        assert log_prob.isfinite().all(), cls.__name__
        nll[cls.__name__] = -log_prob.mean().item()
    entropy = math.log(4) + 2 * (0.5 * math.log(2 * math.pi * 100) + 0.5)  # of the 4 modes
    assert nll["NSF"] <= nll["MAF"] + 0.1, nll
    assert nll["NSF"] <= entropy + 0.2, (nll, entropy)


@pytest.mark.parametrize("cls", [MAF, IAF, NSF], ids=lambda c: c.__name__)
def test_first_layer_standardizes_and_checkpoint_keeps_it(cls, tmp_path) -> None:
    torch.manual_seed(0)
    flow = cls(3, n_layers=2, hidden_sizes=(8,))
    x = 1000.0 + 50.0 * torch.randn(256, 3)
    flow.initialize(x)
    standardized = flow.bijector[0](x)[0]
    torch.testing.assert_close(standardized.mean(0), torch.zeros(3), atol=1e-3, rtol=0)
    torch.testing.assert_close(standardized.std(0), torch.ones(3), atol=1e-3, rtol=0)
    torchnf.save(flow, tmp_path / "model")
    loaded = torchnf.load(tmp_path / "model")
    torch.testing.assert_close(loaded.log_prob(x), flow.log_prob(x))


@pytest.mark.parametrize("cls", [MAF, IAF, NSF], ids=lambda c: c.__name__)
def test_config_rebuilds_the_model(cls) -> None:
    flow = cls(4, n_layers=3, hidden_sizes=(16, 16), context_size=2)
    rebuilt = build(cls.__name__, flow.config)
    assert rebuilt.config == flow.config
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in flow.parameters())


@pytest.mark.parametrize("context_size", [0, 2], ids=["plain", "context"])
def test_coupling_nsf_passes_check(context_size) -> None:
    torch.manual_seed(0)
    flow = NSF(4, n_layers=3, hidden_sizes=(8,), autoregressive=False, context_size=context_size)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.2 * torch.randn_like(p))
    report = check(flow.double(), atol=1e-6)
    assert report.passed, report.failures


@pytest.mark.parametrize("cls", [MAF, IAF, NSF], ids=lambda c: c.__name__)
def test_sample_and_log_prob_agree_with_log_prob(cls) -> None:
    torch.manual_seed(0)
    flow = cls(3, n_layers=2, hidden_sizes=(16,))
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, log_prob = flow.sample_and_log_prob(64)
    torch.testing.assert_close(flow.log_prob(x).detach(), log_prob, atol=1e-4, rtol=1e-4)


def _with_explicit_reversals(flow) -> Chain:
    """The flow's bijector as ``ActNorm, L_1, R, L_2, R, ...``, every MADE back in order."""
    actnorm, *layers = [b for b in flow.bijector if not isinstance(b, Reverse)]
    steps = [actnorm]
    for i, layer in enumerate(layers):
        layer = copy.deepcopy(layer)
        made = (layer if isinstance(layer, MaskedAutoregressive) else layer.inv).made
        if made.reversed:
            made.reverse_()
        steps += [Reverse(flow.input_size), layer] if i else [layer]
    return Chain(*steps)


@pytest.mark.parametrize("n_layers", [1, 2, 3, 4], ids=lambda n: f"{n}-layers")
@pytest.mark.parametrize("cls", [MAF, IAF, NSF], ids=lambda c: c.__name__)
def test_reversals_between_layers_fold_into_the_made_orders(cls, n_layers) -> None:
    # The flow is L_K R ... R L_1 A exactly, with one gather at most (a last R for even K).
    torch.manual_seed(0)
    flow = cls(4, n_layers=n_layers, hidden_sizes=(16,), context_size=2).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    reversals = [i for i, b in enumerate(flow.bijector) if isinstance(b, Reverse)]
    assert reversals == ([n_layers + 1] if n_layers % 2 == 0 else [])
    explicit = _with_explicit_reversals(flow)
    x, context = torch.randn(32, 4, dtype=torch.float64), torch.randn(32, 2, dtype=torch.float64)
    for a, b in zip(flow.bijector(x, context), explicit(x, context), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    y = torch.randn(32, 4, dtype=torch.float64)
    a, b = flow.bijector.inverse_and_log_det(y, context), explicit.inverse_and_log_det(y, context)
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cls", [MAF, IAF], ids=lambda c: c.__name__)
def test_affine_round_trip_is_not_magnified_by_the_scale(cls) -> None:
    # Shift t = 1000 and log-scale s = -3 at every feature. The data side adds the shift
    # first (MAF: z = (x + t) e^s, IAF: z = (x - t) e^-s), so float32 loses about one ulp
    # of 1000; x e^s + t (MAF before) lost up to e^3 = 20 times more, about 5 ulps here.
    flow = cls(3, n_layers=1, hidden_sizes=(8,))
    layer = flow.bijector[1]
    made = (layer if isinstance(layer, MaskedAutoregressive) else layer.inv).made
    with torch.no_grad():
        made.output.bias.view(3, 2).copy_(torch.tensor([1000.0, -30.0]))
    x = torch.linspace(-1, 1, 3000).view(1000, 3)
    with torch.no_grad():
        error = (flow.inverse(flow(x)[0]) - x).abs().max()
    assert error <= 2 * torch.finfo(torch.float32).eps * 1000
