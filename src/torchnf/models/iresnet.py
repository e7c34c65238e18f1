"""Residual flows: ActNorm and invertible residual blocks (i-ResNet, Residual Flows)."""

from __future__ import annotations

from collections.abc import Sequence

from torchnf.core.chain import Chain
from torchnf.core.flow import Flow
from torchnf.core.registry import register
from torchnf.layers.bounds import Bound, support_layers
from torchnf.layers.iresnet import InvertibleResidualBlock
from torchnf.layers.linear import ActNorm
from torchnf.nets.embedding import embedding_context


@register(
    "model",
    example=lambda context_size: ResidualFlow(
        3, n_layers=2, hidden_sizes=(8,), context_size=context_size
    ),
    conditional=True,
)
class ResidualFlow(Flow):
    r"""Residual flow ``z = f(x | c)``: ``n_layers`` pairs of ActNorm and invertible residual block.

    :math:`f = B_K \circ A_K \circ \cdots \circ B_1 \circ A_1`: each ``A_k`` an :class:`ActNorm`
    that ``flow.initialize(x)`` (called by ``fit`` on the first batch) sets to standardize
    what it receives (as in i-ResNet), each ``B_k`` an :class:`InvertibleResidualBlock`
    :math:`x + g_k(x | c)` with :math:`\mathrm{Lip}_x(g_k) \le` ``lipschitz``. Density
    evaluation is one pass per block (plus the log-det: exact up to 16 features, the
    Russian-roulette estimate in training mode beyond); sampling inverts each block by
    fixed-point iteration, one MLP pass per iteration (on ``moons`` after 300 steps, 8-11
    iterations per block in float32, 19-26 in float64: the local rate is well below ``c``;
    sampling 10000 points took 3.5 times as long as their ``log_prob``). Every block is a
    free-form map (no coupling or ordering), but bi-Lipschitz with constants ``1 - c`` and
    ``1 + c``, so ``K`` blocks stretch or compress space by at most :math:`(1 + c)^K` and
    :math:`(1 - c)^K` (with the ActNorms in between): strongly non-Gaussian data needs many
    blocks. The base is :math:`N(0, I)`.

    Memory of a training step with the estimated log-det: ``log_det="roulette"`` keeps the
    graph of every Jacobian product of the series (a random number, 3 on average) for the
    backward pass; ``"neumann"`` (the same values) takes the Neumann-series gradient in the
    forward pass and keeps one gradient per block input and parameter. Saved-tensor bytes of
    one step (``benchmarks/residual_memory.py``: D=32, 8 blocks, hidden (64, 64), batch 256,
    float32, mean over 20 draws shared by the modes): ``"roulette"`` 11.5 MiB (9.8 to 14.6
    by the draw), ``"neumann"`` 5.0 MiB, the forward graph alone 4.5 MiB, ``"exact"``
    68.8 MiB; so the log-det's share falls from 7.0 to 0.5 MiB. Step time on one CPU thread
    (torch 2.13, shared machine): 70-72 ms against 72-73 ms (``"exact"`` 252-260 ms).

    Shapes: ``x`` is ``(*batch, input_size)``, ``context`` is ``(*batch, context_size)``.

    Arguments:
        input_size: number of features ``D``.
        n_layers: number of residual blocks.
        hidden_sizes: widths of each block's MLP.
        context_size: size of the context (0 for an unconditional flow; with an
            ``embedding``, 0 or its ``output_size``).
        lipschitz: the bound ``c < 1`` on each block's residual Lipschitz constant.
        activation: the blocks' activation, ``"elu"`` or ``"lipswish"``.
        log_det: ``"exact"``, ``"roulette"``, ``"neumann"`` or None (exact up to 16
            features, ``"roulette"`` beyond); ``"neumann"``: the roulette estimate with the
            memory-saving Neumann gradient (see :class:`InvertibleResidualBlock`).
        tol: tolerance of each block's inverse (default: per dtype, see
            :class:`InvertibleResidualBlock`).
        max_iter: iteration limit of each block's inverse.
        embedding: the JSON spec of an embedding net for the context (see
            :func:`~torchnf.nets.embedding.build_embedding`), recorded in ``config``.
        bounds: the support, one entry per dimension (see
            :class:`~torchnf.layers.BoundedSupport`, which then goes first); ``None``: the
            real line.

    References:
        Invertible Residual Networks (Behrmann et al., 2019, arXiv:1811.00995).
        Residual Flows for Invertible Generative Modeling (Chen et al., 2019,
        arXiv:1906.02735).

    Example:
        >>> flow = ResidualFlow(2, n_layers=2, hidden_sizes=(16,))
        >>> x = torch.randn(10, 2)
        >>> _ = flow.initialize(x)
        >>> flow.log_prob(x).shape, flow.sample(4).shape
        (torch.Size([10]), torch.Size([4, 2]))
    """

    def __init__(
        self,
        input_size: int,
        n_layers: int = 8,
        hidden_sizes: Sequence[int] = (64, 64),
        context_size: int = 0,
        lipschitz: float = 0.9,
        activation: str = "elu",
        log_det: str | None = None,
        tol: float | None = None,
        max_iter: int = 1000,
        embedding: dict | None = None,
        bounds: Sequence[Bound] | None = None,
    ) -> None:
        encoder, context_size = embedding_context(embedding, context_size)
        layers = []
        for _ in range(n_layers):
            block = InvertibleResidualBlock(
                input_size,
                hidden_sizes,
                context_size,
                lipschitz=lipschitz,
                activation=activation,
                log_det=log_det,
                tol=tol,
                max_iter=max_iter,
            )
            layers += [ActNorm(input_size), block]
        chain = Chain(*support_layers(bounds, input_size), *layers)
        super().__init__(chain, context_encoder=encoder)
