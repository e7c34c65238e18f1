"""Residual layers with exact inverses: planar, radial, Sylvester and generalized Sylvester.

Each layer keeps itself invertible through its parametrization (every optimizer step stays
invertible) and inverts by reducing the map to increasing scalar equations, solved to ``tol``
by :func:`torchnf.functional.solvers.solve_increasing`; a
:class:`~torchnf.functional.solvers.ConvergenceError` reports the residual otherwise.

Amortization (van den Berg et al., 2018): with ``context_size > 0``, a planar, radial or
Sylvester layer's raw parameters become per-sample functions of the context,
:math:`\theta(c) = \theta + W c`, an affine map whose intercept is the unconditional
parameter and whose ``W`` (:class:`ContextOffsets`) starts at zero, so the layer starts as
its unconditional self. The constraints that keep the map invertible are applied after the
offset, so they hold for every context; the log-dets stay exact and the inverses solve each
sample with its own parameters, vectorized over the batch.
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
from torchnf.functional.residual import (
    above_minus_one,
    householder_columns,
    planar_constrain,
    planar_forward,
    planar_inverse,
    radial_forward,
    radial_inverse,
    sech2,
    solve_tanh_residual,
    sylvester_forward,
    sylvester_inverse,
    sylvester_triangular,
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


class ContextOffsets(nn.Module):
    r"""Per-sample offsets of a layer's raw parameters, linear in the context: ``W c``.

    The amortization of van den Berg et al. (2018): an encoder's hidden features ``c`` map
    linearly to flow parameters. ``W`` is zero-initialized (no bias: the layer's own
    parameters are the intercept), so an amortized layer starts as its unconditional self.

    Shapes: ``context`` is ``(*batch, context_size)``; each offset is ``(*batch, size)``, with
    size 1 along the batch dimensions over which ``context`` is expanded (stride 0): the
    offsets broadcast there, and are computed once per distinct context.

    Arguments:
        context_size: size of the context.
        sizes: number of offsets of each named raw parameter (all positive).

    Example:
        >>> offsets = ContextOffsets(3, {"u": 4, "b": 1})
        >>> {k: v.shape for k, v in offsets(torch.randn(5, 3)).items()}
        {'u': torch.Size([5, 4]), 'b': torch.Size([5, 1])}
        >>> offsets(torch.randn(5, 3).expand(100, 5, 3))["u"].shape
        torch.Size([1, 5, 4])
    """

    def __init__(self, context_size: int, sizes: dict[str, int]) -> None:
        super().__init__()
        if context_size < 1 or min(sizes.values()) < 1:
            raise ValueError(
                f"expected a positive context_size and sizes, got {context_size}, {sizes}"
            )
        self.sizes = dict(sizes)
        self.linear = nn.Linear(context_size, sum(sizes.values()), bias=False)
        nn.init.zeros_(self.linear.weight)

    def forward(self, context: Tensor) -> dict[str, Tensor]:
        # A batch dimension along which the context was expanded (stride 0, as from
        # ``Tensor.expand`` when several samples share one context) is computed once and kept
        # at size 1: the layers' maths broadcasts it, so each distinct context costs one
        # matrix exponential (say), however many samples use it.
        distinct = tuple(
            slice(0, 1) if stride == 0 else slice(None) for stride in context.stride()[:-1]
        )
        pieces = self.linear(context[distinct]).split(list(self.sizes.values()), dim=-1)
        return dict(zip(self.sizes, pieces, strict=True))


def _offsets(context_size: int, sizes: dict[str, int]) -> ContextOffsets | None:
    return ContextOffsets(context_size, sizes) if context_size else None


def _scatter(values: Tensor, index: Tensor, shape: tuple[int, int]) -> Tensor:
    """Matrices ``(*batch, *shape)``: ``values (*batch, n)`` at ``index (2, n)``, zero elsewhere."""
    out = values.new_zeros(*values.shape[:-1], *shape)
    out[..., index[0], index[1]] = values
    return out


@register(
    "layer",
    example=lambda context_size: Planar(4, seed=1, context_size=context_size),
    conditional=True,
)
class Planar(Bijector):
    r"""Planar flow ``y = f(x | c) = x + \hat u \tanh(w^\top x + b)``, with an exact inverse.

    :math:`\hat u = u + (m(w^\top u) - w^\top u)\, w / \|w\|^2` with
    :math:`m(a) = -1 + \mathrm{softplus}(a)` keeps :math:`w^\top \hat u > -1`, so ``f`` is
    invertible for any parameters. :math:`\log|\det| = \log(1 + w^\top \hat u\,
    \mathrm{sech}^2(w^\top x + b))`. Inverse: :math:`s = w^\top x + b` solves the increasing
    scalar equation :math:`s + w^\top \hat u \tanh(s) = w^\top y + b`, then
    :math:`x = y - \hat u \tanh(s)`. (In floating point the margin
    :math:`w^\top \hat u + 1 = \mathrm{softplus}(w^\top u)` rounds to 0 once
    :math:`w^\top u < -37` in float64, -17 in float32: the map then has a point of zero slope.)

    Amortized (``context_size > 0``): ``(u, w, b)`` are per sample,
    :math:`(u, w, b) + W c` (:class:`ContextOffsets`), and the constraint applies to each.

    Shapes: ``x``, ``y`` are ``(*batch, D)``, ``context`` is ``(*batch, context_size)``,
    ``log_det`` is ``(*batch,)``.

    Arguments:
        input_size: number of features ``D``.
        tol: tolerance of the inverse (default: 1e-12 in float64, about 1e-6 in float32).
        max_iter: iteration limit of the inverse.
        seed: seed of the initial ``u`` and ``w``.
        context_size: size of the context (0 for an unconditional layer).

    References:
        Variational Inference with Normalizing Flows (Rezende & Mohamed, 2015,
        arXiv:1505.05770).

    Example:
        >>> layer = Planar(3).double()
        >>> x = torch.randn(5, 3, dtype=torch.float64)
        >>> y, log_det = layer(x)
        >>> bool((layer.inverse(y) - x).abs().max() < 1e-10)
        True
        >>> amortized = Planar(3, context_size=2).double()
        >>> amortized(x, torch.randn(5, 2, dtype=torch.float64))[0].shape
        torch.Size([5, 3])
    """

    def __init__(
        self,
        input_size: int,
        tol: float | None = None,
        max_iter: int = 100,
        seed: int = 0,
        context_size: int = 0,
    ) -> None:
        super().__init__(input_size, context_size)
        _check_solver(tol, max_iter)
        self.tol, self.max_iter = tol, max_iter
        g = torch.Generator().manual_seed(seed)
        self.u = nn.Parameter(torch.randn(input_size, generator=g) / input_size**0.5)
        self.w = nn.Parameter(torch.randn(input_size, generator=g) / input_size**0.5)
        self.b = nn.Parameter(torch.zeros(()))
        self.offsets = _offsets(context_size, {"u": input_size, "w": input_size, "b": 1})

    def params(self, context: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(u, w, b)`` with ``u`` constrained: ``(D,), (D,), ()``, or per sample
        ``(*batch, D), (*batch, D), (*batch,)`` for an amortized layer."""
        u, w, b = self.u, self.w, self.b
        if self.offsets is not None and context is not None:
            d = self.offsets(context)
            u, w, b = u + d["u"], w + d["w"], b + d["b"].squeeze(-1)
        return planar_constrain(u, w), w, b

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return planar_forward(x, *self.params(context))

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return planar_inverse(y, *self.params(context), self.tol, self.max_iter)


@register(
    "layer",
    example=lambda context_size: Radial(4, seed=1, context_size=context_size),
    conditional=True,
)
class Radial(Bijector):
    r"""Radial flow :math:`y = f(x | c) = x + \frac{\beta}{\alpha + r}(x - x_0)`, ``r = |x - x_0|``.

    :math:`\alpha = \mathrm{softplus}(\cdot) > 0` and :math:`\beta = -\alpha +
    \mathrm{softplus}(\cdot) > -\alpha` keep ``f`` invertible. :math:`\log|\det| =
    (D - 1)\log(1 + \frac{\beta}{\alpha + r}) + \log(1 + \frac{\alpha\beta}{(\alpha + r)^2})`.
    The inverse is exact: the radius solves :math:`\|y - x_0\| = r(1 + \beta/(\alpha + r))`,
    increasing in ``r`` and a quadratic with a closed-form non-negative root, so no
    iteration (and no ``tol``) is needed.

    Amortized (``context_size > 0``): :math:`x_0` and the raw ``alpha``, ``beta`` are per
    sample, offset by :math:`W c` (:class:`ContextOffsets`) before the constraints.

    Shapes: ``x``, ``y`` are ``(*batch, D)``, ``context`` is ``(*batch, context_size)``,
    ``log_det`` is ``(*batch,)``.

    Arguments:
        input_size: number of features ``D``.
        seed: seed of the initial center :math:`x_0`.
        context_size: size of the context (0 for an unconditional layer).

    References:
        Variational Inference with Normalizing Flows (Rezende & Mohamed, 2015,
        arXiv:1505.05770).

    Example:
        >>> layer = Radial(2).double()
        >>> x = torch.randn(5, 2, dtype=torch.float64)
        >>> torch.allclose(layer.inverse(layer(x)[0]), x)
        True
    """

    def __init__(self, input_size: int, seed: int = 0, context_size: int = 0) -> None:
        super().__init__(input_size, context_size)
        g = torch.Generator().manual_seed(seed)
        self.x0 = nn.Parameter(torch.randn(input_size, generator=g))
        self.alpha_raw = nn.Parameter(torch.zeros(()))
        self.beta_raw = nn.Parameter(torch.zeros(()))
        self.offsets = _offsets(context_size, {"x0": input_size, "alpha": 1, "beta": 1})

    def params(self, context: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The constrained ``(x_0, alpha, beta)``: ``(D,), (), ()``, or per sample
        ``(*batch, D), (*batch, 1), (*batch, 1)`` for an amortized layer."""
        x0, alpha_raw, beta_raw = self.x0, self.alpha_raw, self.beta_raw
        if self.offsets is not None and context is not None:
            d = self.offsets(context)
            x0, alpha_raw, beta_raw = x0 + d["x0"], alpha_raw + d["alpha"], beta_raw + d["beta"]
        alpha = F.softplus(alpha_raw)
        return x0, alpha, F.softplus(beta_raw) - alpha

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return radial_forward(x, *self.params(context))

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return radial_inverse(y, *self.params(context))


class _OrthogonalColumns(nn.Module):
    """``Q (D, M)`` with orthonormal columns through ``parametrizations.orthogonal``.

    The matrix-exponential map without trivialization: ``Q`` is the first ``M`` columns of
    ``exp(A)``, ``A`` skew-symmetric, orthonormal to the working precision in any dtype,
    with its rows reversed if ``init == "reverse"`` (``J exp(A)``, ``J`` the reversal). The
    raw weight starts random (``init == "random"``: a random rotation) or at zero (``A = 0``:
    ``Q`` starts at the columns of the identity or of ``J``). The map reads only the lower
    triangle of the raw ``(D, M)`` weight, so those ``n_offsets`` entries are what an
    amortized block offsets.
    """

    def __init__(
        self, input_size: int, hidden_size: int, generator: torch.Generator, init: str
    ) -> None:
        super().__init__()
        shape = (input_size, hidden_size)
        raw = torch.randn(shape, generator=generator) if init == "random" else torch.zeros(shape)
        self.weight = nn.Parameter(raw)
        parametrizations.orthogonal(
            self, "weight", orthogonal_map="matrix_exp", use_trivialization=False
        )
        self.shape, self.reverse = shape, init == "reverse"
        self.n_offsets = len(torch.tril_indices(*self.shape)[0])

    def forward(self, offset: Tensor | None = None) -> Tensor:
        if offset is None:
            q = self.weight
        else:
            index = torch.tril_indices(*self.shape, device=offset.device)
            raw = self.parametrizations.weight.original + _scatter(offset, index, self.shape)
            q = self.parametrizations.weight[0](raw)
        return q.flip(-2) if self.reverse else q


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
        self.n_offsets = self.vectors.numel()

    def forward(self, offset: Tensor | None = None) -> Tensor:
        vectors = self.vectors
        if offset is not None:
            vectors = vectors + offset.unflatten(-1, vectors.shape)
        return householder_columns(vectors, self.hidden_size)


class _PermutationColumns(nn.Module):
    """``Q (D, M)``: fixed columns of the identity, in order or reversed (triangular Sylvester)."""

    def __init__(self, input_size: int, hidden_size: int, reverse: bool) -> None:
        super().__init__()
        eye = torch.eye(input_size)
        self.register_buffer("weight", (eye.flip(1) if reverse else eye)[:, :hidden_size])
        self.n_offsets = 0

    def forward(self, offset: Tensor | None = None) -> Tensor:
        return self.weight


Q_FORMS = ("orthogonal", "householder", "identity", "reverse")
#: Starts of a learned ``Q`` or ``W``: a random rotation, or a permutation.
INITS = ("random", "identity", "reverse")


def _check_init(init: str) -> None:
    if init not in INITS:
        raise ValueError(f"expected init in {INITS}, got {init!r}")


@torch.no_grad()
def _start_at_permutation(weight: LUWeight, reverse: bool) -> None:
    """Set ``W = P L U`` to the identity or the reversal: ``P`` that permutation, ``L = U = I``."""
    eye = torch.eye(len(weight.log_diag))
    weight.permutation.copy_(eye.flip(1) if reverse else eye)
    weight.sign.fill_(1.0)
    for factor in (weight.lower, weight.upper, weight.log_diag):
        factor.zero_()


@register(
    "layer",
    example=lambda context_size: SylvesterBlock(
        4, hidden_size=3, seed=1, context_size=context_size
    ),
    conditional=True,
)
class SylvesterBlock(Bijector):
    r"""Sylvester flow block ``y = f(x | c) = x + Q R_2 \tanh(R_1 Q^\top x + b)``, exact inverse.

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

    Where a learned ``Q`` starts matters on data with meaningful coordinates (pixels): a
    random rotation mixes every coordinate into every ``Q``-coordinate, where one ``tanh``
    each cannot shape a pixel's two-mode marginal (ink or background), while a permutation
    start (``init="identity"`` or ``"reverse"``, orthogonal form) begins as a triangular
    block in the data's own coordinates and learns its rotation from there. On the 8x8
    digits, 16 blocks reach 2.10 test bits/dim from a permutation start and 2.25 from a
    random one (``benchmarks/RESULTS.md``).

    Amortized (``context_size > 0``), as in the paper's experiments: ``R_1``, ``R_2``
    (their upper triangles), ``b`` and the raw parameters of ``Q`` (the orthogonal map's
    lower triangle, or the reflection vectors; a permutation stays fixed) are per sample,
    offset by :math:`W c` (:class:`ContextOffsets`) before the constraints, which then hold
    for every context.

    Inverse: the part of ``y`` orthogonal to ``Q``'s columns passes unchanged; in
    Q-coordinates the map is triangular, solved from the last coordinate to the first, each an
    increasing scalar equation (:func:`~torchnf.functional.residual.sylvester_inverse`).

    Shapes: ``x``, ``y`` are ``(*batch, D)``, ``context`` is ``(*batch, context_size)``,
    ``log_det`` is ``(*batch,)``.

    Arguments:
        input_size: number of features ``D``.
        hidden_size: number of columns ``M`` of ``Q``, ``1 <= M <= D`` (default ``D``).
        q: form of ``Q``: ``"orthogonal"``, ``"householder"``, ``"identity"`` or ``"reverse"``.
        n_reflections: number of reflections of the ``"householder"`` form (default ``D``).
        tol: tolerance of the inverse (default: 1e-12 in float64, about 1e-6 in float32).
        max_iter: iteration limit of the inverse, per coordinate.
        seed: seed of the initial ``Q`` (``init="random"``).
        context_size: size of the context (0 for an unconditional block).
        init: start of an orthogonal ``Q``: ``"random"`` (a random rotation drawn from
            ``seed``), ``"identity"`` or ``"reverse"`` (the first ``M`` columns of that
            permutation). The Householder form starts at random rotations; the fixed forms
            ignore it.

    References:
        Sylvester Normalizing Flows for Variational Inference (van den Berg et al., 2018,
        arXiv:1803.05649).

    Example:
        >>> block = SylvesterBlock(4, hidden_size=2, q="householder").double()
        >>> x = torch.randn(5, 4, dtype=torch.float64)
        >>> y, log_det = block(x)
        >>> bool((block.inverse(y) - x).abs().max() < 1e-10)
        True
        >>> amortized = SylvesterBlock(4, q="householder", context_size=3)
        >>> [t.shape for t in amortized.params(torch.randn(5, 3))]
        [torch.Size([5, 4, 4]), torch.Size([5, 4, 4]), torch.Size([5, 4, 4]), torch.Size([5, 4])]
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
        context_size: int = 0,
        init: str = "random",
    ) -> None:
        super().__init__(input_size, context_size)
        _check_init(init)
        hidden_size = input_size if hidden_size is None else hidden_size
        if not 1 <= hidden_size <= input_size:
            raise ValueError(
                f"expected 1 <= hidden_size <= input_size={input_size}, got {hidden_size}"
            )
        _check_solver(tol, max_iter)
        self.hidden_size, self.tol, self.max_iter = hidden_size, tol, max_iter
        g = torch.Generator().manual_seed(seed)
        if q == "orthogonal":
            self.q = _OrthogonalColumns(input_size, hidden_size, g, init)
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
        n_upper = hidden_size * (hidden_size + 1) // 2
        sizes = {"q": self.q.n_offsets, "r1": n_upper, "r2": n_upper, "b": hidden_size}
        self.offsets = _offsets(context_size, {k: n for k, n in sizes.items() if n})

    def params(self, context: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The constrained ``(Q, R_1, R_2, b)``: ``(D, M), (M, M), (M, M), (M,)``, or per
        sample ``(*batch, D, M)``, ... for an amortized block (``Q`` stays shared when it is a
        permutation)."""
        r1, r2, b = self.r1, self.r2, self.b
        if self.offsets is None or context is None:
            return self.q(), *sylvester_triangular(r1, r2, DIAGONAL_LOG_BOUND), b
        d = self.offsets(context)
        m = self.hidden_size
        upper = torch.triu_indices(m, m, device=context.device)
        r1 = r1 + _scatter(d["r1"], upper, (m, m))
        r2 = r2 + _scatter(d["r2"], upper, (m, m))
        q = self.q(d.get("q"))
        return q, *sylvester_triangular(r1, r2, DIAGONAL_LOG_BOUND), b + d["b"]

    def triangular(self, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The constrained upper-triangular ``(R_1, R_2)``, each ``(M, M)`` (per sample
        ``(*batch, M, M)`` for an amortized block)."""
        return self.params(context)[1:3]

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return sylvester_forward(x, *self.params(context))

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return sylvester_inverse(y, *self.params(context), self.tol, self.max_iter)

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
    (``W`` cancels). Starts as the identity (the MADE output is zero-initialized), with
    ``W`` at a random rotation or, with ``init="identity"`` or ``"reverse"``, at that
    permutation (a residual MAF in the data's own coordinates, which then learns ``W``; see
    :class:`SylvesterBlock` on why this matters for pixels).

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
        seed: seed of the initial ``W`` (``init="random"``).
        init: start of ``W``: ``"random"`` (a random rotation drawn from ``seed``),
            ``"identity"`` or ``"reverse"`` (that permutation).

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
        init: str = "random",
    ) -> None:
        super().__init__(input_size, context_size)
        _check_solver(tol, max_iter)
        _check_init(init)
        self.tol, self.max_iter = tol, max_iter
        self.weight = LUWeight(input_size, seed=seed)
        if init != "random":
            _start_at_permutation(self.weight, reverse=init == "reverse")
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
