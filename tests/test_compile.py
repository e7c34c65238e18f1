"""Hot paths under ``torch.compile(fullgraph=True)``: no graph breaks; compiled equals eager.

Every model's ``log_prob`` with its backward and its ``sample_and_log_prob``, and the
autoregressive inverse with its gradients, are traced whole (``fullgraph=True``, so a graph
break fails the test) through AOTAutograd: the ``aot_eager`` backend builds the functionalized
forward and backward graphs that inductor compiles, and runs them with eager kernels (seconds,
where inductor takes tens of seconds per graph on a small CPU). Inductor itself compiles the
spline functions (forward, inverse, tails, gradients) and the training step of
``fit(..., compile=True)`` (MADE forward and backward). Float64 throughout: agreement is to
rounding."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from torchnf import fit
from torchnf.cli import build_parser
from torchnf.functional.splines import rqs_forward, rqs_inverse, rqs_knots
from torchnf.layers import SplineAutoregressive
from torchnf.models import MAF, NSF, Glow, RealNVP, SylvesterNet

MODELS: dict[str, Callable[[], torch.nn.Module]] = {
    "RealNVP": lambda: RealNVP(3, n_layers=2, hidden_sizes=(8,), context_size=2),
    "MAF": lambda: MAF(3, n_layers=2, hidden_sizes=(8,)),
    "NSF-autoregressive": lambda: NSF(3, n_layers=2, hidden_sizes=(8,), n_bins=4, context_size=2),
    "NSF-coupling": lambda: NSF(3, n_layers=2, hidden_sizes=(8,), n_bins=4, autoregressive=False),
    "Glow": lambda: Glow((1, 4, 4), n_levels=2, n_steps=1, hidden_channels=4),
    # log_prob only: the numerical inverse checks convergence on the host (a graph break).
    "SylvesterNet": lambda: SylvesterNet(2, 3),
}
SAMPLED = [name for name in MODELS if name != "SylvesterNet"]


@pytest.fixture(autouse=True, scope="module")
def fresh_dynamo():
    # One thread: these tiny graphs run fastest there, and far faster on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
    torch.set_num_threads(threads)


def _perturbed(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    flow = MODELS[name]().double()
    x, context = _inputs(flow, 16)
    flow.initialize(x, context)
    with torch.no_grad():  # away from the identity at which zero-initialized layers start
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return flow


def _inputs(flow, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, *flow.event_shape, generator=g, dtype=torch.float64)
    context = None
    if flow.context_size:
        context = torch.randn(n, flow.context_size, generator=g, dtype=torch.float64)
    return x, context


def _loss_and_grads(flow, loss_fn, x, context) -> list[torch.Tensor]:
    loss = loss_fn(x, context)
    return [loss.detach(), *torch.autograd.grad(loss, list(flow.parameters()))]


@pytest.mark.parametrize("name", list(MODELS))
def test_log_prob_and_backward_compile_whole(name: str) -> None:
    flow = _perturbed(name)
    x, context = _inputs(flow, 16)

    def loss(x, context):
        return -flow.log_prob(x, context).mean()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    expected = _loss_and_grads(flow, loss, x, context)
    actual = _loss_and_grads(flow, compiled, x, context)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", SAMPLED)
def test_sample_and_log_prob_compile_whole(name: str) -> None:
    flow = _perturbed(name)
    context = _inputs(flow, 5)[1]
    n = () if context is not None else 5

    def sample():
        return flow.sample_and_log_prob(n, context)

    compiled = torch.compile(sample, fullgraph=True, backend="aot_eager")
    torch.manual_seed(2)
    expected = sample()
    torch.manual_seed(2)
    actual = compiled()
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def test_splines_inductor_match_eager() -> None:
    g = torch.Generator().manual_seed(3)
    params = torch.randn(64, 3, 11, generator=g, dtype=torch.float64, requires_grad=True)
    x = 2.5 * torch.randn(64, 3, generator=g, dtype=torch.float64)  # some outside [-2, 2]

    def round_trip(x, params):
        knots = rqs_knots(params[..., :4], params[..., 4:8], params[..., 8:], bound=2.0)
        y, log_det = rqs_forward(x, *knots)
        x_back, log_det_inv = rqs_inverse(y, *knots)
        return y, log_det, x_back, log_det_inv

    compiled = torch.compile(round_trip, fullgraph=True)
    expected, actual = round_trip(x, params), compiled(x, params)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(actual[2], x, rtol=1e-9, atol=1e-9)
    weights = torch.randn(4, 64, 3, generator=g, dtype=torch.float64)

    def grad(outputs):
        total = sum((w * t).sum() for w, t in zip(weights, outputs, strict=True))
        return torch.autograd.grad(total, params)[0]

    torch.testing.assert_close(grad(actual), grad(expected), rtol=1e-9, atol=1e-11)


def test_autoregressive_inverse_with_gradients_compiles_whole() -> None:
    torch.manual_seed(4)
    layer = SplineAutoregressive(3, hidden_sizes=(8,), context_size=2, n_bins=4, tail_bound=2.0)
    layer = layer.double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    g = torch.Generator().manual_seed(5)
    y = torch.randn(32, 3, generator=g, dtype=torch.float64)
    context = torch.randn(32, 2, generator=g, dtype=torch.float64)

    def inverse(y, context):
        x, log_det = layer.inverse_and_log_det(y, context)
        return (x.square().sum() + log_det.sum()), x, log_det

    compiled = torch.compile(inverse, fullgraph=True, backend="aot_eager")
    expected, actual = inverse(y, context), compiled(y, context)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(layer(actual[1], context)[0], y, rtol=1e-9, atol=1e-9)
    params = list(layer.parameters())
    for a, e in zip(
        torch.autograd.grad(actual[0], params),
        torch.autograd.grad(expected[0], params),
        strict=True,
    ):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("mode", [True, "reduce-overhead"])
def test_fit_compiled_matches_eager(mode: bool | str) -> None:
    data = torch.randn(96, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    flows = []
    for compile in (False, mode):
        torch.manual_seed(7)
        flow = MAF(2, n_layers=2, hidden_sizes=(8,)).double()
        fit(flow, data, steps=4, batch_size=32, lr=1e-2, progress=False, compile=compile)
        flows.append(flow)
    eager, compiled = (dict(f.named_parameters()) for f in flows)
    for key, value in eager.items():
        torch.testing.assert_close(compiled[key], value, rtol=1e-9, atol=1e-11)


def test_fit_rejects_an_unknown_compile_mode() -> None:
    flow = MAF(2, n_layers=1, hidden_sizes=(4,))
    with pytest.raises(ValueError, match="reduce-overhead"):
        fit(flow, torch.randn(64, 2), steps=1, batch_size=32, progress=False, compile="fast")


def test_train_command_has_compile_flag() -> None:
    parser = build_parser()
    assert parser.parse_args(["train"]).compile is False
    assert parser.parse_args(["train", "--compile"]).compile == "default"
    assert parser.parse_args(["train", "--compile", "reduce-overhead"]).compile == "reduce-overhead"
    assert not parser.parse_args(["train"]).compile
