"""Invertible linear layers: LU and QR forms, Householder reflections, ActNorm."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrizations

from torchnf.core.bijector import Bijector, Shape
from torchnf.core.registry import register
from torchnf.functional.linalg import (
    householder_product,
    reflect,
    solve_lower_right,
    solve_upper_right,
)
from torchnf.functional.statistics import robust_center_scale


class LUWeight(nn.Module):
    r"""An invertible matrix :math:`W = P L U` kept invertible by construction.

    ``P`` is a fixed permutation, ``L`` unit lower-triangular, ``U`` upper-triangular with
    diagonal :math:`\mathrm{sign}_i e^{s_i}` (signs fixed), so
    :math:`\log|\det W| = \sum_i s_i` for any parameter values. Initialized at the LU
    decomposition of a random rotation drawn from ``seed``.

    Arguments:
        n: size of the matrix.
        seed: seed of the initial rotation.

    References:
        Glow: Generative Flow with Invertible 1x1 Convolutions (Kingma & Dhariwal, 2018,
        arXiv:1807.03039).
    """

    def __init__(self, n: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        q = torch.linalg.qr(torch.randn(n, n, generator=g))[0]
        p, lower, upper = torch.linalg.lu(q)
        diag = upper.diagonal()
        self.register_buffer("permutation", p)
        self.register_buffer("sign", torch.sign(diag))
        self.lower = nn.Parameter(lower.tril(-1))
        self.upper = nn.Parameter(upper.triu(1))
        self.log_diag = nn.Parameter(diag.abs().log())

    def factors(self) -> tuple[Tensor, Tensor]:
        """The triangular factors ``(L, U)``."""
        eye = torch.eye(len(self.log_diag), dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower.tril(-1) + eye
        upper = self.upper.triu(1) + torch.diag(self.sign * self.log_diag.exp())
        return lower, upper

    def weight(self) -> Tensor:
        """The matrix ``W`` (n, n)."""
        lower, upper = self.factors()
        return self.permutation @ lower @ upper

    def log_abs_det(self) -> Tensor:
        return self.log_diag.sum()

    def matmul(self, x: Tensor) -> Tensor:
        """Rows ``W x`` for ``x (..., n)``."""
        return x @ self.weight().mT

    def solve(self, y: Tensor) -> Tensor:
        """Rows ``W^{-1} y`` for ``y (..., n)`` by two triangular solves."""
        lower, upper = self.factors()
        return solve_upper_right(solve_lower_right(y @ self.permutation, lower), upper)


class QRWeight(nn.Module):
    r"""An invertible matrix :math:`W = Q R` kept invertible by construction.

    ``Q`` is orthogonal through :func:`torch.nn.utils.parametrizations.orthogonal` (the
    exponential of a skew-symmetric matrix); ``R`` is
    upper-triangular with diagonal :math:`e^{s_i}`, so :math:`\log|\det W| = \sum_i s_i`.
    Initialized at a random rotation drawn from ``seed`` (``R = I``).

    Arguments:
        n: size of the matrix.
        seed: seed of the initial rotation.

    References:
        Emerging Convolutions for Generative Normalizing Flows (Hoogeboom et al., 2019,
        arXiv:1901.11137), which introduced the QR form of the 1x1 convolution.
    """

    def __init__(self, n: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.q = nn.Parameter(torch.randn(n, n, generator=g))
        # Q = exp(A - A^T) computed in the parameters' dtype: exactly orthogonal in float64 too
        # (the default trivialization keeps a float32 base that float64 would inherit).
        parametrizations.orthogonal(
            self, "q", orthogonal_map="matrix_exp", use_trivialization=False
        )
        self.upper = nn.Parameter(torch.zeros(n, n))
        self.log_diag = nn.Parameter(torch.zeros(n))

    def r(self) -> Tensor:
        return self.upper.triu(1) + torch.diag(self.log_diag.exp())

    def weight(self) -> Tensor:
        """The matrix ``W`` (n, n)."""
        return self.q @ self.r()

    def log_abs_det(self) -> Tensor:
        return self.log_diag.sum()

    def matmul(self, x: Tensor) -> Tensor:
        """Rows ``W x`` for ``x (..., n)``."""
        return x @ self.weight().mT

    def solve(self, y: Tensor) -> Tensor:
        """Rows ``W^{-1} y = R^{-1} Q^T y`` for ``y (..., n)``."""
        return solve_upper_right(y @ self.q, self.r())


class _MatrixLinear(Bijector):
    """``y = W x`` on vectors for a weight module with ``matmul``/``solve``/``log_abs_det``."""

    def __init__(self, weight: LUWeight | QRWeight) -> None:
        super().__init__(len(weight.log_diag))
        self.matrix = weight

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self.matrix.matmul(x), self.matrix.log_abs_det().expand(x.shape[:-1])

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self.matrix.solve(y), (-self.matrix.log_abs_det()).expand(y.shape[:-1])


@register("layer", example=lambda context_size: LULinear(4))
class LULinear(_MatrixLinear):
    r"""Invertible linear layer ``y = f(x) = W x`` with :math:`W = P L U` (see :class:`LUWeight`).

    :math:`\log|\det| = \sum_i s_i`; the inverse is two triangular solves.
    Shapes: ``x``, ``y`` are ``(*batch, D)``, ``log_det`` is ``(*batch,)``.

    Arguments:
        input_size: number of features ``D``.
        seed: seed of the initial rotation.

    Example:
        >>> layer = LULinear(3)
        >>> x = torch.randn(5, 3)
        >>> torch.allclose(layer.inverse(layer(x)[0]), x, atol=1e-5)
        True
    """

    def __init__(self, input_size: int, seed: int = 0) -> None:
        super().__init__(LUWeight(input_size, seed))


@register("layer", example=lambda context_size: QRLinear(4))
class QRLinear(_MatrixLinear):
    r"""Invertible linear layer ``y = f(x) = W x`` with :math:`W = Q R` (see :class:`QRWeight`).

    :math:`\log|\det| = \sum_i s_i`; the inverse is :math:`R^{-1} Q^\top y`.
    Shapes: ``x``, ``y`` are ``(*batch, D)``, ``log_det`` is ``(*batch,)``.

    Arguments:
        input_size: number of features ``D``.
        seed: seed of the initial rotation.

    Example:
        >>> layer = QRLinear(3)
        >>> x = torch.randn(5, 3)
        >>> torch.allclose(layer.inverse(layer(x)[0]), x, atol=1e-5)
        True
    """

    def __init__(self, input_size: int, seed: int = 0) -> None:
        super().__init__(QRWeight(input_size, seed))


@register("layer", example=lambda context_size: Householder(4, n_reflections=3))
class Householder(Bijector):
    r"""Orthogonal layer :math:`y = f(x) = H_1 H_2 \cdots H_K x`, a product of reflections.

    :math:`H_k = I - 2 v_k v_k^\top / \|v_k\|^2`; volume preserving (``log_det = 0``), and
    each reflection is its own inverse. Shapes: ``x``, ``y`` are ``(*batch, D)``.

    Arguments:
        input_size: number of features ``D``.
        n_reflections: number of reflections ``K``.
        seed: seed of the initial vectors.

    References:
        Improving Variational Auto-Encoders using Householder Flow (Tomczak & Welling, 2016,
        arXiv:1611.09630).

    Example:
        >>> layer = Householder(3, n_reflections=2)
        >>> x = torch.randn(4, 3)
        >>> y, log_det = layer(x)
        >>> torch.allclose(y.norm(dim=-1), x.norm(dim=-1)), log_det
        (True, tensor([0., 0., 0., 0.]))
    """

    def __init__(self, input_size: int, n_reflections: int = 2, seed: int = 0) -> None:
        super().__init__(input_size)
        if n_reflections < 1:
            raise ValueError(f"expected n_reflections >= 1, got {n_reflections}")
        g = torch.Generator().manual_seed(seed)
        self.vectors = nn.Parameter(torch.randn(n_reflections, input_size, generator=g))

    def matrix(self) -> Tensor:
        """The orthogonal matrix ``(D, D)``."""
        return householder_product(self.vectors)

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        for v in self.vectors.flip(0):
            x = reflect(x, v)
        return x, x.new_zeros(x.shape[:-1])

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        for v in self.vectors:
            y = reflect(y, v)
        return y, y.new_zeros(y.shape[:-1])


@register("layer", example=lambda context_size: ActNorm(3))
class ActNorm(Bijector):
    r"""Activation normalization ``y = f(x) = ((x - m) / s) e^{-a} - b``, per feature or channel.

    ``m`` (``center``) and ``s > 0`` (``scale``, stored as ``log_inv_scale`` :math:`= -\log s`)
    are buffers set by :meth:`initialize` from a batch; ``a`` (``log_scale``) and ``b``
    (``loc``) are the learned parameters, zero after initialization. They live in
    standardized units, so they are O(1) and Adam's steps mean
    the same whatever the location and scale of the data (1e-8 or 1e8 alike), while the
    output of a fresh initialization is standardized. Before initialization the layer is the
    identity (``m = 0``, ``s = 1``).

    For vector events ``(D,)`` there is one ``(m, s, b, a)`` per feature; for image events
    ``(C, H, W)`` one per channel, shared over the ``n = H W`` pixels (``n = 1`` for vectors).
    :math:`\log|\det| = -n \sum_i (\log s_i + a_i)`, exact; the inverse
    ``x = m + (y + b) / (e^{-a} / s)`` is exact too (it divides by the factor the forward
    multiplies by). Both directions take two element-wise passes
    over the data and a handful of per-feature operations (the step's kernel count matters on
    a GPU).

    Initialization is robust to a few gross outliers (in the initialization batch too) and
    agrees with the mean and standard deviation on clean data. Each feature (each channel's
    values over the batch and pixels) is winsorized at :math:`\mathrm{median} \pm 5 r`, with
    ``r`` half the width of its central 68.27% interval, :math:`(q_{84.13\%} - q_{15.87\%}) / 2`
    (the standard deviation for Gaussian data, barely moved by outliers while they are under
    15.87% of the batch per tail); ``m`` and ``s`` are the mean and standard deviation of the
    winsorized values. So the bulk of the data gets unit standard deviation and outliers stay
    far out, each counting as a point at ``5 r``: with plain statistics one outlier at 1000
    standard deviations in a batch of 256 makes ``s`` 60 times too large, crushing every other
    point towards 0. Unlike a median and interquartile range, this leaves clean skewed or
    multimodal data standardized as by the mean and standard deviation, which trains faster.
    Where ``r`` is 0 (over 68% of a feature is one value, e.g. a discrete feature) the standard
    deviation replaces it. The relative lower bound ``s >= eps |m|`` stops rounding noise from
    being amplified and never swamps data of a tiny scale (an absolute bound would at 1e-8); a
    feature that is 0 everywhere gets ``s = 1``. The buffers and the flag ``initialized`` are
    saved with the weights.

    Shapes: ``x``, ``y`` are ``(*batch, *event_shape)``, ``log_det`` is ``(*batch,)``.

    Arguments:
        event_shape: ``D`` or ``(C, H, W)``.
        eps: relative lower bound on the initial scale, as a fraction of ``|m|``
            (default: the machine epsilon of the batch's dtype, about 1.2e-7 in float32).

    References:
        Glow: Generative Flow with Invertible 1x1 Convolutions (Kingma & Dhariwal, 2018,
        arXiv:1807.03039), which initializes with the mean and standard deviation instead.

    Example:
        >>> layer = ActNorm(2)
        >>> g = torch.Generator().manual_seed(0)
        >>> x = 3e-8 + 1e-8 * torch.randn(1000, 2, generator=g)  # data of scale 1e-8
        >>> x[0] = 1.0  # and a gross outlier
        >>> y = layer.initialize(x)
        >>> torch.allclose(y[1:].std(0), torch.ones(2), atol=0.02)  # the bulk is standardized
        True
        >>> torch.allclose(layer.inverse(y), x, rtol=1e-5, atol=0)
        True
    """

    def __init__(self, event_shape: Shape | int, eps: float | None = None) -> None:
        super().__init__(event_shape)
        channels = self.event_shape[0]
        self.register_buffer("center", torch.zeros(channels))
        self.register_buffer("log_inv_scale", torch.zeros(channels))
        self.loc = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.eps = eps
        self.register_buffer("initialized", torch.tensor(False))

    @property
    def scale(self) -> Tensor:
        """The initial scale ``s`` per feature or channel, ``(C,)``."""
        return self.log_inv_scale.neg().exp()

    def _view(self, t: Tensor) -> Tensor:
        # Per-feature values broadcast as they are over vector events (no view op).
        return t if self.event_dim == 1 else t.view(-1, *([1] * (self.event_dim - 1)))

    def _initialize(self, x: Tensor, context: Tensor | None) -> None:
        per_channel = x.movedim(x.dim() - self.event_dim, -1).reshape(-1, self.event_shape[0])
        center, scale = robust_center_scale(per_channel, self.eps)
        self.center.copy_(center)
        self.log_inv_scale.copy_(scale.log().neg())
        self.loc.zero_()
        self.log_scale.zero_()
        self.initialized.fill_(True)

    def _log_factor(self) -> Tensor:
        r""":math:`-(\log s + a)`, the log of the factor on ``x - m``, ``(C,)``."""
        return self.log_inv_scale - self.log_scale

    def _log_det(self, log_factor: Tensor, x: Tensor) -> Tensor:
        pixels = math.prod(self.event_shape[1:])
        total = log_factor.sum() if pixels == 1 else log_factor.sum() * pixels
        return total.expand(x.shape[: x.dim() - self.event_dim])

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        log_factor = self._log_factor()
        y = torch.mul(x - self._view(self.center), self._view(log_factor.exp()))
        return y.sub_(self._view(self.loc)), self._log_det(log_factor, x)

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        log_factor = self._log_factor()
        shifted = y + self._view(self.loc)
        x = torch.addcdiv(self._view(self.center), shifted, self._view(log_factor.exp()))
        return x, -self._log_det(log_factor, y)


@register("layer", example=lambda context_size: TriangularAffine(4))
class TriangularAffine(Bijector):
    r"""Triangular affine layer ``y = f(x) = W x + b`` with ``W`` triangular, positive diagonal.

    ``W`` is lower-triangular (upper-triangular with ``upper=True``) with diagonal
    :math:`e^{s_i}`; its strictly triangular entries and ``s`` and ``b`` are free parameters,
    so every optimizer step keeps ``W`` invertible.
    :math:`\log|\det \partial f / \partial x| = \sum_i s_i`; the exact inverse
    :math:`x = W^{-1}(y - b)` is one triangular solve. Starts as the identity. Alternate
    ``upper`` between consecutive layers: a chain of lower and upper ones reaches any
    invertible linear map with an LU decomposition.

    Shapes: ``x``, ``y`` are ``(*batch, D)``, ``log_det`` is ``(*batch,)``.

    Arguments:
        input_size: number of features ``D``.
        upper: an upper-triangular ``W`` instead of a lower-triangular one.

    References:
        Improved Variational Inference with Inverse Autoregressive Flow (Kingma et al., 2016,
        arXiv:1606.04934), whose linear IAF step is this map; chains of triangular layers
        benchmarked by KL divergence are the demonstration of the seed 002 project.

    Example:
        >>> layer = TriangularAffine(3, upper=True)
        >>> x = torch.randn(5, 3)
        >>> y, log_det = layer(x)
        >>> torch.allclose(layer.inverse(y), x, atol=1e-6), log_det.shape
        (True, torch.Size([5]))
    """

    def __init__(self, input_size: int, upper: bool = False) -> None:
        super().__init__(input_size)
        self.upper = upper
        rows, cols = torch.tril_indices(input_size, input_size, offset=-1)
        if upper:
            rows, cols = cols, rows
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        self.off_diagonal = nn.Parameter(torch.zeros(len(rows)))
        self.log_diag = nn.Parameter(torch.zeros(input_size))
        self.bias = nn.Parameter(torch.zeros(input_size))

    def weight(self) -> Tensor:
        """The triangular matrix ``W`` ``(D, D)``."""
        w = torch.diag(self.log_diag.exp())
        return w.index_put((self.rows, self.cols), self.off_diagonal)

    def _log_det(self, x: Tensor) -> Tensor:
        return self.log_diag.sum().expand(x.shape[:-1])

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight().mT).view(
            x.shape
        ), self._log_det(x)

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        w = self.weight()
        shifted = y - self.bias
        x = solve_upper_right(shifted, w) if self.upper else solve_lower_right(shifted, w)
        return x, -self._log_det(y)

    def extra_repr(self) -> str:
        return f"{self.event_shape[0]}, upper={self.upper}"
