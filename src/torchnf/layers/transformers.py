"""Elementwise monotone transformers driven by a conditioner's parameters.

A transformer maps each feature ``x_i`` to ``y_i = tau(x_i; theta_i)`` where ``theta_i`` has
``params_per_feature`` entries produced by a conditioner (coupling MLP, MADE, ...). All-zero
parameters give the identity, so a zero-initialized conditioner starts as the identity map.
``forward(x, params)`` and ``inverse(y, params)`` take ``x`` of shape ``(*batch, D)`` and
``params`` of shape ``(*batch, D, params_per_feature)`` and return ``(out, log_det)`` with the
*elementwise* log-derivative of shape ``(*batch, D)``; layers sum it over the features they
transform. The maths lives in :mod:`torchnf.functional`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from torchnf.functional.affine import affine_forward, affine_inverse, soft_clamp


class Transformer(nn.Module):
    """Base class: an elementwise bijection parametrized per feature (no own parameters)."""

    params_per_feature: int

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class AffineTransformer(Transformer):
    r"""``y = x e^{s} + t``, or ``y = (x + t) e^{s}`` with ``shift_first``;
    ``s = b \tanh(s_{raw} / b)``.

    ``params[..., 0]`` is the shift ``t``, ``params[..., 1]`` the raw log-scale. The soft clamp
    keeps ``|s| < b`` (``b = scale_bound``) so the scale can neither vanish nor explode
    (RealNVP, Dinh et al. 2017, arXiv:1605.08803). The elementwise log-det is ``s`` either way.

    The two forms are the same family (``t e^{s}`` for ``t``) but round differently. In
    floating point, the round trip that starts where the shift is added first is accurate to a
    few ulps of ``max(|x|, |t|)``; the other one loses ``|t| e^{-s}`` ulps, because
    ``x e^{s} + t`` rounds away the digits of a small ``x e^{s}`` next to a large ``t``, and
    ``e^{-s}`` (up to ``e^{b}``) magnifies the loss on the way back. Likewise a conditioner's
    rounding of ``t`` (an autoregressive inverse computes it again, summing in another order)
    moves ``x`` by as much in the shift-first form, ``e^{-s}`` times as much in the other.
    So ``shift_first=True`` suits a layer whose forward (normalizing) direction meets the
    data, as in MAF (whose paper writes :math:`u_i = (x_i - \mu_i) e^{-\alpha_i}`), and
    ``shift_first=False`` one used through its inverse, as in IAF, where
    ``x = (y - t) e^{-s}`` meets the data.

    Arguments:
        scale_bound: bound ``b`` on the absolute log-scale.
        shift_first: ``y = (x + t) e^{s}`` (inverse ``x = y e^{-s} - t``) instead of
            ``y = x e^{s} + t`` (inverse ``x = (y - t) e^{-s}``).

    Example:
        >>> x = torch.linspace(-1, 1, 101)
        >>> params = torch.tensor([1000.0, -30.0]).expand(101, 2)  # t = 1000, s = -3
        >>> def worst(tau):
        ...     return float((tau.inverse(tau(x, params)[0], params)[0] - x).abs().max())
        >>> worst(AffineTransformer(shift_first=True)) < 2e-4 < worst(AffineTransformer())
        True
    """

    params_per_feature = 2

    def __init__(self, scale_bound: float = 3.0, shift_first: bool = False) -> None:
        super().__init__()
        self.scale_bound = scale_bound
        self.shift_first = shift_first

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor]:
        # unbind: its backward is one stack, where two selects would each fill a zero tensor.
        shift, log_scale = params.unbind(-1)
        return shift, soft_clamp(log_scale, self.scale_bound)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self._split(params)
        if self.shift_first:
            return (x + shift) * torch.exp(log_scale), log_scale
        return affine_forward(x, shift, log_scale)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self._split(params)
        if self.shift_first:
            return y * torch.exp(-log_scale) - shift, -log_scale
        return affine_inverse(y, shift, log_scale)

    def extra_repr(self) -> str:
        return f"scale_bound={self.scale_bound}, shift_first={self.shift_first}"


class AdditiveTransformer(Transformer):
    r"""``y = x + t``: volume preserving (NICE, Dinh et al. 2014, arXiv:1410.8516)."""

    params_per_feature = 1

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return x + params[..., 0], x.new_zeros(()).expand_as(x)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return y - params[..., 0], y.new_zeros(()).expand_as(y)
