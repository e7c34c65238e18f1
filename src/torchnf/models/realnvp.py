"""RealNVP and NICE: coupling flows on vectors."""

from __future__ import annotations

from collections.abc import Sequence

from torchnf.core.chain import Chain
from torchnf.core.flow import Flow
from torchnf.core.registry import register
from torchnf.layers.bounds import Bound, support_layers
from torchnf.layers.coupling import AdditiveCoupling, AffineCoupling
from torchnf.layers.linear import ActNorm
from torchnf.nets.embedding import embedding_context


@register(
    "model",
    example=lambda context_size: RealNVP(
        3, n_layers=2, hidden_sizes=(8,), context_size=context_size
    ),
    conditional=True,
)
class RealNVP(Flow):
    r"""RealNVP flow ``z = f(x | c)``: a standardizing ActNorm, then affine couplings.

    :math:`f = C_K \circ \cdots \circ C_1 \circ A` where ``A`` is an :class:`ActNorm` that
    ``flow.initialize(x)`` (called by ``fit`` on the first batch) sets to standardize the data,
    so the flow works on raw data of any location and scale, and each ``C_k`` an
    :class:`AffineCoupling` (a :class:`Coupling` of an affine transformer and an :class:`MLP`
    conditioner with the given ``activation``) whose binary mask alternates between layers.
    The base is :math:`N(0, I)`.

    A conditional flow standardizes its raw contexts from the data at ``initialize`` (see
    :class:`Flow`); with an ``embedding``, the conditioners see ``g(c)``, the embedding net's
    output, learned jointly (:mod:`torchnf.nets.embedding`).

    Shapes: ``x`` is ``(*batch, input_size)``, ``context`` is ``(*batch, context_size)``, or
    ``(*batch, *g.context_shape)`` with an embedding ``g``.

    Arguments:
        input_size: number of features ``D >= 2``.
        n_layers: number of coupling layers.
        hidden_sizes: widths of each conditioner MLP.
        context_size: size of the context (0 for an unconditional flow); with an
            ``embedding``, 0 or its ``output_size``.
        activation: the conditioners' hidden activation (see :class:`MLP`; the seeds use
            ``"tanh"``).
        embedding: the JSON spec of an embedding net for the context (see
            :func:`~torchnf.nets.embedding.build_embedding`), e.g. ``{"name": "DeepSets",
            "input_size": 2, "output_size": 16, "n_trials": 50}``; recorded in ``config``, so
            a checkpoint rebuilds it.
        bounds: the support, one entry per dimension: ``(low, high)``, ``(low, None)``,
            ``(None, high)`` or ``None`` (see :class:`BoundedSupport`, which then goes first,
            before the ActNorm, and sets the flow's ``domain``); ``None``: the real line.

    References:
        Density estimation using Real NVP (Dinh et al., 2017, arXiv:1605.08803).

    Example:
        >>> flow = RealNVP(2, n_layers=4, hidden_sizes=(32, 32))
        >>> x = torch.randn(10, 2)
        >>> z, log_det = flow(x)
        >>> torch.allclose(flow.inverse(z), x, atol=1e-5)
        True
    """

    def __init__(
        self,
        input_size: int,
        n_layers: int = 5,
        hidden_sizes: Sequence[int] = (128, 128),
        context_size: int = 0,
        activation: str = "relu",
        embedding: dict | None = None,
        bounds: Sequence[Bound] | None = None,
    ) -> None:
        if input_size < 2:
            raise ValueError(f"a coupling layer needs input_size >= 2, got {input_size}")
        encoder, context_size = embedding_context(embedding, context_size)
        couplings = [
            AffineCoupling(
                input_size,
                parity=i % 2,
                hidden_sizes=hidden_sizes,
                context_size=context_size,
                activation=activation,
            )
            for i in range(n_layers)
        ]
        layers = [*support_layers(bounds, input_size), ActNorm(input_size), *couplings]
        super().__init__(Chain(*layers), context_encoder=encoder)


@register(
    "model",
    example=lambda context_size: NICE(3, n_layers=2, hidden_sizes=(8,), context_size=context_size),
    conditional=True,
)
class NICE(Flow):
    r"""NICE flow ``z = f(x | c)``: ActNorm, additive couplings, and a final diagonal scaling.

    :math:`f = S \circ C_K \circ \cdots \circ C_1 \circ A`: ``A`` a standardizing :class:`ActNorm`,
    ``C_k`` volume-preserving :class:`AdditiveCoupling` layers with alternating masks, ``S``
    a learnable diagonal scaling (an :class:`ActNorm`, the only source of volume change
    besides ``A``, as in the paper). The base is :math:`N(0, I)`.

    Shapes: ``x`` is ``(*batch, input_size)``, ``context`` is ``(*batch, context_size)``.

    Arguments:
        input_size: number of features ``D >= 2``.
        n_layers: number of coupling layers.
        hidden_sizes: widths of each conditioner MLP.
        context_size: size of the context (0 for an unconditional flow).
        bounds: the support, one entry per dimension: ``(low, high)``, ``(low, None)``,
            ``(None, high)`` or ``None`` (see :class:`BoundedSupport`, which then goes first,
            before the ActNorm, and sets the flow's ``domain``); ``None``: the real line.

    References:
        NICE: Non-linear Independent Components Estimation (Dinh et al., 2014,
        arXiv:1410.8516).

    Example:
        >>> flow = NICE(3, n_layers=2, hidden_sizes=(16,))
        >>> flow.log_prob(torch.randn(6, 3)).shape
        torch.Size([6])
    """

    def __init__(
        self,
        input_size: int,
        n_layers: int = 5,
        hidden_sizes: Sequence[int] = (128, 128),
        context_size: int = 0,
        bounds: Sequence[Bound] | None = None,
    ) -> None:
        couplings = [
            AdditiveCoupling(
                input_size, parity=i % 2, hidden_sizes=hidden_sizes, context_size=context_size
            )
            for i in range(n_layers)
        ]
        layers = [*support_layers(bounds, input_size), ActNorm(input_size), *couplings]
        super().__init__(Chain(*layers, ActNorm(input_size)))
