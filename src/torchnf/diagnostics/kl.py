r"""The KL benchmark: how far a flow's density is from a target of known density.

:math:`KL(p \| q) = E_{x \sim p}[\log p(x) - \log q(x)]`, estimated by Monte Carlo on
seeded samples of the target, with its standard error. It is 0 for a perfect flow and,
unlike the NLL, does not depend on the target's entropy, so it compares across targets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from torchnf.core.flow import Flow
from torchnf.data.targets import Target, get_target


@dataclass(frozen=True)
class KLEstimate:
    """A Monte Carlo estimate of a KL divergence, in nats.

    Attributes:
        value: the mean of :math:`\\log p(x_i) - \\log q(x_i)` over the samples.
        stderr: its standard error, ``std / sqrt(n)``.
        n: number of samples.
    """

    value: float
    stderr: float
    n: int

    @classmethod
    def from_terms(cls, terms: Tensor) -> KLEstimate:
        """The estimate from the per-sample terms :math:`\\log p(x_i) - \\log q(x_i)`."""
        n = terms.numel()
        stderr = float(terms.std()) / math.sqrt(n) if n > 1 else math.inf
        return cls(float(terms.mean()), stderr, n)

    def __str__(self) -> str:
        return f"{self.value:.4f} ± {self.stderr:.4f}"


def _as_target(target: Target | str) -> Target:
    target = get_target(target) if isinstance(target, str) else target
    if not target.has_log_prob:
        raise ValueError(f"expected a target with a known density, got {target.name!r}")
    return target


def _flow_dtype_device(flow: Flow) -> tuple[torch.dtype, torch.device]:
    for t in (*flow.parameters(), *flow.buffers()):
        if torch.is_floating_point(t):
            return t.dtype, t.device
    return torch.get_default_dtype(), torch.device("cpu")


def target_samples(
    flow: Flow, target: Target | str, n: int, seed: int, context: Tensor | None
) -> tuple[Target, Tensor, Tensor, Tensor | None]:
    """Seeded samples ``x`` of ``target`` in the flow's dtype and device, their exact
    float64 ``log p(x)``, and the context expanded to ``(n, context_size)``."""
    target = _as_target(target)
    if target.dim != math.prod(flow.event_shape):
        raise ValueError(
            f"expected a target of dimension {math.prod(flow.event_shape)} for this flow, "
            f"got {target.name!r} of dimension {target.dim}"
        )
    if n < 2:
        raise ValueError(f"expected n >= 2 samples for a standard error, got {n}")
    dtype, device = _flow_dtype_device(flow)
    x64 = target.sample(n, seed=seed, dtype=torch.float64)
    log_p = target.log_prob(x64)
    x = x64.to(device, dtype).reshape(n, *flow.event_shape)
    if context is not None:
        context = context.to(device, dtype).expand(n, context.shape[-1])
    return target, x, log_p, context


@torch.no_grad()
def kl_divergence(
    flow: Flow,
    target: Target | str,
    n: int = 10000,
    seed: int = 0,
    context: Tensor | None = None,
    batch_size: int = 8192,
) -> KLEstimate:
    r"""Monte Carlo :math:`KL(p \| q) = E_p[\log p(x) - \log q(x)]` with its standard error.

    ``x`` are ``n`` samples of the target drawn with ``seed`` (so two flows compared with the
    same seed see the same points); :math:`\log p` is the target's exact density (float64)
    and :math:`\log q` the flow's ``log_prob``, evaluated in the flow's dtype.

    Arguments:
        flow: the flow :math:`q`, unconditional or conditioned on a fixed ``context``.
        target: a :class:`~torchnf.data.Target` with an exact ``log_prob``, or its name.
        n: number of samples.
        seed: seed of the target's samples.
        context: ``(context_size,)`` or ``(n, context_size)`` context of a conditional flow.
        batch_size: samples per pass of the flow (bounds the memory).

    Returns:
        A :class:`KLEstimate` in nats.

    Example:
        >>> from torchnf import Flow
        >>> from torchnf.layers import Reverse
        >>> from torchnf.data import GaussianTarget
        >>> target = GaussianTarget("shifted", torch.tensor([1.0, 0.0]), torch.eye(2))
        >>> kl = kl_divergence(Flow(Reverse(2)), target)  # exact: |mu|^2 / 2 = 0.5
        >>> round(kl.value, 1), kl.stderr < 0.02
        (0.5, True)
    """
    target, x, log_p, context = target_samples(flow, target, n, seed, context)
    log_q = torch.cat(
        [
            flow.log_prob(xb, None if context is None else context[i : i + batch_size])
            for i, xb in zip(range(0, n, batch_size), x.split(batch_size), strict=True)
        ]
    )
    return KLEstimate.from_terms(log_p - log_q.double().cpu())
