r"""Neural autoregressive transformers: deep sigmoidal flows (NAF) and integral flows (UMNN).

Both are elementwise increasing maps ``y_i = tau(x_i; theta_i)`` with no closed-form inverse,
so they share :class:`MonotoneTransformer`: the forward map and its log-derivative in one
evaluation, and an inverse by :func:`~torchnf.functional.solvers.solve_increasing` inside a
bracket that each transformer proves from its parameters. Used through the existing
structures, ``MaskedAutoregressive(transformer, made)`` and
``Coupling(transformer, conditioner, mask)``; see :mod:`torchnf.models.neural`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchnf.functional.affine import soft_clamp
from torchnf.functional.quadrature import gauss_legendre
from torchnf.functional.solvers import solve_increasing
from torchnf.layers.transformers import Transformer


def _softplus_inverse(value: float) -> float:
    """``c`` with ``softplus(c) = value``."""
    return value + math.log(-math.expm1(-value))


def _sigmoid_mixture(x: Tensor, a: Tensor, b: Tensor, log_w: Tensor) -> tuple[Tensor, Tensor]:
    """One sigmoidal-mixture map of :class:`DSFTransformer` and its log-derivative."""
    u = a * x.unsqueeze(-1) + b
    log_s = F.logsigmoid(u)
    log_1ms = F.logsigmoid(-u)
    log_mean = torch.logsumexp(log_w + log_s, -1)
    log_mean_c = torch.logsumexp(log_w + log_1ms, -1)
    log_slope = torch.logsumexp(log_w + torch.log(a) + log_s + log_1ms, -1)
    return log_mean - log_mean_c, log_slope - log_mean - log_mean_c


class MonotoneTransformer(Transformer):
    r"""Base class: an increasing elementwise map inverted numerically.

    A subclass writes ``_prepare(params)`` (the constrained parameters, computed once per
    call), ``_evaluate(x, prepared) -> (y, log dy/dx)`` and ``_bracket(y, prepared) ->
    (lo, hi)`` with :math:`\tau(lo) \le y \le \tau(hi)`. The inverse solves
    :math:`\tau(x) = y` by :func:`~torchnf.functional.solvers.solve_increasing` (Newton steps
    safeguarded by bisection, so it converges for any increasing map) to the relative
    tolerance ``tol`` (:func:`~torchnf.functional.solvers.default_tol` of the dtype when
    ``None``: 1e-12 in float64) within ``max_iter`` iterations, and raises
    :class:`~torchnf.functional.solvers.ConvergenceError` with the residual otherwise. The
    result is differentiable (implicit derivative at the solution).

    Arguments:
        tol: relative tolerance of the inverse, ``None`` for the dtype's default.
        max_iter: iteration limit of the inverse.
    """

    def __init__(self, tol: float | None = None, max_iter: int = 100) -> None:
        super().__init__()
        if max_iter < 1 or (tol is not None and tol <= 0):
            raise ValueError(f"expected tol > 0 and max_iter >= 1, got {tol} and {max_iter}")
        self.tol = tol
        self.max_iter = max_iter

    def _prepare(self, params: Tensor) -> tuple[Tensor, ...]:
        raise NotImplementedError

    def _evaluate(self, x: Tensor, prepared: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _bracket(self, y: Tensor, prepared: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._evaluate(x, self._prepare(params))

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._solve(y, self._prepare(params))

    def _solve(self, y: Tensor, prepared: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        """``x`` with ``_evaluate(x, prepared)[0] = y`` inside ``_bracket(y, prepared)``, and
        its log-derivative ``-log dy/dx``."""
        if torch.compiler.is_exporting():
            # The exported solver is a while_loop, whose inputs must not alias one another
            # (views of one params tensor do).
            prepared = tuple(p.clone() for p in prepared)

        def fn(x: Tensor) -> tuple[Tensor, Tensor]:
            value, log_slope = self._evaluate(x, prepared)
            return value, log_slope.exp()

        y = y.contiguous()  # a strided column (autoregressive inverse) breaks the while_loop
        lower, upper = self._bracket(y, prepared)
        x = solve_increasing(fn, y, lower, upper, self.tol, self.max_iter)
        return x, -self._evaluate(x, prepared)[1]

    def extra_repr(self) -> str:
        return f"tol={self.tol}, max_iter={self.max_iter}"


class DSFTransformer(MonotoneTransformer):
    r"""Deep sigmoidal flow transformer of NAF: logits of mixtures of sigmoids, stacked.

    :math:`y = \tau_L \circ \cdots \circ \tau_1(x)`, ``L = n_layers`` maps of the form

    .. math::
        \tau(x) = \sigma^{-1}\Big(\sum_{j=1}^{K} w_j\, \sigma(a_j x + b_j)\Big), \quad
        a_j = a_{\min} + \mathrm{softplus}(\tilde a_j + c), \quad b_j = \tilde b_j + \beta_j,
        \quad w = \mathrm{softmax}(\tilde w),

    map ``l`` from its own chunk ``params[..., 3K(l-1):3Kl]`` :math:`= (\tilde a, \tilde b,
    \tilde w)` (``params_per_feature = 3KL``; ``L = 1`` is the single map of the paper's DSF,
    ``L > 1`` its stacked DSF, with width 1 between the maps). ``c`` makes ``a_j = 1`` at
    :math:`\tilde a = 0`, and the fixed offsets :math:`\beta_j`, evenly spaced in
    ``[-1, 1]``, make the components differ, so a
    zero-initialized conditioner starts at a well-conditioned map close to the identity (odd,
    ``y(0) = 0``, slope in ``[0.79, 1]``, ``[0.9, 1]`` for ``K = 8``, and ``y = x \mp c``
    in the tails with ``c < 0.44``) whose components receive different gradients (with equal
    ones they would stay equal forever); a stack of ``L`` such maps starts odd, with slope in
    ``[0.79^L, 1]`` and tails within ``0.44 L`` of the identity.
    With ``K = 1`` each map is affine, ``y = a x + b``. The log-derivative is the sum of the
    maps' log-derivatives, each at its own input.

    Numerics: with :math:`u_j = a_j x + b_j`, everything is computed in log space,
    :math:`\log S = \mathrm{LSE}_j(\log w_j + \log\sigma(u_j))` and
    :math:`\log(1 - S) = \mathrm{LSE}_j(\log w_j + \log\sigma(-u_j))` (since
    :math:`\sum w_j = 1`), so :math:`y = \log S - \log(1 - S)` never forms ``S`` near 0 or
    1, and :math:`\log dy/dx = \mathrm{LSE}_j(\log w_j + \log a_j + \log\sigma(u_j) +
    \log\sigma(-u_j)) - \log S - \log(1 - S)`. The map covers the real line: for
    :math:`x \to \pm\infty`, ``y`` is asymptotically linear with slope :math:`\min_j a_j`.

    Inverse: the maps are inverted one at a time, :math:`\tau_L` first, each by
    :func:`~torchnf.functional.solvers.solve_increasing` in a proven bracket: ``y`` is a
    logit-space mean of the :math:`u_j`, so :math:`\min_j u_j \le \tau(x) \le \max_j u_j`;
    hence ``x`` lies in :math:`[\min_j (y - b_j)/a_j, \max_j (y - b_j)/a_j]`.
    Tolerance: each solve meets :class:`MonotoneTransformer`'s ``tol`` relative to its own
    output, and an error in an intermediate value :math:`x_l = \tau_l \circ \cdots \circ
    \tau_1(x)` (:math:`x_0 = x`, :math:`x_L = y`; solved to ``tol``, or rounded in the
    forward map) reaches ``x`` divided by the slope :math:`D_l = (\tau_l \circ \cdots \circ
    \tau_1)'(x)` of the maps beneath it (:math:`D_0 = 1`). The round trip is within
    :math:`|\hat x - x| \le \mathrm{tol} \sum_{l=0}^{L} (1 + |x_l|) / D_l`, ``(L + 1) tol``
    relative where the slopes are near 1, more only where the maps are flat (there the
    forward map itself loses as many digits); ``tests/test_dsf_depth.py`` checks it in
    float64 and float32 (default ``tol``), tails ``|x| = 50`` included.

    Shapes: ``x`` ``(*batch, D)``, ``params`` ``(*batch, D, 3KL)``; returns ``(y, log_det)``
    with the elementwise log-derivative ``(*batch, D)``.

    Arguments:
        n_components: number of sigmoids ``K`` of each map.
        min_slope: lower bound :math:`a_{\min}` on each :math:`a_j`, which bounds the
            inverse's bracket.
        tol: relative tolerance of the inverse (see :class:`MonotoneTransformer`).
        max_iter: iteration limit of each map's inverse.
        n_layers: number of stacked maps ``L``.

    References:
        Huang, Krueger, Lacoste, Courville, "Neural Autoregressive Flows", 2018,
        arXiv:1804.00779.

    Example:
        >>> tau = DSFTransformer(n_components=4, n_layers=2)
        >>> x = torch.tensor([[-50.0, 0.0, 3.0]], dtype=torch.float64)
        >>> params = torch.randn(1, 3, tau.params_per_feature, dtype=torch.float64)
        >>> y, log_det = tau(x, params)
        >>> x_back, log_det_inv = tau.inverse(y, params)
        >>> torch.allclose(x_back, x), torch.allclose(log_det_inv, -log_det)
        (True, True)
    """

    def __init__(
        self,
        n_components: int = 8,
        min_slope: float = 1e-3,
        tol: float | None = None,
        max_iter: int = 100,
        n_layers: int = 1,
    ) -> None:
        super().__init__(tol, max_iter)
        if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
            raise ValueError(f"expected an integer n_layers >= 1, got {n_layers!r}")
        if n_components < 1 or not 0 < min_slope < 1:
            raise ValueError(
                f"expected n_components >= 1 and 0 < min_slope < 1, got {n_components} "
                f"and {min_slope}"
            )
        self.n_components = n_components
        self.min_slope = float(min_slope)
        self.n_layers = n_layers
        self.params_per_feature = 3 * n_components * n_layers
        self.slope_offset = _softplus_inverse(1 - min_slope)
        offsets = torch.linspace(-1, 1, n_components) if n_components > 1 else torch.zeros(1)
        self.register_buffer("offsets", offsets, persistent=False)

    def _prepare(self, params: Tensor) -> tuple[Tensor, ...]:
        """``(a, b, log w)`` of each map in turn, flattened: ``3 L`` tensors."""
        prepared: list[Tensor] = []
        for chunk in params.chunk(self.n_layers, -1):
            raw_a, raw_b, raw_w = chunk.unflatten(-1, (3, self.n_components)).unbind(-2)
            a = self.min_slope + F.softplus(raw_a + self.slope_offset)
            prepared += [a, raw_b + self.offsets.to(params.dtype), torch.log_softmax(raw_w, -1)]
        return tuple(prepared)

    @staticmethod
    def _maps(prepared: tuple[Tensor, ...]) -> list[tuple[Tensor, ...]]:
        """``prepared`` cut into the ``(a, b, log w)`` of each map, first to last."""
        return [prepared[i : i + 3] for i in range(0, len(prepared), 3)]

    def _evaluate(self, x: Tensor, prepared: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        first, *rest = self._maps(prepared)
        y, log_det = _sigmoid_mixture(x, *first)
        for map_prepared in rest:
            y, log_slope = _sigmoid_mixture(y, *map_prepared)
            log_det = log_det + log_slope
        return y, log_det

    def _bracket(self, y: Tensor, prepared: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        a, b, _ = prepared  # one map: the inverse solves the maps one at a time
        ends = (y.unsqueeze(-1) - b) / a
        return ends.amin(-1), ends.amax(-1)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        *rest, last = self._maps(self._prepare(params))
        x, log_det = self._solve(y, last)
        for prepared in reversed(rest):
            x, log_slope = self._solve(x, prepared)
            log_det = log_det + log_slope
        return x, log_det

    def extra_repr(self) -> str:
        return f"n_components={self.n_components}, n_layers={self.n_layers}, {super().extra_repr()}"


class UMNNTransformer(MonotoneTransformer):
    r"""Unconstrained monotonic neural network transformer: the integral of a positive net.

    .. math::
        y = \beta + \int_0^{x} g(t; h)\, dt, \quad
        \log g(t; h) = b \tanh\big((s + r(\bar t, h)) / b\big), \quad
        \bar t = \mathrm{clamp}(t, -B, B),

    with :math:`params[..., :] = (\beta, s, h)` from the conditioner (``params_per_feature =
    2 + embedding_size``: an offset, a log-scale and the per-feature embedding ``h``) and
    ``r`` a small tanh MLP on :math:`(\bar t, h)` whose weights belong to the transformer
    and are shared by all features (as in the paper). Its last layer starts at zero, so
    all-zero parameters give the identity. The soft clamp keeps
    :math:`g \in (e^{-b}, e^{b})` (``b = scale_bound``), so the map is bi-Lipschitz and onto
    the real line; beyond ``[-B, B]`` (``B = tail_bound``) ``g`` is constant and the map is
    linear, computed exactly.

    The integral over :math:`[0, \bar x]` is the ``n_nodes``-point Gauss–Legendre rule
    :math:`\bar x \sum_k w_k g(\bar x s_k)` (:func:`~torchnf.functional.quadrature.gauss_legendre`;
    error :math:`\frac{|\bar x|^{2n+1} (n!)^4}{(2n+1)((2n)!)^3} \max|g^{(2n)}|`, and the
    tanh MLP is analytic), plus :math:`(x - \bar x) g(\bar x)`. The log-derivative returned
    is :math:`\log g(x)`, exact for the exact integral; the map computed differs from it by
    the quadrature error (below 1e-10 relative with 16 nodes against 256 for the perturbed
    nets of ``tests/test_neural_transformers.py``), and so does its derivative from ``g``.
    The inverse solves the computed map, so round trips are exact to ``tol``. Its bracket: the
    quadrature weights are positive and sum to 1, so :math:`(y - \beta)/x` lies in
    :math:`[e^{-b}, e^{b}]` and ``x`` between :math:`(y - \beta) e^{-b}` and
    :math:`(y - \beta) e^{b}`.

    Shapes: ``x`` ``(*batch, D)``, ``params`` ``(*batch, D, 2 + embedding_size)``; returns
    ``(y, log_det)`` with the elementwise log-derivative ``(*batch, D)``. The integrand is
    evaluated at ``(*batch, D, n_nodes + 1)`` points per call.

    Arguments:
        embedding_size: size of the per-feature embedding ``h``.
        hidden_sizes: widths of the integrand MLP.
        n_nodes: number of quadrature nodes.
        tail_bound: ``B``; the map is linear beyond ``[-B, B]``.
        scale_bound: ``b``; bounds :math:`|\log g|`.
        tol: relative tolerance of the inverse (see :class:`MonotoneTransformer`).
        max_iter: iteration limit of the inverse.

    References:
        Wehenkel, Louppe, "Unconstrained Monotonic Neural Networks", 2019, arXiv:1908.05164.

    Example:
        >>> tau = UMNNTransformer(embedding_size=4, hidden_sizes=(16,))
        >>> x = torch.randn(5, 2)
        >>> y, log_det = tau(x, torch.zeros(5, 2, tau.params_per_feature))
        >>> torch.allclose(y, x, atol=1e-6), bool((log_det == 0).all())
        (True, True)
    """

    def __init__(
        self,
        embedding_size: int = 8,
        hidden_sizes: Sequence[int] = (32, 32),
        n_nodes: int = 16,
        tail_bound: float = 5.0,
        scale_bound: float = 4.0,
        tol: float | None = None,
        max_iter: int = 100,
    ) -> None:
        super().__init__(tol, max_iter)
        hidden_sizes = tuple(int(h) for h in hidden_sizes)
        if embedding_size < 1 or not hidden_sizes or min(hidden_sizes) < 1:
            raise ValueError(
                "expected embedding_size >= 1 and at least one positive hidden size, got "
                f"{embedding_size} and {hidden_sizes}"
            )
        if tail_bound <= 0 or scale_bound <= 0:
            raise ValueError(
                f"expected tail_bound > 0 and scale_bound > 0, got {tail_bound} and {scale_bound}"
            )
        self.embedding_size = embedding_size
        self.params_per_feature = 2 + embedding_size
        self.tail_bound = float(tail_bound)
        self.scale_bound = float(scale_bound)
        self.first_t = nn.Parameter(torch.randn(hidden_sizes[0]))
        self.first_h = nn.Linear(embedding_size, hidden_sizes[0])
        sizes = (*hidden_sizes, 1)
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(sizes, sizes[1:], strict=False))
        nn.init.zeros_(self.layers[-1].weight)
        nn.init.zeros_(self.layers[-1].bias)
        # Plain float64 tensors, not buffers: ``.float()`` would round them for good.
        self.nodes, self.weights = gauss_legendre(n_nodes)

    def _prepare(self, params: Tensor) -> tuple[Tensor, ...]:
        beta, log_scale, h = params.split([1, 1, self.embedding_size], dim=-1)
        # The embedding's share of the first layer, computed once per feature.
        return beta.squeeze(-1), log_scale, self.first_h(h).unsqueeze(-2)

    def _log_integrand(self, t: Tensor, prepared: tuple[Tensor, ...]) -> Tensor:
        """``log g`` at ``t`` of shape ``(*batch, D, m)``."""
        _, log_scale, first = prepared
        hidden = (t / self.tail_bound).unsqueeze(-1) * self.first_t + first
        for layer in self.layers:
            hidden = layer(torch.tanh(hidden))
        return soft_clamp(log_scale + hidden.squeeze(-1), self.scale_bound)

    def _evaluate(self, x: Tensor, prepared: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        beta = prepared[0]
        inner = x.clamp(-self.tail_bound, self.tail_bound)
        nodes, weights = (q.to(device=x.device, dtype=x.dtype) for q in (self.nodes, self.weights))
        t = torch.cat([inner.unsqueeze(-1) * nodes, inner.unsqueeze(-1)], -1)
        log_g = self._log_integrand(t, prepared)
        g_nodes, log_g_end = log_g[..., :-1].exp(), log_g[..., -1]
        integral = inner * (g_nodes * weights).sum(-1)
        return beta + integral + (x - inner) * log_g_end.exp(), log_g_end

    def _bracket(self, y: Tensor, prepared: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        excess = y - prepared[0]
        slow, fast = excess * math.exp(-self.scale_bound), excess * math.exp(self.scale_bound)
        return torch.minimum(slow, fast), torch.maximum(slow, fast)

    def extra_repr(self) -> str:
        return (
            f"embedding_size={self.embedding_size}, n_nodes={len(self.nodes)}, "
            f"tail_bound={self.tail_bound}, scale_bound={self.scale_bound}, "
            f"{super().extra_repr()}"
        )
