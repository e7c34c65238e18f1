"""The Neumann-series gradient of the residual log-det (Chen et al., 2019, section 3.2):
``roulette_log_det(gradient="neumann")``, ``gradient_in_forward`` and ``log_det="neumann"``.

Its value is the roulette estimate bit for bit; its gradient is unbiased (the mean over many
draws matches the gradient of the exact log-det within a few standard errors), equals the
gradient of the surrogate whether or not it is taken in the forward pass, in both directions
of the block; its saved state does not grow with the number of series terms.
"""

from __future__ import annotations

import weakref

import pytest
import torch

import torchnf.layers.iresnet as iresnet_module
from torchnf.core.registry import build
from torchnf.functional.lipschitz import (
    gradient_in_forward,
    jacobian_product,
    residual_log_det,
    roulette_log_det,
)
from torchnf.layers import InvertibleResidualBlock
from torchnf.models import ResidualFlow


def _block(log_det: str = "neumann", seed: int = 0, **kwargs) -> InvertibleResidualBlock:
    """A float64 LipSwish block with its spectral normalization active (raw weights scaled
    up), random biases and slopes."""
    torch.manual_seed(seed)
    kwargs = {"hidden_sizes": (8, 8), "lipschitz": 0.8, "activation": "lipswish", **kwargs}
    block = InvertibleResidualBlock(3, log_det=log_det, **kwargs)
    with torch.no_grad():
        for linear in block.linears:
            linear.parametrizations.weight.original.mul_(5)
            linear.bias.normal_()
        for raw in block.beta_raw:
            raw.normal_()
    return block.double()


def _flat(grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def _grads(loss: torch.Tensor, inputs) -> tuple[torch.Tensor, ...]:
    """Gradients, zeros for the inputs ``loss`` does not depend on (the last bias for a
    log-det)."""
    return torch.autograd.grad(loss, list(inputs), allow_unused=True, materialize_grads=True)


class _Box:
    """A saved tensor, weakly referenced to tell when the graph holding it is freed."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


def _saved_bytes(fn) -> int:
    """Bytes of the distinct storages that the graph of ``fn()``'s output holds for the
    backward pass (graphs freed before ``fn`` returns, as the one of a gradient taken in the
    forward pass, do not count)."""
    boxes: list[weakref.ref] = []

    def pack(tensor: torch.Tensor) -> _Box:
        box = _Box(tensor)
        boxes.append(weakref.ref(box))
        return box

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda box: box.tensor):
        out = fn()
    storages = {}
    for ref in boxes:
        box = ref()
        if box is not None:
            storage = box.tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    del out
    return sum(storages.values())


def test_value_is_the_roulette_value_for_the_same_draws() -> None:
    j = torch.tensor([[0.5, 0.3, 0.0], [-0.2, 0.1, 0.4], [0.0, 0.3, -0.6]], dtype=torch.float64)
    scale = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)

    def estimate(gradient: str, seed: int) -> torch.Tensor:
        m = scale * j / torch.linalg.matrix_norm(j, ord=2)
        g = torch.Generator().manual_seed(seed)
        return roulette_log_det(
            lambda v: m @ v, (50, 3), p=0.4, dtype=torch.float64, generator=g, gradient=gradient
        )

    for seed in range(5):
        direct, neumann = estimate("direct", seed), estimate("neumann", seed)
        assert torch.equal(direct, neumann)
        assert neumann.requires_grad


def test_block_value_is_the_roulette_value_and_eval_is_exact() -> None:
    neumann, roulette, exact = _block("neumann"), _block("roulette"), _block("exact")
    x = torch.randn(6, 3, dtype=torch.float64)
    for call in (lambda b: b(x), lambda b: b.inverse_and_log_det(x)):
        torch.manual_seed(5)
        y_n, log_det_n = call(neumann)
        torch.manual_seed(5)
        y_r, log_det_r = call(roulette)
        assert torch.equal(y_n, y_r) and torch.equal(log_det_n, log_det_r)
    neumann.eval()
    assert torch.equal(neumann(x)[1], exact(x)[1])


def test_neumann_gradient_of_a_known_matrix_is_unbiased() -> None:
    """For ``J = A`` (spectral radius 0.75, one exact term, ``p = 0.3``, so the roulette
    weights of high terms matter), the mean over 3000 draws of ``N`` (256 probes each) of the
    Neumann gradient matches ``inv(I + A).T``, the gradient of ``slogdet``, within 4
    standard errors in every entry; the series truncated after 5 terms is over 8 away (the
    test resolves the terms the roulette weights)."""
    m = torch.tensor([[0.5, 0.3, 0.0], [-0.2, 0.1, 0.4], [0.0, 0.3, -0.6]], dtype=torch.float64)
    a = (0.8 * m / torch.linalg.matrix_norm(m, ord=2)).requires_grad_()
    (exact,) = torch.autograd.grad(residual_log_det(a), [a])
    eye = torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(exact, torch.linalg.inv(eye + a.detach()).T)
    g = torch.Generator().manual_seed(0)
    calls = 3000
    estimates = []
    for _ in range(calls):
        value = roulette_log_det(
            lambda v: a @ v, (256, 3), 1, 0.3, dtype=torch.float64, generator=g, gradient="neumann"
        )
        estimates.append(torch.autograd.grad(value.mean(), [a])[0])
    estimates = torch.stack(estimates)
    mean, error = estimates.mean(0), estimates.std(0) / calls**0.5
    assert bool(((mean - exact).abs() < 4 * error).all()), (mean, exact, error)
    power, truncated = eye, torch.zeros((), dtype=torch.float64)
    for k in range(1, 6):
        power = power @ a
        truncated = truncated + (-1) ** (k + 1) / k * power.trace()
    (five_terms,) = torch.autograd.grad(truncated, [a])
    assert float(((five_terms - exact).abs() / error).max()) > 8


def test_neumann_gradient_is_unbiased() -> None:
    """Each call draws one truncation ``N`` and a probe per sample: 4 points, each repeated
    32 times, give one estimate of the gradient of the 4 points' log-dets with respect to the
    parameters and the points; the mean of 600 calls matches the exact gradient within 4
    standard errors in every coordinate."""
    block = _block(context_size=2)
    x = torch.randn(4, 3, dtype=torch.float64)
    context = torch.randn(4, 2, dtype=torch.float64)
    params = list(block.parameters())
    repeats, calls = 32, 600

    block.eval()  # the exact log-det
    xe = x.clone().requires_grad_()
    exact = _flat(_grads(block(xe, context)[1].sum(), [xe, *params]))

    block.train()
    xr = x.expand(repeats, 4, 3).clone().requires_grad_()
    cr = context.expand(repeats, 4, 2)
    torch.manual_seed(11)
    estimates = []
    for _ in range(calls):
        log_det = block(xr, cr)[1]
        grads = _grads(log_det.sum() / repeats, [xr, *params])
        estimates.append(_flat([grads[0].sum(0), *grads[1:]]))
    estimates = torch.stack(estimates)
    mean, error = estimates.mean(0), estimates.std(0) / calls**0.5
    # (the last layer's bias does not enter the Jacobian: 0 both ways, with no error)
    z = (mean - exact).abs() / error.clamp(min=1e-300)
    assert bool((z < 4).all()), (float(z.max()), int(z.argmax()))
    # the test has power: the errors are small against the gradient itself
    assert float((mean - exact).norm()) < 0.05 * float(exact.norm())
    assert float(error.norm()) < 0.05 * float(exact.norm())


@pytest.mark.parametrize("direction", ["forward", "inverse"])
@pytest.mark.parametrize("activation", ["elu", "lipswish"])
def test_gradient_in_forward_equals_the_surrogate_gradient(
    direction: str, activation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Taken in the forward pass or by backpropagating through the surrogate's graph, for the
    same draws, the gradients with respect to the input, the context and the parameters
    agree; in the inverse direction the input is the fixed point, whose implicit-gradient hook
    must run once."""
    block = _block(activation=activation, context_size=2)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    context = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    weights = torch.linspace(0.5, 1.5, 5, dtype=torch.float64)  # any y-loss, uniform on log_det

    def grads() -> torch.Tensor:
        torch.manual_seed(3)
        if direction == "forward":
            y, log_det = block(x, context)
        else:
            y, log_det = block.inverse_and_log_det(x, context)
        loss = (weights * y.square().sum(-1)).sum() + 0.25 * log_det.sum()
        return _flat(_grads(loss, [x, context, *block.parameters()]))

    in_forward = grads()

    def through_the_graph(fn, per_sample, shared):  # fn on the inputs themselves
        return fn(list(per_sample), list(shared))

    monkeypatch.setattr(iresnet_module, "gradient_in_forward", through_the_graph)
    through_graph = grads()
    torch.testing.assert_close(in_forward, through_graph, rtol=1e-10, atol=1e-12)


def test_unequal_sample_weights_and_double_backward_are_refused() -> None:
    block = _block()
    x = torch.randn(4, 3, dtype=torch.float64)
    log_det = block(x)[1]
    with pytest.raises(ValueError, match="same gradient for every sample"):
        (log_det * torch.arange(4.0, dtype=torch.float64)).sum().backward()
    with pytest.raises(ValueError, match="expected no create_graph"):
        torch.autograd.grad(block(x)[1].mean(), [block.linears[0].bias], create_graph=True)


def test_gradient_in_forward_refuses_misshapen_per_sample_inputs() -> None:
    w = torch.ones(2, 1, requires_grad=True)
    with pytest.raises(ValueError, match=r"per-sample inputs of shape \(3,\)"):
        gradient_in_forward(lambda xs, _: xs[0].sum() * torch.ones(3), [w], [])


def test_no_graph_when_gradients_are_off() -> None:
    block = _block()
    with torch.no_grad():
        log_det = block(torch.randn(4, 3, dtype=torch.float64))[1]
    assert log_det.grad_fn is None


def test_saved_state_does_not_grow_with_the_number_of_terms() -> None:
    """The graph kept for the backward pass by a training step (forward, loss), for 2 and 12
    series terms always computed: the same with the Neumann gradient, larger with the direct
    one, which keeps every product."""
    x = torch.randn(64, 3, dtype=torch.float64)

    def saved(log_det: str, n_exact_terms: int) -> int:
        block = _block(log_det, n_exact_terms=n_exact_terms)
        torch.manual_seed(0)
        return _saved_bytes(lambda: sum(t.sum() for t in block(x)))

    assert saved("neumann", 2) == saved("neumann", 12)
    assert saved("roulette", 12) > 2 * saved("neumann", 12)
    assert saved("roulette", 2) > saved("neumann", 2)


def test_residual_flow_trains_with_the_neumann_gradient() -> None:
    """A few steps of maximum likelihood on a correlated Gaussian lower the exact NLL; the
    mode is recorded in the config and rebuilds."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    cov = torch.tensor([[1.0, 0.9, 0.0], [0.9, 1.0, 0.3], [0.0, 0.3, 1.0]], dtype=torch.float64)
    x = torch.randn(256, 3, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    flow = ResidualFlow(3, n_layers=2, hidden_sizes=(16,), log_det="neumann").double()
    assert flow.config["log_det"] == "neumann"
    flow.initialize(x)

    def exact_nll() -> float:
        flow.eval()
        with torch.no_grad():
            value = float(-flow.log_prob(x).mean())
        flow.train()
        return value

    before = exact_nll()
    params = list(flow.parameters())
    for _ in range(20):
        loss = -flow.log_prob(x).mean()
        grads = torch.autograd.grad(loss, params)
        assert all(bool(grad.isfinite().all()) for grad in grads)
        with torch.no_grad():
            for p, grad in zip(params, grads, strict=True):
                p -= 0.05 * grad
    after = exact_nll()
    assert after < before - 0.1, (before, after)
    rebuilt = build("ResidualFlow", flow.config).double()
    rebuilt.load_state_dict(flow.state_dict())
    rebuilt.eval()
    flow.eval()
    assert torch.equal(rebuilt.log_prob(x), flow.log_prob(x))


def test_roulette_refuses_an_unknown_gradient() -> None:
    with pytest.raises(ValueError, match="gradient in"):
        roulette_log_det(lambda v: v, (2, 3), gradient="implicit")


def test_exact_gradient_reference_is_the_slogdet_one() -> None:
    """The reference of the unbiasedness test: the eval-mode gradient is that of
    ``residual_log_det`` of the Jacobian formed by ``jacobian_product``."""
    block = _block()
    block.eval()
    x = torch.randn(2, 3, dtype=torch.float64)
    bias = block.linears[0].bias
    (via_block,) = torch.autograd.grad(block(x)[1].sum(), [bias])
    weights = block.weights()
    slopes = block._residual(x, None, weights)[1]
    eye = torch.eye(3, dtype=torch.float64)
    (direct,) = torch.autograd.grad(
        residual_log_det(jacobian_product(eye, weights, slopes)).sum(), [bias]
    )
    torch.testing.assert_close(via_block, direct, rtol=1e-12, atol=1e-14)
