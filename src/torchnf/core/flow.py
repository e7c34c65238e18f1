"""A flow: a bijector plus a base distribution."""

from __future__ import annotations

import math
import sys

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, constraints

from torchnf.core.bijector import Bijector, Shape
from torchnf.distributions.base import BaseDistribution, StandardNormal
from torchnf.functional.statistics import robust_center_scale

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
    ``sample(n, context)`` with ``context`` of shape ``(*batch, *context_shape)`` returns
    ``(*n, *batch, *event_shape)``. ``context_shape`` is ``(context_size,)`` for vector
    contexts; a ``context_encoder`` may take raw contexts of any shape (a time series
    ``(C, L)``, an image ``(C, H, W)``, a set of trials ``(n_trials, d)``, see
    :mod:`torchnf.nets.embedding`), and ``context_size`` is then the number of scalars in
    one raw context.

    The raw context goes through ``c -> encoder((c - m) / s)`` once per call: ``m`` and ``s``
    are the buffers of a ``ContextStandardizer``, set by :meth:`initialize` (which
    ``fit`` calls on the first batch) from the training contexts with :class:`ActNorm`'s
    robust statistics, and saved with the weights; until then it is the identity. So raw
    simulator outputs of any location and scale train with the default settings.

    Inputs are checked statically (no device sync): besides the shape checks of every
    bijector, ``x``, ``y`` and ``context`` must have the floating dtype of the flow's first
    floating parameter (or buffer; a flow with neither takes any), and an unconditional flow
    (``context_size=0``) refuses a context rather than ignoring it.

    Arguments:
        bijector: the map from data to latent space.
        base: base distribution over the bijector's output events (default standard normal).
        context_encoder: optional module applied once per call to the (standardized) raw
            context before it reaches the bijector; it must map ``(*batch, *context_shape)``
            to ``(*batch, bijector.context_size)``.
        context_size: size of a raw vector context (with a ``context_encoder``, unless
            ``context_shape`` is given or the encoder has a ``context_shape`` attribute).
        context_shape: shape of one raw context (with a ``context_encoder``; default: the
            encoder's ``context_shape`` attribute, else ``(context_size,)``).
        standardize_context: standardize contexts from the data at :meth:`initialize`.

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
        context_shape: Shape | None = None,
        standardize_context: bool = True,
    ) -> None:
        if base is None:
            base = StandardNormal(bijector.output_event_shape)
        if base.event_shape != bijector.output_event_shape:
            raise ValueError(
                f"base distribution events have shape {base.event_shape} but the bijector "
                f"outputs {bijector.output_event_shape}"
            )
        shape = _raw_context_shape(bijector, context_encoder, context_size, context_shape)
        size = math.prod(shape) if shape else 0
        super().__init__(bijector.event_shape, size, bijector.output_event_shape)
        self.context_shape: Shape = shape if self.context_size else ()
        self.bijector = bijector
        self.base = base
        self.context_standardizer = (
            ContextStandardizer(shape, getattr(context_encoder, "feature_dim", None))
            if self.context_size and standardize_context
            else None
        )
        self.context_encoder = context_encoder
        self.domain = bijector.domain

    @property
    def initialized(self) -> bool:
        """Whether the context standardizer (if any) has been set by :meth:`initialize`."""
        return self.context_standardizer is None or bool(self.context_standardizer.initialized)

    def _check(self, x: Tensor, context: Tensor | None, shape: Shape, name: str) -> Tensor | None:
        self._check_context_given(context)
        if self.context_shape[-1:] == self.context_shape or context is None:  # vectors
            checked = super()._check(x, context, shape, name)
        else:  # a raw context of another shape: check it, then the batch as for vectors
            self._check_raw_context(context)
            batch = tuple(context.shape[: self._context_batch_dims(context)])
            if isinstance(x, Tensor) and tuple(x.shape[x.dim() - len(shape) :]) == shape:
                if tuple(x.shape[: x.dim() - len(shape)]) != batch:
                    raise ValueError(
                        f"{type(self).__name__}: expected context of shape "
                        f"{tuple(x.shape[: x.dim() - len(shape)]) + self.context_shape} to match "
                        f"{name} of shape {tuple(x.shape)}, got {tuple(context.shape)}"
                    )
            flat = context.reshape(*batch, -1)
            checked = context if super()._check(x, flat, shape, name) is not None else None
        self._check_dtype(x, name)
        if checked is not None:
            self._check_dtype(checked, "context")
        return checked

    def _context_batch_dims(self, context: Tensor) -> int:
        return context.dim() - len(self.context_shape)

    def _check_raw_context(self, context: Tensor) -> None:
        """Refuse a context that is not a floating tensor of shape ``(..., *context_shape)``."""
        shape = self.context_shape
        if (
            not isinstance(context, Tensor)
            or not torch.is_floating_point(context)
            or context.dim() < len(shape)
            or tuple(context.shape[context.dim() - len(shape) :]) != shape
        ):
            expected = "(..., " + ", ".join(str(s) for s in shape) + ")"
            got = tuple(context.shape) if isinstance(context, Tensor) else type(context).__name__
            dtype = getattr(context, "dtype", None)
            raise ValueError(
                f"expected a floating-point context of shape {expected}, got {got}"
                + (f" of dtype {dtype}" if dtype is not None else "")
            )

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
        if context is None:
            return None
        if self.context_standardizer is not None:
            context = self.context_standardizer(context)
        return context if self.context_encoder is None else self.context_encoder(context)

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self.bijector(x, self._encode(context))

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self.bijector.inverse_and_log_det(y, self._encode(context))

    @torch.no_grad()
    def initialize(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Initialize the context standardizer on ``context`` (see the class), then every
        data-dependent layer on the batch ``x`` it receives; return ``f(x | c)``."""
        context = self._check(x, context, self.event_shape, "x")
        if self.context_standardizer is not None and context is not None:
            self.context_standardizer.initialize(context)
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
                    f"(..., {', '.join(str(s) for s in self.context_shape)}), got None"
                )
            self._check_raw_context(context)
            self._check_dtype(context, "context")
            encoded = self._encode(context)
            batch = tuple(context.shape[: self._context_batch_dims(context)])
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
        context: the conditioning context, ``(*batch, *flow.context_shape)``; required exactly
            when the flow is conditional.

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
        batch = () if context is None else tuple(context.shape[: flow._context_batch_dims(context)])
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
            new.context = self.context.expand(*batch_shape, *self.flow.context_shape)
        new._cache = None
        super(FlowDistribution, new).__init__(batch_shape, self.event_shape, validate_args=False)
        return new

    def _context_for(self, value: Tensor) -> Tensor | None:
        if self.context is None:
            return None
        batch = value.shape[: value.dim() - len(self.event_shape)]
        return self.context.expand(*batch, *self.flow.context_shape)

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


class ContextStandardizer(nn.Module):
    r"""``c -> (c - m) / s``: standardizes raw contexts, with ``m``, ``s`` set from data.

    :meth:`initialize` sets the buffers ``center`` (``m``) and ``scale`` (``s > 0``) from a
    batch of contexts with the robust statistics of :class:`~torchnf.layers.ActNorm` (mean and
    standard deviation after winsorizing at the median plus or minus 5 robust scales), one pair
    per entry of the feature axis ``feature_dim`` of the raw context (pooled over its other
    axes: channels of a time series or an image, features of a set's trials), or per entry of
    the whole raw context when ``feature_dim`` is ``None``. Entries of a row holding a NaN (a
    padded trial, see :class:`~torchnf.nets.embedding.DeepSets`) are left out of the
    statistics and stay NaN. Before initialization it is the identity.

    Shapes: ``context`` is ``(*batch, *context_shape)``, and so is the output.

    Arguments:
        context_shape: shape of one raw context.
        feature_dim: the feature axis, an index into ``context_shape`` (``None``: every entry).

    Example:
        >>> standardizer = ContextStandardizer((2,))
        >>> c = torch.tensor([[1e6, 0.0], [3e6, 1.0]])
        >>> standardizer.initialize(c)
        >>> standardizer(c)
        tensor([[-0.7071, -0.7071],
                [ 0.7071,  0.7071]])
    """

    def __init__(self, context_shape: Shape, feature_dim: int | None = None) -> None:
        super().__init__()
        self.context_shape = tuple(context_shape)
        if feature_dim is not None and not -len(context_shape) <= feature_dim < len(context_shape):
            raise ValueError(
                f"expected feature_dim in [{-len(context_shape)}, {len(context_shape)}) for "
                f"contexts of shape {self.context_shape}, got {feature_dim}"
            )
        self.feature_dim = None if feature_dim is None else feature_dim % len(context_shape)
        if self.feature_dim is None:
            stat_shape = self.context_shape
        else:
            stat_shape = tuple(
                n if i == self.feature_dim else 1 for i, n in enumerate(self.context_shape)
            )
        self.register_buffer("center", torch.zeros(stat_shape))
        self.register_buffer("scale", torch.ones(stat_shape))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, context: Tensor) -> None:
        """Set ``center`` and ``scale`` from the contexts ``(*batch, *context_shape)``."""
        rank = len(self.context_shape)
        if self.feature_dim is None:
            rows = context.reshape(-1, math.prod(self.context_shape))
        else:
            axis = context.dim() - rank + self.feature_dim
            rows = context.movedim(axis, -1).reshape(-1, self.context_shape[self.feature_dim])
        rows = rows[~rows.isnan().any(dim=1)]
        if len(rows) == 0:
            raise ValueError("expected at least one context row without NaN to standardize")
        center, scale = robust_center_scale(rows, None)
        self.center.copy_(center.reshape(self.center.shape))
        self.scale.copy_(scale.reshape(self.scale.shape))
        self.initialized.fill_(True)

    def forward(self, context: Tensor) -> Tensor:
        return (context - self.center) / self.scale

    def extra_repr(self) -> str:
        return f"context_shape={self.context_shape}, feature_dim={self.feature_dim}"


def _raw_context_shape(
    bijector: Bijector,
    encoder: nn.Module | None,
    context_size: int | None,
    context_shape: Shape | None,
) -> Shape:
    """The shape of one raw context of a flow (see :class:`Flow`'s arguments)."""
    if context_shape is not None:
        shape = tuple(int(s) for s in context_shape)
        if not shape or min(shape) < 1:
            raise ValueError(f"expected a context_shape of positive sizes, got {context_shape}")
        if context_size is not None and context_size != math.prod(shape):
            raise ValueError(
                f"expected context_size = prod(context_shape) = {math.prod(shape)}, "
                f"got {context_size}"
            )
    elif context_size is not None:
        shape = (int(context_size),) if context_size else ()
    elif encoder is not None:
        if getattr(encoder, "context_shape", None) is None:
            raise ValueError(
                "a context_encoder needs the raw context_size or context_shape (or a "
                "context_shape attribute)"
            )
        shape = tuple(encoder.context_shape)
    else:
        shape = (bijector.context_size,) if bijector.context_size else ()
    if encoder is None and shape != ((bijector.context_size,) if bijector.context_size else ()):
        raise ValueError(
            f"without a context_encoder the raw context is the bijector's, of shape "
            f"({bijector.context_size},); got context shape {shape}"
        )
    return shape
