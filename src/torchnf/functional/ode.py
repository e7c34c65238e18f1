r"""The maths of continuous normalizing flows: an adaptive ODE solver, divergence estimators,
and the conditional paths and minibatch optimal-transport pairing of flow matching.

A continuous flow maps data ``x`` to a latent ``z`` by integrating :math:`\dot x = f(x, t)`
from ``t = 0`` to ``t = 1``; its log-determinant is the integral of the divergence
:math:`\nabla \cdot f = \mathrm{tr}(\partial f / \partial x)` along the path (the
instantaneous change of variables of Chen et al., 2018):

.. math:: \frac{d}{dt} \log\left|\det \frac{\partial x(t)}{\partial x(0)}\right|
          = \mathrm{tr}\, \frac{\partial f}{\partial x}(x(t), t).

:func:`dopri5` integrates such systems: the Dormand–Prince 5(4) pair with error control and
the step-size rule of Hairer, Nørsett & Wanner. It is written here rather than taken from
``torchdiffeq`` so that ``pip install torchnf`` stays torch-only (``torchdiffeq`` pulls in
SciPy) and so that the solver has the two properties the bijector contract needs: the step
sizes are host floats chosen from detached error estimates, so gradients flow through the
Runge–Kutta stages only (the autograd Jacobian of a solve is exactly block-diagonal over the
batch, and it is the Jacobian of the discrete map whose divergence integral the log-det
approximates to the tolerance); and the error of every batch element is controlled (the norm
is a root mean square per element, then the largest over the batch), so no point is solved
more loosely because the others are easy. Gradients are by backpropagation through the solver
("discretize then optimize"; memory grows with the number of steps), or, by
:func:`~torchnf.functional.adjoint.odeint_adjoint`, by the adjoint method ("optimize then
discretize": a second solve backwards in time, memory constant in the steps), for which
:func:`dopri5` also controls the error of state tensors without batch dimensions (the
parameter gradients).

:func:`divergence_exact` takes ``D`` backward passes (exact; for small ``D``, tests and
evaluation), :func:`divergence_hutchinson` one (Hutchinson's unbiased estimator
:math:`\epsilon^\top (\partial f / \partial x)\, \epsilon` with
:math:`E[\epsilon \epsilon^\top] = I`, as FFJORD trains).

Flow matching (:func:`conditional_path`, :func:`ot_pairing`) regresses ``f`` on the velocity
of a path between data and noise without solving the ODE.

References:
    Neural Ordinary Differential Equations (Chen, Rubanova, Bettencourt & Duvenaud, 2018,
    arXiv:1806.07366). FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative
    Models (Grathwohl, Chen, Bettencourt, Sutskever & Duvenaud, 2019, arXiv:1810.01367).
    A family of embedded Runge-Kutta formulae (Dormand & Prince, 1980, J. Comput. Appl. Math.
    6(1)); Solving Ordinary Differential Equations I (Hairer, Nørsett & Wanner, 1993, II.4).
    Flow Matching for Generative Modeling (Lipman, Chen, Ben-Hamu, Nickel & Le, 2023,
    arXiv:2210.02747). Flow Straight and Fast: Learning to Generate and Transfer Data with
    Rectified Flow (Liu, Gong & Liu, 2023, arXiv:2209.03003). Improving and Generalizing
    Flow-Based Generative Models with Minibatch Optimal Transport (Tong et al., 2024,
    arXiv:2302.00482).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from torchnf.functional.solvers import ConvergenceError

#: ``func(t, state) -> d state / dt``: ``t`` a host float, ``state`` a tuple of tensors.
Dynamics = Callable[[float, tuple[Tensor, ...]], tuple[Tensor, ...]]

# The Dormand–Prince 5(4) tableau (FSAL: the last stage is the next step's first).
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_E = tuple(b5 - b4 for b5, b4 in zip(_B5, _B4, strict=True))

#: Tolerances below this many machine epsilons of the state's dtype are raised to it, as an
#: error estimate cannot resolve less than the rounding of the stages.
TOLERANCE_FLOOR_EPS = 64


class Solution(NamedTuple):
    """The state at the end of :func:`dopri5`, with the cost of the solve."""

    state: tuple[Tensor, ...]
    #: Evaluations of the dynamics.
    nfe: int
    #: Accepted steps.
    n_steps: int
    #: Rejected steps.
    n_rejected: int


def tolerance_floor(dtype: torch.dtype) -> float:
    """The smallest tolerance :func:`dopri5` uses in ``dtype``: 64 machine epsilons (1.4e-14
    in float64, 7.6e-6 in float32)."""
    return TOLERANCE_FLOOR_EPS * torch.finfo(dtype).eps


def _combine(y: tuple[Tensor, ...], h: float, ks: list[tuple[Tensor, ...]], coefficients) -> tuple:
    """``y + h * sum_j a_j k_j`` per state tensor (zero coefficients skipped)."""
    out = []
    for i, yi in enumerate(y):
        acc = yi
        for a, k in zip(coefficients, ks, strict=False):
            if a != 0.0:
                acc = acc + (h * a) * k[i]
        out.append(acc)
    return tuple(out)


def _error_ratio(
    error: tuple[Tensor, ...],
    y0: tuple[Tensor, ...],
    y1: tuple[Tensor, ...],
    atol: float,
    rtol: float,
    batch_ndim: int,
    n_batched: int | None = None,
    n_controlled: int | None = None,
) -> float:
    """``max`` over batch elements of the RMS of ``err / (atol + rtol max(|y0|, |y1|))``
    over each element's components (all state tensors together); <= 1 accepts a step.

    Only the first ``n_controlled`` state tensors count (``None``: all); those from index
    ``n_batched`` on (``None``: none) have no batch dimensions and count as one more element,
    the RMS over all their components."""
    n = len(error) if n_controlled is None else n_controlled
    n_batched = n if n_batched is None else n_batched
    squares, count = None, 0
    shared, shared_count = None, 0
    for i, (e, a, b) in enumerate(zip(error[:n], y0[:n], y1[:n], strict=True)):
        scale = atol + rtol * torch.maximum(a.detach().abs(), b.detach().abs())
        ratio = (e.detach() / scale).square()
        if i >= n_batched:
            shared_count += ratio.numel()
            ratio = ratio.sum()
            shared = ratio if shared is None else shared + ratio
            continue
        if batch_ndim:
            ratio = ratio.reshape(*ratio.shape[:batch_ndim], -1)
            count += ratio.shape[-1]
            ratio = ratio.sum(-1)
        else:
            count += ratio.numel()
            ratio = ratio.sum()
        squares = ratio if squares is None else squares + ratio
    worst = 0.0 if squares is None else float(squares.max()) / max(count, 1)
    if shared is not None:
        worst = max(worst, float(shared) / max(shared_count, 1))
    return math.sqrt(worst)


def _initial_step(
    func: Dynamics,
    t0: float,
    y0: tuple[Tensor, ...],
    f0: tuple[Tensor, ...],
    direction: float,
    atol: float,
    rtol: float,
    batch_ndim: int,
    **norm: int | None,
) -> float:
    """Hairer, Nørsett & Wanner's starting step (II.4, one extra evaluation), positive;
    ``norm``: the keywords of :func:`_error_ratio`."""
    zeros = tuple(torch.zeros_like(y) for y in y0)
    d0 = _error_ratio(y0, zeros, y0, atol, rtol, batch_ndim, **norm)
    d1 = _error_ratio(f0, zeros, y0, atol, rtol, batch_ndim, **norm)
    if not (math.isfinite(d0) and math.isfinite(d1)):
        raise ConvergenceError(
            f"dopri5: the initial state or the dynamics at t={t0:g} are non-finite"
        )
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    y1 = tuple(y + direction * h0 * f for y, f in zip(y0, f0, strict=True))
    f1 = func(t0 + direction * h0, y1)
    diff = tuple(b - a for a, b in zip(f0, f1, strict=True))
    d2 = _error_ratio(diff, zeros, y0, atol, rtol, batch_ndim, **norm) / h0
    if max(d1, d2) <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1 / 5)
    return min(100 * h0, h1)


def dopri5(
    func: Dynamics,
    state: tuple[Tensor, ...],
    t0: float,
    t1: float,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    max_steps: int = 1000,
    batch_ndim: int = 0,
    unbatched: int = 0,
    controlled: int | None = None,
) -> Solution:
    r"""Integrate :math:`\dot y = f(t, y)` from ``t0`` to ``t1`` (either direction) with the
    adaptive Dormand–Prince 5(4) method.

    Each step takes the fifth-order solution and estimates its error by the difference with
    the embedded fourth-order one (local extrapolation); the step is accepted when the error
    ratio :math:`r = \max_b \mathrm{RMS}_i\, e_{bi} / (\mathrm{atol} + \mathrm{rtol}
    \max(|y_{bi}|, |y'_{bi}|)) \le 1` (an RMS over the components ``i`` of each batch element
    ``b``, all state tensors together, then the largest over the batch), and the next step is
    :math:`h \min(10, \max(0.2, 0.9 r^{-1/5}))`. The first stage of a step is the last of the
    previous one (FSAL): six evaluations per step. Step sizes are host floats computed from
    detached values (one host sync per step), so autograd differentiates the Runge–Kutta
    stages only. Tolerances below :func:`tolerance_floor` of the state's dtype are raised to
    it.

    Arguments:
        func: ``func(t, state) -> derivative``, a tuple of tensors shaped like ``state``.
        state: the initial state, a tuple of tensors whose first ``batch_ndim`` dimensions
            are the batch.
        t0: initial time.
        t1: final time (``t1 < t0`` integrates backwards).
        atol: absolute tolerance (> 0).
        rtol: relative tolerance (>= 0).
        max_steps: limit on the steps, accepted and rejected.
        batch_ndim: number of leading batch dimensions of the state tensors (0: the whole
            state is one element).
        unbatched: the last ``unbatched`` state tensors have no batch dimensions (the
            parameter gradients of an adjoint solve, :mod:`torchnf.functional.adjoint`): their
            error counts as one more element of the norm, the RMS over all their components.
        controlled: only the first ``controlled`` state tensors enter the error estimate
            (``None``: all); the others are integrated along on the same steps (a seminorm,
            Kidger, Chen & Lyons, 2021, arXiv:2009.09457).

    Returns:
        A :class:`Solution`: the state at ``t1`` and the numbers of evaluations and steps.

    Raises:
        ConvergenceError: when ``max_steps`` steps do not reach ``t1`` (the message gives
            the time reached and the last error ratio).

    Example:
        >>> y0 = torch.tensor([1.0, 2.0], dtype=torch.float64)
        >>> solution = dopri5(lambda t, y: (-y[0],), (y0,), 0.0, 1.0, atol=1e-10, rtol=1e-10)
        >>> bool((solution.state[0] - y0 * math.exp(-1)).abs().max() < 1e-9)
        True
    """
    if not (atol > 0 and rtol >= 0):
        raise ValueError(f"expected atol > 0 and rtol >= 0, got atol={atol}, rtol={rtol}")
    if max_steps < 1:
        raise ValueError(f"expected max_steps >= 1, got {max_steps}")
    state = tuple(state)
    if not 0 <= unbatched <= len(state):
        raise ValueError(f"expected 0 <= unbatched <= {len(state)}, got {unbatched}")
    if controlled is not None and not 1 <= controlled <= len(state):
        raise ValueError(f"expected 1 <= controlled <= {len(state)} or None, got {controlled}")
    n_controlled = len(state) if controlled is None else controlled
    norm = {"n_batched": min(len(state) - unbatched, n_controlled), "n_controlled": n_controlled}
    if t0 == t1:
        return Solution(state, 0, 0, 0)
    floor = tolerance_floor(state[0].dtype)
    atol, rtol = max(atol, floor), (max(rtol, floor) if rtol > 0 else 0.0)
    direction = 1.0 if t1 > t0 else -1.0
    span = abs(t1 - t0)
    k1 = func(t0, state)
    nfe = 1
    h = min(_initial_step(func, t0, state, k1, direction, atol, rtol, batch_ndim, **norm), span)
    nfe += 1
    t, done, n_steps, n_rejected, ratio = t0, 0.0, 0, 0, float("nan")
    while done < span:
        if n_steps + n_rejected >= max_steps:
            raise ConvergenceError(
                f"dopri5 did not reach t={t1:g} in {max_steps} steps (stopped at t={t:.6g}, "
                f"last step {h:.3g}, error ratio {ratio:.3g}); raise max_steps or the "
                "tolerances atol/rtol"
            )
        last = span - done <= h * (1 + 1e-12)
        if last:
            h = span - done
        dt = direction * h
        ks = [k1]
        for c, a in zip(_C[1:], _A[1:], strict=True):
            ks.append(func(t + c * dt, _combine(state, dt, ks, a)))
        nfe += 6
        new = _combine(state, dt, ks[:6], _B5)
        error = tuple(
            sum((dt * e) * k[i] for e, k in zip(_E, ks, strict=True) if e != 0.0)
            for i in range(n_controlled)
        )
        ratio = _error_ratio(error, state, new, atol, rtol, batch_ndim, **norm)
        if not math.isfinite(ratio):
            raise ConvergenceError(
                f"dopri5: the error estimate is {ratio} at t={t:.6g} (step {h:.3g}); the "
                "dynamics returned non-finite values"
            )
        if ratio <= 1.0:
            state, k1 = new, ks[6]
            done = span if last else done + h
            t = t1 if last else t0 + direction * done
            n_steps += 1
        else:
            n_rejected += 1
        factor = 10.0 if ratio == 0 else min(10.0, max(0.2, 0.9 * ratio ** (-1 / 5)))
        if ratio > 1.0:
            factor = min(factor, 1.0)
        h = h * factor
        if h < span * 1e-14:
            raise ConvergenceError(
                f"dopri5: the step size fell to {h:.3g} at t={t:.6g} (error ratio {ratio:.3g}); "
                "the dynamics are too stiff for atol/rtol"
            )
    return Solution(state, nfe, n_steps, n_rejected)


# -- divergence ---------------------------------------------------------------------------------
def divergence_exact(f: Tensor, x: Tensor, create_graph: bool = False) -> Tensor:
    r"""The divergence :math:`\nabla \cdot f = \sum_i \partial f_i / \partial x_i`, exactly.

    One backward pass per feature (``D`` in all), through the graph from ``x`` to ``f``.

    Shapes: ``f`` and ``x`` are ``(*batch, D)``; the result is ``(*batch,)``. ``f`` must be
    computed from ``x`` with gradients enabled, elementwise over the batch.

    Arguments:
        f: the vector field at ``x``.
        x: the points (a tensor ``f`` was computed from, requiring gradients).
        create_graph: keep the graph of the result (to differentiate the divergence).

    Example:
        >>> x = torch.randn(5, 3, requires_grad=True)
        >>> f = x * torch.tensor([1.0, 2.0, 3.0])  # divergence 6 everywhere
        >>> divergence_exact(f, x)
        tensor([6., 6., 6., 6., 6.])
    """
    total = None
    for i in range(f.shape[-1]):
        (grad,) = torch.autograd.grad(
            f[..., i].sum(), x, create_graph=create_graph, retain_graph=True
        )
        total = grad[..., i] if total is None else total + grad[..., i]
    return total


def divergence_hutchinson(
    f: Tensor, x: Tensor, noise: Tensor, create_graph: bool = False
) -> Tensor:
    r"""Hutchinson's estimate :math:`\epsilon^\top (\partial f / \partial x)\, \epsilon` of
    the divergence, unbiased when :math:`E[\epsilon \epsilon^\top] = I`.

    One backward pass (a vector-Jacobian product). With Rademacher noise (entries
    :math:`\pm 1`) its variance is :math:`2 \sum_{i \ne j} J_{ij}^2` (the diagonal adds none),
    with Gaussian noise :math:`2 \|J\|_F^2`.

    Shapes: ``f``, ``x`` and ``noise`` are ``(*batch, D)``; the result is ``(*batch,)``.

    Arguments:
        f: the vector field at ``x``.
        x: the points (requiring gradients).
        noise: :math:`\epsilon`, see :func:`divergence_noise`.
        create_graph: keep the graph of the result.

    References:
        A Stochastic Estimator of the Trace of the Influence Matrix for Laplacian Smoothing
        Splines (Hutchinson, 1989); FFJORD (Grathwohl et al., 2019, arXiv:1810.01367).

    Example:
        >>> x = torch.randn(4, 3, requires_grad=True)
        >>> f = 2 * x  # a diagonal Jacobian: exact with Rademacher noise
        >>> noise = divergence_noise(x, "rademacher")
        >>> divergence_hutchinson(f, x, noise)
        tensor([6., 6., 6., 6.])
    """
    (vjp,) = torch.autograd.grad(f, x, noise, create_graph=create_graph)
    return (vjp * noise).sum(-1)


def divergence_noise(
    x: Tensor, kind: str = "rademacher", generator: torch.Generator | None = None
) -> Tensor:
    """Noise for :func:`divergence_hutchinson` shaped like ``x``: ``"rademacher"`` (entries
    ``+-1``, the lower-variance choice) or ``"gaussian"`` (standard normal).

    Example:
        >>> divergence_noise(torch.zeros(2, 3)).abs()
        tensor([[1., 1., 1.],
                [1., 1., 1.]])
    """
    if kind == "rademacher":
        bits = torch.randint(0, 2, x.shape, generator=generator, device=x.device)
        return bits.to(x.dtype) * 2 - 1
    if kind == "gaussian":
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    raise ValueError(f"expected noise 'rademacher' or 'gaussian', got {kind!r}")


# -- flow matching ----------------------------------------------------------------------------
def conditional_path(
    x: Tensor, z: Tensor, t: Tensor, sigma_min: float = 0.0
) -> tuple[Tensor, Tensor]:
    r"""A point of the conditional optimal-transport path from data ``x`` (``t = 0``) to noise
    ``z`` (``t = 1``), and the path's velocity there.

    .. math:: x_t = (1 - t)\, x + (\sigma_{min} + (1 - \sigma_{min})\, t)\, z, \qquad
              u_t = \dot x_t = (1 - \sigma_{min})\, z - x.

    This is the path of Lipman et al. (2023) with time reversed, so that it runs in torchnf's
    normalizing direction (data to latent, as the flow's ``forward``): at ``t = 0`` it is the
    data point plus :math:`\sigma_{min} z`, at ``t = 1`` the noise. With
    :math:`\sigma_{min} = 0` it is the straight line of rectified flow (Liu et al., 2023)
    and of independent conditional flow matching (Tong et al., 2024).

    Shapes: ``x``, ``z`` are ``(*batch, D)``, ``t`` is ``(*batch,)``; both outputs are
    ``(*batch, D)``.

    Arguments:
        x: data points.
        z: noise points (draws from the flow's base distribution).
        t: times in ``[0, 1]``.
        sigma_min: the width left around each data point at ``t = 0`` (in ``[0, 1)``).

    Example:
        >>> x, z = torch.zeros(1, 2), torch.ones(1, 2)
        >>> conditional_path(x, z, torch.tensor([0.25]))
        (tensor([[0.2500, 0.2500]]), tensor([[1., 1.]]))
    """
    if not 0.0 <= sigma_min < 1.0:
        raise ValueError(f"expected sigma_min in [0, 1), got {sigma_min}")
    t = t.unsqueeze(-1)
    x_t = (1 - t) * x + (sigma_min + (1 - sigma_min) * t) * z
    return x_t, (1 - sigma_min) * z - x


def sinkhorn(cost: Tensor, reg: float = 0.05, n_iter: int = 200) -> Tensor:
    r"""The entropic optimal-transport plan between two uniform empirical measures.

    Solves :math:`\min_P \langle P, C \rangle - \varepsilon H(P)` over plans with uniform
    marginals :math:`1/n` and :math:`1/m` by Sinkhorn's iterations in the log domain (stable
    for small :math:`\varepsilon`); ``reg`` is :math:`\varepsilon` relative to the mean cost.

    Shapes: ``cost`` is ``(n, m)``; the plan is ``(n, m)`` with rows summing to about ``1/n``
    and columns to ``1/m``.

    Arguments:
        cost: the cost matrix.
        reg: entropic regularization, relative to ``cost.mean()`` (> 0).
        n_iter: number of (row, column) iteration pairs.

    References:
        Sinkhorn Distances: Lightspeed Computation of Optimal Transport (Cuturi, 2013,
        arXiv:1306.0895).

    Example:
        >>> cost = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
        >>> sinkhorn(cost, reg=0.01).round(decimals=3)
        tensor([[0.5000, 0.0000],
                [0.0000, 0.5000]])
    """
    if not reg > 0:
        raise ValueError(f"expected reg > 0, got {reg}")
    n, m = cost.shape
    epsilon = reg * float(cost.mean().clamp_min(torch.finfo(cost.dtype).tiny))
    log_k = -cost / epsilon
    log_a = cost.new_full((n,), -math.log(n))
    log_b = cost.new_full((m,), -math.log(m))
    u, v = torch.zeros_like(log_a), torch.zeros_like(log_b)
    for _ in range(n_iter):
        u = log_a - torch.logsumexp(log_k + v[None, :], dim=1)
        v = log_b - torch.logsumexp(log_k + u[:, None], dim=0)
    return torch.exp(u[:, None] + log_k + v[None, :])


def ot_pairing(
    x: Tensor,
    z: Tensor,
    method: str = "auto",
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Indices ``j`` pairing each ``x_i`` with ``z_{j_i}`` by minibatch optimal transport
    for the squared Euclidean cost :math:`\|x_i - z_j\|^2`.

    ``"exact"``: the optimal assignment (a permutation), by SciPy's
    ``linear_sum_assignment`` (the Hungarian method; SciPy is optional and only imported
    here). ``"sinkhorn"``: each ``x_i`` draws its partner from the row of the entropic plan
    of :func:`sinkhorn` (Tong et al. sample pairs from the plan; noise points may repeat).
    ``"auto"``: exact when SciPy is installed, Sinkhorn otherwise. Straighter pairs give a
    field with straighter paths, which the ODE solver then integrates in fewer steps.

    Shapes: ``x`` is ``(n, D)``, ``z`` is ``(n, D)``; the result is ``(n,)`` (long).

    Arguments:
        x: data points.
        z: noise points.
        method: ``"auto"``, ``"exact"`` or ``"sinkhorn"``.
        generator: randomness of the Sinkhorn draws.

    References:
        Tong et al., 2024, arXiv:2302.00482; Pooladian et al., "Multisample Flow Matching:
        Straightening Flows with Minibatch Couplings", 2023, arXiv:2304.14772.

    Example:
        >>> x = torch.tensor([[0.0], [10.0]])
        >>> z = torch.tensor([[9.0], [1.0]])
        >>> ot_pairing(x, z, "sinkhorn").tolist()
        [1, 0]
    """
    if method not in ("auto", "exact", "sinkhorn"):
        raise ValueError(f"expected method 'auto', 'exact' or 'sinkhorn', got {method!r}")
    if x.dim() != 2 or z.shape != x.shape:
        raise ValueError(
            f"expected x and z of one shape (n, D), got {tuple(x.shape)} and {tuple(z.shape)}"
        )
    cost = torch.cdist(x.detach().double(), z.detach().double()).square()
    if method != "sinkhorn":
        try:
            from scipy.optimize import linear_sum_assignment
        except ImportError:
            if method == "exact":
                raise ImportError(
                    "ot_pairing(method='exact') needs SciPy (pip install 'torchnf[ot]'); "
                    "method='sinkhorn' needs nothing more than torch"
                ) from None
        else:
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            index = torch.empty(len(rows), dtype=torch.long)
            index[torch.from_numpy(rows)] = torch.from_numpy(cols)
            return index.to(x.device)
    plan = sinkhorn(cost)
    return torch.multinomial(plan, 1, generator=generator).squeeze(-1).to(x.device)
