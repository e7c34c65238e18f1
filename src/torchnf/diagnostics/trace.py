r"""The per-layer performance trace: the KL benchmark after each layer of a flow.

After the first :math:`k` layers :math:`f_{1..k}`, the data are compared with the base
distribution :math:`p_Z` through the change of variables of those layers only,

.. math:: KL_k = E_{x \sim p}\Big[\log p(x) - \log p_Z(f_{1..k}(x))
          - \sum_{j \le k} \log|\det \partial f_j / \partial x_{j-1}|\Big],

so :math:`KL_0` compares the raw data with the base and :math:`KL_K` is the flow's
:func:`~torchnf.diagnostics.kl_divergence`. Where the curve drops, layers do the work.
"""

from __future__ import annotations

import torch
from torch import Tensor

from torchnf.core.bijector import Bijector
from torchnf.core.chain import Chain
from torchnf.core.flow import Flow
from torchnf.diagnostics.kl import KLEstimate, TargetLike, target_samples


def trace_layers(flow: Flow) -> list[Bijector]:
    """The layers the trace steps through: the top-level items of ``flow.bijector`` if it is
    a :class:`~torchnf.Chain` (a nested chain counts as one layer), else the bijector alone."""
    bijector = flow.bijector
    return list(bijector) if isinstance(bijector, Chain) else [bijector]


@torch.no_grad()
def trace(
    flow: Flow,
    target: TargetLike,
    n: int = 10000,
    seed: int = 0,
    context: Tensor | None = None,
) -> list[KLEstimate]:
    r"""The KL after each layer of ``flow``: one point for the start and one per layer.

    Point :math:`k` is :math:`KL_k` above, estimated on the same ``n`` seeded samples of the
    target for every :math:`k` (so differences between points are much more precise than
    each standard error suggests); the last point equals
    ``kl_divergence(flow, target, n, seed, context)``. The layers are those of
    :func:`trace_layers`; each must keep the event shape of the base distribution.

    Arguments:
        flow: the flow.
        target: a :class:`~torchnf.data.Target` with an exact ``log_prob`` or its name, a
            :class:`torch.distributions.Distribution`, or an object with seeded ``sample``
            and ``log_prob``: all that :func:`~torchnf.diagnostics.kl_divergence` accepts.
        n: number of samples.
        seed: seed of the target's samples.
        context: ``(context_size,)`` or ``(n, context_size)`` context of a conditional flow.

    Returns:
        ``len(trace_layers(flow)) + 1`` :class:`KLEstimate`.

    Example:
        >>> from torchnf import Chain, Flow
        >>> from torchnf.layers import Reverse
        >>> flow = Flow(Chain(Reverse(2), Reverse(2)))
        >>> [round(kl.value, 3) for kl in trace(flow, "ring", n=1000)]
        [6.458, 6.458, 6.458]
    """
    if flow.event_shape != flow.base.event_shape:
        raise ValueError(
            f"the trace needs data events of the base's shape {flow.base.event_shape}, "
            f"got {flow.event_shape}"
        )
    for i, layer in enumerate(trace_layers(flow)):
        if layer.output_event_shape != flow.base.event_shape:
            raise ValueError(
                f"the trace needs every layer to keep the base's event shape "
                f"{flow.base.event_shape}; layer {i} ({type(layer).__name__}) outputs "
                f"{layer.output_event_shape}"
            )
    x, log_p, context = target_samples(flow, target, n, seed, context)
    context = flow._encode(context)
    bijector = flow.bijector
    steps = (
        bijector.forward_trace(x, context)
        if isinstance(bijector, Chain)
        else [bijector(x, context)]
    )
    log_det = x.new_zeros(n)
    estimates = [KLEstimate.from_terms(log_p - flow.base.log_prob(x).double().cpu())]
    for z, ld in steps:
        log_det = log_det + ld
        estimates.append(
            KLEstimate.from_terms(log_p - (flow.base.log_prob(z) + log_det).double().cpu())
        )
    return estimates
