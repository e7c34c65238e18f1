r"""Polynomial transformers: increasing Bernstein polynomials with linear tails.

Why Bernstein rather than the sum-of-squares polynomial flow (Jaini, Selby, Yu 2019,
arXiv:1905.02325): an SOS transformer is a polynomial of odd degree ``2r + 1`` on the whole
line, so its tails grow like :math:`|x|^{2r+1}` (a Gaussian base then gives the data tails
much lighter than Gaussian, and the values and log-derivatives of a few stacked layers
overflow float32 at moderate ``|x|``), its coefficients have no direct meaning, and an
inverse bracket depends on all of them. A Bernstein polynomial on a bounded interval has
coefficients that are (by the convex-hull property) bounds on its values, is increasing as
soon as its coefficients are, and, extended by its tangent lines beyond the interval, is a
:math:`C^1` bijection of the real line with slopes bounded by its coefficients' differences,
like a spline with linear tails.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from torchnf.functional.affine import soft_clamp
from torchnf.functional.polynomial import bernstein_basis
from torchnf.layers.neural import MonotoneTransformer, _softplus_inverse


class BernsteinTransformer(MonotoneTransformer):
    r"""Conditional affine map, then an increasing Bernstein polynomial on ``[-B, B]``.

    With :math:`v = (x + t) e^{s}` (``s = b \tanh(s_{raw} / b)``, the affine map of
    :class:`~torchnf.layers.RQSTransformer`), :math:`u = (v + B) / (2B)` and
    :math:`\bar u = \mathrm{clamp}(u, 0, 1)`,

    .. math::
        y = P(\bar u) + P'(\bar u)\,(v - \bar v), \quad
        P(u) = \sum_{k=0}^{M} \theta_k\, b_{k,M}(u), \quad
        \theta_k = -B + \tilde\theta_0 + \frac{2B}{M} \sum_{i=1}^{k} \sigma_i, \quad
        \sigma_i = \epsilon + \mathrm{softplus}(\tilde\sigma_i + c),

    where :math:`P' = dP/dv = \sum_{k=0}^{M-1} \sigma_{k+1} b_{k,M-1}(u)` lies between
    :math:`\min_i \sigma_i` and :math:`\max_i \sigma_i`: increasing coefficients make an
    increasing polynomial, and beyond ``[-B, B]`` the map continues along its tangent
    (slope :math:`\sigma_1` on the left, :math:`\sigma_M` on the right), so it is a
    :math:`C^1` bijection of the real line. ``c`` makes :math:`\sigma_i = 1` at
    :math:`\tilde\sigma_i = 0`, where :math:`\theta_k = -B + 2Bk/M` and ``P`` is the identity
    (Bernstein polynomials reproduce linear functions): all-zero parameters give ``y = x``.
    :math:`\log|dy/dx| = s + \log P'(\bar u)`.

    ``params[..., :]`` is :math:`(\tilde\theta_0, \tilde\sigma_1, \dots, \tilde\sigma_M)`,
    then (with ``affine``) the shift ``t`` and the raw log-scale: ``params_per_feature =
    M + 1``, plus 2 with ``affine``. Inverse bracket: :math:`P(0) = \theta_0` and
    :math:`P(1) = \theta_M`, so for :math:`\theta_0 \le y \le \theta_M`, ``v`` lies in
    ``[-B, B]``, and beyond, on the tangent lines, it is known in closed form; the bracket is
    :math:`[-B + \min(y - \theta_0, 0)/\sigma_1,\ B + \max(y - \theta_M, 0)/\sigma_M]`, mapped
    back through the affine map. Tolerance as
    :class:`~torchnf.layers.neural.MonotoneTransformer`.

    Shapes: ``x`` ``(*batch, D)``, ``params`` ``(*batch, D, params_per_feature)``; returns
    ``(y, log_det)`` with the elementwise log-derivative ``(*batch, D)``.

    Arguments:
        degree: polynomial degree ``M >= 1``.
        tail_bound: half-width ``B`` of the interval.
        min_slope: :math:`\epsilon`, the smallest slope of the polynomial.
        affine: the conditional affine map before the polynomial.
        scale_bound: bound ``b`` on its absolute log-scale.
        tol: relative tolerance of the inverse.
        max_iter: iteration limit of the inverse.

    References:
        Ramasinghe, Fernando, Seneviratne, Lucey, "Robust normalizing flows using
        Bernstein-type polynomials", 2021, arXiv:2102.03509. Sick, Hothorn, Dürr, "Deep
        transformation models: tackling complex regression problems with neural network
        based transformation models", 2021, arXiv:2004.00464.

    Example:
        >>> tau = BernsteinTransformer(degree=6, tail_bound=3.0)
        >>> x = torch.tensor([[-50.0, 0.5, 50.0]], dtype=torch.float64)
        >>> y, log_det = tau(x, torch.zeros(1, 3, tau.params_per_feature, dtype=torch.float64))
        >>> torch.allclose(y, x), bool((log_det.abs() < 1e-12).all())
        (True, True)
    """

    def __init__(
        self,
        degree: int = 10,
        tail_bound: float = 5.0,
        min_slope: float = 1e-3,
        affine: bool = True,
        scale_bound: float = 3.0,
        tol: float | None = None,
        max_iter: int = 100,
    ) -> None:
        super().__init__(tol, max_iter)
        if degree < 1 or tail_bound <= 0 or scale_bound <= 0 or not 0 < min_slope < 1:
            raise ValueError(
                "expected degree >= 1, tail_bound > 0, scale_bound > 0 and 0 < min_slope < 1, "
                f"got {degree}, {tail_bound}, {scale_bound} and {min_slope}"
            )
        self.degree = degree
        self.tail_bound = float(tail_bound)
        self.min_slope = float(min_slope)
        self.affine = affine
        self.scale_bound = float(scale_bound)
        self.slope_offset = _softplus_inverse(1 - min_slope)
        self.split_sizes = [1, degree] + ([2] if affine else [])
        self.params_per_feature = sum(self.split_sizes)

    def _prepare(self, params: Tensor) -> tuple[Tensor, ...]:
        offset, raw_slopes, *affine = params.split(self.split_sizes, dim=-1)
        slopes = self.min_slope + F.softplus(raw_slopes + self.slope_offset)
        steps = F.pad(slopes * (2 * self.tail_bound / self.degree), (1, 0))
        coefficients = offset - self.tail_bound + steps.cumsum(-1)
        if affine:
            shift, log_scale = affine[0].unbind(-1)
            log_scale = soft_clamp(log_scale, self.scale_bound)
        else:
            shift = log_scale = params.new_zeros(()).expand(params.shape[:-1])
        return coefficients, slopes, shift, log_scale

    def _evaluate(self, x: Tensor, prepared: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        coefficients, slopes, shift, log_scale = prepared
        bound = self.tail_bound
        v = (x + shift) * torch.exp(log_scale)
        inner = v.clamp(-bound, bound)
        lower = bernstein_basis((inner + bound) / (2 * bound), self.degree - 1)
        slope = (lower * slopes).sum(-1)
        # b_{k,M} from b_{k,M-1} by one more step of the recurrence.
        u = ((inner + bound) / (2 * bound)).unsqueeze(-1)
        basis = F.pad(lower * (1 - u), (0, 1)) + F.pad(lower * u, (1, 0))
        y = (basis * coefficients).sum(-1) + slope * (v - inner)
        return y, log_scale + torch.log(slope)

    def _bracket(self, y: Tensor, prepared: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        coefficients, slopes, shift, log_scale = prepared
        bound = self.tail_bound
        low = -bound + (y - coefficients[..., 0]).clamp(max=0) / slopes[..., 0]
        high = bound + (y - coefficients[..., -1]).clamp(min=0) / slopes[..., -1]
        scale = torch.exp(-log_scale)
        return low * scale - shift, high * scale - shift

    def extra_repr(self) -> str:
        return (
            f"degree={self.degree}, tail_bound={self.tail_bound}, affine={self.affine}, "
            f"{super().extra_repr()}"
        )
