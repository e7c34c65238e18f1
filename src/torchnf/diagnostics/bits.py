r"""Bits per dimension of discrete data (images) on their original discrete scale.

For discrete ``x`` in ``{0, ..., K - 1}^D`` and a density ``p`` on dequantized values
``v = x + u``, ``u ~ U[0, 1)^D``, Jensen's inequality gives
:math:`-\log_2 P(x) \le -E_u[\log_2 p(x + u)]`; with ``n_samples = S`` noise draws the
importance-weighted bound :math:`-\log_2 \frac1S \sum_s p(x + u_s)` is tighter. Divided by
``D`` this is the *bits per dimension* reported for image models (Theis et al., 2016,
arXiv:1511.01844), directly comparable with the exact bits/dim of a discrete model such as
:func:`independent_pixels_bits_per_dim`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from torchnf.core.bijector import Bijector
from torchnf.core.flow import Flow


@torch.no_grad()
def bits_per_dim(
    flow: Flow,
    x: Tensor,
    context: Tensor | None = None,
    preprocessing: Bijector | None = None,
    n_samples: int = 1,
    batch_size: int = 512,
    generator: torch.Generator | None = None,
) -> float:
    r"""Mean bits per dimension of discrete ``x`` under ``flow`` (an upper bound).

    Each point is dequantized ``n_samples`` times, ``v = x + u``; if ``preprocessing`` is
    given (a bijector applied to ``v`` before the flow, e.g. a rescaling or logit the flow
    was trained after), its log-det is added, so the density is always the one on the
    original discrete scale (bins of width 1): :math:`\log p(v) = \log p_{flow}(t) +
    \log|\det \partial t / \partial v|`, ``t = preprocessing(v)``. A flow that contains its
    preprocessing, like :class:`~torchnf.models.ImageFlow`, needs none.

    Arguments:
        flow: the model, a density on dequantized values (or on ``preprocessing``'s outputs).
        x: discrete data ``(N, *event_shape)`` with integer values (floating dtype).
        context: ``(N, context_size)`` for a conditional flow.
        preprocessing: bijector from dequantized values to the flow's inputs.
        n_samples: dequantization draws per point (importance-weighted bound).
        batch_size: points per forward pass.
        generator: source of the dequantization noise.

    Returns:
        :math:`-\frac{1}{N D}\sum_n \log_2 \frac1S \sum_s p(x_n + u_{ns})`.

    Example:
        >>> from torchnf import Flow
        >>> from torchnf.distributions.base import Uniform
        >>> from torchnf.layers import Rescale
        >>> flow = Flow(Rescale(4, 1.0), Uniform(4, 0.0, 8.0))  # 8 equally likely values
        >>> round(bits_per_dim(flow, torch.randint(0, 8, (10, 4)).float()), 6)
        3.0
    """
    if n_samples < 1:
        raise ValueError(f"expected n_samples >= 1, got {n_samples}")
    if not torch.is_floating_point(x) or x.dim() < 2:
        raise ValueError(f"expected floating-point data of shape (N, ...), got {x.dtype} {x.shape}")
    total, n_dims = 0.0, math.prod(x.shape[1:])
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        cb = None if context is None else context[start : start + batch_size]
        log_p = torch.stack(
            [
                _log_prob(flow, _dequantize(xb, generator), cb, preprocessing)
                for _ in range(n_samples)
            ]
        )
        total += float((torch.logsumexp(log_p, 0) - math.log(n_samples)).sum())
    return -total / (len(x) * n_dims * math.log(2))


def _dequantize(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return x + torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)


def _log_prob(
    flow: Flow, v: Tensor, context: Tensor | None, preprocessing: Bijector | None
) -> Tensor:
    if preprocessing is None:
        return flow.log_prob(v, context)
    t, log_det = preprocessing(v, context)
    return flow.log_prob(t, context) + log_det


def independent_pixels_bits_per_dim(
    train: Tensor, test: Tensor, n_values: int, pseudo_count: float = 1.0
) -> float:
    r"""Exact test bits/dim of the per-pixel independent categorical baseline.

    Each pixel ``i`` gets its own distribution over ``{0, ..., K - 1}``, fitted on ``train``
    by counting with ``pseudo_count`` added to every value (Laplace smoothing):
    :math:`P_i(k) = (n_{ik} + a) / (N + K a)`. Returns
    :math:`-\frac{1}{N_{test} D}\sum \log_2 \prod_i P_i(x_i)`: the bar a density model of
    the images should clearly beat.

    Arguments:
        train: ``(N, *event_shape)`` discrete values.
        test: ``(M, *event_shape)`` discrete values.
        n_values: number of values ``K``.
        pseudo_count: smoothing ``a > 0``.

    Example:
        >>> train = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
        >>> round(independent_pixels_bits_per_dim(train, train, 2, pseudo_count=1e-9), 6)
        0.5
    """
    if pseudo_count <= 0:
        raise ValueError(f"expected pseudo_count > 0, got {pseudo_count}")
    if train.shape[1:] != test.shape[1:]:
        raise ValueError(
            f"expected train and test of one event shape, got {train.shape}, {test.shape}"
        )
    a, b = train.flatten(1).long(), test.flatten(1).long()
    if min(a.min(), b.min()) < 0 or max(a.max(), b.max()) >= n_values:
        raise ValueError(f"expected integer values in 0..{n_values - 1}")
    counts = torch.zeros(a.shape[1], n_values, dtype=torch.float64)
    counts.scatter_add_(1, a.T, torch.ones(a.T.shape, dtype=torch.float64))
    log_p = torch.log(counts + pseudo_count) - math.log(len(a) + n_values * pseudo_count)
    nll = -log_p.gather(1, b.T).sum()
    return float(nll) / (b.numel() * math.log(2))
