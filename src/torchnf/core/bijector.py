"""The bijector contract shared by every layer, composition and model.

Direction: ``forward`` is the *normalizing* direction, data ``x`` to latent ``y``
(``y = f(x | c)``); ``inverse`` is the sampling direction.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import constraints

Shape = tuple[int, ...]


def _format_shape(event_shape: Shape) -> str:
    return "(..., " + ", ".join(str(s) for s in event_shape) + ")"


class Bijector(nn.Module):
    r"""Base class of every invertible map ``y = f(x | c)`` with a tractable log-determinant.

    A subclass implements two symmetric private methods, ``_forward(x, context)`` and
    ``_inverse(y, context)``, each returning ``(out, log_det)`` where ``log_det`` is
    :math:`\log|\det \partial f / \partial x|` (respectively of :math:`f^{-1}`) with the
    batch shape. The public methods below check their inputs (static shape and dtype
    checks only, no device sync) and delegate.

    Shapes: ``x`` is ``(*batch, *event_shape)``, ``y`` is ``(*batch, *output_event_shape)``,
    ``log_det`` is ``(*batch,)``, ``context`` is ``(*batch, context_size)``.

    Arguments:
        event_shape: shape of one input event, e.g. ``(D,)`` or ``(C, H, W)``.
        context_size: size of the context vector; 0 for an unconditional bijector.
            A conditional bijector refuses ``context=None``; an unconditional one ignores
            any context it is given.
        output_event_shape: shape of one output event (defaults to ``event_shape``).

    Example:
        >>> from torchnf.layers import Reverse
        >>> layer = Reverse(3)
        >>> x = torch.randn(5, 3)
        >>> y, log_det = layer(x)
        >>> torch.equal(layer.inverse(y), x), log_det.shape
        (True, torch.Size([5]))
    """

    #: Support of the inputs (used to draw valid test points in ``diagnostics.check``).
    domain: constraints.Constraint = constraints.real
    #: Support of the outputs.
    codomain: constraints.Constraint = constraints.real

    def __init__(
        self,
        event_shape: Shape | int,
        context_size: int = 0,
        output_event_shape: Shape | int | None = None,
    ) -> None:
        super().__init__()
        self.event_shape: Shape = _as_shape(event_shape)
        self.output_event_shape: Shape = (
            self.event_shape if output_event_shape is None else _as_shape(output_event_shape)
        )
        if context_size < 0:
            raise ValueError(f"expected context_size >= 0, got {context_size}")
        self.context_size = int(context_size)

    # -- what subclasses write ------------------------------------------------------------
    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _initialize(self, x: Tensor, context: Tensor | None) -> None:
        """Set data-dependent parameters from a batch ``x`` (default: nothing to do)."""

    # -- public API ----------------------------------------------------------------------
    @property
    def event_dim(self) -> int:
        return len(self.event_shape)

    @property
    def input_size(self) -> int:
        """Number of scalars in one input event."""
        return int(torch.Size(self.event_shape).numel())

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Return ``(f(x | c), log|det df/dx|)``."""
        context = self._check(x, context, self.event_shape, "x")
        return self._forward(x, context)

    def inverse_and_log_det(
        self, y: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Return ``(f^{-1}(y | c), log|det df^{-1}/dy|)``."""
        context = self._check(y, context, self.output_event_shape, "y")
        return self._inverse(y, context)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        """Return ``f^{-1}(y | c)`` (a tensor, without the log-determinant)."""
        return self.inverse_and_log_det(y, context)[0]

    @property
    def inv(self) -> Bijector:
        """Its inverse view, a bijector whose forward is this one's inverse."""
        return Inverse(self)

    @torch.no_grad()
    def initialize(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Initialize data-dependent parameters on the batch ``x``; return ``f(x | c)``.

        Compositions push the batch through their layers in order, so each layer is
        initialized on what it actually receives. Layers without data-dependent
        parameters just transform the batch.
        """
        context = self._check(x, context, self.event_shape, "x")
        self._initialize(x, context)
        return self._forward(x, context)[0]

    # -- input checks -------------------------------------------------------------------
    def _check(self, x: Tensor, context: Tensor | None, shape: Shape, name: str) -> Tensor | None:
        if not isinstance(x, Tensor):
            raise ValueError(f"expected {name} to be a torch.Tensor, got {type(x).__name__}")
        if not torch.is_floating_point(x):
            raise ValueError(f"expected a floating-point tensor {name}, got dtype {x.dtype}")
        n = len(shape)
        if x.dim() < n or tuple(x.shape[x.dim() - n :]) != shape:
            raise ValueError(
                f"{type(self).__name__}: expected {name} of shape {_format_shape(shape)}, "
                f"got {tuple(x.shape)}"
            )
        if self.context_size == 0:
            return None
        if context is None:
            raise ValueError(
                f"{type(self).__name__} is conditional: expected context of shape "
                f"(..., {self.context_size}), got None"
            )
        if not isinstance(context, Tensor) or not torch.is_floating_point(context):
            raise ValueError(
                "expected a floating-point context tensor, got "
                f"{getattr(context, 'dtype', type(context).__name__)}"
            )
        batch = tuple(x.shape[: x.dim() - n])
        if tuple(context.shape) != batch + (self.context_size,):
            raise ValueError(
                f"{type(self).__name__}: expected context of shape "
                f"{batch + (self.context_size,)} to match {name} of shape {tuple(x.shape)}, "
                f"got {tuple(context.shape)}"
            )
        return context

    def extra_repr(self) -> str:
        text = f"event_shape={self.event_shape}"
        if self.output_event_shape != self.event_shape:
            text += f", output_event_shape={self.output_event_shape}"
        if self.context_size:
            text += f", context_size={self.context_size}"
        return text


class Inverse(Bijector):
    """The inverse view of a bijector: ``y = f^{-1}(x | c)``.

    Shares parameters with the wrapped bijector; ``Inverse(b).inv is b``.

    Arguments:
        bijector: the bijector to invert.
    """

    def __init__(self, bijector: Bijector) -> None:
        super().__init__(bijector.output_event_shape, bijector.context_size, bijector.event_shape)
        self.bijector = bijector
        self.domain = bijector.codomain
        self.codomain = bijector.domain

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self.bijector._inverse(x, context)

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self.bijector._forward(y, context)

    @property
    def inv(self) -> Bijector:
        return self.bijector


def _as_shape(shape: Shape | int) -> Shape:
    if isinstance(shape, int):
        shape = (shape,)
    shape = tuple(int(s) for s in shape)
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"expected a non-empty event shape of positive sizes, got {shape}")
    return shape
