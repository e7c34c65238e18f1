"""Residual layers with exact inverses: planar, radial, Sylvester and generalized Sylvester.

Each layer keeps itself invertible through its parametrization (every optimizer step stays
invertible) and inverts by reducing the map to increasing scalar equations, solved to ``tol``
by :func:`torchnf.functional.solvers.solve_increasing`; a
:class:`~torchnf.functional.solvers.ConvergenceError` reports the residual otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrizations

from torchnf.core.bijector import Bijector
from torchnf.core.registry import register
from torchnf.functional.affine import soft_clamp
from torchnf.functional.linalg import householder_product
from torchnf.functional.residual import (
    above_minus_one,
    planar_constrain,
    planar_forward,
    planar_inverse,
    radial_forward,
    radial_inverse,
    sech2,
    solve_tanh_residual,
    sylvester_forward,
    sylvester_inverse,
)
from torchnf.layers.linear import LUWeight
from torchnf.nets.made import MADE

#: Bound on ``|log r_1,ii|`` (Sylvester) and ``|log s_1|`` (generalized Sylvester): the
#: diagonal gain lies in ``(e^-3, e^3)``, so the paired scale ``kappa / gain`` never explodes.
DIAGONAL_LOG_BOUND = 3.0


def _check_solver(tol: float | None, max_iter: int) -> None:
    if tol is not None and not tol > 0:
        raise ValueError(f"expected tol > 0 or None, got {tol}")
    if max_iter < 1:
        raise ValueError(f"expected max_iter >= 1, got {max_iter}")


@register("layer", example=lambda context_size: Planar(4, seed=1))
class Planar(Bijector):
    r"""Planar flow ``y = f(x) = x + \hat u \tanh(w^\top x + b)``, with an exact inverse.

    :math:`\hat u = u + (m(w^\top u) - w^\top u)\, w / \|w\|^2` with
    :math:`m(a) = -1 + \mathrm{softplus}(a)` keeps :math:`w^\top \hat u > -1`, so ``f`` is
    invertible for any parameters. :math:`\log|\det| = \log(1 + w^\top \hat u\,
    \mathrm{sech}^2(w^\top x + b))`. Inverse: :math:`s = w^\top x + b` solves the increasing
    scalar equation :math:`s + w^\top \hat u \tanh(s) = w^\top y + b`, then
    :math:`x = y - \hat u \tanh(s)`. (In floating point the margin
    :math:`w^\top \hat u + 1 = \mathrm{softplus}(w^\top u)` rounds to 0 once
    :math:`w^\top u < -37` in float64, -17 in float32: the map then has a point of zero slope.)

    Shapes: ``x``, ``y`` are ``(*batch, D)``, ``log_det`` is ``(*batch,)``.

    Arguments:
        input_size: number of features ``D``.
        tol: tolerance of the inverse (default: 1e-12 in float64, about 1e-6 in float32).
        max_iter: iteration limit of the inverse.
        seed: seed of the initial ``u`` and ``w``.

    References:
        Variational Inference with Normalizing Flows (Rezende & Mohamed, 2015,
        arXiv:1505.05770).

    Example:
        >>> layer = Planar(3).double()
        >>> x = torch.randn(5, 3, dtype=torch.float64)
        >>> y, log_det = layer(x)
        >>> bool((layer.inverse(y) - x).abs().max() < 1e-10)
        True
    """

    def __init__(
        self, input_size: int, tol: float | None = None, max_iter: int = 100, seed: int = 0
    ) -> None:
        super().__init__(input_size)
        _check_solver(tol, max_iter)
        self.tol, self.max_iter = tol, max_iter
        g = torch.Generator().manual_seed(seed)
        self.u = nn.Parameter(torch.randn(input_size, generator=g) / input_size**0.5)
        self.w = nn.Parameter(torch.randn(input_size, generator=g) / input_size**0.5)
        self.b = nn.Parameter(torch.zeros(()))

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return planar_forward(x, planar_constrain(self.u, self.w), self.w, self.b)

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        u = planar_constrain(self.u, self.w)
        return planar_inverse(y, u, self.w, self.b, self.tol, self.max_iter)


@register("layer", example=lambda context_size: Radial(4, seed=1))
class Radial(Bijector):
    r"""Radial flow ``y = f(x) = x + \frac{\beta}{\alpha + r}(x - x_0)``, :math:`r = \|x - x_0\|`.

    :math:`\alpha = \mathrm{softplus}(\cdot) > 0` and :math:`\beta = -\alpha +
    \mathrm{softplus}(\cdot) > -\alpha` keep ``f`` invertible. :math:`\log|\det| =
    (D - 1)\log(1 + \frac{\beta}{\alpha + r}) + \log(1 + \frac{\alpha\beta}{(\alpha + r)^2})`.
    The inverse is exact: the radius solves :math:`\|y - x_0\| = r(1 + \beta/(\alpha + r))`,
    increasing in ``r`` and a quadratic with a closed-form non-negative root, so no
    iteration (and no ``tol``) is needed.

    Shapes: ``x``, ``y`` are ``(*batch, D)``, ``log_det`` is ``(*batch,)``.

    Arguments:
        input_size: number of features ``D``.
        seed: seed of the initial center :math:`x_0`.

    References:
        Variational Inference with Normalizing Flows (Rezende & Mohamed, 2015,
        arXiv:1505.05770).

    Example:
        >>> layer = Radial(2).double()
        >>> x = torch.randn(5, 2, dtype=torch.float64)
        >>> torch.allclose(layer.inverse(layer(x)[0]), x)
        True
    """

    def __init__(self, input_size: int, seed: int = 0) -> None:
        super().__init__(input_size)
        g = torch.Generator().manual_seed(seed)
        self.x0 = nn.Parameter(torch.randn(input_size, generator=g))
        self.alpha_raw = nn.Parameter(torch.zeros(()))
        self.beta_raw = nn.Parameter(torch.zeros(()))

    def _params(self) -> tuple[Tensor, Tensor]:
        alpha = F.softplus(self.alpha_raw)
        return alpha, F.softplus(self.beta_raw) - alpha

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return radial_forward(x, self.x0, *self._params())

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return radial_inverse(y, self.x0, *self._params())


class _OrthogonalColumns(nn.Module):
    """``Q (D, M)`` with orthonormal columns through ``parametrizations.orthogonal``.

    The matrix-exponential map without trivialization: ``Q`` is the first ``M`` columns of
    ``exp(A)``, ``A`` skew-symmetric, orthonormal to the working precision in any dtype.
    """

    def __init__(self, input_size: int, hidden_size: int, generator: torch.Generator) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(input_size, hidden_size, generator=generator))
        parametrizations.orthogonal(
            self, "weight", orthogonal_map="matrix_exp", use_trivialization=False
        )

    def forward(self) -> Tensor:
        return self.weight


class _HouseholderColumns(nn.Module):
    """``Q (D, M)``: the first ``M`` columns of a product of Householder reflections."""

    def __init__(
        self, input_size: int, hidden_size: int, n_reflections: int, generator: torch.Generator
    ) -> None:
        super().__init__()
        if n_reflections < 1:
            raise ValueError(f"expected n_reflections >= 1, got {n_reflections}")
        self.hidden_size = hidden_size
        self.vectors = nn.Parameter(torch.randn(n_reflections, input_size, generator=generator))

    def forward(self) -> Tensor:
        return householder_product(self.vectors)[:, : self.hidden_size]


class _PermutationColumns(nn.Module):
    """``Q (D, M)``: fixed columns of the identity, in order or reversed (triangular Sylvester)."""

    def __init__(self, input_size: int, hidden_size: int, reverse: bool) -> None:
        super().__init__()
        eye = torch.eye(input_size)
        self.register_buffer("weight", (eye.flip(1) if reverse else eye)[:, :hidden_size])

    def forward(self) -> Tensor:
        return self.weight


Q_FORMS = ("orthogonal", "householder", "identity", "reverse")


@register("layer", example=lambda context_size: SylvesterBlock(4, hidden_size=3, seed=1))
class SylvesterBlock(Bijector):
    r"""Sylvester flow block ``y = f(x) = x + Q R_2 \tanh(R_1 Q^\top x + b)``, exact inverse.

    ``Q`` is ``(D, M)`` with orthonormal columns, in one of three forms: ``"orthogonal"``
    (any such matrix, through ``torch.nn.utils.parametrizations.orthogonal``),
    ``"householder"`` (the first ``M`` columns of a product of ``n_reflections`` Householder
    reflections), or a fixed permutation, ``"identity"`` or ``"reverse"`` (triangular
    Sylvester). ``R_1``, ``R_2`` are ``(M, M)`` upper triangular; their diagonals are
    parametrized as :math:`r_{1,ii} = \exp(3 \tanh(\rho_i / 3)) > 0` (positive without loss
    of generality, ``tanh`` being odd; bounded away from 0 so that :math:`r_{2,ii}` cannot
    blow up) and :math:`r_{1,ii} r_{2,ii} = -1 + \mathrm{softplus}(\sigma_i + \log(e - 1)) > -1
    = -1/\sup|\tanh'|`, so ``f`` is invertible for any parameter values.
    :math:`\log|\det| = \sum_i \log(1 + r_{1,ii} r_{2,ii} \mathrm{sech}^2(a_i))`,
    :math:`a = R_1 Q^\top x + b`. Starts as the identity (``R_2 = 0``).

    Inverse: the part of ``y`` orthogonal to ``Q``'s columns passes unchanged; in
    Q-coordinates the map is triangular, solved from the last coordinate to the first, each an
    increasing scalar equation (:func:`~torchnf.functional.residual.sylvester_inverse`).

    Shapes: ``x``, ``y`` are ``(*batch, D)``, ``log_det`` is ``(*batch,)``.

    Arguments:
        input_size: number of features ``D``.
        hidden_size: number of columns ``M`` of ``Q``, ``1 <= M <= D`` (default ``D``).
        q: form of ``Q``: ``"orthogonal"``, ``"householder"``, ``"identity"`` or ``"reverse"``.
        n_reflections: number of reflections of the ``"householder"`` form (default ``D``).
        tol: tolerance of the inverse (default: 1e-12 in float64, about 1e-6 in float32).
        max_iter: iteration limit of the inverse, per coordinate.
        seed: seed of the initial ``Q``.

    References:
        Sylvester Normalizing Flows for Variational Inference (van den Berg et al., 2018,
        arXiv:1803.05649).

    Example:
        >>> block = SylvesterBlock(4, hidden_size=2, q="householder").double()
        >>> x = torch.randn(5, 4, dtype=torch.float64)
        >>> y, log_det = block(x)
        >>> bool((block.inverse(y) - x).abs().max() < 1e-10)
        True
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int | None = None,
        q: str = "orthogonal",
        n_reflections: int | None = None,
        tol: float | None = None,
        max_iter: int = 100,
        seed: int = 0,
    ) -> None:
        super().__init__(input_size)
        hidden_size = input_size if hidden_size is None else hidden_size
        if not 1 <= hidden_size <= input_size:
            raise ValueError(
                f"expected 1 <= hidden_size <= input_size={input_size}, got {hidden_size}"
            )
        _check_solver(tol, max_iter)
        self.hidden_size, self.tol, self.max_iter = hidden_size, tol, max_iter
        g = torch.Generator().manual_seed(seed)
        if q == "orthogonal":
            self.q = _OrthogonalColumns(input_size, hidden_size, g)
        elif q == "householder":
            k = input_size if n_reflections is None else n_reflections
            self.q = _HouseholderColumns(input_size, hidden_size, k, g)
        elif q in ("identity", "reverse"):
            self.q = _PermutationColumns(input_size, hidden_size, reverse=q == "reverse")
        else:
            raise ValueError(f"expected q in {Q_FORMS}, got {q!r}")
        self.q_form = q
        self.r1 = nn.Parameter(torch.zeros(hidden_size, hidden_size))
        self.r2 = nn.Parameter(torch.zeros(hidden_size, hidden_size))
        self.b = nn.Parameter(torch.zeros(hidden_size))

    def triangular(self) -> tuple[Tensor, Tensor]:
        """The constrained upper-triangular ``(R_1, R_2)``, each ``(M, M)``."""
        d1 = soft_clamp(self.r1.diagonal(), DIAGONAL_LOG_BOUND).exp()
        d2 = above_minus_one(self.r2.diagonal()) / d1
        return self.r1.triu(1) + torch.diag(d1), self.r2.triu(1) + torch.diag(d2)

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return sylvester_forward(x, self.q(), *self.triangular(), self.b)

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        r1, r2 = self.triangular()
        return sylvester_inverse(y, self.q(), r1, r2, self.b, self.tol, self.max_iter)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, hidden_size={self.hidden_size}, q={self.q_form!r}"


@register(
    "layer",
    example=lambda context_size: GeneralizedSylvesterBlock(
        4, hidden_sizes=(8,), context_size=context_size, seed=1
    ),
    conditional=True,
)
class GeneralizedSylvesterBlock(Bijector):
    r"""Generalized Sylvester block ``y = f(x | c) = x + W^{-1} f_{AR}(W x | c)``, exact inverse.

    ``W`` is invertible by construction (:class:`~torchnf.layers.linear.LUWeight`);
    :math:`f_{AR}(u)_i = \gamma s_{2,i} \tanh(s_{1,i} u_i + t_{1,i}) + t_{2,i}` where
    :math:`s_1, \gamma s_2, t_1, t_2` depend on :math:`u_{<i}` (and the context) through a
    :class:`~torchnf.nets.made.MADE`: :math:`s_1 = \exp(3 \tanh(\cdot / 3)) > 0` and
    :math:`\kappa = \gamma s_1 s_2 = -1 + \mathrm{softplus}(\cdot) > -1` is parametrized
    directly, so each diagonal derivative :math:`1 + \kappa\,\mathrm{sech}^2(\cdot) > 0` and
    ``f`` is invertible for any parameters. The Jacobian of :math:`f_{AR}` is triangular, so
    :math:`\log|\det| = \sum_i \log(1 + \kappa_i \mathrm{sech}^2(s_{1,i} u_i + t_{1,i}))`
    (``W`` cancels). Starts as the identity (the MADE output is zero-initialized).

    Inverse: :math:`u = W x` solves :math:`u + f_{AR}(u) = W y` coordinate by coordinate in
    the autoregressive order, each an increasing scalar equation (``D`` MADE passes), then
    :math:`x = y - W^{-1} f_{AR}(u)`.

    Shapes: ``x``, ``y`` are ``(*batch, D)``, ``context`` is ``(*batch, context_size)``,
    ``log_det`` is ``(*batch,)``.

    Arguments:
        input_size: number of features ``D``.
        hidden_sizes: widths of the MADE's hidden layers.
        context_size: size of the context (0 for an unconditional block).
        tol: tolerance of the inverse (default: 1e-12 in float64, about 1e-6 in float32).
        max_iter: iteration limit of the inverse, per coordinate.
        seed: seed of the initial ``W`` (a random rotation).

    References:
        The Convolution Exponential and Generalized Sylvester Flows (Hoogeboom et al., 2020,
        arXiv:2006.01910).

    Example:
        >>> block = GeneralizedSylvesterBlock(3, hidden_sizes=(16,)).double()
        >>> x = torch.randn(5, 3, dtype=torch.float64)
        >>> y, log_det = block(x)
        >>> bool((block.inverse(y) - x).abs().max() < 1e-10)
        True
    """

    def __init__(
        self,
        input_size: int,
        hidden_sizes: Sequence[int] = (64, 64),
        context_size: int = 0,
        tol: float | None = None,
        max_iter: int = 100,
        seed: int = 0,
    ) -> None:
        super().__init__(input_size, context_size)
        _check_solver(tol, max_iter)
        self.tol, self.max_iter = tol, max_iter
        self.weight = LUWeight(input_size, seed=seed)
        self.made = MADE(input_size, 4, hidden_sizes, context_size)

    @staticmethod
    def _coefficients(params: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(scale, gain, shift, offset)`` of ``f_AR_i = scale tanh(gain u_i + shift) + offset``
        from MADE outputs ``(..., 4)``; ``scale * gain = kappa > -1``."""
        s1_raw, kappa_raw, t1, t2 = params.unbind(-1)
        gain = soft_clamp(s1_raw, DIAGONAL_LOG_BOUND).exp()
        return above_minus_one(kappa_raw) / gain, gain, t1, t2

    def _residual(self, u: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        scale, gain, shift, offset = self._coefficients(params)
        a = gain * u + shift
        f = scale * torch.tanh(a) + offset
        return f, torch.log1p(scale * gain * sech2(a)).sum(-1)

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        u = self.weight.matmul(x)
        f, log_det = self._residual(u, self.made(u, context))
        return x + self.weight.solve(f), log_det

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        t = self.weight.matmul(y)
        net = self.made.conditioner(context)
        d = self.input_size
        cols: list[Tensor] = []
        for i in range(d):
            u = torch.cat(
                [torch.stack(cols, -1) if cols else t[..., :0], torch.zeros_like(t[..., i:])], -1
            )
            scale, gain, shift, offset = self._coefficients(net(u, feature=i))
            cols.append(
                solve_tanh_residual(t[..., i] - offset, scale, gain, shift, self.tol, self.max_iter)
            )
        u = torch.stack(cols, -1)
        f, log_det = self._residual(u, net(u))
        return y - self.weight.solve(f), -log_det
