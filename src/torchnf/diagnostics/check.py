"""Numerical checks of a bijector: inverse, log-det against autograd, batch independence."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.autograd.functional import jacobian
from torch.distributions import transform_to

from torchnf.core.bijector import Bijector


@dataclass
class CheckReport:
    """Errors measured by :func:`check` (each a max over the test points; 0 is perfect).

    Errors are relative, ``|a - b| / (1 + |b|)``. ``failures`` names each measure above
    ``atol`` and each parameter whose gradient is missing or not finite.
    """

    name: str
    atol: float
    inverse_error: float = 0.0
    forward_error: float = 0.0
    log_det_error: float = 0.0
    inverse_log_det_error: float = 0.0
    log_det_consistency: float = 0.0
    batch_coupling: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def errors(self) -> dict[str, float]:
        return {
            "inverse": self.inverse_error,
            "forward": self.forward_error,
            "log_det": self.log_det_error,
            "inverse_log_det": self.inverse_log_det_error,
            "consistency": self.log_det_consistency,
            "batch_coupling": self.batch_coupling,
        }


def _error(a: Tensor, b: Tensor) -> float:
    return float(((a - b).abs() / (1 + b.abs())).max()) if a.numel() else 0.0


def _draw(constraint, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    u = torch.randn(shape, generator=generator, dtype=torch.float64)
    return transform_to(constraint)(u)


def _batch_jacobian(fn, v: Tensor) -> Tensor:
    """Jacobian ``(n, d_out, n, d_in)`` of a batched map; vectorized where ``vmap`` allows."""
    try:
        j = jacobian(fn, v, vectorize=True)
    except RuntimeError:  # an op without a batching rule (e.g. a data-dependent solver loop)
        j = jacobian(fn, v)
    n = v.shape[0]
    return j.reshape(n, -1, n, v[0].numel())


def _block_slogdet(j: Tensor) -> Tensor:
    """``log|det|`` of the diagonal blocks ``j[i, :, i, :]``."""
    blocks = torch.stack([j[i, :, i, :] for i in range(j.shape[0])])
    return torch.linalg.slogdet(blocks)[1]


def _off_block_max(j: Tensor) -> float:
    n = j.shape[0]
    if n < 2:
        return 0.0
    off = ~torch.eye(n, dtype=torch.bool)
    return float(j.abs().amax(dim=(1, 3))[off].max())


def check(
    bijector: Bijector,
    x: Tensor | None = None,
    context: Tensor | None = None,
    y: Tensor | None = None,
    batch_size: int = 3,
    atol: float = 1e-6,
    seed: int = 0,
    gradients: bool = True,
) -> CheckReport:
    """Measure a bijector's inverse and log-det errors against autograd, in float64.

    Checks, on ``batch_size`` points ``x`` from the bijector's domain and ``y`` from its
    codomain (or the ones given): ``f^{-1}(f(x)) = x`` and ``f(f^{-1}(y)) = y``; the forward
    and inverse log-dets against ``slogdet`` of the autograd Jacobian of single events; that
    the two log-dets are negatives at matching points; that outputs of one batch item do
    not depend on another's input; and (``gradients=True``) that every parameter receives a
    finite gradient. The bijector is converted to float64 in place.

    Arguments:
        bijector: the bijector to check.
        x: inputs ``(batch, *event_shape)``; drawn from ``bijector.domain`` if omitted.
        context: ``(batch, context_size)``; drawn from N(0, 1) if the bijector is
            conditional and none is given.
        y: outputs to invert ``(batch, *output_event_shape)``; drawn from the codomain if
            omitted.
        batch_size: number of random points when ``x`` is omitted.
        atol: tolerance on each relative error.
        seed: seed of the random points.
        gradients: whether to check the parameters' gradients.

    Returns:
        A :class:`CheckReport`; ``report.passed`` is ``True`` when every error is below ``atol``.

    Example:
        >>> from torchnf.layers import Reverse
        >>> check(Reverse(3)).passed
        True
    """
    g = torch.Generator().manual_seed(seed)
    bijector = bijector.double()
    report = CheckReport(type(bijector).__name__, atol)
    if x is None:
        x = _draw(bijector.domain, (batch_size, *bijector.event_shape), g)
    x = x.double()
    n = x.shape[0]
    if bijector.context_size and context is None:
        context = torch.randn(n, bijector.context_size, generator=g, dtype=torch.float64)
    if not bijector.context_size:
        context = None
    if context is not None:
        context = context.double()
    if y is None:
        y = _draw(bijector.codomain, (n, *bijector.output_event_shape), g)
    y = y.double()

    with torch.no_grad():
        fx, log_det = bijector(x, context)
        x_back, inv_log_det_at_fx = bijector.inverse_and_log_det(fx, context)
        x_of_y, inv_log_det = bijector.inverse_and_log_det(y, context)
        y_back, _ = bijector(x_of_y, context)
    report.inverse_error = _error(x_back, x)
    report.forward_error = _error(y_back, y)
    report.log_det_consistency = _error(log_det, -inv_log_det_at_fx)

    j_forward = _batch_jacobian(lambda v: bijector(v, context)[0], x)
    j_inverse = _batch_jacobian(lambda v: bijector.inverse(v, context), y)
    report.log_det_error = _error(log_det, _block_slogdet(j_forward))
    report.inverse_log_det_error = _error(inv_log_det, _block_slogdet(j_inverse))
    report.batch_coupling = max(_off_block_max(j_forward), _off_block_max(j_inverse))

    for name, value in report.errors().items():
        if not value <= atol:  # also catches NaN
            report.failures.append(f"{name} error {value:.3g} > {atol:g}")

    if gradients and any(p.requires_grad for p in bijector.parameters()):
        bijector.zero_grad()
        out, ld = bijector(x, context)
        x_inv, ld_inv = bijector.inverse_and_log_det(y, context)
        (out.sum() + ld.sum() + x_inv.sum() + ld_inv.sum()).backward()
        for pname, p in bijector.named_parameters():
            if not p.requires_grad:
                continue
            if p.grad is None:
                report.failures.append(f"no gradient reaches {pname}")
            elif not torch.isfinite(p.grad).all():
                report.failures.append(f"non-finite gradient in {pname}")
        bijector.zero_grad()
    return report
