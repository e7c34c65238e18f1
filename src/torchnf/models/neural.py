"""Neural autoregressive flows (NAF) and unconstrained monotonic neural networks (UMNN)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torchnf.core.chain import Chain
from torchnf.core.flow import Flow
from torchnf.core.registry import register
from torchnf.layers.autoregressive import MaskedAutoregressive
from torchnf.layers.bounds import Bound, support_layers
from torchnf.layers.coupling import Coupling, _mlp_coupling_args
from torchnf.layers.linear import ActNorm
from torchnf.layers.neural import DSFTransformer, UMNNTransformer
from torchnf.layers.transformers import Transformer
from torchnf.models.maf import autoregressive_chain
from torchnf.nets.embedding import embedding_context
from torchnf.nets.made import MADE


def transformer_chain(
    make_transformer: Callable[[], Transformer],
    input_size: int,
    n_layers: int,
    hidden_sizes: Sequence[int],
    context_size: int,
    autoregressive: bool,
    bounds: Sequence[Bound] | None,
) -> Chain:
    r"""ActNorm, then ``n_layers`` layers of a fresh transformer each, autoregressive or coupling.

    With ``autoregressive=True`` the layers are
    ``MaskedAutoregressive(make_transformer(), MADE(...))`` with the features reversed
    between each two (:func:`~torchnf.models.maf.autoregressive_chain`); otherwise
    ``Coupling(make_transformer(), MLP(...), mask)`` with alternating masks (needs
    ``input_size >= 2``), after an :class:`~torchnf.layers.ActNorm`. A bounded support
    (``bounds``) goes first.

    Arguments:
        make_transformer: builds one layer's transformer.
        input_size: number of features ``D``.
        n_layers: number of layers.
        hidden_sizes: widths of each conditioner (MADE or MLP).
        context_size: size of the context (0 for none).
        autoregressive: MADE layers if True, coupling layers otherwise.
        bounds: the support, one entry per dimension, or ``None``.

    Returns:
        the :class:`~torchnf.core.chain.Chain`.

    Example:
        >>> chain = transformer_chain(DSFTransformer, 3, 2, (8,), 0, True, None)
        >>> len(chain), chain(torch.randn(4, 3))[0].shape
        (4, torch.Size([4, 3]))
    """
    if autoregressive:
        layers = []
        for _ in range(n_layers):
            tau = make_transformer()
            made = MADE(input_size, tau.params_per_feature, hidden_sizes, context_size)
            layers.append(MaskedAutoregressive(tau, made))
        return autoregressive_chain(layers, bounds)
    couplings = [
        Coupling(
            *_mlp_coupling_args(
                make_transformer(), input_size, None, i % 2, hidden_sizes, context_size
            )
        )
        for i in range(n_layers)
    ]
    return Chain(*support_layers(bounds, input_size), ActNorm(input_size), *couplings)


@register(
    "model",
    example=lambda context_size: NAF(
        3, n_layers=2, hidden_sizes=(8,), n_components=3, context_size=context_size
    ),
    conditional=True,
)
class NAF(Flow):
    r"""Neural autoregressive flow ``z = f(x | c)``: ActNorm, then deep sigmoidal flow layers.

    :math:`f = T_K \circ \cdots \circ T_1 \circ A`: ``A`` an :class:`~torchnf.layers.ActNorm`
    initialized by ``flow.initialize(x)`` (``fit`` calls it), each ``T_k`` a
    ``MaskedAutoregressive`` layer (features reversed between layers) or, with
    ``autoregressive=False``, a ``Coupling`` layer, whose transformer is the
    :class:`~torchnf.layers.DSFTransformer`
    :math:`z_i = \sigma^{-1}(\sum_j w_j \sigma(a_j x_i + b_j))`, ``(a, b, w) = g_i(x_{<i}, c)``.
    The base is :math:`N(0, I)`. Density evaluation is one pass per layer; sampling inverts
    each transformer numerically (a safeguarded Newton solve to ``tol``; ``D`` solves per
    autoregressive layer), so ``sample`` is much slower than ``log_prob``. With
    ``n_dsf_layers = L > 1`` each transformer is the paper's stacked DSF, ``L`` such maps
    composed, and inverted map by map.

    Depth measured (``benchmarks/naf_depth.py``: ``torchnf bench``'s protocol, 5 layers,
    hidden (64, 64), 1000 steps, KL ± s.e. on moons / ring / banana / funnel, steps/s on one
    thread): ``L = 1, K = 8`` (the default) 0.025 ± 0.001 / 0.081 ± 0.002 / 0.0014 ± 0.0004 /
    0.0025 ± 0.0004, 156 steps/s; ``L = 2, K = 8`` 0.042 / 0.129 / 0.0021 / 0.0025, 100
    steps/s; ``L = 2, K = 4`` (the same 24 conditioner outputs per feature) 0.034 / 0.105 /
    0.0016 / 0.0022, 118 steps/s (training seed 0). At this budget stacking does not pay on
    these 2-D targets.

    Shapes: ``x`` is ``(*batch, input_size)``, ``context`` is ``(*batch, context_size)``.

    Arguments:
        input_size: number of features ``D``.
        n_layers: number of layers.
        hidden_sizes: widths of each conditioner (MADE or MLP).
        n_components: number of sigmoids per transformer map.
        autoregressive: autoregressive layers if True, coupling layers otherwise.
        context_size: size of the context (0 for an unconditional flow; with an
            ``embedding``, 0 or its ``output_size``).
        embedding: the JSON spec of an embedding net for the context (see
            :func:`~torchnf.nets.embedding.build_embedding`), recorded in ``config``.
        bounds: the support, one entry per dimension (see
            :class:`~torchnf.layers.BoundedSupport`, which then goes first); ``None``: the
            real line.
        tol: relative tolerance of the numerical inverses (``None``: the dtype's default).
        max_iter: iteration limit of the numerical inverses.
        n_dsf_layers: number of sigmoidal-mixture maps stacked in each transformer (the
            paper's stacked DSF; ``DSFTransformer(n_layers=n_dsf_layers)``), 1 for a single
            map; each adds ``3 * n_components`` conditioner outputs per feature.

    References:
        Huang, Krueger, Lacoste, Courville, "Neural Autoregressive Flows", 2018,
        arXiv:1804.00779.

    Example:
        >>> flow = NAF(2, n_layers=2, hidden_sizes=(16,))
        >>> x = torch.randn(10, 2)
        >>> flow.log_prob(x).shape, flow.sample(4).shape
        (torch.Size([10]), torch.Size([4, 2]))
    """

    def __init__(
        self,
        input_size: int,
        n_layers: int = 5,
        hidden_sizes: Sequence[int] = (64, 64),
        n_components: int = 8,
        autoregressive: bool = True,
        context_size: int = 0,
        embedding: dict | None = None,
        bounds: Sequence[Bound] | None = None,
        tol: float | None = None,
        max_iter: int = 100,
        n_dsf_layers: int = 1,
    ) -> None:
        if isinstance(n_dsf_layers, bool) or not isinstance(n_dsf_layers, int) or n_dsf_layers < 1:
            raise ValueError(f"expected an integer n_dsf_layers >= 1, got {n_dsf_layers!r}")
        encoder, context_size = embedding_context(embedding, context_size)
        chain = transformer_chain(
            lambda: DSFTransformer(n_components, tol=tol, max_iter=max_iter, n_layers=n_dsf_layers),
            input_size,
            n_layers,
            hidden_sizes,
            context_size,
            autoregressive,
            bounds,
        )
        super().__init__(chain, context_encoder=encoder)


@register(
    "model",
    example=lambda context_size: UMNN(
        3,
        n_layers=2,
        hidden_sizes=(8,),
        embedding_size=2,
        integrand_sizes=(8,),
        n_nodes=12,
        context_size=context_size,
    ),
    conditional=True,
)
class UMNN(Flow):
    r"""Unconstrained monotonic neural network flow ``z = f(x | c)``: ActNorm, then integral
    transformers.

    :math:`f = T_K \circ \cdots \circ T_1 \circ A` as in :class:`NAF`, with the
    :class:`~torchnf.layers.UMNNTransformer`
    :math:`z_i = \beta_i + \int_0^{x_i} g(t; h_i)\, dt`, :math:`(\beta_i, s_i, h_i) =
    g_i(x_{<i}, c)`, where the positive integrand ``g`` is a small MLP (one per layer,
    shared by all features) and the integral a Gauss–Legendre rule with ``n_nodes`` nodes;
    the log-determinant is :math:`\sum_i \log g(x_i; h_i)`, exact for the exact integral
    (the quadrature error is stated in :class:`~torchnf.layers.UMNNTransformer`). Beyond
    ``[-tail_bound, tail_bound]`` (in ActNorm's standardized units) each map is linear.
    Sampling inverts each transformer numerically (``D`` solves per autoregressive layer).

    Shapes: ``x`` is ``(*batch, input_size)``, ``context`` is ``(*batch, context_size)``.

    Arguments:
        input_size: number of features ``D``.
        n_layers: number of layers.
        hidden_sizes: widths of each conditioner (MADE or MLP).
        embedding_size: size of the per-feature embedding ``h`` the conditioner gives the
            integrand (not to be confused with ``embedding``, the context's embedding net).
        integrand_sizes: widths of the integrand MLP.
        n_nodes: number of quadrature nodes.
        tail_bound: half-width of the interval beyond which the maps are linear.
        autoregressive: autoregressive layers if True, coupling layers otherwise.
        context_size: size of the context (0 for an unconditional flow; with an
            ``embedding``, 0 or its ``output_size``).
        embedding: the JSON spec of an embedding net for the context, recorded in ``config``.
        bounds: the support, one entry per dimension, or ``None`` for the real line.
        tol: relative tolerance of the numerical inverses (``None``: the dtype's default).
        max_iter: iteration limit of the numerical inverses.

    References:
        Wehenkel, Louppe, "Unconstrained Monotonic Neural Networks", 2019, arXiv:1908.05164.

    Example:
        >>> flow = UMNN(2, n_layers=2, hidden_sizes=(16,), integrand_sizes=(16,))
        >>> x = torch.randn(10, 2)
        >>> flow.log_prob(x).shape, flow.sample(4).shape
        (torch.Size([10]), torch.Size([4, 2]))
    """

    def __init__(
        self,
        input_size: int,
        n_layers: int = 5,
        hidden_sizes: Sequence[int] = (64, 64),
        embedding_size: int = 8,
        integrand_sizes: Sequence[int] = (32, 32),
        n_nodes: int = 16,
        tail_bound: float = 5.0,
        autoregressive: bool = True,
        context_size: int = 0,
        embedding: dict | None = None,
        bounds: Sequence[Bound] | None = None,
        tol: float | None = None,
        max_iter: int = 100,
    ) -> None:
        encoder, context_size = embedding_context(embedding, context_size)
        chain = transformer_chain(
            lambda: UMNNTransformer(
                embedding_size, integrand_sizes, n_nodes, tail_bound, tol=tol, max_iter=max_iter
            ),
            input_size,
            n_layers,
            hidden_sizes,
            context_size,
            autoregressive,
            bounds,
        )
        super().__init__(chain, context_encoder=encoder)
