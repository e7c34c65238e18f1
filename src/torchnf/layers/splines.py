"""Rational-quadratic spline transformer and the spline coupling / autoregressive layers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from torchnf.core.registry import register
from torchnf.functional.affine import soft_clamp
from torchnf.functional.splines import rqs_forward, rqs_inverse, rqs_knots
from torchnf.layers.autoregressive import MaskedAutoregressive
from torchnf.layers.coupling import Coupling, _mlp_coupling_args
from torchnf.layers.transformers import Transformer
from torchnf.nets.made import MADE


class RQSTransformer(Transformer):
    r"""Conditional affine map, then a monotone rational-quadratic spline on ``[-B, B]``:
    :math:`y_i = f(x_i; \theta_i) = \mathrm{RQS}(u_i)` with ``u_i = (x_i + t_i) e^{s_i}``.

    ``params[..., i, :]`` holds ``n_bins`` unnormalized widths, ``n_bins`` unnormalized
    heights and ``n_bins - 1`` unconstrained interior derivatives, turned into knots by
    :func:`torchnf.functional.splines.rqs_knots`, then (with ``affine``) the shift ``t`` and the
    raw log-scale, soft-clamped to ``s = b \tanh(s_{raw} / b)`` with ``b = scale_bound``:
    ``params_per_feature = 3 n_bins - 1``, plus 2 with ``affine``. The spline is the identity
    outside ``[-B, B]`` (Durkan et al.), so
    :math:`\log|dy/dx| = s + \log \mathrm{RQS}'(u)`, and ``y = u`` in the tails: linear tails
    of learned slope :math:`e^{s}` and offset, conditioned like the spline. All-zero parameters
    give the identity everywhere.

    The affine map puts each conditional distribution's bulk into the spline's interval
    whatever its location and scale (a funnel's neck and mouth alike) and its tails on lines
    of learned slope; without it (``affine=False``, the spline of Durkan et al.), values that a
    conditional puts beyond ``B`` are left as they are. The shift comes first, so
    ``inverse(forward(x))`` loses no more than a few ulps of ``max(|x|, |t|)`` (see
    :class:`~torchnf.layers.transformers.AffineTransformer`).

    Arguments:
        n_bins: number of bins ``K``.
        tail_bound: half-width ``B`` of the interval.
        min_bin_width: smallest bin width, as a fraction of ``2 B``.
        min_bin_height: smallest bin height, as a fraction of ``2 B``.
        min_derivative: smallest derivative at a knot.
        affine: the conditional affine map before the spline.
        scale_bound: bound ``b`` on its absolute log-scale.

    References:
        Durkan, Bekasov, Murray, Papamakarios, "Neural Spline Flows", 2019, arXiv:1906.04032.
        Papamakarios, Pavlakou, Murray, "Masked Autoregressive Flow for Density Estimation",
        2017, arXiv:1705.07057 (the affine map).

    Example:
        >>> tau = RQSTransformer(n_bins=4, tail_bound=3.0)
        >>> x = torch.randn(5, 2)
        >>> y, log_det = tau(x, torch.zeros(5, 2, tau.params_per_feature))
        >>> torch.allclose(y, x, atol=1e-6), log_det.shape, tau.params_per_feature
        (True, torch.Size([5, 2]), 13)
        >>> params = torch.zeros(tau.params_per_feature)
        >>> params[-2:] = torch.tensor([1.0, 0.5])  # t = 1, s = 3 tanh(0.5 / 3)
        >>> y, log_det = tau(torch.tensor([-100.0, 100.0]), params)  # in the tails: y = u
        >>> s = 3 * torch.tanh(torch.tensor(0.5 / 3))
        >>> torch.allclose(y, torch.tensor([-99.0, 101.0]) * s.exp()), torch.allclose(log_det, s)
        (True, True)
    """

    def __init__(
        self,
        n_bins: int = 8,
        tail_bound: float = 5.0,
        min_bin_width: float = 1e-3,
        min_bin_height: float = 1e-3,
        min_derivative: float = 1e-3,
        affine: bool = True,
        scale_bound: float = 3.0,
    ) -> None:
        super().__init__()
        if n_bins < 1 or tail_bound <= 0 or scale_bound <= 0:
            raise ValueError(
                "expected n_bins >= 1, tail_bound > 0 and scale_bound > 0, got "
                f"{n_bins}, {tail_bound} and {scale_bound}"
            )
        self.n_bins = n_bins
        self.tail_bound = float(tail_bound)
        self.minimums = (min_bin_width, min_bin_height, min_derivative)
        self.affine = affine
        self.scale_bound = float(scale_bound)
        self.split_sizes = [n_bins, n_bins, n_bins - 1] + ([2] if affine else [])
        self.params_per_feature = sum(self.split_sizes)

    def _split(self, params: Tensor) -> tuple[tuple[Tensor, Tensor, Tensor], list[Tensor]]:
        """The knots, and ``[shift, log_scale]`` (clamped) with ``affine``, else ``[]``."""
        widths, heights, derivatives, *affine = params.split(self.split_sizes, dim=-1)
        knots = rqs_knots(widths, heights, derivatives, self.tail_bound, *self.minimums)
        if affine:
            shift, log_scale = affine[0].unbind(-1)
            affine = [shift, soft_clamp(log_scale, self.scale_bound)]
        return knots, affine

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        knots, affine = self._split(params)
        if not affine:
            return rqs_forward(x, *knots)
        shift, log_scale = affine
        y, log_det = rqs_forward((x + shift) * torch.exp(log_scale), *knots)
        return y, log_det + log_scale

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        knots, affine = self._split(params)
        if not affine:
            return rqs_inverse(y, *knots)
        shift, log_scale = affine
        u, log_det = rqs_inverse(y, *knots)
        return u * torch.exp(-log_scale) - shift, log_det - log_scale

    def extra_repr(self) -> str:
        return f"n_bins={self.n_bins}, tail_bound={self.tail_bound}, affine={self.affine}"


@register(
    "layer",
    example=lambda context_size: SplineCoupling(
        4, hidden_sizes=(8,), context_size=context_size, n_bins=4, tail_bound=3.0
    ),
    conditional=True,
)
class SplineCoupling(Coupling):
    r"""Rational-quadratic spline coupling ``y = f(x | c)``:
    :math:`y_{\bar m} = \mathrm{RQS}((x_{\bar m} + t) e^{s}; \theta)`,
    :math:`(\theta, t, s) = g(x_m, c)`.

    A :class:`~torchnf.layers.coupling.Coupling` with an :class:`RQSTransformer` (a
    conditional affine map, then the spline) and an MLP conditioner; the identity at
    initialization.
    Shapes as :class:`~torchnf.layers.coupling.Coupling`.

    Arguments:
        input_size: number of features ``D >= 2``.
        mask: bool ``(D,)`` of kept features; default alternating, starting at ``parity``.
        parity: 0 keeps even features, 1 odd ones.
        hidden_sizes: widths of the conditioner MLP.
        context_size: size of the context (0 for none).
        n_bins: number of spline bins.
        tail_bound: half-width of the spline interval.
        affine: a conditional affine map before each spline (see :class:`RQSTransformer`).
        activation: the conditioner's hidden activation, a key of
            :data:`~torchnf.nets.mlp.ACTIVATIONS`.

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
        affine: bool = True,
        activation: str = "relu",
    ) -> None:
        transformer = RQSTransformer(n_bins, tail_bound, affine=affine)
        super().__init__(
            *_mlp_coupling_args(
                transformer, input_size, mask, parity, hidden_sizes, context_size, activation
            )
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
    :math:`y_i = \mathrm{RQS}((x_i + t_i) e^{s_i}; \theta_i)`,
    :math:`(\theta_i, t_i, s_i) = g_i(x_{<i}, c)`.

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
        affine: a conditional affine map before each spline (see :class:`RQSTransformer`).
        activation: the MADE's hidden activation, a key of
            :data:`~torchnf.nets.mlp.ACTIVATIONS`.

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
        affine: bool = True,
        activation: str = "relu",
    ) -> None:
        transformer = RQSTransformer(n_bins, tail_bound, affine=affine)
        made = MADE(
            input_size,
            transformer.params_per_feature,
            hidden_sizes,
            context_size,
            residual,
            activation,
        )
        super().__init__(transformer, made)
