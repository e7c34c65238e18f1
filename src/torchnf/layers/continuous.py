r"""Continuous normalizing flows: the map of an ODE, with the log-det as a divergence integral.

:class:`ContinuousFlow` is ``z = f(x | c) = x(1)``, the solution at ``t = 1`` of
:math:`\dot x(t) = v(x(t), t \mid c)` from ``x(0) = x``, for a vector field ``v`` given by a
network (:class:`VectorField`). By the instantaneous change of variables,

.. math:: \log\left|\det \frac{\partial z}{\partial x}\right|
          = \int_0^1 \nabla \cdot v(x(t), t \mid c)\, dt,

which the solver integrates alongside the state. The inverse integrates the same ODE from
``t = 1`` back to ``t = 0``. Both directions solve to the tolerances ``atol``/``rtol`` set at
construction with the adaptive Dormand–Prince solver of :mod:`torchnf.functional.ode`, so
``inverse(forward(x))`` returns ``x`` to about those tolerances, and the log-det is the
divergence integral to about them too.

Such a flow trains by maximum likelihood through the solver (FFJORD: backpropagating through
its steps, or, with ``adjoint=True``, by the adjoint method in memory constant in the steps),
or, much faster, by flow matching (:func:`torchnf.flow_matching_loss`), which regresses the
field on the velocity of straight paths from data to noise without solving the ODE at all.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from torchnf.core.bijector import Bijector
from torchnf.core.chain import Chain
from torchnf.core.flow import Flow
from torchnf.core.registry import register
from torchnf.functional.adjoint import odeint_adjoint
from torchnf.functional.ode import (
    Solution,
    divergence_exact,
    divergence_hutchinson,
    divergence_noise,
    dopri5,
)

#: The activations :class:`VectorField` takes (smooth ones: the solver's error control and the
#: divergence assume a smooth field).
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "silu": nn.SiLU,
}


class ConcatSquash(nn.Module):
    r"""A linear layer gated and shifted by the time and context:
    ``h' = (W h + b) * sigmoid(G [t, c] + g) + B [t, c]`` (FFJORD's ``ConcatSquashLinear``).

    Shapes: ``h`` is ``(*batch, in_size)``, ``tc`` is ``(*batch, 1 + context_size)``, the
    output ``(*batch, out_size)``.
    """

    def __init__(self, in_size: int, out_size: int, condition_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_size, out_size)
        self.gate = nn.Linear(condition_size, out_size)
        self.shift = nn.Linear(condition_size, out_size, bias=False)

    def forward(self, h: Tensor, tc: Tensor) -> Tensor:
        return self.linear(h) * torch.sigmoid(self.gate(tc)) + self.shift(tc)


class VectorField(nn.Module):
    r"""A time- and context-dependent vector field ``v(x, t | c)``: an MLP of
    :class:`ConcatSquash` layers with smooth activations.

    Every layer sees ``[t, c]`` through its gate and shift, so the field can change along the
    flow. The last layer is zero-initialized: ``v = 0`` and the flow is the identity until
    trained (as the library's coupling conditioners).

    Shapes: ``x`` is ``(*batch, input_size)``, ``t`` a scalar tensor or ``(*batch,)``,
    ``context`` ``(*batch, context_size)``; the output is ``(*batch, input_size)``.

    Arguments:
        input_size: number of features ``D``.
        hidden_sizes: widths of the hidden layers.
        context_size: size of the context (0 for none).
        activation: ``"silu"`` (the default, see :class:`~torchnf.models.CNF`), ``"tanh"`` (as
            FFJORD's toy models) or ``"softplus"``.

    Example:
        >>> field = VectorField(2, hidden_sizes=(8,))
        >>> field(torch.randn(5, 2), torch.tensor(0.5)).abs().sum()
        tensor(0., grad_fn=<SumBackward0>)
    """

    def __init__(
        self,
        input_size: int,
        hidden_sizes: Sequence[int] = (64, 64, 64),
        context_size: int = 0,
        activation: str = "silu",
    ) -> None:
        super().__init__()
        if input_size < 1 or context_size < 0 or any(h < 1 for h in hidden_sizes):
            raise ValueError(
                "expected input_size >= 1, context_size >= 0 and positive hidden_sizes, got "
                f"{input_size}, {context_size}, {list(hidden_sizes)}"
            )
        if activation not in ACTIVATIONS:
            raise ValueError(f"expected activation in {sorted(ACTIVATIONS)}, got {activation!r}")
        self.input_size, self.context_size = input_size, context_size
        sizes = [input_size, *hidden_sizes, input_size]
        self.layers = nn.ModuleList(
            ConcatSquash(a, b, 1 + context_size) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.activation = ACTIVATIONS[activation]()
        last = self.layers[-1]
        for weight in (last.linear.weight, last.linear.bias, last.shift.weight):
            nn.init.zeros_(weight)

    def forward(self, x: Tensor, t: Tensor, context: Tensor | None = None) -> Tensor:
        tc = t.to(x.dtype).expand(x.shape[:-1]).unsqueeze(-1)
        if self.context_size:
            tc = torch.cat([tc, context.expand(*x.shape[:-1], self.context_size)], dim=-1)
        h = x
        for i, layer in enumerate(self.layers):
            if i:
                h = self.activation(h)
            h = layer(h, tc)
        return h


@register(
    "layer",
    example=lambda context_size: ContinuousFlow(
        VectorField(3, hidden_sizes=(8,), context_size=context_size), atol=1e-10, rtol=1e-10
    ),
    conditional=True,
)
class ContinuousFlow(Bijector):
    r"""Continuous normalizing flow ``z = f(x | c) = x(1)`` with
    :math:`\dot x = v(x, t \mid c)`, ``x(0) = x``.

    :math:`\log|\det \partial z / \partial x| = \int_0^1 \nabla \cdot v(x(t), t \mid c)\, dt`,
    integrated with the state by the adaptive Dormand–Prince 5(4) solver
    (:func:`~torchnf.functional.ode.dopri5`) to ``atol``/``rtol``. The inverse,
    ``x = f^{-1}(z | c)``, integrates from ``t = 1`` to ``t = 0`` with the same tolerances and
    returns :math:`-\int_0^1 \nabla \cdot v\, dt` along its path; round trips are exact to about
    the tolerances (tighten them, and use float64, for exactness to 1e-8 and below).

    The divergence: ``"exact"``, ``D`` backward passes through the field per evaluation (the
    default; what evaluation and the contract test use), or ``"hutchinson"``, one backward pass
    with noise :math:`\epsilon` drawn once per solve (``"rademacher"`` or ``"gaussian"``), an
    unbiased estimate of the log-det for training in higher dimensions (FFJORD); it applies in
    training mode only, and ``eval()`` switches back to the exact divergence, so
    ``log_prob`` after training is exact.

    Gradients are by backpropagation through the solver's stages (``adjoint=False``, the
    default: the exact gradients of the discrete solve, in memory that grows with the number
    of steps), or by the adjoint method (``adjoint=True``,
    :func:`~torchnf.functional.adjoint.odeint_adjoint`: the solve keeps no graph, and the
    backward pass solves the adjoint ODE of the state and the divergence integral from the
    end back to the start with the same solver and tolerances, re-evaluating the field for a
    vector-Jacobian product at each stage, with the forward solve's Hutchinson noise; memory
    constant in the steps, the gradients of the ODE to about the tolerances). The step sizes
    are shared over the batch and controlled by its worst element, so a batch element's output
    depends on the others only within the tolerance (its Jacobian is block-diagonal over the
    batch). ``nfe`` holds the number of field evaluations of the last solve, ``nfe_adjoint``
    those of the last adjoint backward solve (diagnostics: training by likelihood gets slower
    as the field stiffens). Neither direction exports (:mod:`torchnf.export`: the number of
    steps depends on the data) nor compiles into one graph.

    Shapes: ``x``, ``z`` are ``(*batch, D)``, ``context`` ``(*batch, context_size)``,
    ``log_det`` ``(*batch,)``.

    Arguments:
        field: the vector field, a module ``field(x, t, context) -> (*batch, D)`` with
            ``input_size`` and ``context_size`` attributes (e.g. :class:`VectorField`),
            smooth in ``x`` and ``t``.
        divergence: ``"exact"`` or ``"hutchinson"`` (in training mode).
        noise: the Hutchinson noise, ``"rademacher"`` or ``"gaussian"``.
        atol: absolute tolerance of the solver (raised to 64 machine epsilons of the dtype).
        rtol: relative tolerance of the solver (likewise).
        max_steps: limit on the solver's steps per solve
            (:class:`~torchnf.functional.solvers.ConvergenceError` beyond).
        adjoint: gradients by the adjoint method, in both directions, wherever grad mode is
            on (solves without gradients are the same either way). It trades time for
            memory: measured by ``benchmarks/cnf_adjoint.py`` (``CNF(2)``, three hidden
            layers of 64, a batch of 512, exact divergence, float32, one CPU thread), a
            training step at tolerance 1e-5 holds 224 MiB of saved tensors by
            backpropagation and 6.8 MiB by the adjoint (118 against 6.8 MiB at 1e-3: the
            adjoint's is one field evaluation's graph, whatever the steps), and takes 250
            against 217 ms of CPU (1.15 to 1.65 times backpropagation's time over
            tolerances 1e-3 to 1e-5). No second derivatives through it (``create_graph=True``
            raises).

    References:
        Neural Ordinary Differential Equations (Chen et al., 2018, arXiv:1806.07366); FFJORD:
        Free-form Continuous Dynamics for Scalable Reversible Generative Models (Grathwohl
        et al., 2019, arXiv:1810.01367).

    Example:
        >>> layer = ContinuousFlow(VectorField(2, (16,)), atol=1e-9, rtol=1e-9).double()
        >>> _ = torch.nn.init.normal_(layer.field.layers[-1].linear.weight)  # off the identity
        >>> x = torch.randn(5, 2, dtype=torch.float64)
        >>> z, log_det = layer(x)
        >>> x_back, log_det_inv = layer.inverse_and_log_det(z)
        >>> bool((x_back - x).abs().max() < 1e-7), bool((log_det + log_det_inv).abs().max() < 1e-7)
        (True, True)
    """

    def __init__(
        self,
        field: nn.Module,
        divergence: str = "exact",
        noise: str = "rademacher",
        atol: float = 1e-5,
        rtol: float = 1e-5,
        max_steps: int = 1000,
        adjoint: bool = False,
    ) -> None:
        super().__init__(int(field.input_size), int(getattr(field, "context_size", 0)))
        if divergence not in ("exact", "hutchinson"):
            raise ValueError(f"expected divergence 'exact' or 'hutchinson', got {divergence!r}")
        if noise not in ("rademacher", "gaussian"):
            raise ValueError(f"expected noise 'rademacher' or 'gaussian', got {noise!r}")
        if not (atol > 0 and rtol >= 0):
            raise ValueError(f"expected atol > 0 and rtol >= 0, got atol={atol}, rtol={rtol}")
        if max_steps < 1:
            raise ValueError(f"expected max_steps >= 1, got {max_steps}")
        if not isinstance(adjoint, bool):
            raise ValueError(f"expected adjoint True or False, got {adjoint!r}")
        self.field = field
        self.divergence, self.noise = divergence, noise
        self.atol, self.rtol, self.max_steps = float(atol), float(rtol), int(max_steps)
        self.adjoint = adjoint
        self.nfe = 0
        self.nfe_adjoint = 0

    def velocity(self, x: Tensor, t: Tensor | float, context: Tensor | None = None) -> Tensor:
        """The field ``v(x, t | c)``, ``(*batch, D)``; ``t`` a float, a scalar or ``(*batch,)``."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        return self.field(x, t, context)

    def _solve(
        self, x: Tensor, context: Tensor | None, t0: float, t1: float
    ) -> tuple[Tensor, Tensor]:
        """Integrate the state and the divergence from ``t0`` to ``t1``."""
        noise = None
        if self.divergence == "hutchinson" and self.training:
            noise = divergence_noise(x, self.noise)  # one draw, for the backward solve too

        def dynamics(t: float, state: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
            # A graph through the divergence when grad mode is on at the call: backpropagation
            # through the stages, or the adjoint's backward solve (its forward runs without).
            create_graph = torch.is_grad_enabled()
            y = state[0]
            with torch.enable_grad():
                if not y.requires_grad:
                    y = y.detach().requires_grad_(True)
                v = self.velocity(y, t, context)
                if noise is None:
                    div = divergence_exact(v, y, create_graph)
                else:
                    div = divergence_hutchinson(v, y, noise, create_graph)
            if not create_graph:
                v, div = v.detach(), div.detach()
            return v, div

        batch_ndim = x.dim() - 1
        state = (x, x.new_zeros(x.shape[:-1]))
        settings = (self.atol, self.rtol, self.max_steps, batch_ndim)
        if self.adjoint and torch.is_grad_enabled():
            params = tuple(p for p in self.parameters() if p.requires_grad)
            if context is not None and context.requires_grad:
                params += (context,)
            solution = odeint_adjoint(
                dynamics, state, t0, t1, params, *settings, on_backward=self._record_adjoint
            )
        else:
            solution = dopri5(dynamics, state, t0, t1, *settings)
        self.nfe = solution.nfe
        return solution.state[0], solution.state[1]

    def _record_adjoint(self, solution: Solution) -> None:
        self.nfe_adjoint = solution.nfe

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._solve(x, context, 0.0, 1.0)

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._solve(y, context, 1.0, 0.0)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, divergence={self.divergence!r}, atol={self.atol:g}, "
            f"rtol={self.rtol:g}" + (", adjoint=True" if self.adjoint else "")
        )


def split_continuous(flow: Flow) -> tuple[Bijector | None, ContinuousFlow]:
    """The layers before a flow's :class:`ContinuousFlow` and the continuous layer itself.

    Flow matching needs the flow's bijector to be a :class:`ContinuousFlow` or a
    :class:`~torchnf.Chain` ending in one (after fixed preprocessing such as a standardizing
    ActNorm, as in :class:`~torchnf.models.CNF`): the field is then trained on what the
    preceding layers make of the data, towards the flow's base distribution.

    Returns:
        ``(prefix, layer)``: ``prefix`` is ``None`` or the bijector of the preceding layers.

    Raises:
        ValueError: for any other flow, in one line.
    """
    bijector = getattr(flow, "bijector", None)
    if isinstance(bijector, ContinuousFlow):
        return None, bijector
    if isinstance(bijector, Chain) and isinstance(bijector[-1], ContinuousFlow):
        rest = list(bijector)[:-1]
        if any(isinstance(m, ContinuousFlow) for layer in rest for m in layer.modules()):
            raise ValueError(
                "flow matching trains one continuous layer; this flow has several ContinuousFlow "
                "layers"
            )
        return (Chain(*rest) if rest else None), bijector[-1]
    name = type(flow).__name__
    raise ValueError(
        f"flow matching trains the vector field of a continuous flow (a CNF, or a Flow whose "
        f"last layer is a ContinuousFlow); got {name}, which has none: use the nll objective"
    )
