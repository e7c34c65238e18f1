r"""Monotone rational-quadratic splines (RQS), forward and inverse, as pure tensor functions.

A spline with ``K`` bins is given by ``K + 1`` increasing knots :math:`(x_k, y_k)` and positive
derivatives :math:`d_k` at the knots. On bin ``k``, with :math:`w = x_{k+1} - x_k`,
:math:`h = y_{k+1} - y_k`, :math:`s = h / w` and :math:`\theta = (x - x_k) / w \in [0, 1]`,

.. math::

    y = y_k + \frac{h\,(s\theta^2 + d_k\theta(1-\theta))}{s + (d_k + d_{k+1} - 2s)\theta(1-\theta)},
    \qquad
    \frac{dy}{dx} = \frac{s^2 (d_{k+1}\theta^2 + 2s\theta(1-\theta) + d_k(1-\theta)^2)}
    {(s + (d_k + d_{k+1} - 2s)\theta(1-\theta))^2}.

Outside ``[x_0, x_K]`` the map is the identity with ``log_det = 0`` (the knots put
``y_0 = x_0``, ``y_K = x_K`` and ``d_0 = d_K = 1``, so the map is continuously differentiable).

Every function is branch-free with static shapes: inputs are clamped into the interval before
any arithmetic and the result is selected afterwards with ``torch.where``, so out-of-range
inputs (``|x| = 1e4``, every input in the tails) produce neither NaN values nor NaN gradients.
The inverse solves the per-bin quadratic :math:`a\theta^2 + b\theta + c = 0` for its root in
``[0, 1]`` without cancellation: :math:`\theta = 2c / (-b - \sqrt{b^2 - 4ac})` when
:math:`b \ge 0`, :math:`\theta = (\sqrt{b^2 - 4ac} - b) / (2a)` otherwise, with the
discriminant clamped at zero.

In eager mode the gradients of the per-bin maps are hand-derived (the inverse's by the
implicit function theorem, from the forward's partials) instead of recorded op by op: fewer
passes over memory (on a CPU, with the knots' own work included, the inverse and its backward
1.24x faster, the forward 1.02x, an NSF training step 1.01x at D = 16 and 1.07x at D = 64;
``benchmarks/ablations.py``), still differentiable twice and vmap-able. Under
:func:`torch.compile` autograd's own derivative is traced and fused.

References:
    Durkan, Bekasov, Murray, Papamakarios, "Neural Spline Flows", 2019, arXiv:1906.04032.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def rqs_knots(
    widths: Tensor,
    heights: Tensor,
    derivatives: Tensor,
    bound: float,
    min_bin_width: float = 1e-3,
    min_bin_height: float = 1e-3,
    min_derivative: float = 1e-3,
    *,
    periodic: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Knots of a spline on ``[-bound, bound]`` from unconstrained parameters.

    Bin widths are ``2 bound (m + (1 - K m) softmax(widths))`` with ``m = min_bin_width``
    (heights alike), interior derivatives ``min_derivative + softplus(derivatives + c)`` with
    ``c`` chosen so that zero gives 1, and the two boundary derivatives are 1. All-zero
    parameters therefore give the identity.

    With ``periodic`` the boundary derivative is learned too, one value shared by both ends
    (:math:`d_0 = d_K`, from the last entry of ``derivatives``), so the spline's derivative
    is continuous across the seam when ``[-B, B)`` is read as a circle (the circular splines
    of Rezende et al., 2020, arXiv:2002.02428).

    Arguments:
        widths: ``(..., K)`` unnormalized bin widths.
        heights: ``(..., K)`` unnormalized bin heights.
        derivatives: ``(..., K - 1)`` unconstrained interior derivatives; ``(..., K)`` with
            ``periodic``, the last one the boundary derivative.
        bound: half-width ``B`` of the interval ``[-B, B]``.
        min_bin_width: smallest bin width, as a fraction of ``2 B``.
        min_bin_height: smallest bin height, as a fraction of ``2 B``.
        min_derivative: smallest derivative at a knot.
        periodic: learn one derivative shared by the two ends instead of fixing both at 1.

    Returns:
        ``(knots_x, knots_y, derivatives)``, each of shape ``(..., K + 1)``.

    Example:
        >>> z = torch.zeros(3, 4)
        >>> knots_x, knots_y, d = rqs_knots(z, z, torch.zeros(3, 3), bound=2.0)
        >>> knots_x[0]
        tensor([-2., -1.,  0.,  1.,  2.])
    """
    n_bins = widths.shape[-1]
    if heights.shape[-1] != n_bins or derivatives.shape[-1] != n_bins - 1 + periodic:
        raise ValueError(
            f"expected widths (..., K), heights (..., K) and derivatives "
            f"(..., K{' - 1' * (not periodic)}), got "
            f"{tuple(widths.shape)}, {tuple(heights.shape)} and {tuple(derivatives.shape)}"
        )
    if min_bin_width * n_bins >= 1 or min_bin_height * n_bins >= 1:
        raise ValueError(
            f"expected min_bin_width and min_bin_height < 1 / n_bins = {1 / n_bins}, got "
            f"{min_bin_width} and {min_bin_height}"
        )
    if not 0 < min_derivative < 1:
        raise ValueError(f"expected 0 < min_derivative < 1, got {min_derivative}")
    knots_x = _knots(widths, bound, min_bin_width)
    knots_y = _knots(heights, bound, min_bin_height)
    shift = math.log(math.expm1(1 - min_derivative))
    # softplus as logaddexp: exact for large inputs too (F.softplus switches to linear at 20).
    inner = min_derivative + torch.logaddexp(derivatives + shift, derivatives.new_zeros(()))
    if periodic:  # [d_K, d_1, ..., d_{K-1}, d_K]
        return knots_x, knots_y, torch.cat([inner[..., -1:], inner], dim=-1)
    d = F.pad(inner, (1, 1), value=1.0)
    return knots_x, knots_y, d


def _knots(unnormalized: Tensor, bound: float, minimum: float) -> Tensor:
    n_bins = unnormalized.shape[-1]
    scale = 1 - minimum * n_bins
    # Both ends exactly at -bound and bound, whatever the rounding of the cumulative sum.
    if torch.compiler.is_compiling():
        # Inductor fuses a softmax over the last dimension and the padding into its own
        # kernels; the eager layout below (leading dimension, in-place end) makes its loops
        # strided and NSF's compiled training step about 1.3x slower.
        fractions = minimum + scale * torch.softmax(unnormalized, dim=-1)
        inner = bound * (2 * torch.cumsum(fractions[..., :-1], dim=-1) - 1)
        return F.pad(F.pad(inner, (1, 0), value=-bound), (0, 1), value=bound)
    # Softmax and cumsum over the leading dimension: ATen's CPU kernels over a short last
    # dimension are several times slower (4x forward and backward for 8 bins at batch 4096).
    fractions = minimum + scale * torch.softmax(unnormalized.movedim(-1, 0), dim=0)
    cumulative = torch.cumsum(fractions[:-1], dim=0).movedim(0, -1)
    knots = F.pad(bound * (2 * cumulative - 1), (1, 1), value=-bound)
    knots[..., -1] = bound
    return knots


def _bin(
    v: Tensor, knots: Tensor, knots_x: Tensor, knots_y: Tensor, derivatives: Tensor
) -> tuple[Tensor, ...]:
    """Clamp ``v`` into ``[knots_0, knots_K]`` and gather its bin: ``(v, inside, x_k, w, y_k,
    h, d_k, d_k1)``."""
    lo, hi = knots[..., 0], knots[..., -1]
    inside = (v >= lo) & (v <= hi)
    v = torch.minimum(torch.maximum(v, lo), hi)
    index = (v[..., None] >= knots[..., 1:-1]).sum(-1, keepdim=True)
    x_k, x_k1 = _ends(knots_x, index)
    y_k, y_k1 = _ends(knots_y, index)
    d_k, d_k1 = _ends(derivatives, index)
    return v, inside, x_k, x_k1 - x_k, y_k, y_k1 - y_k, d_k, d_k1


def _ends(t: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    """``t`` at ``index`` and ``index + 1`` along the last dimension (``index`` is ``(..., 1)``)."""
    if torch.compiler.is_compiling():
        # Inductor fuses each gather into its consumers as an indexed load; a gather of the
        # concatenated indices would be materialized.
        return t.gather(-1, index).squeeze(-1), t.gather(-1, index + 1).squeeze(-1)
    # One gather for both ends of the bin (half the gathers and their backward buffers).
    return t.gather(-1, torch.cat([index, index + 1], dim=-1)).unbind(-1)


def _log_slope(theta: Tensor, s: Tensor, d_k: Tensor, d_k1: Tensor) -> tuple[Tensor, Tensor]:
    """Return the denominator and ``log dy/dx`` at ``theta`` within a bin."""
    t1 = theta * (1 - theta)
    denominator = s + (d_k + d_k1 - 2 * s) * t1
    numerator = s.square() * (d_k1 * theta.square() + 2 * s * t1 + d_k * (1 - theta).square())
    return denominator, torch.log(numerator) - 2 * torch.log(denominator)


def _broadcast(v: Tensor, *params: Tensor) -> tuple[Tensor, ...]:
    shape = torch.broadcast_shapes(v.shape, *(p.shape[:-1] for p in params))
    return (v.expand(shape), *(p.expand(*shape, p.shape[-1]) for p in params))


def rqs_forward(
    x: Tensor, knots_x: Tensor, knots_y: Tensor, derivatives: Tensor
) -> tuple[Tensor, Tensor]:
    r"""Apply the spline elementwise: ``y = f(x)`` and ``log dy/dx``.

    Arguments:
        x: inputs ``(...)``.
        knots_x: ``(..., K + 1)`` increasing knot abscissae (from :func:`rqs_knots`).
        knots_y: ``(..., K + 1)`` increasing knot ordinates, same ends as ``knots_x``.
        derivatives: ``(..., K + 1)`` positive derivatives at the knots, 1 at both ends.

    Returns:
        ``(y, log_det)``, both shaped like ``x``; identity and 0 outside the interval.

    Example:
        >>> z = torch.zeros(4)
        >>> knots = rqs_knots(z, z, torch.zeros(3), bound=1.0)
        >>> y, log_det = rqs_forward(torch.tensor([-3.0, 0.3, 3.0]), *knots)
        >>> y, bool(log_det.abs().max() < 1e-6)
        (tensor([-3.0000,  0.3000,  3.0000]), True)
    """
    x, knots_x, knots_y, derivatives = _broadcast(x, knots_x, knots_y, derivatives)
    xc, inside, *bin_ = _bin(x, knots_x, knots_x, knots_y, derivatives)
    if torch.compiler.is_compiling():  # inductor fuses autograd's backward itself
        return _in_bin_forward(x, xc, inside, *bin_)
    return _InBin.apply(False, x, xc, inside, *bin_)


def rqs_inverse(
    y: Tensor, knots_x: Tensor, knots_y: Tensor, derivatives: Tensor
) -> tuple[Tensor, Tensor]:
    r"""Invert the spline elementwise: ``x = f^{-1}(y)`` and ``log dx/dy``.

    Arguments as :func:`rqs_forward`, with ``y`` in place of ``x``.

    Returns:
        ``(x, log_det)``, both shaped like ``y``; identity and 0 outside the interval.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> params = torch.randn(11, generator=g)
        >>> knots = rqs_knots(params[:4], params[4:8], params[8:], bound=2.0)
        >>> x = torch.tensor([-1.5, 0.0, 1.9])
        >>> y, log_det = rqs_forward(x, *knots)
        >>> x_back, log_det_inv = rqs_inverse(y, *knots)
        >>> torch.allclose(x_back, x, atol=1e-6), torch.allclose(log_det_inv, -log_det, atol=1e-6)
        (True, True)
    """
    y, knots_x, knots_y, derivatives = _broadcast(y, knots_x, knots_y, derivatives)
    yc, inside, *bin_ = _bin(y, knots_y, knots_x, knots_y, derivatives)
    if torch.compiler.is_compiling():
        return _in_bin_inverse(y, yc, inside, *bin_)
    return _InBin.apply(True, y, yc, inside, *bin_)


def _in_bin_forward(
    x: Tensor,
    xc: Tensor,
    inside: Tensor,
    x_k: Tensor,
    w: Tensor,
    y_k: Tensor,
    h: Tensor,
    d_k: Tensor,
    d_k1: Tensor,
) -> tuple[Tensor, Tensor]:
    """The spline at ``x`` (clamped: ``xc``) on its bin, the identity outside."""
    theta = ((xc - x_k) / w).clamp(0, 1)
    s = h / w
    denominator, log_det = _log_slope(theta, s, d_k, d_k1)
    y = y_k + h * (s * theta.square() + d_k * theta * (1 - theta)) / denominator
    return torch.where(inside, y, x), torch.where(inside, log_det, torch.zeros_like(log_det))


def _in_bin_inverse(
    y: Tensor,
    yc: Tensor,
    inside: Tensor,
    x_k: Tensor,
    w: Tensor,
    y_k: Tensor,
    h: Tensor,
    d_k: Tensor,
    d_k1: Tensor,
) -> tuple[Tensor, Tensor]:
    """The inverse at ``y`` (clamped: ``yc``) on its bin, the identity outside."""
    s = h / w
    dy = yc - y_k
    slope_sum = d_k + d_k1 - 2 * s
    a = h * (s - d_k) + dy * slope_sum
    b = h * d_k - dy * slope_sum
    c = -s * dy
    tiny = torch.finfo(y.dtype).tiny
    # The discriminant is positive in exact arithmetic (the spline is strictly monotone); clamp
    # rounding below zero, away from zero so the square root's gradient stays finite.
    root = torch.sqrt((b.square() - 4 * a * c).clamp_min(tiny))
    # The root in [0, 1] without cancellation: 2c / (-b - root) when b >= 0 (the denominator is
    # <= -root < 0), (root - b) / (2a) when b < 0 (then a > 0 since c <= 0). Both branches are
    # computed on safe operands, then selected.
    positive = b >= 0
    q = -0.5 * (b + torch.where(positive, root, -root))
    a_safe = torch.where(positive, torch.ones_like(a), a).clamp_min(tiny)
    theta = torch.where(positive, c / q.clamp(max=-tiny), q / a_safe).clamp(0, 1)
    _, log_det = _log_slope(theta, s, d_k, d_k1)
    x = x_k + theta * w
    return torch.where(inside, x, y), torch.where(inside, -log_det, torch.zeros_like(log_det))


def _partials(
    point: Tensor, x_k: Tensor, w: Tensor, h: Tensor, d_k: Tensor, d_k1: Tensor
) -> tuple[Tensor, ...]:
    r"""Partial derivatives of a bin's map at the abscissa ``point``, for the analytic
    gradients.

    With :math:`t = \theta = (\text{point} - x_k) / w` (clamped to [0, 1]), :math:`s = h / w`,
    :math:`t_1 = t(1-t)`, :math:`D = s + (d_k + d_{k+1} - 2s)t_1`,
    :math:`Q = d_{k+1}t^2 + 2st_1 + d_k(1-t)^2`, :math:`r = h(st^2 + d_k t_1)/D = y - y_k` and
    :math:`L = \log(s^2 Q) - 2\log D` (the log-slope), returns
    ``(theta, s, y_t, y_s, y_h, y_dk, y_dk1, L_t, L_s, L_dk, L_dk1)``: ``theta``, ``s``, and
    the partials of ``y`` and of ``L`` with respect to ``t``, ``s``, ``h`` (with ``s`` held
    fixed), :math:`d_k` and :math:`d_{k+1}`.
    """
    theta = ((point - x_k) / w).clamp(0, 1)
    s = h / w
    t1 = theta * (1 - theta)
    u = 1 - theta
    slope_sum = d_k + d_k1 - 2 * s
    denominator = s + slope_sum * t1
    q = d_k1 * theta.square() + 2 * s * t1 + d_k * u.square()
    inv_d, inv_q = 1 / denominator, 1 / q
    shape = s * theta.square() + d_k * t1  # r = h * shape / D
    r = h * shape * inv_d
    one_minus_2t = 1 - 2 * theta
    one_minus_2t1 = 1 - 2 * t1
    y_t = h * s * q * inv_d.square()
    y_s = (h * theta.square() - r * one_minus_2t1) * inv_d
    y_h = shape * inv_d
    y_dk = (h - r) * t1 * inv_d
    y_dk1 = -r * t1 * inv_d
    two_t1_d = 2 * t1 * inv_d
    l_t = (
        2 * (d_k1 * theta + s * one_minus_2t - d_k * u) * inv_q
        - 2 * slope_sum * one_minus_2t * inv_d
    )
    l_s = 2 / s + 2 * t1 * inv_q - 2 * one_minus_2t1 * inv_d
    l_dk = u.square() * inv_q - two_t1_d
    l_dk1 = theta.square() * inv_q - two_t1_d
    return theta, s, y_t, y_s, y_h, y_dk, y_dk1, l_t, l_s, l_dk, l_dk1


class _InBin(torch.autograd.Function):
    """:func:`_in_bin_forward` (or, with ``inverse``, :func:`_in_bin_inverse`) with a
    hand-derived backward, in fewer passes over memory than autograd's op-by-op one;
    differentiable again, and vmap-able (``check``'s batched Jacobians)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(inverse, v, vc, inside, x_k, w, y_k, h, d_k, d_k1):
        in_bin = _in_bin_inverse if inverse else _in_bin_forward
        return in_bin(v, vc, inside, x_k, w, y_k, h, d_k, d_k1)

    @staticmethod
    def setup_context(ctx, inputs, output):
        inverse, v, vc, inside, x_k, w, y_k, h, d_k, d_k1 = inputs
        # The partials are taken at the abscissa: the clamped input, or the inverse's output.
        point = output[0] if inverse else vc
        ctx.inverse = inverse
        ctx.save_for_backward(point, inside, x_k, w, h, d_k, d_k1)
        ctx.set_materialize_grads(True)

    @staticmethod
    def backward(ctx, grad_out, grad_log_det):
        gradients = _inverse_gradients if ctx.inverse else _forward_gradients
        return None, *gradients(*ctx.saved_tensors, grad_out, grad_log_det)


def _forward_gradients(xc, inside, x_k, w, h, d_k, d_k1, grad_y, grad_log_det):
    """Gradients of the forward map's ``(y, log_det)`` in its inputs
    ``(x, xc, inside, x_k, w, y_k, h, d_k, d_k1)``."""
    theta, s, y_t, y_s, y_h, y_dk, y_dk1, l_t, l_s, l_dk, l_dk1 = _partials(
        xc, x_k, w, h, d_k, d_k1
    )
    gy = grad_y * inside
    gl = grad_log_det * inside
    a_t = (gy * y_t + gl * l_t) / w  # d/d theta, over w: the derivative in x
    a_s = (gy * y_s + gl * l_s) / w  # d/d s, over w: the derivative in h through s
    grad_x = torch.where(inside, a_t, grad_y)
    grad_w = -(a_t * theta + a_s * s)
    grad_h = gy * y_h + a_s
    grad_dk = gy * y_dk + gl * l_dk
    grad_dk1 = gy * y_dk1 + gl * l_dk1
    return grad_x, None, None, -a_t, grad_w, gy, grad_h, grad_dk, grad_dk1


def _inverse_gradients(x, inside, x_k, w, h, d_k, d_k1, grad_x, grad_log_det):
    r"""Gradients of the inverse map's ``(x, log_det)`` in its inputs, by the implicit
    function theorem: at the solution :math:`\theta` of :math:`y = F(\theta, p)`,
    :math:`d\theta = (dy - F_p\,dp) / F_\theta`, with the forward's partials."""
    theta, s, y_t, y_s, y_h, y_dk, y_dk1, l_t, l_s, l_dk, l_dk1 = _partials(x, x_k, w, h, d_k, d_k1)
    gx = grad_x * inside
    gl = grad_log_det * inside  # of -L
    c = (gx * w - gl * l_t) / y_t  # the gradient in y, through theta
    b_s = (c * y_s + gl * l_s) / w  # through s = h / w
    grad_y = torch.where(inside, c, grad_x)
    grad_w = gx * theta + b_s * s
    grad_h = -c * y_h - b_s
    grad_dk = -c * y_dk - gl * l_dk
    grad_dk1 = -c * y_dk1 - gl * l_dk1
    return grad_y, None, None, gx, grad_w, -c, grad_h, grad_dk, grad_dk1
