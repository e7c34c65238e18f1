"""Rational-quadratic spline transformer and the spline coupling / autoregressive layers."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from torchnf.core.registry import register
from torchnf.functional.splines import rqs_forward, rqs_inverse, rqs_knots
from torchnf.layers.autoregressive import MaskedAutoregressive
from torchnf.layers.coupling import Coupling, _mlp_coupling_args
from torchnf.layers.transformers import Transformer
from torchnf.nets.made import MADE


class RQSTransformer(Transformer):
    r"""Monotone rational-quadratic spline ``y_i = f(x_i; \theta_i)`` on ``[-B, B]``.

    ``params[..., i, :]`` holds ``n_bins`` unnormalized widths, ``n_bins`` unnormalized
    heights and ``n_bins - 1`` unconstrained interior derivatives
    (``params_per_feature = 3 n_bins - 1``), turned into knots by
    :func:`torchnf.functional.splines.rqs_knots`. Outside ``[-B, B]`` the map is the identity
    with ``log_det = 0``; all-zero parameters give the identity everywhere.

    Arguments:
        n_bins: number of bins ``K``.
        tail_bound: half-width ``B`` of the interval.
        min_bin_width: smallest bin width, as a fraction of ``2 B``.
        min_bin_height: smallest bin height, as a fraction of ``2 B``.
        min_derivative: smallest derivative at a knot.

    References:
        Durkan et al., "Neural Spline Flows", 2019, arXiv:1906.04032.

    Example:
        >>> tau = RQSTransformer(n_bins=4, tail_bound=3.0)
        >>> x = torch.randn(5, 2)
        >>> y, log_det = tau(x, torch.zeros(5, 2, tau.params_per_feature))
        >>> torch.allclose(y, x, atol=1e-6), log_det.shape
        (True, torch.Size([5, 2]))
    """

    def __init__(
        self,
        n_bins: int = 8,
        tail_bound: float = 5.0,
        min_bin_width: float = 1e-3,
        min_bin_height: float = 1e-3,
        min_derivative: float = 1e-3,
    ) -> None:
        super().__init__()
        if n_bins < 1 or tail_bound <= 0:
            raise ValueError(f"expected n_bins >= 1 and tail_bound > 0, got {n_bins}, {tail_bound}")
        self.n_bins = n_bins
        self.tail_bound = float(tail_bound)
        self.minimums = (min_bin_width, min_bin_height, min_derivative)
        self.params_per_feature = 3 * n_bins - 1

    def _knots(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        k = self.n_bins
        widths, heights, derivatives = params.split([k, k, k - 1], dim=-1)
        return rqs_knots(widths, heights, derivatives, self.tail_bound, *self.minimums)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return rqs_forward(x, *self._knots(params))

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return rqs_inverse(y, *self._knots(params))

    def extra_repr(self) -> str:
        return f"n_bins={self.n_bins}, tail_bound={self.tail_bound}"


@register(
    "layer",
    example=lambda context_size: SplineCoupling(
        4, hidden_sizes=(8,), context_size=context_size, n_bins=4, tail_bound=3.0
    ),
    conditional=True,
)
class SplineCoupling(Coupling):
    r"""Rational-quadratic spline coupling ``y = f(x | c)``:
    :math:`y_{\bar m} = \mathrm{RQS}(x_{\bar m}; g(x_m, c))`.

    A :class:`~torchnf.layers.coupling.Coupling` with an :class:`RQSTransformer` and an MLP
    conditioner; identity outside ``[-tail_bound, tail_bound]`` and at initialization.
    Shapes as :class:`~torchnf.layers.coupling.Coupling`.

    Arguments:
        input_size: number of features ``D >= 2``.
        mask: bool ``(D,)`` of kept features; default alternating, starting at ``parity``.
        parity: 0 keeps even features, 1 odd ones.
        hidden_sizes: widths of the conditioner MLP.
        context_size: size of the context (0 for none).
        n_bins: number of spline bins.
        tail_bound: half-width of the spline interval.

    References:
        Durkan et al., "Neural Spline Flows", 2019, arXiv:1906.04032.

    Example:
        >>> layer = SplineCoupling(4, hidden_sizes=(16,))
        >>> x = torch.randn(8, 4)
        >>> torch.allclose(layer(x)[0], x, atol=1e-5)
        True
    """

    def __init__(
        self,
        input_size: int,
        mask: Tensor | None = None,
        parity: int = 0,
        hidden_sizes: Sequence[int] = (64, 64),
        context_size: int = 0,
        n_bins: int = 8,
        tail_bound: float = 5.0,
    ) -> None:
        transformer = RQSTransformer(n_bins, tail_bound)
        super().__init__(
            *_mlp_coupling_args(transformer, input_size, mask, parity, hidden_sizes, context_size)
        )


@register(
    "layer",
    example=lambda context_size: SplineAutoregressive(
        4, hidden_sizes=(8,), context_size=context_size, n_bins=4, tail_bound=3.0
    ),
    conditional=True,
)
class SplineAutoregressive(MaskedAutoregressive):
    r"""Autoregressive rational-quadratic spline ``y = f(x | c)``:
    :math:`y_i = \mathrm{RQS}(x_i; g_i(x_{<i}, c))`.

    A :class:`~torchnf.layers.autoregressive.MaskedAutoregressive` with an
    :class:`RQSTransformer` and a MADE conditioner. Shapes as
    :class:`~torchnf.layers.autoregressive.MaskedAutoregressive`.

    Arguments:
        input_size: number of features ``D``.
        hidden_sizes: widths of the MADE's hidden layers.
        context_size: size of the context (0 for none).
        residual: use residual blocks in the MADE.
        n_bins: number of spline bins.
        tail_bound: half-width of the spline interval.

    References:
        Durkan et al., "Neural Spline Flows", 2019, arXiv:1906.04032.

    Example:
        >>> layer = SplineAutoregressive(3, hidden_sizes=(16,))
        >>> y, log_det = layer(torch.randn(8, 3))
        >>> y.shape, log_det.shape
        (torch.Size([8, 3]), torch.Size([8]))
    """

    def __init__(
        self,
        input_size: int,
        hidden_sizes: Sequence[int] = (64, 64),
        context_size: int = 0,
        residual: bool = False,
        n_bins: int = 8,
        tail_bound: float = 5.0,
    ) -> None:
        transformer = RQSTransformer(n_bins, tail_bound)
        made = MADE(
            input_size, transformer.params_per_feature, hidden_sizes, context_size, residual
        )
        super().__init__(transformer, made)
