"""Conditioner networks in low precision (``torchnf.nets.precision``): flows stay exact.

Every registered layer and model with a conditioner net runs in float32 with bfloat16
conditioners and must round-trip, give forward and inverse log-dets that are negatives, and a
log-det equal to the Jacobian's, all to float32 rounding (``diagnostics.check`` converts to
float64, where autocast does nothing, so these checks are written here in float32). The
parameters are perturbed (``Case.build``) so that zero-initialized output layers do not hide
the rounding. Inputs are drawn at half scale: at full scale the logit preprocessing of the
image models saturates, where float32 itself loses 1e-4 with or without low precision.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from cases import CASES, Case
from torch import Tensor
from torch.autograd.functional import jacobian
from torch.distributions import transform_to

from torchnf import nll
from torchnf.core.bijector import Bijector
from torchnf.models import MAF, Glow, RealNVP
from torchnf.nets import (
    MLP,
    ConditionerNet,
    ConvNet,
    conditioner_precision,
    set_conditioner_precision,
)
from torchnf.nets.made import MADE

LOW = [torch.bfloat16, torch.float16]
LOW_IDS = ["bfloat16", "float16"]
WITH_NET = [c for c in CASES if any(isinstance(m, ConditionerNet) for m in c.build().modules())]
with_net = pytest.mark.parametrize("case", WITH_NET, ids=[c.id for c in WITH_NET])
ATOL = 1e-5  # on |a - b| / (1 + |b|): float32 rounding, far below a bfloat16 step (4e-3)


def _error(a: Tensor, b: Tensor) -> float:
    return float(((a - b).abs() / (1 + b.abs())).max())


def _low_precision(case: Case) -> tuple[Bijector, Tensor, Tensor | None]:
    """The case in float32 with bfloat16 conditioners, and float32 inputs."""
    bijector = case.build().float()
    set_conditioner_precision(bijector, torch.bfloat16)
    g = torch.Generator().manual_seed(7)
    x = transform_to(bijector.domain)(0.5 * torch.randn(3, *bijector.event_shape, generator=g))
    context = None
    if bijector.context_size:
        context = torch.randn(3, bijector.context_size, generator=g)
    return bijector, x, context


def test_cases_cover_every_conditioner_net() -> None:
    kinds = {type(m) for c in WITH_NET for m in c.build().modules()}
    assert {MLP, MADE, ConvNet} <= kinds


@with_net
def test_round_trip_and_log_dets_are_exact(case: Case) -> None:
    bijector, x, context = _low_precision(case)
    with torch.no_grad():
        y, log_det = bijector(x, context)
        x_back, log_det_inv = bijector.inverse_and_log_det(y, context)
        with conditioner_precision(bijector, None):
            y32, log_det32 = bijector(x, context)
    assert y.dtype == log_det.dtype == x_back.dtype == torch.float32
    assert _error(x_back, x) < ATOL
    assert _error(-log_det_inv, log_det) < ATOL
    # bfloat16 changed the bijection: otherwise the checks above would prove nothing.
    assert max(_error(y, y32), _error(log_det, log_det32)) > 1e-4


@with_net
def test_log_det_matches_jacobian(case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    # A low-precision conditioner reads its input rounded to bfloat16, so its parameters are
    # piecewise constant in x: the Jacobian of the bijection (almost everywhere) has no term
    # through them. Autograd's straight-through gradient adds one, rounded to bfloat16
    # differently in each row, which blurs the determinant of a composition (1e-3 to 1e-1); the
    # conditioners' inputs are detached here to get the Jacobian itself.
    low_precision = ConditionerNet._in_compute_dtype

    def detached(self: ConditionerNet, fn: Callable[..., Tensor], x: Tensor, *args) -> Tensor:
        return low_precision(self, fn, x.detach(), *args)

    monkeypatch.setattr(ConditionerNet, "_in_compute_dtype", detached)
    bijector, x, context = _low_precision(case)
    log_dets, slogdets = [], []
    for i in range(2):  # single events, each with its own pass
        c = None if context is None else context[i : i + 1]
        j = jacobian(lambda v, c=c: bijector(v[None], c)[0].flatten(), x[i])
        slogdets.append(torch.linalg.slogdet(j.reshape(x[i].numel(), -1))[1])
        log_dets.append(bijector(x[i : i + 1], c)[1][0].detach())
    assert _error(torch.stack(log_dets), torch.stack(slogdets)) < ATOL


def _made() -> MADE:
    return MADE(4, 2, (16,), context_size=2)


# name: (net factory, input shape, how the output is computed)
NETS: dict[str, tuple[Callable[[], ConditionerNet], tuple[int, ...], str]] = {
    "MLP": (lambda: MLP(3, 4, (16,), context_size=2), (5, 3), "forward"),
    "MADE": (_made, (5, 4), "forward"),
    "MADE.conditioner": (_made, (5, 4), "conditioner"),
    "MADE.conditioner-feature": (_made, (5, 4), "feature"),
    "ConvNet": (lambda: ConvNet(2, 4, 8, context_size=2), (5, 2, 4, 4), "forward"),
}


def _net_output(name: str, dtype: torch.dtype) -> tuple[ConditionerNet, Callable[[], Tensor]]:
    """A perturbed conditioner net in ``dtype`` and a function computing its output."""
    factory, shape, path = NETS[name]
    torch.manual_seed(0)
    net = factory().to(dtype)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g).to(dtype)
    context = torch.randn(shape[0], 2, generator=g).to(dtype)

    @torch.no_grad()
    def output() -> Tensor:
        if path == "forward":
            return net(x, context)
        conditioner = net.conditioner(context)
        if path == "conditioner":
            return conditioner(x)
        return torch.stack([conditioner(x, i) for i in range(x.shape[-1])], -2)

    return net, output


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize(("dtype", "step"), zip(LOW, [2**-8, 2**-11], strict=True), ids=LOW_IDS)
def test_conditioner_runs_in_compute_dtype(name: str, dtype: torch.dtype, step: float) -> None:
    net, output = _net_output(name, torch.float32)
    expected = output()
    net.compute_dtype = dtype
    actual = output()
    assert actual.dtype == torch.float32 and actual.shape == expected.shape
    error = float((actual - expected).abs().max() / expected.abs().max())
    assert 1e-5 < error < 8 * step  # above float32 rounding, within a few low-precision steps


@pytest.mark.parametrize("name", list(NETS))
def test_float64_is_left_alone(name: str) -> None:
    net, output = _net_output(name, torch.float64)
    expected = output()
    net.compute_dtype = torch.bfloat16
    assert torch.equal(output(), expected)


@pytest.mark.parametrize("dtype", LOW, ids=LOW_IDS)
def test_made_feature_pass_is_bit_identical_to_forward(dtype: torch.dtype) -> None:
    # Large enough that the per-feature prefix pass, which sums in another order, would round
    # some parameters differently (it does at this size: 5 in bfloat16, 14 in float16).
    torch.manual_seed(0)
    made = MADE(32, 2, (128, 128, 128))
    with torch.no_grad():
        for p in made.parameters():
            p.add_(0.1 * torch.randn_like(p))
    made.compute_dtype = dtype
    g = torch.Generator().manual_seed(1)
    x, noise = torch.randn(2, 256, 32, generator=g)
    with torch.no_grad():
        expected = made(x)
        net = made.conditioner()
        # As in an inverse: feature i sees x[..., :i] and anything after it.
        inputs = [torch.cat([x[:, :i], noise[:, i:]], -1) for i in range(32)]
        actual = torch.stack([net(v, i) for i, v in enumerate(inputs)], 1)
    assert torch.equal(actual, expected)


def _two_nets() -> torch.nn.Module:
    return torch.nn.Sequential(MLP(2, 2, (4,)), torch.nn.Linear(2, 2), MADE(2, 1, (4,)))


def _dtypes(module: torch.nn.Module) -> list[torch.dtype | None]:
    return [m.compute_dtype for m in module.modules() if isinstance(m, ConditionerNet)]


def test_context_manager_sets_and_restores() -> None:
    module = _two_nets()
    module[0].compute_dtype = torch.float16
    with conditioner_precision(module, torch.bfloat16) as inside:
        assert inside is module
        assert _dtypes(module) == [torch.bfloat16, torch.bfloat16]
    assert _dtypes(module) == [torch.float16, None]


def test_context_manager_restores_after_an_exception() -> None:
    module = _two_nets()
    with pytest.raises(RuntimeError, match="body"), conditioner_precision(module, torch.float16):
        raise RuntimeError("body")
    assert _dtypes(module) == [None, None]


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.int8], ids=["float32", "float64", "int8"]
)
@pytest.mark.parametrize("how", ["set", "context"])
def test_invalid_dtype_is_refused(dtype: torch.dtype, how: str) -> None:
    module = _two_nets()
    with pytest.raises(ValueError, match="expected dtype torch.bfloat16, torch.float16 or None"):
        if how == "set":
            set_conditioner_precision(module, dtype)
        else:
            with conditioner_precision(module, dtype):
                pass
    assert _dtypes(module) == [None, None]


MODELS: dict[str, Callable[[], Bijector]] = {
    "RealNVP": lambda: RealNVP(3, n_layers=2, hidden_sizes=(8,), context_size=2),
    "MAF": lambda: MAF(3, n_layers=2, hidden_sizes=(8,)),
    "Glow": lambda: Glow((1, 4, 4), n_levels=2, n_steps=1, hidden_channels=4),
}


def _perturbed(name: str) -> tuple[Bijector, Tensor, Tensor | None]:
    """A small float32 model away from its identity initialization, and data for it."""
    torch.manual_seed(0)
    flow = MODELS[name]()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, *flow.event_shape, generator=g)
    context = torch.randn(16, flow.context_size, generator=g) if flow.context_size else None
    flow.initialize(x, context)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return flow, x, context


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("name", list(MODELS))
def test_compiled_nll_and_backward_match_eager(name: str) -> None:
    flow, x, context = _perturbed(name)
    params = list(flow.parameters())

    def loss(x: Tensor, context: Tensor | None) -> Tensor:
        return nll(flow, x, context)

    def loss_and_grads(loss_fn: Callable[[Tensor, Tensor | None], Tensor]) -> list[Tensor]:
        value = loss_fn(x, context)
        return [value.detach(), *torch.autograd.grad(value, params)]

    with conditioner_precision(flow, torch.bfloat16):
        expected = loss_and_grads(loss)
        actual = loss_and_grads(torch.compile(loss, fullgraph=True, backend="aot_eager"))
    reference = loss_and_grads(loss)  # float32 conditioners: bfloat16 made a difference
    assert max(_error(e, r) for e, r in zip(expected, reference, strict=True)) > 1e-4
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-7)


@pytest.mark.usefixtures("fresh_dynamo")
def test_compiled_autoregressive_sampling_matches_eager() -> None:
    flow, _, _ = _perturbed("MAF")
    # Fixed base draws: how a compiled graph consumes the global RNG differs between torch
    # releases (2.11 and 2.13 draw different numbers), the autoregressive inverse must not.
    z = flow.base.sample((8,))

    def sample(z: Tensor) -> tuple[Tensor, Tensor]:
        x, log_det = flow.bijector.inverse_and_log_det(z, None)
        return x, flow.base.log_prob(z) - log_det

    with conditioner_precision(flow, torch.bfloat16), torch.no_grad():
        expected = sample(z)
        actual = torch.compile(sample, fullgraph=True, backend="aot_eager")(z)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-7)
