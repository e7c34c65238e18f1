r"""Variational dequantization as a bijector that keeps every point in its unit bin.

Uniform dequantization fits a density ``p`` to ``v = k + u``, ``u ~ U[0, 1)^d``, for the
integers ``k``, and :math:`\log P(k) \ge E_u[\log p(k + u)]`. Variational dequantization
(Flow++, Ho et al., 2019, arXiv:1902.00275) draws ``u`` from a learned ``q(u | k)`` on
``[0, 1)^d`` instead and bounds :math:`\log P(k) \ge E_q[\log p(k + u) - \log q(u | k)]`.

Written as ``u = g(\epsilon | k)``, ``\epsilon ~ U[0, 1)^d``, with ``g(\cdot | k)`` a bijection of
the unit cube, :math:`\log q(u | k) = -\log|\det \partial g / \partial \epsilon|`, so the
ELBO integrand is :math:`\log p(h(v)) + \log|\det \partial h / \partial v|` at
``v = k + \epsilon``, where :math:`h(v) = k + g(v - k | k)`, :math:`k = \lfloor v \rfloor`,
maps each unit bin onto itself. :class:`VariationalDequantization` is that ``h``: put it first
in a flow, and the flow's ``log_prob`` of uniformly dequantized data is the variational
bound's integrand, so uniform noise (``fit(..., dequantize=...)``) trains ``p`` and ``q``
jointly, and the flow's mass on a bin is the inner density's, :math:`P(k)`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from torchnf.core.bijector import Bijector, Shape
from torchnf.core.chain import Chain
from torchnf.core.flow import ContextStandardizer
from torchnf.core.registry import register
from torchnf.layers.autoregressive import MaskedAutoregressive
from torchnf.layers.permutation import Reverse
from torchnf.layers.splines import RQSTransformer
from torchnf.nets.made import MADE


@register(
    "layer",
    example=lambda context_size: VariationalDequantization(
        (4,), [0, 2, 3], hidden_sizes=(8,), n_layers=2, n_bins=4
    ),
)
class VariationalDequantization(Bijector):
    r"""Bin-preserving map ``y = f(x)``: on the discrete coordinates,
    :math:`y_d = k + g(x_d - k \mid c)`, :math:`k = \lfloor x_d \rfloor`; the others pass.

    ``g(\cdot | c)`` maps ``[0, 1)^d`` onto itself: ``0.5 + T(\epsilon - 0.5 | c)`` with ``T``
    ``n_layers`` autoregressive rational-quadratic splines on ``[-0.5, 0.5]`` (no tails, no
    affine map; :class:`~torchnf.layers.SplineAutoregressive`, the order reversed between
    them), conditioned on ``c``: the point with its discrete coordinates floored (the
    integers ``k`` and the continuous values), standardized by :meth:`initialize`. So ``g`` is
    ``q``'s sampler, :math:`\log q(u | k) = -\log|\det \partial g / \partial\epsilon|`, and
    :math:`\log|\det \partial f / \partial x| = \log|\det \partial g / \partial\epsilon|`
    (``c`` holds no discrete ``x_d`` beyond its bin, so the Jacobian is triangular). A fresh
    layer is the identity (uniform dequantization). Outputs are kept below ``k + 1`` against
    rounding.

    Shapes: ``x`` and ``y`` are ``(*batch, *event_shape)``, ``log_det`` is ``(*batch,)``; the
    discrete coordinates index the flattened event.

    Arguments:
        event_shape: ``D`` or the shape of one event, e.g. ``(C, H, W)``.
        discrete: indices of the discrete coordinates in the flattened event (``None``: all).
        hidden_sizes: widths of each spline's MADE.
        n_layers: number of autoregressive spline layers.
        n_bins: spline bins.

    References:
        Flow++: improving flow-based generative models with variational dequantization and
        architecture design (Ho et al., 2019, arXiv:1902.00275); Neural Spline Flows (Durkan
        et al., 2019, arXiv:1906.04032).

    Example:
        >>> layer = VariationalDequantization(3, discrete=[0, 2], hidden_sizes=(8,))
        >>> x = torch.tensor([[2.25, -0.3, 5.5]])
        >>> y, log_det = layer(x)
        >>> bool((y.floor() == x.floor()).all()), bool(y[0, 1] == x[0, 1])  # bins kept
        (True, True)
        >>> layer.inverse(y).allclose(x)
        True
    """

    def __init__(
        self,
        event_shape: Shape | int,
        discrete: Sequence[int] | None = None,
        hidden_sizes: Sequence[int] = (64,),
        n_layers: int = 2,
        n_bins: int = 8,
    ) -> None:
        super().__init__(event_shape)
        size = self.input_size
        indices = list(range(size)) if discrete is None else [int(i) for i in discrete]
        if not indices or len(set(indices)) != len(indices) or not 0 <= min(indices):
            raise ValueError(f"expected distinct discrete indices in [0, {size}), got {discrete}")
        if max(indices) >= size:
            raise ValueError(f"expected distinct discrete indices in [0, {size}), got {discrete}")
        if n_layers < 1:
            raise ValueError(f"expected n_layers >= 1, got {n_layers}")
        self.register_buffer("discrete", torch.tensor(sorted(indices)), persistent=False)
        d = len(indices)
        layers: list[Bijector] = []
        for i in range(n_layers):
            layers += [Reverse(d)] if i else []
            spline = RQSTransformer(n_bins, tail_bound=0.5, affine=False)
            made = MADE(d, spline.params_per_feature, hidden_sizes, context_size=size)
            layers.append(MaskedAutoregressive(spline, made))
        self.transform = Chain(*layers)
        self.standardizer = ContextStandardizer((size,))

    @property
    def initialized(self) -> Tensor:
        """Whether :meth:`initialize` has set the standardization of ``c``."""
        return self.standardizer.initialized

    def _parts(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The flattened point, its bins ``k``, offsets ``x_d - k`` and the condition ``c``."""
        flat = x.reshape(*x.shape[: x.dim() - self.event_dim], self.input_size)
        values = flat.index_select(-1, self.discrete)
        bins = values.floor()
        return flat, bins, values - bins, flat.index_copy(-1, self.discrete, bins)

    def _initialize(self, x: Tensor, context: Tensor | None) -> None:
        self.standardizer.initialize(self._parts(x)[3].reshape(-1, self.input_size))

    def _map(self, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        flat, bins, offsets, condition = self._parts(x)
        step = self.transform.inverse_and_log_det if inverse else self.transform
        moved, log_det = step(offsets - 0.5, self.standardizer(condition))
        # k + offset in [k, k + 1): move a k + 0.99... rounded up to k + 1 back below it.
        y, top = bins + (moved + 0.5), bins + 1
        inside = torch.where(y < top, y, top - top.abs().clamp(min=1) * torch.finfo(y.dtype).eps)
        return flat.index_copy(-1, self.discrete, inside).reshape(x.shape), log_det

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._map(x, inverse=False)

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._map(y, inverse=True)

    def extra_repr(self) -> str:
        return f"event_shape={self.event_shape}, discrete={self.discrete.tolist()}"
