"""Bernstein-polynomial flows: increasing polynomials with linear tails as transformers."""

from __future__ import annotations

from collections.abc import Sequence

from torchnf.core.flow import Flow
from torchnf.core.registry import register
from torchnf.layers.bounds import Bound
from torchnf.layers.polynomial import BernsteinTransformer
from torchnf.models.neural import transformer_chain
from torchnf.nets.embedding import embedding_context


@register(
    "model",
    example=lambda context_size: BernsteinFlow(
        3, n_layers=2, hidden_sizes=(8,), degree=4, tail_bound=3.0, context_size=context_size
    ),
    conditional=True,
)
class BernsteinFlow(Flow):
    r"""Bernstein-polynomial flow ``z = f(x | c)``: ActNorm, then polynomial transformer layers.

    :math:`f = T_K \circ \cdots \circ T_1 \circ A` as in :class:`~torchnf.models.NAF`, with the
    :class:`~torchnf.layers.BernsteinTransformer`: a conditional affine map
    :math:`v_i = (x_i + t_i) e^{s_i}`, then
    :math:`z_i = \sum_{k=0}^{M} \theta_{ik} b_{k,M}((v_i + B)/(2B))` on ``[-B, B]`` with
    increasing coefficients :math:`\theta_{i0} < \dots < \theta_{iM}` from the conditioner,
    continued by its tangent lines beyond. Why Bernstein and not the sum-of-squares
    polynomial flow: see :mod:`torchnf.layers.polynomial` (bounded, interpretable
    coefficients and linear tails, against polynomial growth on the whole line). Density
    evaluation is one pass per layer; sampling inverts each polynomial numerically (closed
    form on the tails).

    Shapes: ``x`` is ``(*batch, input_size)``, ``context`` is ``(*batch, context_size)``.

    Arguments:
        input_size: number of features ``D``.
        n_layers: number of layers.
        hidden_sizes: widths of each conditioner (MADE or MLP).
        degree: polynomial degree ``M``.
        tail_bound: half-width ``B`` of the polynomial's interval.
        autoregressive: autoregressive layers if True, coupling layers otherwise.
        context_size: size of the context (0 for an unconditional flow; with an
            ``embedding``, 0 or its ``output_size``).
        embedding: the JSON spec of an embedding net for the context, recorded in ``config``.
        bounds: the support, one entry per dimension, or ``None`` for the real line.
        tol: relative tolerance of the numerical inverses (``None``: the dtype's default).
        max_iter: iteration limit of the numerical inverses.

    References:
        Ramasinghe, Fernando, Seneviratne, Lucey, "Robust normalizing flows using
        Bernstein-type polynomials", 2021, arXiv:2102.03509. Sick, Hothorn, Dürr, "Deep
        transformation models", 2021, arXiv:2004.00464.

    Example:
        >>> flow = BernsteinFlow(2, n_layers=2, hidden_sizes=(16,))
        >>> x = torch.randn(10, 2)
        >>> flow.log_prob(x).shape, flow.sample(4).shape
        (torch.Size([10]), torch.Size([4, 2]))
    """

    def __init__(
        self,
        input_size: int,
        n_layers: int = 5,
        hidden_sizes: Sequence[int] = (64, 64),
        degree: int = 10,
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
            lambda: BernsteinTransformer(degree, tail_bound, tol=tol, max_iter=max_iter),
            input_size,
            n_layers,
            hidden_sizes,
            context_size,
            autoregressive,
            bounds,
        )
        super().__init__(chain, context_encoder=encoder)
