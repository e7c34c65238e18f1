"""Residual flows with exact inverses: planar, radial, Sylvester and generalized Sylvester."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from torchnf.core.bijector import Bijector
from torchnf.core.chain import Chain
from torchnf.core.flow import Flow
from torchnf.core.registry import register
from torchnf.layers.bounds import Bound, support_layers
from torchnf.layers.linear import ActNorm
from torchnf.layers.residual import GeneralizedSylvesterBlock, Planar, Radial, SylvesterBlock


def _alternating(i: int) -> str:
    """Block ``i``'s permutation: the identity for even ``i``, the reversal for odd."""
    return ("identity", "reverse")[i % 2]


def _block_inits(n_layers: int, init: str) -> list[str]:
    """Each block's ``init``: ``"random"``, or alternating permutations for ``"permutation"``."""
    if init not in ("random", "permutation"):
        raise ValueError(f"expected init 'random' or 'permutation', got {init!r}")
    return [_alternating(i) if init == "permutation" else init for i in range(n_layers)]


def _residual_chain(
    blocks: list[Bijector], input_size: int, bounds: Sequence[Bound] | None, actnorm: bool
) -> Chain:
    """The support's layers, a standardizing ActNorm, then the blocks (each followed by an
    ActNorm if ``actnorm``)."""
    layers = [*support_layers(bounds, input_size), ActNorm(input_size)]
    for block in blocks:
        layers += [block, ActNorm(input_size)] if actnorm else [block]
    return Chain(*layers)


@register("model", example=lambda context_size: PlanarFlow(3, n_layers=2))
class PlanarFlow(Flow):
    r"""Planar flow ``z = f(x)``: a standardizing ActNorm, then ``n_layers`` :class:`Planar`.

    :math:`f = P_K \circ \cdots \circ P_1 \circ A`; ``A`` is an :class:`ActNorm` that
    ``flow.initialize(x)`` (called by ``fit`` on the first batch) sets to standardize the data.
    Every layer has an exact inverse, so the flow samples as well as it evaluates densities.
    The base is :math:`N(0, I)`.

    Shapes: ``x`` is ``(*batch, input_size)``.

    Arguments:
        input_size: number of features ``D``.
        n_layers: number of planar layers.
        tol: tolerance of each layer's inverse (default: per dtype, see :class:`Planar`).
        max_iter: iteration limit of each layer's inverse.
        bounds: the support, one entry per dimension: ``(low, high)``, ``(low, None)``,
            ``(None, high)`` or ``None`` (see :class:`BoundedSupport`, which then goes first,
            before the ActNorm, and sets the flow's ``domain``); ``None``: the real line.

    References:
        Variational Inference with Normalizing Flows (Rezende & Mohamed, 2015,
        arXiv:1505.05770).

    Example:
        >>> flow = PlanarFlow(2, n_layers=4)
        >>> flow.log_prob(torch.randn(3, 2)).shape, flow.sample(5).shape
        (torch.Size([3]), torch.Size([5, 2]))
    """

    def __init__(
        self,
        input_size: int,
        n_layers: int = 16,
        tol: float | None = None,
        max_iter: int = 100,
        bounds: Sequence[Bound] | None = None,
    ) -> None:
        layers = [Planar(input_size, tol, max_iter, seed=i) for i in range(n_layers)]
        super().__init__(Chain(*support_layers(bounds, input_size), ActNorm(input_size), *layers))


@register("model", example=lambda context_size: RadialFlow(3, n_layers=2))
class RadialFlow(Flow):
    r"""Radial flow ``z = f(x)``: a standardizing ActNorm, then ``n_layers`` :class:`Radial`.

    :math:`f = R_K \circ \cdots \circ R_1 \circ A`; ``A`` is an :class:`ActNorm` that
    ``flow.initialize(x)`` sets to standardize the data. Each radial layer inverts in closed
    form. The base is :math:`N(0, I)`.

    Shapes: ``x`` is ``(*batch, input_size)``.

    Arguments:
        input_size: number of features ``D``.
        n_layers: number of radial layers.
        bounds: the support, one entry per dimension: ``(low, high)``, ``(low, None)``,
            ``(None, high)`` or ``None`` (see :class:`BoundedSupport`, which then goes first,
            before the ActNorm, and sets the flow's ``domain``); ``None``: the real line.

    References:
        Variational Inference with Normalizing Flows (Rezende & Mohamed, 2015,
        arXiv:1505.05770).

    Example:
        >>> flow = RadialFlow(2, n_layers=4)
        >>> x = torch.randn(3, 2)
        >>> torch.allclose(flow.inverse(flow(x)[0]), x, atol=1e-5)
        True
    """

    def __init__(
        self, input_size: int, n_layers: int = 16, bounds: Sequence[Bound] | None = None
    ) -> None:
        layers = [Radial(input_size, seed=i) for i in range(n_layers)]
        super().__init__(Chain(*support_layers(bounds, input_size), ActNorm(input_size), *layers))


@register(
    "model",
    example=lambda context_size: SylvesterNet(
        n_layers=2, input_size=3, hidden_size=2, init="permutation", actnorm=True
    ),
)
class SylvesterNet(Flow):
    r"""Sylvester flow ``z = f(x)``: a standardizing ActNorm, then ``n_layers`` Sylvester blocks.

    :math:`f = S_K \circ \cdots \circ S_1 \circ A`, each ``S_k`` a :class:`SylvesterBlock`
    :math:`x + Q R_2 \tanh(R_1 Q^\top x + b)` with an exact inverse and its own ``Q``;
    ``q="triangular"`` uses fixed permutations alternating between the identity and the
    reversal (triangular Sylvester flows). With ``init="permutation"`` the orthogonal ``Q``
    start at those permutations too, so the flow starts as a triangular one and learns its
    rotations; with ``actnorm=True`` an :class:`ActNorm` follows every block,
    :math:`f = A_K \circ S_K \circ \cdots \circ A_1 \circ S_1 \circ A`. Both matter on
    images: on the 8x8 digits, 16 blocks of ``M = 64`` reach 2.25 test bits/dim from random
    rotations with ActNorms, 2.19 from fixed permutations (``q="triangular"``) without, 2.10
    with both, and 32 blocks with both 2.03 (500 steps; ``benchmarks/RESULTS.md``,
    ``examples/sylvester_digits.py``). Every block starts as the identity and every
    ActNorm as the identity until ``flow.initialize(x)`` standardizes what it receives. The
    base is :math:`N(0, I)`. Under :func:`torch.compile`, ``log_prob`` and its backward trace as one
    graph; sampling does not: the numerical inverse checks convergence on the host after each
    iteration, so every iteration ends a graph.

    Shapes: ``x`` is ``(*batch, input_size)``.

    Arguments:
        n_layers: number of Sylvester blocks.
        input_size: number of features ``D``.
        hidden_size: number of columns ``M`` of each ``Q``, ``1 <= M <= D`` (default ``D``).
        q: ``"orthogonal"``, ``"householder"`` or ``"triangular"``.
        n_reflections: reflections per block of the ``"householder"`` form (default ``D``).
        tol: tolerance of each block's inverse (default: per dtype, see
            :class:`SylvesterBlock`).
        max_iter: iteration limit of each block's inverse, per coordinate.
        bounds: the support, one entry per dimension: ``(low, high)``, ``(low, None)``,
            ``(None, high)`` or ``None`` (see :class:`BoundedSupport`, which then goes first,
            before the ActNorm, and sets the flow's ``domain``); ``None``: the real line.
        init: start of the orthogonal ``Q``: ``"random"`` rotations drawn from each block's
            seed, or ``"permutation"``: the identity and the reversal, alternately.
        actnorm: an :class:`ActNorm` after every block. The defaults (``"permutation"``,
            ``True``) beat or match random rotations without ActNorms on every 2-D target and the
            digits (README); configs recorded before they existed rebuild with the old ones.

    References:
        Sylvester Normalizing Flows for Variational Inference (van den Berg et al., 2018,
        arXiv:1803.05649).

    Example:
        >>> net = SylvesterNet(n_layers=4, input_size=32, hidden_size=32)
        >>> x = torch.randn(100, 32)
        >>> y, log_det = net(x)
        >>> z = net.inverse(y)
        >>> torch.allclose(x, z)
        True
    """

    #: Arguments a config recorded before they existed was built with (see
    #: :func:`~torchnf.core.registry.build`).
    legacy_defaults: ClassVar[dict[str, Any]] = {"init": "random", "actnorm": False}

    def __init__(
        self,
        n_layers: int,
        input_size: int,
        hidden_size: int | None = None,
        q: str = "orthogonal",
        n_reflections: int | None = None,
        tol: float | None = None,
        max_iter: int = 100,
        bounds: Sequence[Bound] | None = None,
        init: str = "permutation",
        actnorm: bool = True,
    ) -> None:
        if q not in ("orthogonal", "householder", "triangular"):
            raise ValueError(f"expected q 'orthogonal', 'householder' or 'triangular', got {q!r}")
        blocks = [
            SylvesterBlock(
                input_size,
                hidden_size,
                q=_alternating(i) if q == "triangular" else q,
                n_reflections=n_reflections,
                tol=tol,
                max_iter=max_iter,
                seed=i,
                init=start,
            )
            for i, start in enumerate(_block_inits(n_layers, init))
        ]
        super().__init__(_residual_chain(blocks, input_size, bounds, actnorm))


@register(
    "model",
    example=lambda context_size: GeneralizedSylvesterNet(
        n_layers=2,
        input_size=3,
        hidden_sizes=(8,),
        context_size=context_size,
        init="permutation",
        actnorm=True,
    ),
    conditional=True,
)
class GeneralizedSylvesterNet(Flow):
    r"""Generalized Sylvester flow ``z = f(x | c)``: a standardizing ActNorm, then blocks.

    :math:`f = G_K \circ \cdots \circ G_1 \circ A`, each ``G_k`` a
    :class:`GeneralizedSylvesterBlock` :math:`x + W^{-1} f_{AR}(W x | c)` with its own
    invertible ``W`` and MADE, inverted coordinate by coordinate. With
    ``init="permutation"`` the ``W`` start at the identity and the reversal alternately (a
    residual MAF in the data's coordinates at the start); with ``actnorm=True`` an
    :class:`ActNorm` follows every block (see :class:`SylvesterNet`). Every block starts as
    the identity and every ActNorm as the identity until ``flow.initialize(x)`` standardizes
    what it receives. The base is :math:`N(0, I)`.

    Shapes: ``x`` is ``(*batch, input_size)``, ``context`` is ``(*batch, context_size)``.

    Arguments:
        n_layers: number of blocks.
        input_size: number of features ``D``.
        hidden_sizes: widths of each block's MADE.
        context_size: size of the context (0 for an unconditional flow).
        tol: tolerance of each block's inverse (default: per dtype).
        max_iter: iteration limit of each block's inverse, per coordinate.
        bounds: the support, one entry per dimension: ``(low, high)``, ``(low, None)``,
            ``(None, high)`` or ``None`` (see :class:`BoundedSupport`, which then goes first,
            before the ActNorm, and sets the flow's ``domain``); ``None``: the real line.
        init: start of the ``W``: ``"random"`` rotations drawn from each block's seed, or
            ``"permutation"``: the identity and the reversal, alternately.
        actnorm: an :class:`ActNorm` after every block. The defaults (``"permutation"``,
            ``True``) beat or match random rotations without ActNorms on every 2-D target and the
            digits (README); configs recorded before they existed rebuild with the old ones.

    References:
        The Convolution Exponential and Generalized Sylvester Flows (Hoogeboom et al., 2020,
        arXiv:2006.01910).

    Example:
        >>> flow = GeneralizedSylvesterNet(n_layers=2, input_size=3, hidden_sizes=(16,))
        >>> x = torch.randn(4, 3)
        >>> torch.allclose(flow.inverse(flow(x)[0]), x, atol=1e-5)
        True
    """

    #: Arguments a config recorded before they existed was built with.
    legacy_defaults: ClassVar[dict[str, Any]] = {"init": "random", "actnorm": False}

    def __init__(
        self,
        n_layers: int,
        input_size: int,
        hidden_sizes: Sequence[int] = (64, 64),
        context_size: int = 0,
        tol: float | None = None,
        max_iter: int = 100,
        bounds: Sequence[Bound] | None = None,
        init: str = "permutation",
        actnorm: bool = True,
    ) -> None:
        blocks = [
            GeneralizedSylvesterBlock(
                input_size,
                hidden_sizes,
                context_size,
                tol=tol,
                max_iter=max_iter,
                seed=i,
                init=start,
            )
            for i, start in enumerate(_block_inits(n_layers, init))
        ]
        super().__init__(_residual_chain(blocks, input_size, bounds, actnorm))
