"""Objectives: free functions over a flow, and the one signature the training loop calls.

The loop knows no job: it calls an :class:`Objective`, ``objective(flow, batch) -> loss``, on
each batch a data source yields, and ``objective.name`` names its log records (``train_nll``,
``val_nll``). Maximum likelihood is :data:`NLL`; other jobs (reverse KL against an
unnormalized density, flow matching) are other objectives over the same loop.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from torch import Tensor

from torchnf.core.flow import Flow


class Batch(NamedTuple):
    """One batch of training data: points ``x`` of shape ``(n, *event_shape)`` and, for a
    conditional flow, their ``context`` of shape ``(n, context_size)``."""

    x: Tensor
    context: Tensor | None = None


class Objective(Protocol):
    """A training objective: ``objective(flow, batch)`` returns the scalar loss to minimize
    (differentiable), the mean over the batch; ``name`` names it in the log records."""

    name: str

    def __call__(self, flow: Flow, batch: Batch) -> Tensor: ...


def nll(flow: Flow, x: Tensor, context: Tensor | None = None) -> Tensor:
    r"""Mean negative log-likelihood :math:`-\frac1N \sum_i \log p(x_i | c_i)`, in nats.

    Minimizing it is maximum likelihood, and equals minimizing the forward KL divergence
    :math:`KL(p_{data} \| p_\theta)` up to the (constant) entropy of the data.

    Arguments:
        flow: the model.
        x: data of shape ``(N, *event_shape)``.
        context: ``(N, context_size)`` for a conditional flow.

    Returns:
        A scalar tensor (differentiable).

    Example:
        >>> import torch
        >>> from torchnf import Flow
        >>> from torchnf.layers import Reverse
        >>> nll(Flow(Reverse(2)), torch.zeros(4, 2))
        tensor(1.8379)
    """
    return -flow.log_prob(x, context).mean()


class NegativeLogLikelihood:
    """Maximum likelihood as an :class:`Objective`: :func:`nll` of the batch's points."""

    name = "nll"

    def __call__(self, flow: Flow, batch: Batch) -> Tensor:
        return nll(flow, batch.x, batch.context)


#: The maximum-likelihood objective, ``fit``'s default.
NLL = NegativeLogLikelihood()
