"""A flow: a bijector plus a base distribution."""

from __future__ import annotations

import sys

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, constraints

from torchnf.core.bijector import Bijector, Shape
from torchnf.distributions.base import BaseDistribution, StandardNormal

_CAST = {
    torch.float32: "float()",
    torch.float64: "double()",
    torch.float16: "half()",
    torch.bfloat16: "bfloat16()",
}


class Flow(Bijector):
    r"""A normalizing flow ``z = f(x | c)`` with base density :math:`p_Z`.

    :math:`\log p(x | c) = \log p_Z(f(x | c)) + \log|\det \partial f / \partial x|`; sampling
    draws ``z ~ p_Z`` and returns ``x = f^{-1}(z | c)``. A ``Flow`` is itself a bijector, so
    ``z, log_det = flow(x)`` and ``flow.inverse(z)`` work as for any layer.

    Shapes: ``x`` is ``(*batch, *event_shape)``; ``log_prob`` returns ``(*batch,)``;
    ``sample(n, context)`` with ``context`` of shape ``(*batch, context_size)`` returns
    ``(*n, *batch, *event_shape)``.

    Inputs are checked statically (no device sync): besides the shape checks of every
    bijector, ``x``, ``y`` and ``context`` must have the floating dtype of the flow's first
    floating parameter (or buffer; a flow with neither takes any), and an unconditional flow
    (``context_size=0``) refuses a context rather than ignoring it.

    Arguments:
        bijector: the map from data to latent space.
        base: base distribution over the bijector's output events (default standard normal).
        context_encoder: optional module applied once per call to the raw context before it
            reaches the bijector; it must map ``(*batch, context_size)`` to
            ``(*batch, bijector.context_size)``.
        context_size: size of the raw context (required with a ``context_encoder``).

    Example:
        >>> from torchnf.layers import Reverse
        >>> flow = Flow(Reverse(2))
        >>> flow.log_prob(torch.zeros(3, 2)).shape, flow.sample(4).shape
        (torch.Size([3]), torch.Size([4, 2]))
    """

    def __init__(
        self,
        bijector: Bijector,
        base: BaseDistribution | None = None,
        context_encoder: nn.Module | None = None,
        context_size: int | None = None,
    ) -> None:
        if base is None:
            base = StandardNormal(bijector.output_event_shape)
        if base.event_shape != bijector.output_event_shape:
            raise ValueError(
                f"base distribution events have shape {base.event_shape} but the bijector "
                f"outputs {bijector.output_event_shape}"
            )
        if context_encoder is not None and context_size is None:
            raise ValueError("a context_encoder needs the raw context_size")
        super().__init__(
            bijector.event_shape,
            bijector.context_size if context_size is None else context_size,
            bijector.output_event_shape,
        )
        self.bijector = bijector
        self.base = base
        self.context_encoder = context_encoder
        self.domain = bijector.domain

    def _check(self, x: Tensor, context: Tensor | None, shape: Shape, name: str) -> Tensor | None:
        checked = super()._check(x, context, shape, name)
        self._check_context_given(context)
        self._check_dtype(x, name)
        if checked is not None:
            self._check_dtype(checked, "context")
        return checked

    def _check_context_given(self, context: Tensor | None) -> None:
        if context is not None and self.context_size == 0:
            size = context.shape[-1] if isinstance(context, Tensor) and context.dim() else "..."
            raise ValueError(
                "the flow is unconditional (context_size=0) but a context was given; drop the "
                f"context or build the flow with context_size={size}"
            )

    def _dtype(self) -> torch.dtype | None:
        """The dtype of the first floating parameter, else buffer (O(1) per call)."""
        for tensors in (self.parameters(), self.buffers()):
            first = next((t for t in tensors if t.is_floating_point()), None)
            if first is not None:
                return first.dtype
        return None

    def _check_dtype(self, x: Tensor, name: str) -> None:
        dtype = self._dtype()
        if dtype is not None and x.dtype != dtype:
            raise ValueError(
                f"expected {name} of dtype {dtype} like the flow's parameters, got {x.dtype}; "
                f"cast with {name}.{_CAST.get(dtype, f'to({dtype})')} or convert the flow "
                f"with flow.{_CAST.get(x.dtype, f'to({x.dtype})')}"
            )

    def _encode(self, context: Tensor | None) -> Tensor | None:
        if context is None or self.context_encoder is None:
            return context
        return self.context_encoder(context)

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self.bijector(x, self._encode(context))

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self.bijector.inverse_and_log_det(y, self._encode(context))

    @torch.no_grad()
    def initialize(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        context = self._check(x, context, self.event_shape, "x")
        return self.bijector.initialize(x, self._encode(context))

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Return :math:`\\log p(x | c)` of shape ``(*batch,)``."""
        z, log_det = self(x, context)
        return self.base.log_prob(z) + log_det

    def rsample_and_log_prob(
        self,
        n: int | tuple[int, ...] = (),
        context: Tensor | None = None,
        temperature: float = 1.0,
    ) -> tuple[Tensor, Tensor]:
        """Draw differentiable samples and their log-density in one inverse pass.

        ``temperature`` ``T`` scales the base draws, ``z = T z_0`` (Glow's sampling
        temperature for a standard normal base: ``T < 1`` trades diversity for fidelity);
        the log-density returned is the flow's own at the samples.
        """
        shape = (n,) if isinstance(n, int) else tuple(n)
        self._check_context_given(context)
        if self.context_size:
            if context is None:
                raise ValueError(
                    "this flow is conditional: expected context of shape "
                    f"(..., {self.context_size}), got None"
                )
            if not torch.is_floating_point(context) or context.shape[-1:] != (self.context_size,):
                raise ValueError(
                    f"expected a floating-point context of shape (..., {self.context_size}), "
                    f"got {tuple(context.shape)} of dtype {context.dtype}"
                )
            self._check_dtype(context, "context")
            encoded = self._encode(context)
            batch = tuple(context.shape[:-1])
            encoded = encoded.expand(*shape, *encoded.shape)
        else:
            encoded, batch = None, ()
        z = self.base.rsample(shape + batch)
        if temperature != 1.0:
            z = z * temperature
        x, log_det = self.bijector.inverse_and_log_det(z, encoded)
        return x, self.base.log_prob(z) - log_det

    def sample_and_log_prob(
        self,
        n: int | tuple[int, ...] = (),
        context: Tensor | None = None,
        temperature: float = 1.0,
    ) -> tuple[Tensor, Tensor]:
        """Draw ``n`` samples (per context row) and their log-density, without gradients."""
        with torch.no_grad():
            return self.rsample_and_log_prob(n, context, temperature)

    def sample(
        self,
        n: int | tuple[int, ...] = (),
        context: Tensor | None = None,
        temperature: float = 1.0,
    ) -> Tensor:
        """Draw samples of shape ``(*n, *batch, *event_shape)`` without gradients (at
        ``temperature``, see :meth:`rsample_and_log_prob`)."""
        return self.sample_and_log_prob(n, context, temperature)[0]

    def distribution(self, context: Tensor | None = None) -> FlowDistribution:
        """This flow as a :class:`FlowDistribution`, conditioned on ``context``.

        Once Pyro has been imported (``"pyro" in sys.modules``), the result is a
        :class:`torchnf.integrations.pyro.PyroFlowDistribution`: the same distribution with
        Pyro's mixin, which ``pyro.sample`` accepts, so it serves as a guide as it is. Neither
        importing torchnf nor calling this method ever imports Pyro.

        Example:
            >>> from torchnf.layers import Reverse
            >>> dist = Flow(Reverse(2)).distribution()
            >>> dist.rsample((5,)).shape, dist.batch_shape, dist.event_shape
            (torch.Size([5, 2]), torch.Size([]), torch.Size([2]))
        """
        if sys.modules.get("pyro") is not None:
            from torchnf.integrations.pyro import PyroFlowDistribution

            return PyroFlowDistribution(self, context)
        return FlowDistribution(self, context)


class FlowDistribution(Distribution):
    """A :class:`torch.distributions.Distribution` view of a :class:`Flow`.

    ``batch_shape`` is the context's batch shape (``()`` without context; ``expand`` widens
    it), ``event_shape`` the flow's, ``support`` the flow's domain. ``log_prob(value)`` accepts
    ``value`` of shape ``(*sample, *batch, *event)``; ``rsample`` is differentiable with
    respect to the flow's parameters. The log-density of the tensor most recently returned by
    ``rsample`` (with gradients enabled) is the one computed while sampling, so the usual
    variational pattern ``x = dist.rsample(); dist.log_prob(x)`` costs one pass through the
    flow, not two; an in-place edit of ``x`` invalidates it.

    Arguments:
        flow: the flow.
        context: the conditioning context, ``(*batch, context_size)``; required exactly when
            the flow is conditional.

    Example:
        >>> from torchnf.models import RealNVP
        >>> flow = RealNVP(2, n_layers=2, hidden_sizes=(8,), context_size=3)
        >>> dist = flow.distribution(torch.randn(5, 3))
        >>> x = dist.rsample((4,))
        >>> x.shape, dist.log_prob(x).shape
        (torch.Size([4, 5, 2]), torch.Size([4, 5]))
    """

    has_rsample = True
    arg_constraints: dict = {}

    def __init__(self, flow: Flow, context: Tensor | None = None) -> None:
        flow._check_context_given(context)
        if flow.context_size and context is None:
            raise ValueError(
                "this flow is conditional: expected context of shape "
                f"(..., {flow.context_size}), got None"
            )
        self.flow = flow
        self.context = context
        self._cache: tuple[Tensor, int, Tensor] | None = None
        batch = () if context is None else tuple(context.shape[:-1])
        super().__init__(torch.Size(batch), torch.Size(flow.event_shape), validate_args=False)

    @property
    def support(self) -> constraints.Constraint:
        return constraints.independent(self.flow.domain, len(self.event_shape))

    def expand(
        self, batch_shape: torch.Size | tuple[int, ...], _instance: FlowDistribution | None = None
    ) -> FlowDistribution:
        """The same flow over ``batch_shape``: new leading dimensions, or size-1 ones widened
        (a conditional flow's context is expanded, an unconditional one draws iid)."""
        batch_shape = torch.Size(batch_shape)
        old = self.batch_shape
        if len(batch_shape) < len(old) or any(
            a not in (1, b) for a, b in zip(reversed(old), reversed(batch_shape), strict=False)
        ):
            raise ValueError(
                f"cannot expand a distribution of batch shape {tuple(old)} to {tuple(batch_shape)}"
            )
        new = self._get_checked_instance(FlowDistribution, _instance)
        new.flow = self.flow
        new.context = None
        if self.context is not None:
            new.context = self.context.expand(*batch_shape, self.context.shape[-1])
        new._cache = None
        super(FlowDistribution, new).__init__(batch_shape, self.event_shape, validate_args=False)
        return new

    def _context_for(self, value: Tensor) -> Tensor | None:
        if self.context is None:
            return None
        batch = value.shape[: value.dim() - len(self.event_shape)]
        return self.context.expand(*batch, self.context.shape[-1])

    def log_prob(self, value: Tensor) -> Tensor:
        if self._cache is not None:
            x, version, log_prob = self._cache
            if value is x and value._version == version:
                return log_prob
        return self.flow.log_prob(value, self._context_for(value))

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        return self.rsample_and_log_prob(sample_shape)[0]

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def rsample_and_log_prob(
        self, sample_shape: torch.Size | tuple[int, ...] = ()
    ) -> tuple[Tensor, Tensor]:
        # Without a context the batch is one of iid draws (from expand); with one, the
        # context's rows set it.
        batch = tuple(self.batch_shape) if self.context is None else ()
        x, log_prob = self.flow.rsample_and_log_prob(tuple(sample_shape) + batch, self.context)
        if torch.is_grad_enabled():
            self._cache = (x, x._version, log_prob)
        return x, log_prob
