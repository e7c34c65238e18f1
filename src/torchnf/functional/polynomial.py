"""Bernstein polynomials: the basis and increasing polynomials on ``[0, 1]``."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def bernstein_basis(u: Tensor, degree: int) -> Tensor:
    r"""The Bernstein basis :math:`b_{k,M}(u) = \binom{M}{k} u^k (1 - u)^{M - k}`, ``k = 0..M``.

    Built by the recurrence :math:`b_{k,m} = (1 - u)\, b_{k,m-1} + u\, b_{k-1,m-1}` from
    :math:`b_{0,0} = 1`: for ``u`` in ``[0, 1]`` every step is a convex combination, so the
    values stay in ``[0, 1]``, sum to 1 and have finite gradients at the ends (a power form
    :math:`u^0` differentiates to ``0 * inf`` at ``u = 0``). ``M`` steps of ``O(M)`` each.

    Arguments:
        u: points, any shape, in ``[0, 1]``.
        degree: ``M >= 0``.

    Returns:
        ``(*u.shape, M + 1)``.

    References:
        Farouki, "The Bernstein polynomial basis: a centennial retrospective", Computer Aided
        Geometric Design 29 (2012).

    Example:
        >>> b = bernstein_basis(torch.tensor([0.0, 0.25, 1.0]), 2)
        >>> b.tolist()
        [[1.0, 0.0, 0.0], [0.5625, 0.375, 0.0625], [0.0, 0.0, 1.0]]
    """
    if degree < 0:
        raise ValueError(f"expected degree >= 0, got {degree}")
    u = u.unsqueeze(-1)
    basis = u.new_ones(()).expand_as(u)
    for _ in range(degree):
        basis = F.pad(basis * (1 - u), (0, 1)) + F.pad(basis * u, (1, 0))
    return basis
