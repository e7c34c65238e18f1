"""Multi-layer perceptron conditioner."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from torchnf.nets.precision import ConditionerNet

#: The hidden activations :class:`MLP` takes by name.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


class MLP(ConditionerNet):
    r"""Conditioner network ``params = g([x, c])``: an MLP over the input and the context.

    The last layer is zero-initialized, so every transformer it drives starts as the
    identity map. Its layers run in ``compute_dtype`` when set (see
    :mod:`torchnf.nets.precision`); the output has the input's dtype.

    Shapes: ``x`` is ``(*batch, input_size)``, ``context`` is ``(*batch, context_size)``,
    the output is ``(*batch, output_size)``.

    Arguments:
        input_size: number of input features (may be 0 for a context-only conditioner).
        output_size: number of outputs.
        hidden_sizes: widths of the hidden layers.
        context_size: size of the context concatenated to the input (0 for none).
        activation: the hidden layers' activation, a key of :data:`ACTIVATIONS`
            (``"relu"``, ``"tanh"`` as in the seeds, ``"leaky_relu"``, ``"elu"``, ``"gelu"``,
            ``"silu"``).

    Example:
        >>> net = MLP(2, 4, hidden_sizes=(8,))
        >>> net(torch.randn(5, 2))
        tensor([[0., 0., 0., 0.],
                [0., 0., 0., 0.],
                [0., 0., 0., 0.],
                [0., 0., 0., 0.],
                [0., 0., 0., 0.]], grad_fn=<AddmmBackward0>)
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        hidden_sizes: Sequence[int] = (64, 64),
        context_size: int = 0,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if input_size + context_size <= 0:
            raise ValueError("expected input_size + context_size > 0")
        if activation not in ACTIVATIONS:
            raise ValueError(f"expected activation in {sorted(ACTIVATIONS)}, got {activation!r}")
        self.input_size = input_size
        self.context_size = context_size
        sizes = [input_size + context_size, *hidden_sizes, output_size]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            if i:
                layers.append(ACTIVATIONS[activation]())
            layers.append(nn.Linear(a, b))
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if self.context_size:
            x = torch.cat([x, context], dim=-1)
        return self._in_compute_dtype(self.net, x)
