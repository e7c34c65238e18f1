r"""Residual maps with structured Jacobians: planar, radial and Sylvester (pure functions).

Each forward returns ``(y, log_det)`` with ``log_det`` of the batch shape; each inverse
exploits the structure of the map so that it reduces to increasing scalar equations of the
form :math:`x + A \tanh(B x + c) = t` with :math:`AB > -1`, solved by
:func:`solve_tanh_residual` (or, for the radial map, to a quadratic with a closed-form root).

Parameters are either shared by the whole batch (a vector ``(D,)``, a matrix ``(D, M)``) or
given per sample, with the batch dimensions of the input in front (``(*batch, D)``,
``(*batch, D, M)``): the amortized layers of van den Berg et al. (2018), whose parameters are
functions of a context. The solvers are elementwise, so per-sample parameters cost nothing
more than a batched product.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from torchnf.functional.affine import soft_clamp
from torchnf.functional.solvers import solve_increasing

#: ``softplus(SOFTPLUS_ONE) == 1``: shifts a raw parameter so that zero maps to one.
SOFTPLUS_ONE = math.log(math.e - 1)


def sech2(a: Tensor) -> Tensor:
    r""":math:`\tanh'(a) = \mathrm{sech}^2(a)`, computed without cancellation for large ``|a|``."""
    e = torch.exp(-2 * a.abs())
    return 4 * e / (1 + e).square()


def above_minus_one(raw: Tensor) -> Tensor:
    r"""Map ``raw`` onto :math:`(-1, \infty)` increasingly, with ``0 -> 0``:
    :math:`-1 + \mathrm{softplus}(raw + \log(e - 1))`."""
    return F.softplus(raw + SOFTPLUS_ONE) - 1


def rowdot(x: Tensor, w: Tensor) -> Tensor:
    r"""Inner products :math:`x^\top w` of the rows of ``x (..., D)`` with one shared vector
    ``w (D,)``, or with one vector per row, ``w (..., D)``; returns ``(...)``."""
    return x @ w if w.dim() == 1 else (x * w).sum(-1)


def rowmatmul(x: Tensor, m: Tensor) -> Tensor:
    r"""Rows ``x (..., N)`` times one shared matrix ``m (N, K)``, or each row times its own
    matrix, ``m (..., N, K)``; returns ``(..., K)``."""
    return x @ m if m.dim() == 2 else (x.unsqueeze(-2) @ m).squeeze(-2)


def _diagonal(r: Tensor) -> Tensor:
    return r.diagonal(dim1=-2, dim2=-1)


def solve_tanh_residual(
    target: Tensor,
    scale: Tensor,
    gain: Tensor | float,
    shift: Tensor | float,
    tol: float | None,
    max_iter: int,
) -> Tensor:
    r"""Solve :math:`x + A \tanh(B x + c) = t` elementwise, where ``A = scale``, ``B = gain``.

    The left side is increasing when :math:`AB > -1` (its slope is
    :math:`1 + AB\,\mathrm{sech}^2 \ge \min(1, 1 + AB)`), and the root lies in
    :math:`[t - |A|, t + |A|]` since :math:`|\tanh| \le 1`, so the safeguarded Newton solve
    of :func:`~torchnf.functional.solvers.solve_increasing` always converges.
    """

    def fn(x: Tensor) -> tuple[Tensor, Tensor]:
        a = gain * x + shift
        return x + scale * torch.tanh(a), 1 + scale * gain * sech2(a)

    bound = scale.abs()
    return solve_increasing(fn, target, target - bound, target + bound, tol, max_iter)


# -- planar ----------------------------------------------------------------------------------
def planar_constrain(u: Tensor, w: Tensor) -> Tensor:
    r""":math:`\hat u = u + (m(w^\top u) - w^\top u)\, w / \|w\|^2` with
    :math:`m(a) = -1 + \mathrm{softplus}(a)`, so that :math:`w^\top \hat u > -1`.

    ``u``, ``w`` are ``(D,)`` or, per sample, ``(*batch, D)``."""
    wu = rowdot(w, u).unsqueeze(-1)
    return u + (F.softplus(wu) - 1 - wu) * w / w.square().sum(-1, keepdim=True)


def planar_forward(x: Tensor, u: Tensor, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    r""":math:`y = x + u \tanh(w^\top x + b)`, :math:`\log|\det| = \log(1 + w^\top u\,
    \mathrm{sech}^2(w^\top x + b))`; ``u`` must satisfy :math:`w^\top u > -1`.

    ``u``, ``w`` are ``(D,)`` and ``b`` is ``()``, or per sample ``(*batch, D)`` and
    ``(*batch,)``."""
    s = rowdot(x, w) + b
    return x + torch.tanh(s).unsqueeze(-1) * u, torch.log1p(rowdot(w, u) * sech2(s))


def planar_inverse(
    y: Tensor, u: Tensor, w: Tensor, b: Tensor, tol: float | None, max_iter: int
) -> tuple[Tensor, Tensor]:
    r"""Inverse of :func:`planar_forward`.

    With :math:`s = w^\top x + b`, :math:`w^\top y + b = s + w^\top u \tanh(s)`, an increasing
    scalar equation in ``s``; then :math:`x = y - u \tanh(s)`.
    """
    wu = rowdot(w, u)
    s = solve_tanh_residual(rowdot(y, w) + b, wu, 1.0, 0.0, tol, max_iter)
    return y - torch.tanh(s).unsqueeze(-1) * u, -torch.log1p(wu * sech2(s))


# -- radial ----------------------------------------------------------------------------------
def radial_forward(x: Tensor, x0: Tensor, alpha: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
    r""":math:`y = x + \frac{\beta}{\alpha + r}(x - x_0)`, :math:`r = \|x - x_0\|`.

    :math:`\log|\det| = (D - 1)\log(1 + \frac{\beta}{\alpha + r}) +
    \log(1 + \frac{\alpha\beta}{(\alpha + r)^2})`; requires :math:`\alpha > 0,
    \beta > -\alpha`. ``x0`` is ``(D,)`` and ``alpha``, ``beta`` are ``()``, or per sample
    ``(*batch, D)`` and ``(*batch, 1)``.
    """
    z = x - x0
    r = z.norm(dim=-1, keepdim=True)
    h = 1 / (alpha + r)
    log_det = (x.shape[-1] - 1) * torch.log1p(beta * h) + torch.log1p(alpha * beta * h.square())
    return x + beta * h * z, log_det.squeeze(-1)


def radial_inverse(y: Tensor, x0: Tensor, alpha: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
    r"""Inverse of :func:`radial_forward`, in closed form.

    Taking norms, :math:`\rho = \|y - x_0\| = r (1 + \beta / (\alpha + r))`, increasing in
    ``r``; equivalently :math:`r^2 + (\alpha + \beta - \rho) r - \alpha\rho = 0`, whose
    non-negative root is computed without cancellation. Then
    :math:`x = x_0 + (y - x_0) (\alpha + r) / (\alpha + \beta + r)`.
    """
    w = y - x0
    rho = w.norm(dim=-1, keepdim=True)
    c = alpha + beta - rho
    root = (c.square() + 4 * alpha * rho).sqrt()
    safe = torch.where(c > 0, c + root, torch.ones_like(c))
    r = torch.where(c > 0, 2 * alpha * rho / safe, (root - c) / 2)
    h = 1 / (alpha + r)
    log_det = (y.shape[-1] - 1) * torch.log1p(beta * h) + torch.log1p(alpha * beta * h.square())
    return x0 + w / (1 + beta * h), -log_det.squeeze(-1)


# -- Sylvester -------------------------------------------------------------------------------
def sylvester_forward(
    x: Tensor, q: Tensor, r1: Tensor, r2: Tensor, b: Tensor
) -> tuple[Tensor, Tensor]:
    r""":math:`y = x + Q R_2 \tanh(R_1 Q^\top x + b)`.

    ``q`` is ``(D, M)`` with orthonormal columns, ``r1``, ``r2`` are ``(M, M)`` upper
    triangular, ``b`` is ``(M,)``; each may instead be given per sample, ``(*batch, D, M)``,
    ``(*batch, M, M)``, ``(*batch, M)``. :math:`\log|\det| = \sum_i \log(1 + r_{1,ii}
    r_{2,ii} \mathrm{sech}^2(a_i))` with :math:`a = R_1 Q^\top x + b` (Sylvester's
    determinant identity).
    """
    a = rowmatmul(rowmatmul(x, q), r1.mT) + b
    y = x + rowmatmul(rowmatmul(torch.tanh(a), r2.mT), q.mT)
    return y, torch.log1p(_diagonal(r1) * _diagonal(r2) * sech2(a)).sum(-1)


def sylvester_inverse(
    y: Tensor, q: Tensor, r1: Tensor, r2: Tensor, b: Tensor, tol: float | None, max_iter: int
) -> tuple[Tensor, Tensor]:
    r"""Inverse of :func:`sylvester_forward`, exact up to ``tol``.

    The part of ``y`` orthogonal to the columns of ``Q`` passes unchanged. In Q-coordinates
    :math:`v = Q^\top y = z + R_2 \tanh(R_1 z + b)` with :math:`z = Q^\top x`, a triangular
    system: from the last coordinate to the first, coordinate ``i`` solves
    :math:`z_i + r_{2,ii} \tanh(r_{1,ii} z_i + c_i) = v_i - \sum_{j > i} r_{2,ij} \tanh(a_j)`
    with :math:`c_i = \sum_{k > i} r_{1,ik} z_k + b_i`, an increasing scalar equation when
    :math:`r_{1,ii} r_{2,ii} > -1`. Then :math:`x = y - Q R_2 \tanh(a)`.
    """
    v = rowmatmul(y, q)
    m = q.shape[-1]
    zs: list[Tensor] = []  # z_{m-1}, z_{m-2}, ... as they are solved
    hs: list[Tensor] = []  # tanh(a_j) likewise
    a_cols: list[Tensor] = []
    for i in reversed(range(m)):
        z_later = torch.stack(zs[::-1], -1) if zs else v[..., :0]
        h_later = torch.stack(hs[::-1], -1) if hs else v[..., :0]
        shift = rowdot(z_later, r1[..., i, i + 1 :]) + b[..., i]
        target = v[..., i] - rowdot(h_later, r2[..., i, i + 1 :])
        z_i = solve_tanh_residual(target, r2[..., i, i], r1[..., i, i], shift, tol, max_iter)
        a_i = r1[..., i, i] * z_i + shift
        zs.append(z_i)
        hs.append(torch.tanh(a_i))
        a_cols.append(a_i)
    a = torch.stack(a_cols[::-1], -1)
    x = y - rowmatmul(rowmatmul(torch.tanh(a), r2.mT), q.mT)
    return x, -torch.log1p(_diagonal(r1) * _diagonal(r2) * sech2(a)).sum(-1)


def sylvester_triangular(r1: Tensor, r2: Tensor, log_bound: float) -> tuple[Tensor, Tensor]:
    r"""Upper-triangular :math:`(R_1, R_2)` with :math:`r_{1,ii} r_{2,ii} > -1` from raw squares.

    Above the diagonal the raw values are kept; on it :math:`r_{1,ii} = \exp(B \tanh(\rho_i /
    B))`, positive and in :math:`(e^{-B}, e^B)` (``B = log_bound``), and :math:`r_{2,ii} =
    (-1 + \mathrm{softplus}(\sigma_i + \log(e - 1))) / r_{1,ii}`, with :math:`\rho, \sigma`
    the raw diagonals; below it, zeros. ``r1``, ``r2`` are ``(M, M)`` or ``(*batch, M, M)``.
    """
    d1 = soft_clamp(_diagonal(r1), log_bound).exp()
    d2 = above_minus_one(_diagonal(r2)) / d1
    return r1.triu(1) + torch.diag_embed(d1), r2.triu(1) + torch.diag_embed(d2)


def householder_columns(vectors: Tensor, m: int) -> Tensor:
    r"""The first ``m`` columns of :math:`H_1 H_2 \cdots H_K`, the reflections
    :math:`H_k = I - 2 v_k v_k^\top / \|v_k\|^2` of ``vectors (..., K, D)``; ``(..., D, m)``.

    The reflections are applied to :math:`[I_m; 0]` from the last to the first, so the cost
    is :math:`O(K D m)` per matrix.
    """
    d = vectors.shape[-1]
    q = torch.eye(d, m, dtype=vectors.dtype, device=vectors.device)
    for v in vectors.flip(-2).unbind(-2):
        vq = v.unsqueeze(-2) @ q
        q = q - 2 * (v.unsqueeze(-1) * vq) / v.square().sum(-1)[..., None, None]
    return q
