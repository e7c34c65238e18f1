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
    r"""``y = x * exp(s) + t`` with ``s = scale_bound * tanh(s_raw / scale_bound)``.

    ``params[..., 0]`` is the shift ``t``, ``params[..., 1]`` the raw log-scale. The soft clamp
    keeps ``|s| < scale_bound`` so the scale can neither vanish nor explode (RealNVP,
    Dinh et al. 2017, arXiv:1605.08803).

    Arguments:
        scale_bound: bound on the absolute log-scale.
    """

    params_per_feature = 2

    def __init__(self, scale_bound: float = 3.0) -> None:
        super().__init__()
        self.scale_bound = scale_bound

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor]:
        # unbind: its backward is one stack, where two selects would each fill a zero tensor.
        shift, log_scale = params.unbind(-1)
        return shift, soft_clamp(log_scale, self.scale_bound)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return affine_forward(x, *self._split(params))

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return affine_inverse(y, *self._split(params))

    def extra_repr(self) -> str:
        return f"scale_bound={self.scale_bound}"


class AdditiveTransformer(Transformer):
    r"""``y = x + t``: volume preserving (NICE, Dinh et al. 2014, arXiv:1410.8516)."""

    params_per_feature = 1

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return x + params[..., 0], x.new_zeros(()).expand_as(x)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return y - params[..., 0], y.new_zeros(()).expand_as(y)
