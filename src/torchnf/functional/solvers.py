"""Root finding for increasing scalar equations, vectorized over a batch.

Numerical inverses (planar, Sylvester, generalized Sylvester) reduce to equations
``g(x) = t`` with ``g`` strictly increasing in one scalar ``x`` and a known bracket
``lower <= x <= upper``. :func:`solve_increasing` solves them elementwise with Newton steps
kept inside the bracket (bisection otherwise), so it converges for every increasing ``g``,
and raises :class:`ConvergenceError` with the residual when ``tol`` is not met in time.
The stopping test reads one boolean back to the host per iteration: a device sync, and a
graph break under :func:`torch.compile` (the iteration count depends on the data). Under
:func:`torch.export.export` (and so ONNX export) the same iterations run inside
:func:`torch.while_loop`, which exports as a loop whose stopping test stays on the device;
an exported program cannot raise, so points that have not converged come out as NaN there.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

#: ``fn(x) -> (g(x), g'(x))``, elementwise.
ScalarFunction = Callable[[Tensor], tuple[Tensor, Tensor]]


class ConvergenceError(ValueError):
    """An iterative inverse did not reach its tolerance within its iteration limit."""


def default_tol(dtype: torch.dtype) -> float:
    """The default tolerance of a solve in ``dtype``: ``max(1e-12, 8 eps)`` (1e-12 in float64,
    about 1e-6 in float32)."""
    return max(1e-12, 8 * torch.finfo(dtype).eps)


def solve_increasing(
    fn: ScalarFunction,
    target: Tensor,
    lower: Tensor,
    upper: Tensor,
    tol: float | None = None,
    max_iter: int = 100,
) -> Tensor:
    r"""Solve ``g(x) = target`` elementwise for increasing ``g`` with a safeguarded Newton method.

    Each point keeps a bracket ``[lo, hi]`` with ``g(lo) <= target <= g(hi)``, starts at its
    middle and takes the Newton step when it lands inside the bracket and at least halves the
    previous step, a bisection step otherwise (as ``rtsafe``), so convergence is guaranteed
    for any increasing ``g``. A point has converged when both the residual
    :math:`|g(x) - t| \le \mathrm{tol}\,(1 + |t|)` and the Newton estimate of the error
    :math:`|g(x) - t| / g'(x) \le \mathrm{tol}\,(1 + |x|)`, or when its bracket has shrunk
    to a few ulps (nothing more can be resolved in the dtype).

    The iterations run without gradients; a last Newton step at the solution is taken with
    gradients enabled, so the result is differentiable with the exact implicit derivative
    :math:`\partial x / \partial \theta = -(\partial g / \partial \theta - \partial t /
    \partial \theta) / g'(x)` with respect to anything ``fn`` and ``target`` depend on.

    Arguments:
        fn: ``fn(x) -> (g(x), g'(x))`` elementwise, ``g' > 0``.
        target: the right-hand sides ``t``, any shape.
        lower: lower ends of the brackets (broadcastable to ``target``).
        upper: upper ends of the brackets (broadcastable to ``target``).
        tol: relative tolerance; :func:`default_tol` of the dtype when ``None``.
        max_iter: maximum number of iterations.

    Returns:
        ``x`` with the shape and dtype of ``target``.

    Raises:
        ConvergenceError: when some point has not converged after ``max_iter`` iterations;
            the message gives the largest residual and the number of such points.

    Example:
        >>> t = torch.tensor([-2.0, 0.0, 3.0], dtype=torch.float64)
        >>> cube = lambda x: (x**3 + x, 3 * x**2 + 1)
        >>> x = solve_increasing(cube, t, t.abs().neg() - 1, t.abs() + 1)
        >>> bool((x**3 + x - t).abs().max() < 1e-12)
        True
    """
    if max_iter < 1:
        raise ValueError(f"expected max_iter >= 1, got {max_iter}")
    tol = default_tol(target.dtype) if tol is None else tol
    eps = torch.finfo(target.dtype).eps
    with torch.no_grad():
        t = target.detach()
        lo = torch.broadcast_to(lower.detach(), t.shape).clone()
        hi = torch.broadcast_to(upper.detach(), t.shape).clone()
        x, step = (lo + hi) / 2, hi - lo

        def iterate(x: Tensor, lo: Tensor, hi: Tensor, step: Tensor) -> tuple[Tensor, ...]:
            """One safeguarded step: ``(x, lo, hi, step, done, residual)``, ``x`` kept where
            done."""
            value, slope = fn(x)
            residual = value - t
            lo = torch.where(residual < 0, x, lo)
            hi = torch.where(residual > 0, x, hi)
            newton = residual / slope
            done = (residual.abs() <= tol * (1 + t.abs())) & (newton.abs() <= tol * (1 + x.abs()))
            done |= (residual == 0) | (hi - lo <= 4 * eps * (1 + x.abs()))
            candidate = x - newton
            inside = (candidate > lo) & (candidate < hi) & (newton.abs() <= step.abs() / 2)
            new_x = torch.where(inside, candidate, (lo + hi) / 2)
            return torch.where(done, x, new_x), lo, hi, new_x - x, done, residual

        if torch.compiler.is_exporting():

            def on_device(*state: Tensor) -> tuple[Tensor, ...]:
                x, lo, hi, step, done, _ = iterate(*state)
                return done, x, lo, hi, step

            start = torch.zeros_like(x, dtype=torch.bool)
            done, (x, *_) = iterate_on_device(on_device, (x, lo, hi, step), start, max_iter)
            x = torch.where(done, x, torch.nan)
        else:
            for _ in range(max_iter):
                new_x, lo, hi, step, done, residual = iterate(x, lo, hi, step)
                if bool(done.all()):
                    break
                x = new_x
            else:
                bad = ~done
                raise ConvergenceError(
                    f"numerical inverse did not converge in max_iter={max_iter} iterations: "
                    f"{int(bad.sum())} of {bad.numel()} points have residual up to "
                    f"{float(residual[bad].abs().max()):.3g}, expected <= tol={tol:g} "
                    "(relative); raise max_iter or tol"
                )
    value, slope = fn(x)
    return x - (value - target) / slope


def iterate_on_device(
    step: Callable[..., tuple[Tensor, ...]],
    state: tuple[Tensor, ...],
    done: Tensor,
    max_iter: int,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Repeat ``(done, *state) = step(*state)`` as one :func:`torch.while_loop` until every
    element of ``done`` holds or ``max_iter`` iterations have run; returns ``(done, state)``.

    An iterative solver's loop for :func:`torch.export.export` (and ONNX, as a ``Loop``): the
    stopping test stays on the device. A program cannot raise, so callers turn the elements
    not ``done`` into NaN where Python would raise :class:`ConvergenceError`.
    """
    count = torch.zeros((), dtype=torch.int64, device=done.device)

    def running(count: Tensor, done: Tensor, *state: Tensor) -> Tensor:
        return (count < max_iter) & ~done.all()

    def body(count: Tensor, done: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        return count + 1, *step(*state)

    _, done, *state = torch.while_loop(running, body, (count, done, *state))
    return done, tuple(state)
