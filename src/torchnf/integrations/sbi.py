r"""sbi adapter (extra ``sbi``): any torchnf model as an sbi density estimator.

sbi's trainers take a *builder*, ``density_estimator=build``, and call it once with the
training simulations, ``build(theta, x)``, to get a ``ConditionalDensityEstimator``; then
sbi's own loop trains it by its ``loss`` and its posterior samples it with ``sample`` and
``log_prob``. :func:`density_estimator` makes such a builder for a registered torchnf model::

    from sbi.inference import NLE, NPE
    from torchnf.integrations.sbi import density_estimator

    npe = NPE(prior, density_estimator=density_estimator("NSF", hidden_sizes=(64, 64)))
    posterior = npe.append_simulations(theta, x).train().build_posterior()
    nle = NLE(prior, density_estimator=density_estimator("MAF", estimate="likelihood"))

The builder builds the model with ``input_size`` and ``context_size`` read from the data
(the flow's context is ``x`` for a posterior, ``theta`` for a likelihood), then calls
``flow.initialize`` on (at most the first 10,000 of) the training pairs: the model's ActNorm
standardizes the modelled variable and the flow's context standardizer the condition, which
is the z-scoring sbi's own builders do. Other ``options`` go to the model's constructor as
they are: an ``embedding`` spec (see :mod:`torchnf.nets.embedding`) for a model that takes
one, for conditions of any shape, learned jointly under sbi's loop.

The estimator class, :class:`FlowEstimator`, subclasses sbi's
``ConditionalDensityEstimator``, so it is built on first access (``from
torchnf.integrations.sbi import FlowEstimator``), which imports sbi; importing this module
or calling :func:`density_estimator` does not. The examples that need sbi run in
``tests/test_sbi.py``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from torchnf.core.flow import Flow
from torchnf.core.registry import get

__all__ = ["FlowEstimator", "density_estimator"]  # noqa: F822  (FlowEstimator: __getattr__)

#: At most this many training pairs initialize the flow (statistics, not a fit: the rows sbi
#: passes are already in random order, and a bound keeps an embedding's pass in memory).
INIT_ROWS = 10_000

_ESTIMATES = ("posterior", "likelihood")


def density_estimator(
    model: str = "NSF",
    estimate: Literal["posterior", "likelihood"] = "posterior",
    **options: Any,
) -> Callable[[Tensor, Tensor], nn.Module]:
    r"""A builder of a torchnf flow for sbi: ``NPE(prior, density_estimator=...)`` or ``NLE``.

    sbi calls the builder as ``build(theta, x)`` with the training simulations, ``theta`` of
    shape ``(N, D_theta)`` and ``x`` of shape ``(N, *x_shape)``; it returns a
    :class:`FlowEstimator` around ``model(input_size, context_size=..., **options)``, a flow
    ``z = f(theta | x)`` for a posterior (``estimate="posterior"``, for NPE) or ``z = f(x |
    theta)`` for a likelihood (``estimate="likelihood"``, for NLE), initialized on the data
    (see the module). The builder is picklable, as sbi's trainers may be.

    Arguments:
        model: the name of a registered conditional vector model (``"NSF"``, ``"MAF"``,
            ``"RealNVP"``, ...; case-insensitive).
        estimate: ``"posterior"`` models ``theta`` given ``x``; ``"likelihood"`` models ``x``
            given ``theta``. sbi calls both builders the same way, so this says which.
        **options: the model's constructor arguments other than ``input_size`` and
            ``context_size``, which the builder reads from the data. An ``embedding`` spec
            (for models that take one) embeds conditions of any shape; without it the
            condition must be a vector per simulation.

    Returns:
        ``build(theta, x) -> FlowEstimator``, which raises ``ValueError`` for data of
        shapes the model cannot take or for options the model does not accept.

    Example:
        >>> build = density_estimator("NSF", n_layers=2, hidden_sizes=(32, 32))
        >>> build.keywords["model"], build.keywords["estimate"], build.keywords["options"]
        ('NSF', 'posterior', {'n_layers': 2, 'hidden_sizes': (32, 32)})
    """
    entry = get(model)
    if entry.kind != "model" or not entry.conditional:
        raise ValueError(f"expected the name of a conditional model, got {model!r} ({entry.kind})")
    if estimate not in _ESTIMATES:
        raise ValueError(f"expected estimate in {_ESTIMATES}, got {estimate!r}")
    inferred = sorted({"input_size", "context_size"} & options.keys())
    if inferred:
        raise ValueError(
            f"{', '.join(inferred)} are read from the simulations; drop them from the options"
        )
    return functools.partial(_build, model=entry.name, estimate=estimate, options=options)


def _build(
    theta: Tensor,
    x: Tensor,
    *,
    model: str,
    estimate: Literal["posterior", "likelihood"],
    options: dict[str, Any],
) -> nn.Module:
    """The builder :func:`density_estimator` returns, with its arguments bound."""
    for name, value in (("theta", theta), ("x", x)):
        if not isinstance(value, Tensor) or not value.is_floating_point() or value.dim() < 2:
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"expected {name} as a floating tensor (N, ...), got {got}")
    if len(theta) != len(x):
        raise ValueError(f"expected as many theta as x, got {len(theta)} and {len(x)}")
    inputs, condition = (theta, x) if estimate == "posterior" else (x, theta)
    role = "theta" if estimate == "posterior" else "x"
    if inputs.dim() != 2:
        raise ValueError(
            f"the flow models {role} as vectors (N, D): got {role} of shape {tuple(inputs.shape)}"
        )
    condition_shape = tuple(condition.shape[1:])
    with_embedding = options.get("embedding") is not None
    if not with_embedding and len(condition_shape) != 1:
        raise ValueError(
            f"conditions of shape {condition_shape} need an embedding spec in the options, "
            f"e.g. embedding={{'name': 'Conv1dEmbedding', ...}}; a flow without one takes "
            f"vectors (N, context_size)"
        )
    sizes = {} if with_embedding else {"context_size": condition_shape[0]}
    try:
        flow = get(model).cls(inputs.shape[1], **sizes, **options)
    except TypeError as error:
        raise ValueError(f"bad options {options} for {model}: {error}") from None
    if flow.context_shape != condition_shape:
        raise ValueError(
            f"{model}'s embedding takes conditions of shape {flow.context_shape}, but the "
            f"simulations give {condition_shape}"
        )
    flow = flow.to(inputs.dtype)
    flow.initialize(inputs[:INIT_ROWS], condition[:INIT_ROWS])
    return _estimator_class()(flow, inputs.shape[1:], condition_shape)


@functools.cache
def _estimator_class() -> type[nn.Module]:
    """Create :class:`FlowEstimator` (once): importing sbi is deferred to here."""
    from sbi.neural_nets.estimators.base import ConditionalDensityEstimator

    class FlowEstimator(ConditionalDensityEstimator):
        r"""A torchnf flow ``z = f(input | condition)`` as sbi's ``ConditionalDensityEstimator``.

        ``input`` is what is modelled (``theta`` in NPE, ``x`` in NLE) and ``condition`` the
        context. Shapes follow sbi: ``log_prob(input, condition)`` takes ``input`` of shape
        ``(sample, batch, *input_shape)`` or ``(batch, *input_shape)`` and ``condition`` of
        shape ``(batch, *condition_shape)`` or ``(sample, batch, *condition_shape)``,
        broadcasts their batch dimensions and returns ``(sample, batch)``; ``loss`` returns
        the negative log-density ``(batch,)`` of matching rows; ``sample(sample_shape,
        condition)`` returns ``(*sample_shape, batch, *input_shape)``. Shapes that do not fit
        raise ``ValueError``. The flow is ``net``; ``embedding_net`` is its context
        standardizer followed by its embedding net (``None`` without one): the learned summary
        of a raw condition.

        Arguments:
            flow: a conditional vector flow whose ``context_shape`` is ``condition_shape``.
            input_shape: ``(D,)``, the flow's ``event_shape``.
            condition_shape: the shape of one condition.

        Example:
            >>> from torchnf.models import MAF
            >>> flow = MAF(2, n_layers=2, hidden_sizes=(8,), context_size=3)
            >>> estimator = FlowEstimator(flow, (2,), (3,))
            >>> estimator.log_prob(torch.randn(5, 4, 2), torch.randn(4, 3)).shape
            torch.Size([5, 4])
            >>> estimator.loss(torch.randn(4, 2), torch.randn(4, 3)).shape
            torch.Size([4])
            >>> estimator.sample((5,), torch.randn(4, 3)).shape
            torch.Size([5, 4, 2])
        """

        def __init__(
            self, flow: Flow, input_shape: tuple[int, ...], condition_shape: tuple[int, ...]
        ) -> None:
            if flow.event_shape != tuple(input_shape) or flow.context_shape != tuple(
                condition_shape
            ):
                raise ValueError(
                    f"expected a flow of event shape {tuple(input_shape)} and context shape "
                    f"{tuple(condition_shape)}, got {flow.event_shape} and {flow.context_shape}"
                )
            super().__init__(flow, torch.Size(input_shape), torch.Size(condition_shape))

        @property
        def embedding_net(self) -> nn.Module | None:
            """The raw condition's learned summary (standardizer, then embedding net)."""
            if self.net.context_encoder is None:
                return None
            steps = (self.net.context_standardizer, self.net.context_encoder)
            return nn.Sequential(*(step for step in steps if step is not None))

        def _align(self, input: Tensor, condition: Tensor) -> tuple[Tensor, Tensor]:
            """Broadcast the batch dimensions (at least two: sample, batch) of both."""
            for name, value, shape in (
                ("input", input, self.input_shape),
                ("condition", condition, self.condition_shape),
            ):
                n = len(shape)
                if value.dim() < n or value.shape[value.dim() - n :] != shape:
                    raise ValueError(
                        f"expected {name} of shape (..., {', '.join(map(str, shape))}), "
                        f"got {tuple(value.shape)}"
                    )
            in_batch = input.shape[: input.dim() - len(self.input_shape)]
            cond_batch = condition.shape[: condition.dim() - len(self.condition_shape)]
            try:
                batch = torch.broadcast_shapes(in_batch, cond_batch)
            except RuntimeError:
                raise ValueError(
                    f"expected input and condition with broadcastable batch shapes, got "
                    f"{tuple(in_batch)} and {tuple(cond_batch)}"
                ) from None
            batch = (1,) * (2 - len(batch)) + tuple(batch)
            return (
                input.expand(*batch, *self.input_shape),
                condition.expand(*batch, *self.condition_shape),
            )

        def log_prob(self, input: Tensor, condition: Tensor, **kwargs: Any) -> Tensor:
            """``log q(input | condition)`` of shape ``(sample, batch)``."""
            return self.net.log_prob(*self._align(input, condition))

        def loss(self, input: Tensor, condition: Tensor, **kwargs: Any) -> Tensor:
            """The negative log-density ``(batch,)`` of ``input (batch, *input_shape)`` given
            ``condition (batch, *condition_shape)``, row by row."""
            if input.dim() != len(self.input_shape) + 1 or len(input) != len(condition):
                raise ValueError(
                    f"expected input (batch, {', '.join(map(str, self.input_shape))}) with one "
                    f"condition per row, got {tuple(input.shape)} and {tuple(condition.shape)}"
                )
            return -self.log_prob(input, condition)[0]

        def sample(
            self, sample_shape: torch.Size | tuple[int, ...], condition: Tensor, **kwargs: Any
        ) -> Tensor:
            """Samples ``(*sample_shape, batch, *input_shape)``, without gradients."""
            return self.net.sample(tuple(sample_shape), condition)

        def sample_and_log_prob(
            self, sample_shape: torch.Size | tuple[int, ...], condition: Tensor, **kwargs: Any
        ) -> tuple[Tensor, Tensor]:
            """Samples ``(*sample_shape, batch, *input_shape)`` and their log-density
            ``(*sample_shape, batch)`` in one pass, differentiable."""
            return self.net.rsample_and_log_prob(tuple(sample_shape), condition)

    FlowEstimator.__qualname__ = "FlowEstimator"
    return FlowEstimator


def __getattr__(name: str) -> type[nn.Module]:
    if name == "FlowEstimator":
        return _estimator_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
