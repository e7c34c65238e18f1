r"""A neural spline flow for data with angle columns: circular splines on the torus."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torchnf.core.chain import Chain
from torchnf.core.flow import Flow
from torchnf.core.registry import register
from torchnf.distributions.base import BaseDistribution, ProductBase, StandardNormal, Uniform
from torchnf.layers.circular import CircularActNorm, CircularSplineCoupling, circular_columns


@register(
    "model",
    example=lambda context_size: CircularNSF(
        3, circular=[0], n_layers=2, hidden_sizes=(8,), n_bins=4, context_size=context_size
    ),
    conditional=True,
)
class CircularNSF(Flow):
    r"""Neural spline flow on :math:`T^k \times \mathbb{R}^{D-k}`, ``z = f(x | c)``: angle
    columns through circular splines, real columns through NSF's splines.

    :math:`f = S_L \circ \cdots \circ S_1 \circ A`: ``A`` a :class:`CircularActNorm` that
    ``flow.initialize(x)`` (called by ``fit``) sets to standardize the real columns, the
    identity on the angles (absent when every column is an angle); each ``S_l`` a
    :class:`CircularSplineCoupling` whose alternating mask keeps the even features, then the
    odd ones: a transformed angle
    :math:`\theta_i` goes through a circular spline (:class:`CircularRQSTransformer`: a
    rational-quadratic spline on :math:`[-\pi, \pi]` with its ends pinned and one derivative
    at both, then a learned rotation mod :math:`2\pi`), a transformed real feature through the
    spline of :class:`~torchnf.models.NSF` (an affine map, then a spline on
    ``[-tail_bound, tail_bound]``), and the conditioner sees each kept angle as
    :math:`(\cos\theta, \sin\theta)`. The base is :math:`U(-\pi, \pi)` on the angle columns
    and :math:`N(0, 1)` on the others (:class:`~torchnf.distributions.ProductBase`), so

    .. math::

        \log p(x | c) = -k \log 2\pi + \log N(z_{real}; 0, I) + \log|\det \partial f/\partial x|

    is continuous and periodic in every angle: the density on the torus has no seam at
    :math:`\pm\pi`, and samples stay in :math:`[-\pi, \pi)` on the angle columns. Angles are
    never rescaled (that would break periodicity); they are read mod :math:`2\pi`, and data
    should hold them in radians in :math:`[-\pi, \pi)` (the command refuses others with
    :func:`~torchnf.layers.circular.check_angles`).

    Shapes: ``x`` is ``(*batch, input_size)``, ``context`` is ``(*batch, context_size)``.

    Arguments:
        input_size: number of features ``D >= 2``.
        circular: the angle columns (a list, as JSON gives it); ``None``: every column.
        n_layers: number of coupling layers.
        hidden_sizes: widths of each conditioner MLP.
        n_bins: number of bins of every spline.
        tail_bound: half-width of the real features' spline interval.
        context_size: size of the context (0 for an unconditional flow).

    References:
        Rezende, Papamakarios, Racanière, Albergo, Kanwar, Shanahan, Cranmer, "Normalizing
        Flows on Tori and Spheres", 2020, arXiv:2002.02428.
        Durkan, Bekasov, Murray, Papamakarios, "Neural Spline Flows", 2019, arXiv:1906.04032.

    Example:
        >>> flow = CircularNSF(2, circular=[0], n_layers=2, hidden_sizes=(16,))
        >>> x = flow.sample(500)
        >>> bool((x[:, 0].abs() <= math.pi).all()), flow.log_prob(x).shape
        (True, torch.Size([500]))
    """

    def __init__(
        self,
        input_size: int,
        circular: Sequence[int] | None = None,
        n_layers: int = 4,
        hidden_sizes: Sequence[int] = (64, 64),
        n_bins: int = 8,
        tail_bound: float = 5.0,
        context_size: int = 0,
    ) -> None:
        columns = circular_columns(circular, input_size)
        layers = [
            CircularSplineCoupling(
                input_size,
                columns,
                parity=i % 2,
                hidden_sizes=hidden_sizes,
                context_size=context_size,
                n_bins=n_bins,
                tail_bound=tail_bound,
            )
            for i in range(n_layers)
        ]
        if len(columns) < input_size:  # standardize the real columns
            layers.insert(0, CircularActNorm(input_size, columns))
        super().__init__(Chain(*layers), torus_base(input_size, columns))
        self.circular = columns


def torus_base(input_size: int, circular: Sequence[int]) -> BaseDistribution:
    r""":math:`U(-\pi, \pi)` on the ``circular`` columns, :math:`N(0, 1)` on the others.

    Example:
        >>> torus_base(2, [0]).log_prob(torch.zeros(2))
        tensor(-2.7568)
    """
    reals = [i for i in range(input_size) if i not in circular]
    parts = [(Uniform(len(circular), -math.pi, math.pi), list(circular))] if circular else []
    parts += [(StandardNormal(len(reals)), reals)] if reals else []
    return ProductBase(*zip(*parts, strict=True))
