r"""Contractive residual maps: spectral normalization, Jacobian products, log-det series.

The maths of invertible residual networks (pure functions, no modules). A residual map
:math:`y = x + g(x)` is invertible when :math:`\mathrm{Lip}(g) \le c < 1`, which an MLP
:math:`g = W_L \circ \phi \circ W_{L-1} \circ \cdots \circ \phi \circ W_1` satisfies when
:math:`\prod_l \|W_l\|_2 \le c` and :math:`|\phi'| \le 1`. Its Jacobian
:math:`J = W_L D_{L-1} W_{L-1} \cdots D_1 W_1` (:math:`D_l` the diagonal of :math:`\phi'` at
layer ``l``) is never needed as a whole for products :math:`J v` and :math:`J^\top u`, which
:func:`jacobian_product` and :func:`jacobian_transpose_product` compute layer by layer in
:math:`O(\sum_l H_l H_{l-1})` per vector, without nested autograd; the full Jacobian is
:func:`jacobian_product` of the identity (``D`` vectors).

References:
    Invertible Residual Networks (Behrmann et al., 2019, arXiv:1811.00995).
    Residual Flows for Invertible Generative Modeling (Chen et al., 2019, arXiv:1906.02735).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from torchnf.functional.solvers import ConvergenceError, default_tol, iterate_on_device

#: :math:`\max_t \frac{d}{dt}\, t\,\sigma(t) \approx 1.0998`: LipSwish divides Swish by 1.1.
LIPSWISH_SCALE = 1.1


def spectral_scale(weight: Tensor, bound: float) -> Tensor:
    r"""``weight`` scaled so its spectral norm is at most ``bound``:
    :math:`W / \max(1, \|W\|_2 / \mathrm{bound})`.

    :math:`\|W\|_2` is the exact largest singular value (``torch.linalg.matrix_norm(ord=2)``,
    an SVD: :math:`O(m n \min(m, n))` for an ``(m, n)`` matrix, about 1 ms for 128 x 128 on
    one CPU core), so the bound holds for the weight actually used, and the map is a
    deterministic function of ``weight`` (no power-iteration state).

    Arguments:
        weight: a matrix ``(m, n)``.
        bound: the largest spectral norm allowed, positive.

    Returns:
        The scaled matrix ``(m, n)``; ``weight`` itself (times 1) when already within the bound.

    Example:
        >>> w = spectral_scale(3 * torch.eye(2, dtype=torch.float64), 0.5)
        >>> float(torch.linalg.matrix_norm(w, ord=2))
        0.5
    """
    sigma = torch.linalg.matrix_norm(weight, ord=2)
    return weight / torch.clamp(sigma / bound, min=1.0)


def lipswish(a: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
    r"""LipSwish :math:`\phi(a) = a\,\sigma(\beta a) / 1.1` and its derivative, elementwise.

    :math:`\phi'(a) = (\sigma(\beta a) + \beta a\,\sigma(\beta a)(1 - \sigma(\beta a))) / 1.1
    \in (-0.091, 1)` for every :math:`\beta \ge 0` (the extremes of
    :math:`s + t s (1 - s)` over ``t`` are about -0.0998 and 1.0998), so
    :math:`\mathrm{Lip}(\phi) \le 1`.

    Arguments:
        a: pre-activations ``(..., H)``.
        beta: non-negative slopes, broadcastable to ``a`` (e.g. ``(H,)``).

    Returns:
        ``(phi(a), phi'(a))``, each the shape of ``a``.

    References:
        Residual Flows for Invertible Generative Modeling (Chen et al., 2019, arXiv:1906.02735).
    """
    t = beta * a
    s = torch.sigmoid(t)
    return a * s / LIPSWISH_SCALE, (s + t * s * (1 - s)) / LIPSWISH_SCALE


def elu(a: Tensor) -> tuple[Tensor, Tensor]:
    r"""ELU :math:`\phi(a) = a` for :math:`a > 0`, :math:`e^a - 1` otherwise, and its
    derivative :math:`\min(1, e^a) \in (0, 1]`, elementwise (so :math:`\mathrm{Lip}(\phi) = 1`).

    Returns:
        ``(phi(a), phi'(a))``, each the shape of ``a``.
    """
    return torch.nn.functional.elu(a), torch.exp(a.clamp(max=0))


#: ``a -> (phi(a), phi'(a))``, elementwise, with :math:`|\phi'| \le 1`.
Activation = Callable[[Tensor], tuple[Tensor, Tensor]]


def lipschitz_mlp(
    x: Tensor,
    weights: Sequence[Tensor],
    biases: Sequence[Tensor],
    activations: Sequence[Activation],
    offset: Tensor | None = None,
) -> tuple[Tensor, list[Tensor]]:
    r"""The MLP :math:`g(x) = W_L \phi_{L-1}(\cdots \phi_1(W_1 x + b_1 + o) \cdots) + b_L` and
    its slopes.

    Arguments:
        x: inputs ``(*batch, D)``.
        weights: ``W_l`` of shapes ``(H_l, H_{l-1})``, ``H_0 = H_L = D``.
        biases: ``b_l`` of shapes ``(H_l,)``.
        activations: the ``L - 1`` hidden activations :math:`\phi_l` (:data:`Activation`).
        offset: added to the first pre-activation, ``(*batch, H_1)`` (a context term), or None.

    Returns:
        ``(g(x), slopes)``: ``g(x)`` is ``(*batch, D)``; ``slopes`` are the ``L - 1``
        derivatives :math:`\phi_l'` of the hidden layers, ``(*batch, H_l)``, the diagonals
        :math:`D_l` of :func:`jacobian_product`.
    """
    h, slopes = x, []
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        a = h @ w.T + b
        if i == 0 and offset is not None:
            a = a + offset
        if i == len(weights) - 1:
            return a, slopes
        h, slope = activations[i](a)
        slopes.append(slope)
    raise ValueError("expected at least one weight")


def jacobian_product(v: Tensor, weights: Sequence[Tensor], slopes: Sequence[Tensor]) -> Tensor:
    r""":math:`J v = W_L D_{L-1} W_{L-1} \cdots D_1 W_1 v` for ``m`` vectors at once.

    Arguments:
        v: vectors as columns, ``(*batch, D, m)`` (``torch.eye(D)`` gives the Jacobian).
        weights: the MLP's ``W_l`` (the first one restricted to the ``D`` input columns).
        slopes: the ``D_l`` from :func:`lipschitz_mlp`, ``(*batch, H_l)``.

    Returns:
        ``J v``, ``(*batch, D, m)``.
    """
    for w, slope in zip(weights[:-1], slopes, strict=True):
        v = slope.unsqueeze(-1) * (w @ v)
    return weights[-1] @ v


def jacobian_transpose_product(
    u: Tensor, weights: Sequence[Tensor], slopes: Sequence[Tensor]
) -> Tensor:
    r""":math:`J^\top u = W_1^\top D_1 \cdots W_{L-1}^\top D_{L-1} W_L^\top u`, one vector per row.

    Arguments:
        u: ``(*batch, D)``.
        weights: as in :func:`jacobian_product`.
        slopes: as in :func:`jacobian_product`.

    Returns:
        :math:`J^\top u`, ``(*batch, D)``.
    """
    u = u @ weights[-1]
    for w, slope in zip(reversed(weights[:-1]), reversed(slopes), strict=True):
        u = (u * slope) @ w
    return u


def residual_log_det(jacobian: Tensor) -> Tensor:
    r"""Exact :math:`\log\det(I + J)` from the Jacobian ``(*batch, D, D)`` of ``g``.

    :math:`\det(I + J) > 0` when :math:`\|J\|_2 < 1` (every eigenvalue of ``I + J`` has
    positive real part), so this is :math:`\log|\det|` of the residual map. Cost
    :math:`O(D^3)` per sample on top of forming ``J``. Under :func:`torch.export.export` it is
    :math:`\log\det` (ONNX has ``Det`` but no ``slogdet``), exact too while
    :math:`(1 - c)^D` stays a normal number (``D`` up to about 300 at ``c = 0.9`` in float32).
    """
    eye = torch.eye(jacobian.shape[-1], dtype=jacobian.dtype, device=jacobian.device)
    if torch.compiler.is_exporting():
        return torch.linalg.det(eye + jacobian).log()
    return torch.linalg.slogdet(eye + jacobian)[1]


#: How :func:`roulette_log_det` differentiates its estimate.
ROULETTE_GRADIENTS = ("direct", "neumann")


def roulette_log_det(
    matvec: Callable[[Tensor], Tensor],
    shape: tuple[int, ...],
    n_exact_terms: int = 2,
    p: float = 0.5,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
    generator: torch.Generator | None = None,
    gradient: str = "direct",
) -> Tensor:
    r"""Unbiased Russian-roulette estimate of :math:`\log\det(I + J) = \sum_{k \ge 1}
    \frac{(-1)^{k+1}}{k} \mathrm{tr}(J^k)` (Chen et al., 2019).

    Draws one truncation :math:`N = n_{\mathrm{exact}} + M`, :math:`M \sim
    \mathrm{Geometric}(p)` on :math:`\{0, 1, \dots\}`, so :math:`P(N \ge k) =
    (1 - p)^{\max(0, k - n_{\mathrm{exact}})}`, and one Hutchinson probe
    :math:`v \sim N(0, I)` per sample (:math:`E[v^\top A v] = \mathrm{tr} A`), and returns
    :math:`\sum_{k=1}^{N} \frac{(-1)^{k+1}}{k} \frac{v^\top J^k v}{P(N \ge k)}`, whose
    expectation is the series: unbiased whenever it converges absolutely, as it does for
    :math:`\|J\|_2 < 1`. The variance is finite when :math:`\rho(J)^2 < 1 - p`; the expected
    number of products is :math:`n_{\mathrm{exact}} + (1 - p) / p`.

    Gradients (``J`` depends on parameters :math:`\theta` through ``matvec``'s graph):
    ``"direct"`` backpropagates through the ``N`` products, so the graph of all of them is
    kept until the backward pass (memory grows with ``N``). ``"neumann"`` is the Neumann
    gradient series of Chen et al. (section 3.2): from
    :math:`\partial_\theta \log\det(I + J) = \mathrm{tr}((I + J)^{-1} \partial_\theta J) =
    \sum_{k \ge 0} (-1)^k \mathrm{tr}(J^k \partial_\theta J)`, the same draws give the unbiased
    estimate :math:`\sum_{k=0}^{N} \frac{(-1)^k}{P(N \ge k)}
    v^\top (\partial_\theta J) J^k v`, the gradient of the surrogate
    :math:`v^\top J u` with :math:`u = \sum_{k=0}^{N} \frac{(-1)^k}{P(N \ge k)} J^k v` held
    constant (Chen et al. write :math:`v^\top J^k (\partial_\theta J) v`, with
    vector-Jacobian products; both have expectation
    :math:`\mathrm{tr}(J^k \partial_\theta J)`, and this form reuses the products
    :math:`J^k v` of the value). The series runs without a graph and only the one product
    :math:`J u` is recorded, so memory does not grow with ``N``; the returned value is the
    roulette estimate itself (the surrogate enters as :math:`s - \mathrm{sg}(s)`, which is 0),
    bit for bit the ``"direct"`` value for the same draws. Its derivative is not
    differentiable again (the series is constant to autograd).

    Arguments:
        matvec: ``v (*batch, D, 1) -> J v`` (:func:`jacobian_product` at fixed slopes).
        shape: the batch shape and ``D``, ``(*batch, D)``.
        n_exact_terms: terms always computed.
        p: success probability of the geometric part, in ``(0, 1)``.
        dtype: dtype of the probe.
        device: device of the probe.
        generator: random generator of the probe and of ``M`` (the global one when None).
        gradient: ``"direct"`` or ``"neumann"`` (see above).

    Returns:
        The estimate, ``(*batch,)``.

    Example:
        >>> j = torch.tensor([[0.3, 0.1], [0.0, -0.2]], dtype=torch.float64)
        >>> g = torch.Generator().manual_seed(0)
        >>> estimate = roulette_log_det(lambda v: j @ v, (20000, 2), p=0.3,
        ...                             dtype=torch.float64, generator=g)
        >>> exact = float(torch.logdet(torch.eye(2, dtype=torch.float64) + j))
        >>> bool(abs(float(estimate.mean()) - exact) < 0.01)
        True
    """
    if not 0 < p < 1:
        raise ValueError(f"expected 0 < p < 1, got {p}")
    if n_exact_terms < 1:
        raise ValueError(f"expected n_exact_terms >= 1, got {n_exact_terms}")
    if gradient not in ROULETTE_GRADIENTS:
        raise ValueError(f"expected gradient in {ROULETTE_GRADIENTS}, got {gradient!r}")
    u = float(torch.rand((), generator=generator, dtype=torch.float64))
    n_terms = n_exact_terms + int(math.floor(math.log1p(-u) / math.log1p(-p)))
    v = torch.randn((*shape, 1), generator=generator, dtype=dtype, device=device)
    if gradient == "direct":
        return _roulette_series(matvec, v, n_terms, n_exact_terms, p)[0]
    with torch.no_grad():
        total, neumann = _roulette_series(matvec, v, n_terms, n_exact_terms, p, neumann=True)
    surrogate = (v * matvec(neumann)).sum((-2, -1))
    return total + (surrogate - surrogate.detach())


def _roulette_series(
    matvec: Callable[[Tensor], Tensor],
    v: Tensor,
    n_terms: int,
    n_exact_terms: int,
    p: float,
    neumann: bool = False,
) -> tuple[Tensor, Tensor | None]:
    r"""The roulette sum :math:`\sum_{k=1}^{N} \frac{(-1)^{k+1}}{k}
    \frac{v^\top J^k v}{P(N \ge k)}` and, when ``neumann``, the vector
    :math:`\sum_{k=0}^{N} \frac{(-1)^k}{P(N \ge k)} J^k v` (else None), from the same
    products :math:`J^k v`."""
    w, total = v, v.new_zeros(v.shape[:-2])
    series = v if neumann else None
    for k in range(1, n_terms + 1):
        w = matvec(w)
        survival = (1 - p) ** max(0, k - n_exact_terms)
        total = total + (-1) ** (k + 1) / (k * survival) * (v * w).sum((-2, -1))
        if series is not None:
            series = series + (-1) ** k / survival * w
    return total, series


class _GradientInForward(torch.autograd.Function):
    """A value whose gradients with respect to its inputs were computed beforehand."""

    @staticmethod
    def forward(ctx, value, n_per_sample, grads, *inputs):  # type: ignore[override]
        ctx.n_per_sample = n_per_sample
        ctx.save_for_backward(*grads)
        return value

    @staticmethod
    def backward(ctx, upstream):  # type: ignore[override]
        if torch.is_grad_enabled():
            raise ValueError(
                "expected no create_graph: a gradient computed in the forward pass "
                "(gradient_in_forward; log_det='neumann') is not differentiable again"
            )
        grads = ctx.saved_tensors
        out = [g * upstream.unsqueeze(-1) for g in grads[: ctx.n_per_sample]]
        if len(grads) > ctx.n_per_sample:
            scale = upstream.flatten()[0]
            if not bool((upstream == scale).all()):
                raise ValueError(
                    "expected the same gradient for every sample of a value whose parameter "
                    "gradient was computed in the forward pass (gradient_in_forward; "
                    "log_det='neumann'), as a mean or sum over the batch gives, got different "
                    "ones; log_det='roulette' takes any loss"
                )
            out += [g * scale for g in grads[ctx.n_per_sample :]]
        return (None, None, None, *out)


def gradient_in_forward(
    fn: Callable[[list[Tensor], list[Tensor]], Tensor],
    per_sample: Sequence[Tensor],
    shared: Sequence[Tensor],
) -> Tensor:
    r"""``fn(per_sample, shared)`` with its gradients taken at once, in the forward pass
    ("backward-in-forward", Chen et al., 2019, section 3.2), so that its graph is not kept.

    Evaluates ``fn`` on detached copies of the inputs (those that require gradients still
    do), takes the gradients of the sum of its value with respect to them, frees that graph
    and returns the value as a tensor whose graph holds only those gradients and leads to the
    inputs themselves. In the backward pass, with :math:`a_b` the gradient reaching sample
    ``b`` of the value:

    - a ``per_sample`` input ``(*batch, k)``, whose row ``b`` enters sample ``b`` of the value
      only (a block's input), gets its precomputed row times :math:`a_b`: exact for any loss;
    - a ``shared`` input (a parameter), whose precomputed gradient is that of the sum over
      the batch, gets it times :math:`a`, which needs the same :math:`a_b = a` for every
      sample (a loss that is a mean or sum of log-densities, as maximum likelihood and the
      reverse KL are); different ones raise a ``ValueError`` (one host sync per call).

    Not differentiable twice: a backward pass with ``create_graph=True`` raises a
    ``ValueError``. What is saved for the backward pass is one gradient per input that
    requires one (``fn``'s graph is freed on return).

    Arguments:
        fn: ``(per_sample, shared) -> value (*batch,)``, called once, on lists of copies of
            the inputs in their order.
        per_sample: inputs ``(*batch, k)`` (any ``k``), row ``b`` entering sample ``b`` only.
        shared: inputs entering every sample.

    Returns:
        The value of ``fn``, ``(*batch,)``; without a graph when no input requires a gradient
        or gradients are off.

    Example:
        >>> w = torch.tensor([2.0], requires_grad=True)
        >>> x = torch.tensor([[1.0], [3.0]], requires_grad=True)
        >>> y = gradient_in_forward(lambda xs, ws: (ws[0] * xs[0].square()).sum(-1), [x], [w])
        >>> y.mean().backward()
        >>> y.tolist(), x.grad.flatten().tolist(), w.grad.tolist()
        ([2.0, 18.0], [2.0, 6.0], [5.0])
    """
    per_sample, shared = list(per_sample), list(shared)
    if not torch.is_grad_enabled() or not any(t.requires_grad for t in per_sample + shared):
        return fn(per_sample, shared).detach()
    copies = [t.detach().requires_grad_(t.requires_grad) for t in per_sample + shared]
    value = fn(copies[: len(per_sample)], copies[len(per_sample) :])
    batch = tuple(value.shape)
    for tensor in per_sample:
        if tuple(tensor.shape[:-1]) != batch:
            raise ValueError(
                f"expected per-sample inputs of shape {batch} + (k,), got {tuple(tensor.shape)}"
            )
    if not value.requires_grad:
        return value
    originals = [t for t in per_sample + shared if t.requires_grad]
    wanted = [c for c in copies if c.requires_grad]
    grads = torch.autograd.grad(value.sum(), wanted, allow_unused=True)
    used = [(t, g) for t, g in zip(originals, grads, strict=True) if g is not None]
    n_per_sample = sum(1 for t, _ in used if any(t is s for s in per_sample))
    return _GradientInForward.apply(
        value.detach(), n_per_sample, [g for _, g in used], *[t for t, _ in used]
    )


def contraction_solve(
    step: Callable[[Tensor], Tensor],
    start: Tensor,
    lipschitz: float,
    tol: float | None = None,
    max_iter: int = 1000,
) -> Tensor:
    r"""Fixed point of a contraction, :math:`x = T(x)`, by iteration :math:`x_{k+1} = T(x_k)`.

    ``T`` has rate ``c = lipschitz < 1`` per sample in the Euclidean norm over the last
    dimension. The error obeys the a-priori bound :math:`\|x_k - x^*\| \le \frac{c^k}{1 - c}
    \|x_1 - x_0\|` and the sharper a-posteriori one :math:`\|x_k - x^*\| \le \frac{c}{1 - c}
    \|x_k - x_{k-1}\|` (Banach), and a sample has converged when the latter is at most
    :math:`\mathrm{tol}\,(1 + \|x_k\|)`, or when the step is at the rounding level,
    :math:`\|x_k - x_{k-1}\| \le 16\,\varepsilon\,(1 + \|x_k\| + \|x_0\|)` (nothing more can be
    resolved in the dtype). Runs without gradients, one host sync per iteration; under
    :func:`torch.export.export` the iterations become one :func:`torch.while_loop` whose
    stopping test stays on the device, and samples that have not converged come out as NaN.

    Arguments:
        step: the map ``T``, ``(*batch, D) -> (*batch, D)``.
        start: ``x_0``, ``(*batch, D)``.
        lipschitz: the contraction rate ``c`` in ``(0, 1)``.
        tol: relative tolerance on the error bound (default: 1e-12 in float64, about 1e-6 in
            float32).
        max_iter: iteration limit.

    Returns:
        ``x_k``, ``(*batch, D)``, detached.

    Raises:
        ConvergenceError: when some sample has not converged in ``max_iter`` iterations; the
            message gives the largest residual :math:`\|T(x_k) - x_k\|` and error bound.

    Example:
        >>> t = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
        >>> x = contraction_solve(lambda x: t - 0.5 * torch.sin(x), t, 0.5)
        >>> bool((x + 0.5 * torch.sin(x) - t).abs().max() < 1e-11)
        True
    """
    if max_iter < 1:
        raise ValueError(f"expected max_iter >= 1, got {max_iter}")
    tol = default_tol(start.dtype) if tol is None else tol
    eps = torch.finfo(start.dtype).eps
    ratio = lipschitz / (1 - lipschitz)
    with torch.no_grad():
        x0 = start.detach()
        floor = 16 * eps * (1 + x0.norm(dim=-1))

        def iterate(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            """One step: ``(x_{k+1}, done, ||x_{k+1} - x_k||)``."""
            new = step(x)
            delta = (new - x).norm(dim=-1)
            scale = 1 + new.norm(dim=-1)
            done = (ratio * delta <= tol * scale) | (delta <= floor + 16 * eps * scale)
            return new, done, delta

        if torch.compiler.is_exporting():

            def on_device(x: Tensor) -> tuple[Tensor, Tensor]:
                new, done, _ = iterate(x)
                return done, new

            start = torch.zeros(x0.shape[:-1], dtype=torch.bool, device=x0.device)
            # x0.clone(): no alias of the input in the loop's state
            done, (x,) = iterate_on_device(on_device, (x0.clone(),), start, max_iter)
            return torch.where(done.unsqueeze(-1), x, torch.nan)
        x = x0
        for _ in range(max_iter):
            x, done, delta = iterate(x)
            if bool(done.all()):
                return x
        bad = ~done
        residual = (step(x) - x).norm(dim=-1)[bad]
        raise ConvergenceError(
            f"fixed-point inverse did not converge in max_iter={max_iter} iterations: "
            f"{int(bad.sum())} of {bad.numel()} points have residual up to "
            f"{float(residual.max()):.3g} (error bound {float((ratio * delta)[bad].max()):.3g}), "
            f"expected an error bound <= tol={tol:g} (relative); raise max_iter or tol"
        )
