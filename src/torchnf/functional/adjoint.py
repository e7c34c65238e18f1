r"""The adjoint method: gradients of an ODE solve in memory constant in the number of steps.

:func:`odeint_adjoint` solves :math:`\dot y = f(t, y; \theta)` from ``t0`` to ``t1`` with
:func:`~torchnf.functional.ode.dopri5`, keeping no graph, and computes the gradients of a
loss :math:`L(y(t_1))` by solving a second ODE backwards in time ("optimize then
discretize", Chen et al., 2018, Appendix B). With the adjoint :math:`a(t) = \partial L /
\partial y(t)`,

.. math:: \dot a = -a^\top \frac{\partial f}{\partial y}, \qquad
          \frac{dL}{d\theta} = \int_{t_0}^{t_1} a^\top \frac{\partial f}{\partial \theta}\, dt,

from :math:`a(t_1) = \partial L / \partial y(t_1)`. The backward solve integrates the
augmented state :math:`(y, a, g_\theta)` from ``t1`` to ``t0``, with
:math:`\dot g_\theta = -a^\top \partial f / \partial \theta` from :math:`g_\theta(t_1) = 0`,
so that :math:`g_\theta(t_0) = dL/d\theta` and :math:`a(t_0) = dL/dy(t_0)`; the state
:math:`y(t)` is recomputed by integrating the ODE backwards alongside, from :math:`y(t_1)`.
Each evaluation of the augmented dynamics re-evaluates ``f`` with a graph and takes one
vector-Jacobian product (:func:`torch.autograd.grad`), and frees that graph before the next
stage: the memory is one evaluation's graph, whatever the number of steps, where
backpropagating through the solver keeps every stage of every step.

The price: the backward solve costs about as many evaluations as the forward one, each a
field evaluation plus a vector-Jacobian product (about three times one evaluation), so a
training step is slower than backpropagation through the stages (which evaluates nothing
again); and the gradients are those of the exact ODE to about the solver's tolerance, not
the exact gradients of the discrete solve. The backward solve uses the forward's tolerances,
its error control covering the recomputed state and the adjoint per batch element and the
parameter gradients as one more element (``seminorm=True`` leaves the parameter gradients out
of the error estimate, Kidger et al., 2021: fewer backward steps, accuracy of the parameter
gradients no longer controlled directly). A state that is not reconstructible backwards (a
stiff or chaotic field) gives wrong gradients; tighten the tolerances or use
backpropagation through the solver.

References:
    Neural Ordinary Differential Equations (Chen, Rubanova, Bettencourt & Duvenaud, 2018,
    arXiv:1806.07366); FFJORD (Grathwohl et al., 2019, arXiv:1810.01367); "Hey, that's not an
    ODE": Faster ODE Adjoints via Seminorms (Kidger, Chen & Lyons, 2021, arXiv:2009.09457).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from torchnf.functional.ode import Dynamics, Solution, dopri5
from torchnf.functional.solvers import ConvergenceError


@dataclass
class _Settings:
    """What the backward pass needs besides the saved final state (no tensors of the solve's
    outputs: those would make a reference cycle through the graph)."""

    func: Dynamics
    params: tuple[Tensor, ...]
    t0: float
    t1: float
    atol: float
    rtol: float
    max_steps: int
    batch_ndim: int
    seminorm: bool
    on_backward: Callable[[Solution], None] | None
    nfe: int = 0
    n_steps: int = 0
    n_rejected: int = 0


def _augmented(settings: _Settings, n: int) -> Dynamics:
    """The dynamics of ``(y, a, g_theta)``: ``(f, -a^T df/dy, -a^T df/dtheta)``."""
    params = settings.params

    def dynamics(t: float, aug: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        adjoint = aug[n : 2 * n]
        with torch.enable_grad():
            y = tuple(v.detach().requires_grad_(True) for v in aug[:n])
            f = tuple(settings.func(t, y))
            pairs = [(fi, ai) for fi, ai in zip(f, adjoint, strict=True) if fi.requires_grad]
            if pairs:
                vjps = torch.autograd.grad(
                    [fi for fi, _ in pairs],
                    (*y, *params),
                    [ai for _, ai in pairs],
                    allow_unused=True,
                )
            else:
                vjps = (None,) * (n + len(params))
        wrt = (*y, *params)
        negated = tuple(
            torch.zeros_like(w) if g is None else -g for g, w in zip(vjps, wrt, strict=True)
        )
        return (*(fi.detach() for fi in f), *negated)

    return dynamics


class _AdjointSolve(torch.autograd.Function):
    """``dopri5`` forward without a graph; the adjoint ODE backward."""

    @staticmethod
    def forward(ctx, settings: _Settings, n: int, *tensors: Tensor) -> tuple[Tensor, ...]:
        with torch.no_grad():
            solution = dopri5(
                settings.func,
                tensors[:n],
                settings.t0,
                settings.t1,
                settings.atol,
                settings.rtol,
                settings.max_steps,
                settings.batch_ndim,
            )
        settings.nfe, settings.n_steps = solution.nfe, solution.n_steps
        settings.n_rejected = solution.n_rejected
        ctx.settings, ctx.n = settings, n
        ctx.save_for_backward(*solution.state)
        return solution.state

    @staticmethod
    def backward(ctx, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        if torch.is_grad_enabled():  # create_graph=True: refuse rather than detach silently
            raise RuntimeError(
                "odeint_adjoint's gradients cannot be differentiated again (create_graph=True); "
                "use backpropagation through the solver (ContinuousFlow(adjoint=False)) for "
                "higher derivatives"
            )
        settings, n = ctx.settings, ctx.n
        final = ctx.saved_tensors
        adjoint = tuple(
            torch.zeros_like(y) if g is None else g.to(y.dtype)
            for g, y in zip(grads, final, strict=True)
        )
        accumulators = tuple(torch.zeros_like(p) for p in settings.params)
        try:
            solution = dopri5(
                _augmented(settings, n),
                (*final, *adjoint, *accumulators),
                settings.t1,
                settings.t0,
                settings.atol,
                settings.rtol,
                settings.max_steps,
                settings.batch_ndim,
                unbatched=len(accumulators),
                controlled=2 * n if settings.seminorm else None,
            )
        except ConvergenceError as error:
            raise ConvergenceError(f"the adjoint (backward) solve failed: {error}") from None
        if settings.on_backward is not None:
            settings.on_backward(solution)
        out = solution.state[n:]
        needs = ctx.needs_input_grad[2:]
        return (None, None, *(g if need else None for g, need in zip(out, needs, strict=True)))


def odeint_adjoint(
    func: Dynamics,
    state: Sequence[Tensor],
    t0: float,
    t1: float,
    params: Sequence[Tensor] = (),
    atol: float = 1e-5,
    rtol: float = 1e-5,
    max_steps: int = 1000,
    batch_ndim: int = 0,
    seminorm: bool = False,
    on_backward: Callable[[Solution], None] | None = None,
) -> Solution:
    r"""Solve :math:`\dot y = f(t, y)` from ``t0`` to ``t1`` like
    :func:`~torchnf.functional.ode.dopri5`, with gradients by the adjoint method.

    The forward solve keeps no graph; backpropagating through its result solves the adjoint
    ODE from ``t1`` back to ``t0`` (see the module) with the same solver, tolerances and
    ``max_steps``, and returns the gradients of the initial ``state`` and of ``params``. Memory
    is constant in the number of steps; the gradients are those of the ODE to about the
    tolerances. They cannot be differentiated again: a backward pass with
    ``create_graph=True`` through the solve raises ``RuntimeError``.

    ``func`` must read every tensor it depends on and that needs a gradient from ``params``
    (by reference: a module's parameters, a context tensor); others get no gradient. The
    backward pass calls it under :func:`torch.enable_grad` with ``state`` tensors that
    require gradients, and its result must then be differentiable with respect to them and
    to ``params`` (e.g. a divergence computed with ``create_graph=True``); it must be a
    deterministic function of ``t`` and ``state`` (fix any noise before the solve).

    Arguments:
        func: ``func(t, state) -> derivative``, a tuple of tensors shaped like ``state``.
        state: the initial state, a tuple of floating tensors whose first ``batch_ndim``
            dimensions are the batch.
        t0: initial time.
        t1: final time (``t1 < t0`` integrates backwards).
        params: the tensors besides ``state`` whose gradients are wanted.
        atol: absolute tolerance of both solves (> 0).
        rtol: relative tolerance of both solves (>= 0).
        max_steps: limit on the steps of each solve.
        batch_ndim: number of leading batch dimensions of the state tensors.
        seminorm: leave the parameter gradients out of the backward solve's error estimate.
        on_backward: called with the backward solve's :class:`~torchnf.functional.ode.Solution`
            (its cost: ``nfe``, ``n_steps``) when the gradients have been computed.

    Returns:
        A :class:`~torchnf.functional.ode.Solution`: the state at ``t1`` (differentiable by
        the adjoint method where grad mode is on and anything requires a gradient) and the
        cost of the forward solve.

    Raises:
        ValueError: for settings :func:`~torchnf.functional.ode.dopri5` refuses, or a
            ``state`` or ``params`` entry that is not a floating tensor.
        ConvergenceError: when either solve does not reach its end in ``max_steps`` steps.

    Example:
        >>> theta = torch.tensor(-0.5, dtype=torch.float64, requires_grad=True)
        >>> y0 = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
        >>> solution = odeint_adjoint(
        ...     lambda t, y: (theta * y[0],), (y0,), 0.0, 1.0, (theta,), atol=1e-10, rtol=1e-10
        ... )
        >>> solution.state[0].sum().backward()  # y(1) = y0 exp(theta)
        >>> round(float(theta.grad), 8), round(float(y0.grad[0]), 8)
        (1.81959198, 0.60653066)
    """
    state, params = tuple(state), tuple(params)
    for name, group in (("state", state), ("params", params)):
        for i, v in enumerate(group):
            if not (isinstance(v, Tensor) and v.is_floating_point()):
                kind = type(v).__name__ if not isinstance(v, Tensor) else str(v.dtype)
                raise ValueError(f"expected floating tensors in {name}, got {kind} at {i}")
    if not isinstance(seminorm, bool):
        raise ValueError(f"expected seminorm True or False, got {seminorm!r}")
    needs_grad = any(v.requires_grad for v in (*state, *params))
    if t0 == t1 or not (torch.is_grad_enabled() and needs_grad):
        with torch.no_grad():
            return dopri5(func, state, t0, t1, atol, rtol, max_steps, batch_ndim)
    if not (atol > 0 and rtol >= 0):  # refused here too, before the Function records anything
        raise ValueError(f"expected atol > 0 and rtol >= 0, got atol={atol}, rtol={rtol}")
    if max_steps < 1:
        raise ValueError(f"expected max_steps >= 1, got {max_steps}")
    settings = _Settings(
        func, params, float(t0), float(t1), atol, rtol, max_steps, batch_ndim, seminorm,
        on_backward,
    )  # fmt: skip
    out = _AdjointSolve.apply(settings, len(state), *state, *params)
    return Solution(tuple(out), settings.nfe, settings.n_steps, settings.n_rejected)
