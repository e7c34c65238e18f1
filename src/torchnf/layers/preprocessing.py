"""Preprocessing of discrete data as bijectors, so log-likelihoods stay exact.

Discrete pixels ``x in {0, ..., K - 1}`` are *dequantized* by adding uniform noise,
``v = x + u`` with ``u ~ U[0, 1)^D`` (:func:`dequantize`); a density ``p`` of ``v`` then gives
:math:`\\log P(x) \\ge E_u[\\log p(x + u)]` (Theis et al., 2016, arXiv:1511.01844). The flow's
first layers map ``v`` to the reals, :class:`Rescale` to the unit cube and
:class:`~torchnf.layers.Logit` to R, and their log-dets are part of the flow's, so
``flow.log_prob(v)`` is the density on the original discrete scale (bins of width 1) and
:func:`torchnf.diagnostics.bits_per_dim` needs no correction.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import constraints

from torchnf.core.bijector import Bijector, Shape
from torchnf.core.chain import Chain
from torchnf.core.registry import register
from torchnf.layers.elementwise import Logit


def dequantize(x: Tensor, generator: torch.Generator | None = None, n_copies: int = 1) -> Tensor:
    """Uniform dequantization ``x + u``, ``u ~ U[0, 1)`` of the same shape as ``x``.

    Arguments:
        x: discrete values ``(N, ...)`` (any floating dtype), e.g. pixels in
            ``{0, ..., K - 1}``.
        generator: source of the noise.
        n_copies: stack this many independently dequantized copies, ``(n_copies * N, ...)``
            (a fixed training set that still sees several noise draws per point).

    Example:
        >>> v = dequantize(torch.tensor([0.0, 3.0]))
        >>> bool(((v >= torch.tensor([0.0, 3.0])) & (v < torch.tensor([1.0, 4.0]))).all())
        True
    """
    if not torch.is_floating_point(x):
        raise ValueError(f"expected a floating-point tensor x, got dtype {x.dtype}")
    if n_copies < 1:
        raise ValueError(f"expected n_copies >= 1, got {n_copies}")
    x = x.repeat(n_copies, *([1] * (x.dim() - 1))) if n_copies > 1 else x
    return x + torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)


@register("layer", example=lambda context_size: Rescale((1, 2, 2), 0.25, 0.5))
class Rescale(Bijector):
    r"""Fixed elementwise affine map ``y = f(x) = a x + b``; :math:`\log|\det| = D \log|a|`.

    Shapes: ``x`` and ``y`` are ``(*batch, *event_shape)``, ``log_det`` is ``(*batch,)``.

    Arguments:
        event_shape: ``D`` or the event shape, e.g. ``(C, H, W)``.
        scale: ``a != 0``.
        shift: ``b``.

    Example:
        >>> layer = Rescale(3, scale=0.5)
        >>> layer(torch.ones(1, 3))
        (tensor([[0.5000, 0.5000, 0.5000]]), tensor([-2.0794]))
    """

    def __init__(self, event_shape: Shape | int, scale: float, shift: float = 0.0) -> None:
        super().__init__(event_shape)
        if scale == 0 or not math.isfinite(scale) or not math.isfinite(shift):
            raise ValueError(
                f"expected a finite non-zero scale and finite shift, got {scale}, {shift}"
            )
        self.scale, self.shift = float(scale), float(shift)

    def _log_det(self, x: Tensor, sign: float) -> Tensor:
        value = sign * self.input_size * math.log(abs(self.scale))
        return x.new_full(x.shape[: x.dim() - self.event_dim], value)

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return x * self.scale + self.shift, self._log_det(x, 1.0)

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return (y - self.shift) / self.scale, self._log_det(y, -1.0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale}, shift={self.shift}"


@register("layer", example=lambda context_size: LogitPreprocessing((1, 2, 2), n_values=4))
class LogitPreprocessing(Chain):
    r"""Dequantized pixels to logits: ``y = f(x) = logit(alpha + (1 - 2 alpha) x / K)``.

    The composition ``Logit(alpha) o Rescale(1 / K)`` of RealNVP's preprocessing, from the
    dequantized range :math:`[0, K]^D` to R^D, with
    :math:`\log|\det| = -D\log K + \sum_i \log(1 - 2\alpha) - \log p_i - \log(1 - p_i)`,
    :math:`p = \alpha + (1 - 2\alpha) x / K`. Put it first in a flow on dequantized pixels so
    ``log_prob`` is the density on the original discrete scale.

    Shapes: ``x`` and ``y`` are ``(*batch, *event_shape)``, ``log_det`` is ``(*batch,)``.

    Arguments:
        event_shape: e.g. ``(C, H, W)``.
        n_values: number of discrete values ``K`` (256 for 8-bit images, 17 for the digits).
        alpha: squeeze keeping the logits finite at the edges, ``0 <= alpha < 0.5``.

    References:
        Density estimation using Real NVP (Dinh et al., 2017, arXiv:1605.08803), section 4.1.

    Example:
        >>> layer = LogitPreprocessing((1, 2, 2), n_values=256)
        >>> x = dequantize(torch.randint(0, 256, (3, 1, 2, 2)).float())
        >>> y, log_det = layer(x)
        >>> torch.allclose(layer.inverse(y), x, atol=1e-3)
        True
    """

    def __init__(self, event_shape: Shape | int, n_values: int = 256, alpha: float = 0.05) -> None:
        if n_values < 2:
            raise ValueError(f"expected n_values >= 2, got {n_values}")
        super().__init__(Rescale(event_shape, 1 / n_values), Logit(event_shape, alpha))
        self.n_values = int(n_values)
        self.domain = constraints.interval(0.0, float(n_values))
