r"""Conditioner networks in low precision, with flows that stay exact.

A coupling or autoregressive layer ``y = f(x | c)`` is :math:`y_i = \tau(x_i; \theta_i)` with
parameters :math:`\theta = g(\cdot)` from a conditioner network ``g`` (an
:class:`~torchnf.nets.MLP`, :class:`~torchnf.nets.made.MADE` or :class:`~torchnf.nets.ConvNet`).
Running ``g`` alone in bfloat16 or float16 rounds :math:`\theta`, which only changes *which*
bijection the layer is. The transformer :math:`\tau`, the log-det
:math:`\sum_i \log|\partial \tau / \partial x_i|` and every other layer (LU and QR matmuls,
1x1 convolutions, residual layers, the base distribution) run in the data's dtype, so
``log_prob`` is the log-density of a bijection to the data's rounding (float32 for float32
data): a low-precision conditioner reads its input rounded, so :math:`\theta` is piecewise
constant in it, and the layer's Jacobian stays triangular with :math:`\partial \tau /
\partial x_i` on its diagonal. Training needs no more.
Autocasting a whole objective would instead put the LU matmuls and the log-det in bfloat16
and lose that exactness.

The inverse recomputes :math:`\theta` from the conditioner's inputs. Where it reproduces them
bit for bit, it sees bit-identical :math:`\theta` and the round trip is exact to the data's
rounding too: the kept half of a coupling passes through unchanged, and a MADE's sequential
inverse reruns the full pass on the same :math:`x_{<i}` (see
:meth:`~torchnf.nets.made.MADE.conditioner`). Where an input is reproduced only to float32
rounding (an earlier output of the same autoregressive layer, or what a following layer's
inverse returns), it now and then lands on the other side of a low-precision rounding
boundary and :math:`\theta` moves by one low-precision step there: such rare points
round-trip to about 1e-3 instead of 1e-7 (a perturbed ``RealNVP(16, n_layers=6,
hidden_sizes=(128, 128))`` in bfloat16 on 4096 points: 7 of 65536 coordinates beyond 1e-5,
the largest 1.5e-3). Where every point must invert to float32 rounding, run the
conditioners in the data's dtype.

Each conditioner network is a :class:`ConditionerNet` with a ``compute_dtype`` attribute:
``None`` (the default) runs it in the input's dtype; ``torch.bfloat16`` or ``torch.float16``
runs its layers under :class:`torch.autocast` in that dtype and returns its output in the
input's dtype (gradients flow straight through the rounding, as in any mixed-precision
training). :func:`set_conditioner_precision` sets it on every conditioner net of a module,
:func:`conditioner_precision` for the duration of a ``with`` block. The setting is per
module, no global state, and compiles (``torch.compile(fullgraph=True)``) without graph
breaks. Whether it is faster depends on the hardware (tensor cores on a GPU, AMX on a CPU):
on a CPU without AMX, bfloat16 can be slower than float32.

Autocast leaves float64 alone: the setting acts on float32 (and lower) flows and is a no-op
for float64 ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

LOW_PRECISION = (torch.bfloat16, torch.float16)


class ConditionerNet(nn.Module):
    r"""Base class of conditioner networks whose layers may run in a lower precision.

    ``compute_dtype`` (``None``, ``torch.bfloat16`` or ``torch.float16``; ``None`` at
    construction) is the dtype the layers run in; ``None`` means the input's. A subclass runs
    its layers through :meth:`_in_compute_dtype`, so its output always has the input's dtype
    and shape. See :mod:`torchnf.nets.precision` for why a flow stays exact.

    Example:
        >>> from torchnf.nets import MLP
        >>> net = MLP(2, 3, hidden_sizes=(8,))
        >>> net.compute_dtype = torch.bfloat16
        >>> net(torch.randn(5, 2)).dtype
        torch.float32
    """

    def __init__(self) -> None:
        super().__init__()
        self.compute_dtype: torch.dtype | None = None

    def _lowers(self, x: Tensor) -> bool:
        """Whether the layers run below ``x``'s precision: ``compute_dtype`` is set and ``x``
        is not float64 (which autocast leaves alone)."""
        return self.compute_dtype is not None and x.dtype != torch.float64

    def _in_compute_dtype(self, fn: Callable[..., Tensor], x: Tensor, *args: Any) -> Tensor:
        """``fn(x, *args)`` under autocast to ``compute_dtype``, returned in ``x``'s dtype."""
        if not self._lowers(x):
            return fn(x, *args)
        with torch.autocast(x.device.type, dtype=self.compute_dtype):
            out = fn(x, *args)
        return out.to(x.dtype)


def set_conditioner_precision(module: nn.Module, dtype: torch.dtype | None) -> None:
    """Set ``compute_dtype = dtype`` on every :class:`ConditionerNet` inside ``module``.

    Arguments:
        module: a flow, layer or network; its submodules are searched (itself included).
        dtype: ``torch.bfloat16`` or ``torch.float16`` to run the conditioners in that
            precision, ``None`` to run them in the data's dtype.

    Example:
        >>> from torchnf.models import RealNVP
        >>> flow = RealNVP(2, n_layers=2, hidden_sizes=(8,))
        >>> set_conditioner_precision(flow, torch.bfloat16)
        >>> x = torch.randn(4, 2)
        >>> torch.allclose(flow.inverse(flow(x)[0]), x)
        True
    """
    if dtype is not None and dtype not in LOW_PRECISION:
        raise ValueError(f"expected dtype torch.bfloat16, torch.float16 or None, got {dtype}")
    for net in _conditioner_nets(module):
        net.compute_dtype = dtype


@contextmanager
def conditioner_precision(module: nn.Module, dtype: torch.dtype | None) -> Iterator[nn.Module]:
    """Run every conditioner net inside ``module`` in ``dtype`` within a ``with`` block.

    Sets ``compute_dtype`` as :func:`set_conditioner_precision` does, and on exit, also by
    an exception, restores each net's previous value.

    Arguments:
        module: a flow, layer or network.
        dtype: ``torch.bfloat16``, ``torch.float16`` or ``None`` (the data's dtype).

    Returns:
        A context manager yielding ``module``.

    Example:
        >>> from torchnf.models import MAF
        >>> from torchnf.nets.made import MADE
        >>> flow = MAF(3, n_layers=2, hidden_sizes=(8,))
        >>> made = next(m for m in flow.modules() if isinstance(m, MADE))
        >>> with conditioner_precision(flow, torch.bfloat16):
        ...     print(made.compute_dtype, flow.log_prob(torch.randn(4, 3)).dtype)
        torch.bfloat16 torch.float32
        >>> print(made.compute_dtype)
        None
    """
    nets = _conditioner_nets(module)
    previous = [net.compute_dtype for net in nets]
    set_conditioner_precision(module, dtype)
    try:
        yield module
    finally:
        for net, value in zip(nets, previous, strict=True):
            net.compute_dtype = value


def _conditioner_nets(module: nn.Module) -> list[ConditionerNet]:
    return [m for m in module.modules() if isinstance(m, ConditionerNet)]
