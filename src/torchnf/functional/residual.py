r"""Residual maps with structured Jacobians: planar, radial and Sylvester (pure functions).

Each forward returns ``(y, log_det)`` with ``log_det`` of the batch shape; each inverse
exploits the structure of the map so that it reduces to increasing scalar equations of the
form :math:`x + A \tanh(B x + c) = t` with :math:`AB > -1`, solved by
:func:`solve_tanh_residual` (or, for the radial map, to a quadratic with a closed-form root).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

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
    :math:`m(a) = -1 + \mathrm{softplus}(a)`, so that :math:`w^\top \hat u > -1`."""
    wu = w @ u
    return u + (F.softplus(wu) - 1 - wu) * w / w.square().sum()


def planar_forward(x: Tensor, u: Tensor, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    r""":math:`y = x + u \tanh(w^\top x + b)`, :math:`\log|\det| = \log(1 + w^\top u\,
    \mathrm{sech}^2(w^\top x + b))`; ``u`` must satisfy :math:`w^\top u > -1`."""
    s = x @ w + b
    return x + torch.tanh(s).unsqueeze(-1) * u, torch.log1p((w @ u) * sech2(s))


def planar_inverse(
    y: Tensor, u: Tensor, w: Tensor, b: Tensor, tol: float | None, max_iter: int
) -> tuple[Tensor, Tensor]:
    r"""Inverse of :func:`planar_forward`.

    With :math:`s = w^\top x + b`, :math:`w^\top y + b = s + w^\top u \tanh(s)`, an increasing
    scalar equation in ``s``; then :math:`x = y - u \tanh(s)`.
    """
    wu = w @ u
    s = solve_tanh_residual(y @ w + b, wu, 1.0, 0.0, tol, max_iter)
    return y - torch.tanh(s).unsqueeze(-1) * u, -torch.log1p(wu * sech2(s))


# -- radial ----------------------------------------------------------------------------------
def radial_forward(x: Tensor, x0: Tensor, alpha: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
    r""":math:`y = x + \frac{\beta}{\alpha + r}(x - x_0)`, :math:`r = \|x - x_0\|`.

    :math:`\log|\det| = (D - 1)\log(1 + \frac{\beta}{\alpha + r}) +
    \log(1 + \frac{\alpha\beta}{(\alpha + r)^2})`; requires :math:`\alpha > 0,
    \beta > -\alpha`.
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
    triangular, ``b`` is ``(M,)``. :math:`\log|\det| = \sum_i \log(1 + r_{1,ii} r_{2,ii}
    \mathrm{sech}^2(a_i))` with :math:`a = R_1 Q^\top x + b` (Sylvester's determinant identity).
    """
    a = x @ q @ r1.mT + b
    y = x + torch.tanh(a) @ r2.mT @ q.mT
    return y, torch.log1p(r1.diagonal() * r2.diagonal() * sech2(a)).sum(-1)


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
    v = y @ q
    m = q.shape[-1]
    zs: list[Tensor] = []  # z_{m-1}, z_{m-2}, ... as they are solved
    hs: list[Tensor] = []  # tanh(a_j) likewise
    a_cols: list[Tensor] = []
    for i in reversed(range(m)):
        z_later = torch.stack(zs[::-1], -1) if zs else v[..., :0]
        h_later = torch.stack(hs[::-1], -1) if hs else v[..., :0]
        shift = z_later @ r1[i, i + 1 :] + b[i]
        target = v[..., i] - h_later @ r2[i, i + 1 :]
        z_i = solve_tanh_residual(target, r2[i, i], r1[i, i], shift, tol, max_iter)
        a_i = r1[i, i] * z_i + shift
        zs.append(z_i)
        hs.append(torch.tanh(a_i))
        a_cols.append(a_i)
    a = torch.stack(a_cols[::-1], -1)
    x = y - torch.tanh(a) @ r2.mT @ q.mT
    return x, -torch.log1p(r1.diagonal() * r2.diagonal() * sech2(a)).sum(-1)
