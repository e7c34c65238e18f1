"""Gauss–Legendre quadrature on ``[0, 1]``, for integrals with a fixed number of nodes."""

from __future__ import annotations

import torch
from torch import Tensor


def gauss_legendre(n: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    r"""Nodes ``s_k`` and weights ``w_k`` of the ``n``-point Gauss–Legendre rule on ``[0, 1]``.

    :math:`\int_0^1 f(s)\, ds \approx \sum_{k=1}^{n} w_k f(s_k)`, exact for polynomials of
    degree ``<= 2n - 1``; the weights are positive and sum to 1. For ``f`` with ``2n``
    continuous derivatives the error is
    :math:`\frac{(n!)^4}{(2n+1)\,((2n)!)^3} f^{(2n)}(\xi)` for some :math:`\xi \in (0, 1)`,
    so for a map :math:`\int_0^x g(t)\,dt = x \int_0^1 g(x s)\,ds` it is
    :math:`\frac{x^{2n+1} (n!)^4}{(2n+1)((2n)!)^3} g^{(2n)}(\xi)`.

    Computed by the Golub–Welsch method: the nodes on ``[-1, 1]`` are the eigenvalues of the
    symmetric tridiagonal Jacobi matrix with off-diagonal :math:`k / \sqrt{4k^2 - 1}`, the
    weights twice the squared first components of its eigenvectors; then mapped to ``[0, 1]``.
    The eigen-decomposition runs in float64 and the result is cast to ``dtype``.

    Arguments:
        n: number of nodes, ``>= 1``.
        dtype: dtype of the result.

    Returns:
        ``(nodes, weights)``, each of shape ``(n,)``, nodes increasing.

    References:
        Golub, Welsch, "Calculation of Gauss quadrature rules", Math. Comp. 23 (1969).

    Example:
        >>> s, w = gauss_legendre(3)
        >>> round(float((w * s**5).sum()), 12)  # exact up to degree 5: 1/6
        0.166666666667
    """
    if n < 1:
        raise ValueError(f"expected n >= 1 quadrature nodes, got {n}")
    k = torch.arange(1, n, dtype=torch.float64)
    off = k / torch.sqrt(4 * k**2 - 1)
    jacobi = torch.diag(off, 1) + torch.diag(off, -1)
    nodes, vectors = torch.linalg.eigh(jacobi)
    weights = 2 * vectors[0] ** 2
    return ((nodes + 1) / 2).to(dtype), (weights / 2).to(dtype)
