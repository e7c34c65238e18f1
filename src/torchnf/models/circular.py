r"""A neural spline flow for data with angle columns: circular splines on the torus."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

from torchnf.core.bijector import Bijector
from torchnf.core.chain import Chain
from torchnf.core.flow import Flow
from torchnf.core.registry import register
from torchnf.distributions.base import BaseDistribution, ProductBase, StandardNormal, Uniform
from torchnf.layers.circular import (
    CircularActNorm,
    CircularSplineAutoregressive,
    CircularSplineCoupling,
    circular_columns,
    torus_constraint,
)
from torchnf.layers.permutation import Reverse


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
    :math:`(\cos\theta, \sin\theta)`. With ``autoregressive=True`` each ``S_l`` is instead
    an autoregressive layer (``torchnf.layers.circular.CircularSplineAutoregressive``):
    :math:`y_i = \tau_i(x_i; g_i(x_{<i}, c))` with the same transformer :math:`\tau_i` on every
    feature (circular spline or NSF's), and a :class:`~torchnf.nets.made.MADE` conditioner
    that reads each angle :math:`x_j` as the two inputs :math:`(\cos x_j, \sin x_j)`, both of
    feature ``j``'s degree (the MADE's ``input_map``), so :math:`g_i` is continuous and
    periodic in every angle and still sees :math:`x_{<i}` alone; the features are reversed
    between layers (:class:`~torchnf.layers.Reverse`, and once more at the end for an even
    ``n_layers``, so ``z`` keeps the order of ``x``). Density evaluation is one MADE pass per
    layer, sampling ``D`` passes. The base is :math:`U(-\pi, \pi)` on the angle columns
    and :math:`N(0, 1)` on the others (:class:`~torchnf.distributions.ProductBase`), so

    .. math::

        \log p(x | c) = -k \log 2\pi + \log N(z_{real}; 0, I) + \log|\det \partial f/\partial x|

    is continuous and periodic in every angle: the density on the torus has no seam at
    :math:`\pm\pi`, and samples stay in :math:`[-\pi, \pi)` on the angle columns. Angles are
    never rescaled (that would break periodicity); they are read mod :math:`2\pi`, and data
    should hold them in radians in :math:`[-\pi, \pi)` (the command refuses others with
    :func:`~torchnf.layers.circular.check_angles`).

    Couplings are the default: on the built-in targets, both two-dimensional, the two
    variants fit alike. ``python benchmarks/circular_variants.py`` (``torchnf bench``'s
    protocol, 5 layers of widths (64, 64), for each variant), KL ± s.e. in nats for seeds 0,
    1 and 2: on ``torus``
    couplings 0.0108 ± 0.0010, 0.0111 ± 0.0010, 0.0078 ± 0.0009 and autoregressive
    0.0111 ± 0.0010, 0.0118 ± 0.0010, 0.0095 ± 0.0010; on ``cylinder`` couplings
    0.0032 ± 0.0006, 0.0053 ± 0.0006, 0.0052 ± 0.0007 and autoregressive 0.0032 ± 0.0006,
    0.0051 ± 0.0006, 0.0038 ± 0.0006. The seeds differ by more than the variants (in two
    dimensions an autoregressive layer is a coupling that also moves its first feature by an
    unconditional spline), and couplings are the cheaper: on one CPU thread (the script's
    median) 91 training steps/s of batch 256 on either target against 82 autoregressive on
    ``torus`` and 50 on ``cylinder`` (each layer runs both kinds of spline there).

    Shapes: ``x`` is ``(*batch, input_size)``, ``context`` is ``(*batch, context_size)``.

    Arguments:
        input_size: number of features ``D``: ``D >= 2`` for couplings, ``D >= 1``
            autoregressive.
        circular: the angle columns (a list, as JSON gives it); ``None``: every column.
        n_layers: number of coupling or autoregressive layers.
        hidden_sizes: widths of each conditioner (MLP or MADE).
        n_bins: number of bins of every spline.
        tail_bound: half-width of the real features' spline interval.
        context_size: size of the context (0 for an unconditional flow).
        autoregressive: autoregressive layers if True, coupling layers (the default)
            otherwise.

    References:
        Rezende, Papamakarios, Racanière, Albergo, Kanwar, Shanahan, Cranmer, "Normalizing
        Flows on Tori and Spheres", 2020, arXiv:2002.02428.
        Durkan, Bekasov, Murray, Papamakarios, "Neural Spline Flows", 2019, arXiv:1906.04032.

    Example:
        >>> flow = CircularNSF(2, circular=[0], n_layers=2, hidden_sizes=(16,))
        >>> x = flow.sample(500)
        >>> bool((x[:, 0].abs() <= math.pi).all()), flow.log_prob(x).shape
        (True, torch.Size([500]))
        >>> flow = CircularNSF(1, n_layers=2, hidden_sizes=(16,), autoregressive=True)
        >>> x = flow.sample(3)  # on the circle: one angle
        >>> flow.config["autoregressive"], x.shape, flow.log_prob(x).shape
        (True, torch.Size([3, 1]), torch.Size([3]))
    """

    #: Arguments a config recorded before they existed was built with (see
    #: :func:`~torchnf.core.registry.build`): coupling layers, before ``autoregressive``.
    legacy_defaults: ClassVar[dict[str, Any]] = {"autoregressive": False}

    def __init__(
        self,
        input_size: int,
        circular: Sequence[int] | None = None,
        n_layers: int = 4,
        hidden_sizes: Sequence[int] = (64, 64),
        n_bins: int = 8,
        tail_bound: float = 5.0,
        context_size: int = 0,
        autoregressive: bool = False,
    ) -> None:
        columns = circular_columns(circular, input_size)
        if autoregressive:
            layers = autoregressive_torus_layers(
                input_size, columns, n_layers, hidden_sizes, n_bins, tail_bound, context_size
            )
        else:
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


def autoregressive_torus_layers(
    input_size: int,
    circular: Sequence[int],
    n_layers: int,
    hidden_sizes: Sequence[int],
    n_bins: int,
    tail_bound: float,
    context_size: int,
) -> list[Bijector]:
    r"""``L_1, R, L_2, R, ..., L_K``, and one more ``R`` when ``K`` is even: the
    :class:`CircularSplineAutoregressive` layers of :class:`CircularNSF` with the features
    reversed (:class:`~torchnf.layers.Reverse`) between each two, and at the end as often as
    it takes to give ``z`` the order of ``x`` (so the base's angle columns are ``circular``).
    A layer after an odd number of reversals takes the reversed angle columns. The
    reversals are gathers, not folded into the MADEs' orders as in
    :func:`~torchnf.models.maf.autoregressive_chain`: a MADE reading
    :math:`(\cos\theta, \sin\theta)` has no :meth:`~torchnf.nets.made.MADE.reverse_`.

    Example:
        >>> layers = autoregressive_torus_layers(3, [0], 2, (8,), 4, 5.0, 0)
        >>> [getattr(layer, "circular", type(layer).__name__) for layer in layers]
        [[0], 'Reverse', [2], 'Reverse']
    """
    orders = [list(circular), sorted(input_size - 1 - i for i in circular)]
    layers: list[Bijector] = []
    for k in range(n_layers):
        layers.append(
            CircularSplineAutoregressive(
                input_size, orders[k % 2], hidden_sizes, context_size, n_bins, tail_bound
            )
        )
        if input_size > 1 and (k < n_layers - 1 or n_layers % 2 == 0):
            reverse = Reverse(input_size)
            reverse.domain = torus_constraint(input_size, orders[k % 2])
            reverse.codomain = torus_constraint(input_size, orders[(k + 1) % 2])
            layers.append(reverse)
    return layers


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
