"""Invertible elementwise activations: softlog, softsquare, sigmoid and logit.

Each acts on events of any shape (vectors ``(D,)`` or images ``(C, H, W)``) and sums its
elementwise log-derivative over the event dimensions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import constraints

from torchnf.core.bijector import Bijector, Shape
from torchnf.core.registry import register
from torchnf.functional.elementwise import (
    logit,
    logit_inverse,
    softlog,
    softlog_inverse,
    softsquare,
    softsquare_inverse,
)


class Elementwise(Bijector):
    """Base class of elementwise bijectors: sums the log-derivatives over the event dims."""

    def __init__(self, event_shape: Shape | int) -> None:
        super().__init__(event_shape)

    def _sum(self, out: Tensor, log_derivative: Tensor) -> tuple[Tensor, Tensor]:
        return out, log_derivative.flatten(out.dim() - self.event_dim).sum(-1)


@register("layer", example=lambda context_size: Softlog(4))
class Softlog(Elementwise):
    r"""Softlog ``y = f(x) = sign(x) log(1 + |x|)``, elementwise.

    Compresses heavy tails (logarithmic growth) and is the identity to first order at 0.
    :math:`\log|\det| = -\sum_i \log(1 + |x_i|)`; inverse
    :math:`x = \mathrm{sign}(y)(e^{|y|} - 1)`.

    Shapes: ``x``, ``y`` are ``(*batch, *event_shape)``, ``log_det`` is ``(*batch,)``.

    Arguments:
        event_shape: ``D`` or the event shape, e.g. ``(C, H, W)``.

    References:
        No single source: a standard closed-form invertible activation.

    Example:
        >>> layer = Softlog(2)
        >>> layer(torch.tensor([[0.0, -(torch.e - 1)]]))[0]
        tensor([[ 0., -1.]])
    """

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._sum(*softlog(x))

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._sum(*softlog_inverse(y))


@register("layer", example=lambda context_size: Softsquare(4))
class Softsquare(Elementwise):
    r"""Softsquare ``y = f(x) = a x + b sign(x) x^2``, elementwise, with learnable ``a, b``.

    One :math:`a = e^{\cdot} > 0` and :math:`b = \mathrm{softplus}(\cdot) \ge 0` per event
    element keep ``f`` strictly increasing; it expands tails (quadratic growth), the inverse
    of softlog's role. It starts near the identity (:math:`a = 1`, :math:`b =
    \mathrm{softplus}(-4) \approx 0.018`), as a layer in a deep chain should.
    :math:`\log|\det| = \sum_i \log(a_i + 2 b_i |x_i|)`; the inverse is the
    closed-form root :math:`|x| = 2|y| / (a + \sqrt{a^2 + 4 b |y|})`.

    Shapes: ``x``, ``y`` are ``(*batch, *event_shape)``, ``log_det`` is ``(*batch,)``.

    Arguments:
        event_shape: ``D`` or the event shape, e.g. ``(C, H, W)``.

    References:
        No single source: a standard closed-form invertible activation.

    Example:
        >>> layer = Softsquare(3)
        >>> x = torch.randn(4, 3)
        >>> torch.allclose(layer.inverse(layer(x)[0]), x, atol=1e-6)
        True
    """

    def __init__(self, event_shape: Shape | int) -> None:
        super().__init__(event_shape)
        self.log_a = nn.Parameter(torch.zeros(self.event_shape))
        self.b_raw = nn.Parameter(torch.full(self.event_shape, -4.0))

    def _coefficients(self) -> tuple[Tensor, Tensor]:
        return self.log_a.exp(), F.softplus(self.b_raw)

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._sum(*softsquare(x, *self._coefficients()))

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._sum(*softsquare_inverse(y, *self._coefficients()))


@register("layer", example=lambda context_size: Sigmoid(4))
class Sigmoid(Elementwise):
    r"""Logistic sigmoid ``y = f(x) = 1 / (1 + e^{-x})``, elementwise, from R to (0, 1).

    :math:`\log|\det| = \sum_i \log\sigma(x_i) + \log\sigma(-x_i)`; the inverse is
    :class:`Logit`. ``domain`` is the reals, ``codomain`` the unit interval.

    Shapes: ``x``, ``y`` are ``(*batch, *event_shape)``, ``log_det`` is ``(*batch,)``.

    Arguments:
        event_shape: ``D`` or the event shape, e.g. ``(C, H, W)``.

    References:
        Density estimation using Real NVP (Dinh et al., 2017, arXiv:1605.08803), which maps
        bounded data through a logit.

    Example:
        >>> Sigmoid(2)(torch.zeros(1, 2))
        (tensor([[0.5000, 0.5000]]), tensor([-2.7726]))
    """

    codomain = constraints.unit_interval

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._sum(*logit_inverse(x))

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._sum(*logit(y))


@register("layer", example=lambda context_size: Logit(4, alpha=0.05))
class Logit(Elementwise):
    r"""Logit ``y = f(x) = logit(alpha + (1 - 2 alpha) x)``, elementwise, from [0, 1] to R.

    The squeeze by ``alpha`` keeps data at 0 or 1 (pixels) finite, as in RealNVP's
    preprocessing. :math:`\log|\det| = \sum_i \log(1 - 2\alpha) - \log p_i - \log(1 - p_i)`
    with :math:`p = \alpha + (1 - 2\alpha) x`; the inverse is
    :math:`x = (\sigma(y) - \alpha)/(1 - 2\alpha)`. ``domain`` is the unit interval;
    ``codomain`` the reals, or :math:`[\mathrm{logit}(\alpha), \mathrm{logit}(1 - \alpha)]`
    when :math:`\alpha > 0`.

    Shapes: ``x``, ``y`` are ``(*batch, *event_shape)``, ``log_det`` is ``(*batch,)``.

    Arguments:
        event_shape: ``D`` or the event shape, e.g. ``(C, H, W)``.
        alpha: squeeze, ``0 <= alpha < 0.5`` (0 for the plain logit on (0, 1)).

    References:
        Density estimation using Real NVP (Dinh et al., 2017, arXiv:1605.08803).

    Example:
        >>> layer = Logit((1, 2, 2), alpha=0.05)
        >>> y, log_det = layer(torch.rand(3, 1, 2, 2))
        >>> y.shape, log_det.shape
        (torch.Size([3, 1, 2, 2]), torch.Size([3]))
    """

    domain = constraints.unit_interval

    def __init__(self, event_shape: Shape | int, alpha: float = 0.0) -> None:
        super().__init__(event_shape)
        if not 0 <= alpha < 0.5:
            raise ValueError(f"expected 0 <= alpha < 0.5, got {alpha}")
        self.alpha = float(alpha)
        if alpha > 0:
            bound = math.log(alpha) - math.log1p(-alpha)
            self.codomain = constraints.interval(bound, -bound)

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._sum(*logit(x, self.alpha))

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._sum(*logit_inverse(y, self.alpha))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, alpha={self.alpha}"
