"""MAF and IAF: masked affine autoregressive flows, in the density and the sampling direction."""

from __future__ import annotations

from collections.abc import Sequence

from torchnf.core.bijector import Bijector
from torchnf.core.chain import Chain
from torchnf.core.flow import Flow
from torchnf.core.registry import register
from torchnf.layers.autoregressive import MaskedAffineAutoregressive, MaskedAutoregressive
from torchnf.layers.bounds import Bound, support_layers
from torchnf.layers.linear import ActNorm
from torchnf.layers.permutation import Reverse
from torchnf.nets.embedding import embedding_context


def autoregressive_chain(layers: list[Bijector], bounds: Sequence[Bound] | None = None) -> Chain:
    r"""``ActNorm`` (data-initialized), then ``layers`` with the features reversed between each two.

    ``layers`` are :class:`MaskedAutoregressive` layers or their ``.inv`` views, ``L_1 .. L_K``,
    and the chain computes :math:`f = L_K \circ R \circ L_{K-1} \circ \cdots \circ R \circ
    L_1 \circ A` (``A`` the ActNorm, ``R`` the reversal), with no gather for the reversals:
    :math:`L \circ R = R \circ (R L R)`, where ``R L R`` is ``L`` with its MADE's order
    turned around (:meth:`~torchnf.nets.made.MADE.reverse_`, exact at any parameter values;
    for a view, :math:`R L^{-1} R = (R L R)^{-1}`). Moving every ``R`` to the end, pairs
    cancel: :math:`f = R^{K-1} \circ \tilde L_K \circ \cdots \circ \tilde L_1 \circ A`
    with :math:`\tilde L_k = R^{k-1} L_k R^{k-1}`, so ``layers[1]``, ``layers[3]``, ... are
    reversed in place, and one :class:`Reverse` ends the chain when ``K`` is even (``z`` keeps
    the same order as with a reversal between each two layers). A layer's output inside the
    chain is then in reversed feature order for every second layer.

    Arguments:
        layers: the autoregressive layers (or their inverse views), all of one ``input_size``.
        bounds: a bounded support, placed first (:func:`~torchnf.layers.bounds.support_layers`).

    Returns:
        ``Chain(ActNorm, L_1, R L_2 R, L_3, ...)``, plus ``Reverse`` for an even ``K``
        (after a :class:`~torchnf.layers.BoundedSupport` for ``bounds``).

    Example:
        >>> chain = autoregressive_chain([MaskedAffineAutoregressive(3, (8,)) for _ in range(3)])
        >>> len(chain), [layer.made.reversed for layer in chain[1:]]
        (4, [False, True, False])
    """
    input_size = layers[0].input_size
    for layer in layers[1::2]:
        base = layer if isinstance(layer, MaskedAutoregressive) else layer.inv
        base.made.reverse_()
    ending = [Reverse(input_size)] if len(layers) % 2 == 0 else []
    return Chain(*support_layers(bounds, input_size), ActNorm(input_size), *layers, *ending)


@register(
    "model",
    example=lambda context_size: MAF(3, n_layers=2, hidden_sizes=(8,), context_size=context_size),
    conditional=True,
)
class MAF(Flow):
    r"""Masked autoregressive flow ``z = f(x | c)``: ActNorm, then affine MADE layers.

    :math:`f = M_K \circ R \circ \cdots \circ R \circ M_1 \circ A`: ``A`` an :class:`ActNorm` that
    ``flow.initialize(x)`` (called by ``fit`` on the first batch) sets to standardize the data,
    so raw data of any location and scale works with default arguments; ``M_k`` are
    :class:`MaskedAffineAutoregressive` layers, ``R`` reverses the feature order (folded into
    every second MADE's order, see :func:`autoregressive_chain`). Density evaluation is one
    pass per layer; sampling is ``D`` passes per layer (see :class:`IAF` for the opposite
    trade-off). The base is :math:`N(0, I)`.

    Shapes: ``x`` is ``(*batch, input_size)``, ``context`` is ``(*batch, context_size)``.

    Arguments:
        input_size: number of features ``D``.
        n_layers: number of autoregressive layers.
        hidden_sizes: widths of each MADE.
        context_size: size of the context (0 for an unconditional flow; with an
            ``embedding``, 0 or its ``output_size``).
        embedding: the JSON spec of an embedding net for the context (see
            :func:`~torchnf.nets.embedding.build_embedding`), recorded in ``config``.
        bounds: the support, one entry per dimension (see
            :class:`~torchnf.layers.BoundedSupport`, which then goes first); ``None``: the
            real line.
        activation: the MADEs' hidden activation, a key of
            :data:`~torchnf.nets.mlp.ACTIVATIONS` (the seeds use ``"tanh"``).

    References:
        Papamakarios, Pavlakou, Murray, "Masked Autoregressive Flow for Density Estimation",
        2017, arXiv:1705.07057.

    Example:
        >>> flow = MAF(2, n_layers=3, hidden_sizes=(16,))
        >>> x = torch.randn(10, 2)
        >>> flow.log_prob(x).shape, flow.sample(4).shape
        (torch.Size([10]), torch.Size([4, 2]))
    """

    def __init__(
        self,
        input_size: int,
        n_layers: int = 5,
        hidden_sizes: Sequence[int] = (128, 128),
        context_size: int = 0,
        embedding: dict | None = None,
        bounds: Sequence[Bound] | None = None,
        activation: str = "relu",
    ) -> None:
        encoder, context_size = embedding_context(embedding, context_size)
        layers = [
            MaskedAffineAutoregressive(
                input_size, hidden_sizes, context_size, activation=activation
            )
            for _ in range(n_layers)
        ]
        super().__init__(autoregressive_chain(layers, bounds), context_encoder=encoder)


@register(
    "model",
    example=lambda context_size: IAF(3, n_layers=2, hidden_sizes=(8,), context_size=context_size),
    conditional=True,
)
class IAF(Flow):
    r"""Inverse autoregressive flow ``z = f(x | c)``: ActNorm, then inverted affine MADE layers.

    Like :class:`MAF` with each layer replaced by its inverse view ``M_k^{-1}``: in the
    sampling direction :math:`x_i = z_i e^{s_i(z_{<i})} + t_i(z_{<i})` is one MADE pass per
    layer (fast sampling, fast ``sample_and_log_prob``, as variational posteriors need), while
    ``log_prob`` of external data takes ``D`` passes per layer. The first layer is a
    data-initialized :class:`ActNorm`, as in :class:`MAF`. The ``M_k`` are
    :class:`MaskedAffineAutoregressive` layers with ``shift_first=False``, so the normalizing
    direction subtracts the shift first, :math:`z_i = (x_i - t_i) e^{-s_i}`, which keeps
    ``inverse(forward(x))`` accurate on data (see
    :class:`~torchnf.layers.transformers.AffineTransformer`).

    Shapes: ``x`` is ``(*batch, input_size)``, ``context`` is ``(*batch, context_size)``.

    Arguments:
        input_size: number of features ``D``.
        n_layers: number of autoregressive layers.
        hidden_sizes: widths of each MADE.
        context_size: size of the context (0 for an unconditional flow; with an
            ``embedding``, 0 or its ``output_size``).
        embedding: the JSON spec of an embedding net for the context (see
            :func:`~torchnf.nets.embedding.build_embedding`), recorded in ``config``.
        bounds: the support, one entry per dimension (see
            :class:`~torchnf.layers.BoundedSupport`, which then goes first); ``None``: the
            real line.
        activation: the MADEs' hidden activation, a key of
            :data:`~torchnf.nets.mlp.ACTIVATIONS` (the seeds use ``"tanh"``).

    References:
        Kingma, Salimans, Jozefowicz, Chen, Sutskever, Welling, "Improved Variational
        Inference with Inverse Autoregressive Flow", 2016, arXiv:1606.04934.

    Example:
        >>> flow = IAF(2, n_layers=3, hidden_sizes=(16,))
        >>> x, log_prob = flow.sample_and_log_prob(5)
        >>> torch.allclose(flow.log_prob(x), log_prob, atol=1e-5)
        True
    """

    def __init__(
        self,
        input_size: int,
        n_layers: int = 5,
        hidden_sizes: Sequence[int] = (128, 128),
        context_size: int = 0,
        embedding: dict | None = None,
        bounds: Sequence[Bound] | None = None,
        activation: str = "relu",
    ) -> None:
        encoder, context_size = embedding_context(embedding, context_size)
        layers = [
            MaskedAffineAutoregressive(
                input_size, hidden_sizes, context_size, shift_first=False, activation=activation
            ).inv
            for _ in range(n_layers)
        ]
        super().__init__(autoregressive_chain(layers, bounds), context_encoder=encoder)
