"""Objectives: free functions over a flow."""

from __future__ import annotations

from torch import Tensor

from torchnf.core.flow import Flow


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
