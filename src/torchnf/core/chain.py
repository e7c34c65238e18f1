"""Composition of bijectors."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from torchnf.core.bijector import Bijector


class Chain(Bijector):
    r"""Composition ``y = f_K(... f_2(f_1(x | c) | c) ... | c)`` of bijectors.

    ``log|det dy/dx| = sum_k log|det df_k/dx_k|``. Supports ``len``, indexing and slicing
    (a slice is a ``Chain`` sharing the same layers) and returns every intermediate output
    with its log-det through :meth:`forward_trace` (the per-layer trace of the diagnostics).

    Shapes: ``x`` is ``(*batch, *layers[0].event_shape)``, ``y`` is
    ``(*batch, *layers[-1].output_event_shape)``, ``log_det`` is ``(*batch,)``. All conditional
    layers share one ``context_size``; unconditional layers ignore the context.

    Arguments:
        *layers: the bijectors, applied in order in the forward (normalizing) direction.

    Example:
        >>> from torchnf.layers import Reverse
        >>> chain = Chain(Reverse(2), Reverse(2))
        >>> y, log_det = chain(torch.tensor([[1.0, 2.0]]))
        >>> y
        tensor([[1., 2.]])
    """

    def __init__(self, *layers: Bijector) -> None:
        if not layers:
            raise ValueError("expected at least one layer in a Chain")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Bijector):
                raise ValueError(f"expected a Bijector at position {i}, got {type(layer).__name__}")
        for i, (a, b) in enumerate(zip(layers[:-1], layers[1:], strict=True)):
            if a.output_event_shape != b.event_shape:
                raise ValueError(
                    f"layer {i} outputs events of shape {a.output_event_shape} but layer {i + 1} "
                    f"expects {b.event_shape}"
                )
        sizes = {layer.context_size for layer in layers} - {0}
        if len(sizes) > 1:
            raise ValueError(f"expected one context_size for all layers, got {sorted(sizes)}")
        super().__init__(
            layers[0].event_shape, sizes.pop() if sizes else 0, layers[-1].output_event_shape
        )
        self.layers = nn.ModuleList(layers)
        self.domain = layers[0].domain
        self.codomain = layers[-1].codomain

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Bijector]:
        return iter(self.layers)

    def __getitem__(self, index: int | slice) -> Bijector:
        if isinstance(index, slice):
            return Chain(*self.layers[index])
        return self.layers[index]

    # The sum starts from the first layer's log-det (no zeros tensor, one add fewer).
    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        layers = iter(self.layers)
        x, log_det = next(layers)(x, context)
        for layer in layers:
            x, ld = layer(x, context)
            log_det = log_det + ld
        return x, log_det

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        layers = reversed(self.layers)
        y, log_det = next(layers).inverse_and_log_det(y, context)
        for layer in layers:
            y, ld = layer.inverse_and_log_det(y, context)
            log_det = log_det + ld
        return y, log_det

    def forward_trace(
        self, x: Tensor, context: Tensor | None = None
    ) -> list[tuple[Tensor, Tensor]]:
        """Return ``[(x_k, log_det_k)]`` for ``k = 1..K``: each layer's output and log-det.

        ``x_K`` is the chain's output and ``sum_k log_det_k`` its log-det.
        """
        context = self._check(x, context, self.event_shape, "x")
        steps = []
        for layer in self.layers:
            x, log_det = layer(x, context)
            steps.append((x, log_det))
        return steps

    @torch.no_grad()
    def initialize(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        context = self._check(x, context, self.event_shape, "x")
        for layer in self.layers:
            x = layer.initialize(x, context)
        return x
