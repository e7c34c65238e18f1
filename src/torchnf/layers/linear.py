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
    r"""Orthogonal layer ``y = f(x) = H_1 H_2 \cdots H_K x``, a product of reflections.

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
    r"""Activation normalization ``y = f(x) = (x - \mu) e^{-s}``, per feature or per channel.

    For vector events ``(D,)`` there is one ``(\mu, s)`` per feature; for image events
    ``(C, H, W)`` one per channel, shared over pixels. :math:`\log|\det| = -n \sum s` with
    ``n`` the number of pixels (1 for vectors). ``initialize(x)`` sets ``\mu`` and ``e^s``
    to the mean and standard deviation of the batch, so the output is standardized; the
    flag ``initialized`` is saved with the weights.

    Shapes: ``x``, ``y`` are ``(*batch, *event_shape)``, ``log_det`` is ``(*batch,)``.

    Arguments:
        event_shape: ``D`` or ``(C, H, W)``.
        eps: lower bound on the initial standard deviation.

    References:
        Glow: Generative Flow with Invertible 1x1 Convolutions (Kingma & Dhariwal, 2018,
        arXiv:1807.03039).

    Example:
        >>> layer = ActNorm(2)
        >>> x = torch.randn(100, 2) * 10 + 5
        >>> y = layer.initialize(x)
        >>> torch.allclose(y.mean(0), torch.zeros(2), atol=1e-5)
        True
    """

    def __init__(self, event_shape: Shape | int, eps: float = 1e-6) -> None:
        super().__init__(event_shape)
        channels = self.event_shape[0]
        self.loc = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.eps = eps
        self.register_buffer("initialized", torch.tensor(False))

    def _view(self, t: Tensor) -> Tensor:
        # Per-feature parameters broadcast as they are over vector events (no view op).
        return t if self.event_dim == 1 else t.view(-1, *([1] * (self.event_dim - 1)))

    def _initialize(self, x: Tensor, context: Tensor | None) -> None:
        per_channel = x.movedim(x.dim() - self.event_dim, -1).reshape(-1, self.event_shape[0])
        self.loc.copy_(per_channel.mean(0))
        self.log_scale.copy_(per_channel.std(0).clamp_min(self.eps).log())
        self.initialized.fill_(True)

    def _log_det(self, x: Tensor) -> Tensor:
        pixels = math.prod(self.event_shape[1:])
        return (self.log_scale.sum() * -pixels).expand(x.shape[: x.dim() - self.event_dim])

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        y = (x - self._view(self.loc)) * self._view(torch.exp(-self.log_scale))
        return y, self._log_det(x)

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        x = y * self._view(torch.exp(self.log_scale)) + self._view(self.loc)
        return x, -self._log_det(y)
