"""Bounded supports: a fixed bijection from a box (bounded per dimension) to the real line.

Put first in a flow (data to latent), it makes the flow's density live on the support:
samples never leave it, the density inside is exact, and points outside (or on) the
boundary get ``log_prob = -inf``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import constraints

from torchnf.core.bijector import Bijector
from torchnf.core.registry import register

#: The bounds of one dimension, ``(low, high)``, ``(low, None)``, ``(None, high)`` or ``None``.
Bound = Sequence[float | None] | None


def _softplus(y: Tensor) -> Tensor:
    """``log(1 + e^y)``, exact in both tails."""
    return y.clamp(min=0) + torch.log1p(torch.exp(-y.abs()))


def _parse(bounds: Sequence[Bound]) -> list[tuple[float | None, float | None]]:
    if isinstance(bounds, (str, bytes)) or not isinstance(bounds, Sequence) or not bounds:
        raise ValueError(
            "expected bounds as a non-empty list with one entry per dimension: (low, high), "
            f"(low, None), (None, high) or None; got {bounds!r}"
        )
    parsed = []
    for i, bound in enumerate(bounds):
        if bound is None:
            parsed.append((None, None))
            continue
        if isinstance(bound, (str, bytes)) or not isinstance(bound, Sequence) or len(bound) != 2:
            raise ValueError(
                f"expected bounds[{i}] to be (low, high), (low, None), (None, high) or None, "
                f"got {bound!r}"
            )
        ends = []
        for end in bound:
            if end is not None and (
                isinstance(end, bool) or not isinstance(end, (int, float)) or not math.isfinite(end)
            ):
                raise ValueError(
                    f"expected bounds[{i}] to hold finite numbers or None (None for an open "
                    f"side), got {bound!r}"
                )
            ends.append(None if end is None else float(end))
        low, high = ends
        if low is not None and high is not None:
            lo32, hi32 = torch.tensor([low, high], dtype=torch.float32)
            if not (low < high and torch.nextafter(lo32, hi32) < hi32 and high - low < math.inf):
                raise ValueError(
                    f"expected bounds[{i}] = (low, high) with low < high, a finite width and a "
                    f"float32 number strictly between them, got {bound!r}"
                )
        parsed.append((low, high))
    return parsed


@register(
    "layer", example=lambda context_size: BoundedSupport([(0, 1), (-2, None), None, (None, 3.5)])
)
class BoundedSupport(Bijector):
    r"""Bounded support to the reals, per dimension: ``y = f(x)``, from the box to R^D.

    Each dimension ``i`` has bounds ``(a, b)``, ``(a, None)``, ``(None, b)`` or ``None``:

    - two-sided, the logit of the rescaled value:
      :math:`y = \log(x - a) - \log(b - x)`, :math:`\log|f'| = \log(b - a) - \log(x - a) -
      \log(b - x)`; inverse :math:`x = a + (b - a)\,\sigma(y)`;
    - lower bound, the inverse softplus of the distance to it, :math:`d = x - a`:
      :math:`y = \log(e^d - 1) = d + \log(1 - e^{-d})`, :math:`\log|f'| = -\log(1 - e^{-d})`;
      inverse :math:`x = a + \log(1 + e^y)`;
    - upper bound, the mirror image (increasing): :math:`d = b - x`, :math:`y = -\log(e^d -
      1)`, inverse :math:`x = b - \log(1 + e^{-y})`;
    - ``None``: the identity.

    ``log_det`` sums :math:`\log|f'|` over the dimensions. One-sided bounds use the inverse
    softplus rather than ``log``: it is ``log d`` near the bound (so the density there is
    resolved as finely as with the log) but linear far from it, so a variable that rarely
    approaches its bound (a positive quantity around 100 +- 1) keeps its shape, and sampling
    stays finite, where ``exp`` overflows float32 beyond a latent value of 88. Data spanning
    many decades is better log-transformed before training.

    **Outside the support.** A point with any coordinate outside its interval *or on a bound*
    has ``log_det = -inf`` (so ``flow.log_prob(x) = -inf``, without NaN or an error, and a
    zero gradient); its outside coordinates map to ``y = 0``. NaN inputs stay NaN.

    **Float32 at the bounds.** All differences to a bound are taken directly (``x - a``,
    ``b - x``, exact near the bound), so a point 1 ulp inside a bound has a finite ``y`` and
    ``log_det`` (``y = -103.3`` 1 ulp above 0, the subnormal ``1.4e-45``; ``-15.9`` 1 ulp
    above 1). Gradients with respect to ``x`` are finite wherever their exact value is a
    float32 number: ``|d log_prob / dx|`` grows like ``|y| / (x - a)``, which exceeds
    ``3.4e38`` only closer than about ``3e-37`` to a bound at 0 (there it is ``inf``, never
    NaN).
    The inverse maps R onto the open support, but in float32 ``a + (b - a) sigma(y)`` may
    round onto a bound (``y < -17`` above 1, ``y < -104`` above 0): samples are then clamped
    to the nearest representable point inside (``torch.nextafter``), whose gradient is zero,
    and ``log_det`` is that of the exact map at ``y``.

    The bounds are buffers in the layer's dtype: in float32 the support is the interval with
    float32-rounded ends.

    Shapes: ``x`` and ``y`` are ``(*batch, D)``, ``log_det`` is ``(*batch,)``, with ``D =
    len(bounds)``.

    Arguments:
        bounds: one entry per dimension: ``(low, high)``, ``(low, None)``, ``(None, high)``
            (finite numbers; lists work too, as JSON gives them) or ``None`` for the real line.

    References:
        Density estimation using Real NVP (Dinh et al., 2017, arXiv:1605.08803), which maps
        bounded pixels through a logit; Automatic Differentiation Variational Inference
        (Kucukelbir et al., 2017, arXiv:1603.00788), section 2.3, for transforming each
        constrained variable to the real line with its Jacobian.

    Example:
        >>> layer = BoundedSupport([(0, 1), (0, None), None])
        >>> y, log_det = layer(torch.tensor([[0.5, 1.0, -3.0], [1.5, 1.0, -3.0]]))
        >>> y[0], log_det
        (tensor([ 0.0000,  0.5413, -3.0000]), tensor([1.8450,   -inf]))
        >>> x = layer.inverse(torch.randn(1000, 3) * 50)
        >>> bool(((x[:, 0] > 0) & (x[:, 0] < 1) & (x[:, 1] > 0)).all())
        True
    """

    def __init__(self, bounds: Sequence[Bound]) -> None:
        parsed = _parse(bounds)
        super().__init__(len(parsed))
        self.bounds = parsed
        has_low = torch.tensor([lo is not None for lo, _ in parsed])
        has_high = torch.tensor([hi is not None for _, hi in parsed])
        low = torch.tensor([0.0 if lo is None else lo for lo, _ in parsed])
        high = torch.tensor([0.0 if hi is None else hi for _, hi in parsed])
        self.register_buffer("has_low", has_low, persistent=False)
        self.register_buffer("has_high", has_high, persistent=False)
        self.register_buffer("two", has_low & has_high, persistent=False)
        self.register_buffer("one", has_low ^ has_high, persistent=False)
        self.register_buffer("low", low, persistent=False)
        self.register_buffer("high", high, persistent=False)
        # One-sided dimensions: the bound and the direction away from it (+1 above a low).
        self.register_buffer("edge", torch.where(has_low, low, high), persistent=False)
        self.register_buffer("sign", has_low.float() - has_high.float(), persistent=False)
        self.domain = constraints.cat(
            [_constraint(lo, hi) for lo, hi in parsed], dim=-1, lengths=[1] * len(parsed)
        )

    def _inside(self) -> tuple[Tensor, Tensor]:
        """The representable points next to each bound, inside (``-inf``/``inf`` if none)."""
        inf = torch.full_like(self.low, math.inf)
        lowest = torch.where(self.has_low, torch.nextafter(self.low, inf), -inf)
        highest = torch.where(self.has_high, torch.nextafter(self.high, -inf), inf)
        return lowest, highest

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        outside = (self.has_low & (x <= self.low)) | (self.has_high & (x >= self.high))
        x = torch.clamp(x, *self._inside())  # only moves outside points: finite maths below
        one_, zero = x.new_ones(()), x.new_zeros(())
        log_a = torch.log(torch.where(self.two, x - self.low, one_))
        log_b = torch.log(torch.where(self.two, self.high - x, one_))
        d = torch.where(self.one, self.sign * (x - self.edge), one_)
        log_1m = torch.log(-torch.expm1(-d))  # log(1 - e^-d); d + log_1m = log(e^d - 1)
        log_width = torch.log(torch.where(self.two, self.high - self.low, one_))
        y = torch.where(self.two, log_a - log_b, torch.where(self.one, self.sign * (d + log_1m), x))
        log_det = torch.where(
            self.two, log_width - log_a - log_b, torch.where(self.one, -log_1m, zero)
        )
        log_det = log_det.sum(-1).masked_fill(outside.any(-1), -math.inf)
        return y.masked_fill(outside, 0.0), log_det

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        width = torch.where(self.two, self.high - self.low, y.new_ones(()))
        # a + w sigma(y) below 0 and b - w sigma(-y) above: exact next to either bound.
        x_two = torch.where(
            y < 0, self.low + width * torch.sigmoid(y), self.high - width * torch.sigmoid(-y)
        )
        log_det_two = torch.log(width) + F.logsigmoid(y) + F.logsigmoid(-y)
        s = self.sign * y
        x_one = self.edge + self.sign * _softplus(s)
        x = torch.where(self.two, x_two, torch.where(self.one, x_one, y))
        log_det = torch.where(
            self.two, log_det_two, torch.where(self.one, F.logsigmoid(s), y.new_zeros(()))
        )
        return torch.clamp(x, *self._inside()), log_det.sum(-1)

    def extra_repr(self) -> str:
        shown = ", ".join("None" if b == (None, None) else str(b) for b in self.bounds)
        return f"{super().extra_repr()}, bounds=[{shown}]"


def _constraint(low: float | None, high: float | None) -> constraints.Constraint:
    if low is not None and high is not None:
        return constraints.interval(low, high)
    if low is not None:
        return constraints.greater_than(low)
    if high is not None:
        return constraints.less_than(high)
    return constraints.real


def support_layers(bounds: Sequence[Bound] | None, input_size: int) -> list[Bijector]:
    """``[BoundedSupport(bounds)]``, or ``[]`` for ``bounds=None``: a model's first layers.

    Arguments:
        bounds: one entry per dimension (see :class:`BoundedSupport`), or ``None``.
        input_size: the model's number of features, which ``bounds`` must match.

    Returns:
        The list of layers to put first in the model's chain.

    Example:
        >>> support_layers([(0, 1), None], 2)
        [BoundedSupport(event_shape=(2,), bounds=[(0.0, 1.0), None])]
    """
    if bounds is None:
        return []
    if isinstance(bounds, Sequence) and not isinstance(bounds, str) and len(bounds) != input_size:
        raise ValueError(
            f"expected one bound per dimension, {input_size} (input_size), got {len(bounds)}"
        )
    return [BoundedSupport(bounds)]
