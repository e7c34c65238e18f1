r"""The KL benchmark: how far a flow's density is from a target of known density.

:math:`KL(p \| q) = E_{x \sim p}[\log p(x) - \log q(x)]`, estimated by Monte Carlo on
seeded samples of the target, with its standard error. It is 0 for a perfect flow and,
unlike the NLL, does not depend on the target's entropy, so it compares across targets.
The target is a torchnf :class:`~torchnf.data.Target`, a
:class:`torch.distributions.Distribution`, or any object with seeded ``sample`` and
``log_prob`` (:class:`SampleLogProb`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor
from torch.distributions import Distribution

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


class SampleLogProb(Protocol):
    """What a duck-typed target must offer (a :class:`~torchnf.data.Energy` does): seeded
    samples ``sample(n, seed=seed) -> (n, D)`` and their ``log_prob(x) -> (n,)``; when it
    also has a float ``log_normalizer`` :math:`\\log Z`, ``log_prob`` is taken as
    unnormalized and :math:`\\log Z` is subtracted.

    Example:
        >>> class Shifted:
        ...     log_normalizer = 1.0
        ...     def sample(self, n, seed):
        ...         return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)) + 1
        ...     def log_prob(self, x):  # unnormalized: log N(x; (1, 1), I) + 1
        ...         return -0.5 * (x - 1).square().sum(-1) - math.log(2 * math.pi) + 1.0
        >>> from torchnf import Flow
        >>> from torchnf.layers import Reverse
        >>> round(kl_divergence(Flow(Reverse(2)), Shifted()).value, 1)  # exact: |mu|^2 / 2 = 1
        1.0
    """

    def sample(self, n: int, seed: int) -> Tensor: ...

    def log_prob(self, x: Tensor) -> Tensor: ...


TargetLike = Target | Distribution | SampleLogProb | str
"""What the KL benchmark and the trace accept as a target."""

_EXPECTED_TARGET = (
    "expected a target: a torchnf Target (or its name), a torch.distributions.Distribution "
    "with batch_shape () and event_shape () or (D,), or an object with sample(n, seed) -> "
    "(n, D) and log_prob(x) -> (n,)"
)


@contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Run the block with torch's global generators seeded with ``seed``, and restore their
    state afterwards (the CPU one, and every CUDA one once CUDA is initialized), so the
    caller's random stream is untouched. ``seed=None`` runs it on the generators as they are.

    Example:
        >>> with seeded(0):
        ...     a = torch.rand(2)
        >>> with seeded(0):
        ...     b = torch.rand(2)
        >>> torch.equal(a, b)
        True
    """
    if seed is None:
        yield
        return
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@dataclass(frozen=True)
class _Adapted:
    """A target as two functions: seeded ``sample(n, seed) -> (n, D)`` in its own dtype
    and device, and ``log_prob`` of those samples (normalized)."""

    name: str
    sample: Callable[[int, int], Tensor]
    log_prob: Callable[[Tensor], Tensor]


def _from_distribution(dist: Distribution) -> _Adapted:
    if dist.batch_shape != () or len(dist.event_shape) > 1:
        raise ValueError(
            f"{_EXPECTED_TARGET}; got a {type(dist).__name__} of batch_shape "
            f"{tuple(dist.batch_shape)} and event_shape {tuple(dist.event_shape)} (reinterpret "
            "batch dimensions as an event with torch.distributions.Independent)"
        )
    scalar = dist.event_shape == ()

    def sample(n: int, seed: int) -> Tensor:
        with seeded(seed):
            x = dist.sample(torch.Size([n]))
        return x.unsqueeze(-1) if scalar else x

    def log_prob(x: Tensor) -> Tensor:
        return dist.log_prob(x.squeeze(-1) if scalar else x)

    return _Adapted(type(dist).__name__, sample, log_prob)


def _as_target(target: TargetLike) -> _Adapted:
    if isinstance(target, str):
        target = get_target(target)
    if isinstance(target, Target):
        if not target.has_log_prob:
            raise ValueError(f"expected a target with a known density, got {target.name!r}")
        return _Adapted(
            target.name,
            lambda n, seed: target.sample(n, seed=seed, dtype=torch.float64),
            target.log_prob,
        )
    if isinstance(target, Distribution):
        return _from_distribution(target)
    if callable(getattr(target, "sample", None)) and callable(getattr(target, "log_prob", None)):
        offset = float(getattr(target, "log_normalizer", 0.0))
        return _Adapted(
            str(getattr(target, "name", type(target).__name__)),
            lambda n, seed: torch.as_tensor(target.sample(n, seed=seed)),
            lambda x: torch.as_tensor(target.log_prob(x)) - offset,
        )
    raise ValueError(f"{_EXPECTED_TARGET}; got {type(target).__name__}")


def _flow_dtype_device(flow: Flow) -> tuple[torch.dtype, torch.device]:
    """The dtype and device of the flow's first floating parameter or buffer (else the
    default dtype on the CPU)."""
    for t in (*flow.parameters(), *flow.buffers()):
        if torch.is_floating_point(t):
            return t.dtype, t.device
    return torch.get_default_dtype(), torch.device("cpu")


def target_samples(
    flow: Flow, target: TargetLike, n: int, seed: int, context: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Seeded samples ``x`` of ``target`` in the flow's dtype and device, their exact
    ``log p(x)`` (float64, CPU; evaluated on the samples as drawn), and the context expanded
    to ``(n, context_size)``."""
    target = _as_target(target)
    if n < 2:
        raise ValueError(f"expected n >= 2 samples for a standard error, got {n}")
    dim = math.prod(flow.event_shape)
    raw = target.sample(n, seed)
    if not torch.is_floating_point(raw) or raw.shape != (n, dim):
        raise ValueError(
            f"expected a target of dimension {dim} for this flow (floating samples of shape "
            f"({n}, {dim})), got {target.name!r} with samples of shape {tuple(raw.shape)} and "
            f"dtype {raw.dtype}"
        )
    log_p = target.log_prob(raw)
    if log_p.shape != (n,):
        raise ValueError(
            f"expected the target's log_prob to return shape ({n},) for samples of shape "
            f"{tuple(raw.shape)}, got {tuple(log_p.shape)}"
        )
    dtype, device = _flow_dtype_device(flow)
    x = raw.to(device, dtype).reshape(n, *flow.event_shape)
    if context is not None:
        context = context.to(device, dtype).expand(n, context.shape[-1])
    return x, log_p.double().cpu(), context


@torch.no_grad()
def kl_divergence(
    flow: Flow,
    target: TargetLike,
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
        target: a :class:`~torchnf.data.Target` with an exact ``log_prob``, or its name; a
            :class:`torch.distributions.Distribution` with ``batch_shape`` ``()`` and
            ``event_shape`` ``(D,)`` (or ``()`` for ``D = 1``; wrap others in
            :class:`~torch.distributions.Independent`), sampled under a seeded fork of
            torch's global generator; or any object with ``sample(n, seed=seed) -> (n, D)``
            and ``log_prob(x) -> (n,)`` (:class:`SampleLogProb`, e.g. a
            :class:`~torchnf.data.Energy` with a sampler: its ``log_normalizer`` is
            subtracted). :math:`\log p` is evaluated on the samples as drawn, in their dtype.
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
        >>> normal = torch.distributions.MultivariateNormal(torch.ones(2), torch.eye(2))
        >>> round(kl_divergence(Flow(Reverse(2)), normal).value, 1)  # exact: 1
        1.0
    """
    x, log_p, context = target_samples(flow, target, n, seed, context)
    log_q = torch.cat(
        [
            flow.log_prob(xb, None if context is None else context[i : i + batch_size])
            for i, xb in zip(range(0, n, batch_size), x.split(batch_size), strict=True)
        ]
    )
    return KLEstimate.from_terms(log_p - log_q.double().cpu())
