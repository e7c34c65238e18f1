r"""Export a trained flow's density or its sampling map: a ``torch.export`` archive or ONNX.

:func:`export` traces one method of a :class:`~torchnf.Flow` with :func:`torch.export.export`
(batch dimension dynamic) and writes the program as a ``.pt2`` archive
(:func:`torch.export.save`; load it with :func:`torch.export.load`) or, through the
``torch.export``-based ONNX exporter (``torch.onnx.export(..., dynamo=True)``), as a
self-contained ``.onnx`` file that onnxruntime runs. The ONNX path needs the ``export`` extra
(``pip install 'torchnf[export]'``: onnx and onnxscript; onnxruntime to run the file).

Methods, with the inputs and outputs of the exported function (``n`` rows, any ``n >= 1``):

- ``"log_prob"``: ``(x, [context]) -> log_prob``, :math:`\log p(x | c)` as
  :meth:`Flow.log_prob <torchnf.Flow.log_prob>`; ``x`` is ``(n, *event_shape)``.
- ``"sample"``: ``(z, [context]) -> x``, the sampling map :math:`x = f^{-1}(z | c)` applied
  to *given* base noise ``z`` of shape ``(n, *event_shape)`` (draw ``z`` from the base
  distribution yourself: standard normal for the ready-made models), as
  :meth:`Flow.inverse <torchnf.Bijector.inverse>`.
- ``"sample_and_log_prob"``: ``(z, [context]) -> (x, log_prob)``, also returning
  :math:`\log q(x | c) = \log p_Z(z) - \log|\det \partial f^{-1} / \partial z|`, as
  :meth:`Flow.sample_and_log_prob <torchnf.Flow.sample_and_log_prob>` does.

The ``context`` input, ``(n, context_size)``, is there exactly when the flow is conditional.
The programs are traced without gradients, for inference. A ``.pt2`` archive keeps the
flow's operations and parameters. ONNX has no operator for some of them, so for ONNX the
parametrized weights (such as the orthogonal ``Q`` of a Sylvester block, a matrix exponential)
are evaluated once, at export, and stored as constants, MADE's ``torch._foreach_mul`` becomes
one product per weight, and the triangular solves of
:class:`~torchnf.layers.linear.LUWeight` become substitutions unrolled over the matrix size.

Numerical inverses (planar, Sylvester and generalized Sylvester sampling) export too: their
safeguarded Newton solve becomes one loop of the program (:func:`torch.while_loop`, an ONNX
``Loop``) that stops on the device when every point has converged or after the layer's
``max_iter`` iterations; a program cannot raise, so a point that has not converged comes out
as NaN where Python would raise :class:`~torchnf.functional.solvers.ConvergenceError`.
Models listed in :data:`NOT_EXPORTABLE` are refused with a ``ValueError`` giving the reason.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.export import Dim, ExportedProgram
from torch.nn.utils import parametrize
from torch.overrides import TorchFunctionMode

from torchnf.core.flow import Flow

#: The methods :func:`export` can write.
METHODS = ("log_prob", "sample", "sample_and_log_prob")

_ODE = (
    "both directions solve an ODE with an adaptive step size chosen on the host from the "
    "data at every step, and the divergence takes backward passes through the vector field, "
    "neither of which torch.export traces"
)

#: ``(model class name, method) -> reason`` for the ready-made models that cannot be exported;
#: ``"sample"`` stands for ``"sample_and_log_prob"`` too. Subclasses inherit their entries.
NOT_EXPORTABLE: dict[tuple[str, str], str] = {
    ("CNF", "log_prob"): _ODE,
    ("CNF", "sample"): _ODE,
}

_SUFFIXES = (".onnx", ".pt2")


class _LogProb(nn.Module):
    """``(x, context) -> log p(x | c)``."""

    def __init__(self, flow: Flow) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.flow.log_prob(x, context)


class _Sample(nn.Module):
    """``(z, context) -> x = f^{-1}(z | c)``, and ``log q(x | c)`` with ``log_prob=True``."""

    def __init__(self, flow: Flow, log_prob: bool) -> None:
        super().__init__()
        self.flow = flow
        self.log_prob = log_prob

    def forward(self, z: Tensor, context: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        x, log_det = self.flow.inverse_and_log_det(z, context)
        if self.log_prob:
            return x, self.flow.base.log_prob(z) - log_det
        return x


def export(
    flow: Flow,
    path: str | os.PathLike[str],
    x: Tensor,
    context: Tensor | None = None,
    method: str = "log_prob",
) -> Path:
    r"""Write ``flow``'s ``method`` on inputs shaped like ``x`` as ONNX (``.onnx``) or ``.pt2``.

    The exported function keeps the flow's direction: ``"log_prob"`` maps data ``x`` to
    :math:`\log p(x | c)` through ``z = f(x | c)``; ``"sample"`` maps base noise ``z`` to
    ``x = f^{-1}(z | c)``; ``"sample_and_log_prob"`` also returns the log-density of that ``x``
    (see the module documentation for the inputs and outputs). The batch dimension is
    dynamic: the file accepts any number of rows, one or more. Inputs and outputs have the
    flow's dtype and device. The ONNX file names its inputs ``x`` (``z`` when
    sampling) and ``context``, its outputs ``log_prob`` or ``x`` (and ``log_prob``).

    Arguments:
        flow: the flow, with data-dependent layers initialized; its parameters are copied.
        path: the file to write, ending in ``.onnx`` or ``.pt2``.
        x: an example input ``(n, *event_shape)``, ``n >= 1``: data for ``"log_prob"``, base
            noise for ``"sample"``; only its shape, dtype and device matter.
        context: an example context ``(n, context_size)`` for a conditional flow, else None.
        method: ``"log_prob"``, ``"sample"`` or ``"sample_and_log_prob"``.

    Returns:
        ``path``, as a :class:`~pathlib.Path`.

    Raises:
        ValueError: for an unknown method or suffix, an input of the wrong shape, or a
            (model, method) in :data:`NOT_EXPORTABLE`.
        ImportError: for ``.onnx`` without the onnx and onnxscript packages.

    Example:
        >>> import tempfile
        >>> from torchnf.models import RealNVP
        >>> flow = RealNVP(2, n_layers=2, hidden_sizes=(8,))
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = export(flow, Path(folder) / "flow.pt2", torch.randn(4, 2))
        ...     program = torch.export.load(path)
        >>> x = torch.randn(7, 2)
        >>> torch.allclose(program.module()(x), flow.log_prob(x))
        True
    """
    path = Path(path)
    if path.suffix not in _SUFFIXES:
        raise ValueError(f"expected a path ending in .onnx or .pt2, got {str(path)!r}")
    onnx = path.suffix == ".onnx"
    if onnx:
        _require_onnx()
    program = _trace(flow, x, context, method, onnx)
    if onnx:
        names = ["x" if method == "log_prob" else "z"] + ["context"] * (context is not None)
        outputs = {"log_prob": ["log_prob"], "sample": ["x"]}.get(method, ["x", "log_prob"])
        torch.onnx.export(
            program,
            f=path,
            dynamo=True,
            input_names=names,
            output_names=outputs,
            external_data=False,  # one file: the weights inside (ONNX's limit is 2 GB)
            verbose=False,
        )
    else:
        torch.export.save(program, path)
    return path


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ImportError(
            "writing .onnx needs the onnx and onnxscript packages: pip install 'torchnf[export]'"
        ) from error


def _trace(
    flow: Flow, x: Tensor, context: Tensor | None, method: str, onnx: bool
) -> ExportedProgram:
    """``flow``'s ``method`` as an exported program with a dynamic batch dimension; for ONNX,
    with parametrized weights as constants and :class:`_OnnxOps`."""
    if not isinstance(flow, Flow):
        raise ValueError(f"expected a torchnf.Flow, got {type(flow).__name__}")
    if method not in METHODS:
        raise ValueError(f"expected method in {METHODS}, got {method!r}")
    key = method.removesuffix("_and_log_prob")  # the table lists "sample" for both
    for cls in type(flow).__mro__:
        reason = NOT_EXPORTABLE.get((cls.__name__, key))
        if reason is not None:
            raise ValueError(f"cannot export {type(flow).__name__} {method!r}: {reason}")
    shape = flow.event_shape if method == "log_prob" else flow.output_event_shape
    if not isinstance(x, Tensor) or x.dim() != 1 + len(shape) or tuple(x.shape[1:]) != shape:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"expected x of shape (n, {', '.join(map(str, shape))}), got {got}")
    if len(x) == 0:
        raise ValueError("expected x with at least one row, got 0")
    rows = (len(x), flow.context_size)
    if flow.context_size and isinstance(context, Tensor) and tuple(context.shape) != rows:
        raise ValueError(f"expected context of shape {rows} like x, got {tuple(context.shape)}")
    module = _LogProb(flow) if method == "log_prob" else _Sample(flow, method != "sample")
    args = (x,) if context is None else (x, context)
    # A batch of one would be specialized (torch.export fixes sizes 0 and 1): trace on two rows.
    args = tuple(a.repeat(2, *[1] * (a.dim() - 1)) if len(a) == 1 else a for a in args)
    batch = Dim("batch", min=1)
    with torch.no_grad(), ExitStack() as stack:
        if onnx:
            stack.enter_context(parametrize.cached())
            for layer in flow.modules():  # evaluate every parametrized weight once, eagerly
                if parametrize.is_parametrized(layer):
                    for name in layer.parametrizations:
                        getattr(layer, name)
            stack.enter_context(_OnnxOps())
        return torch.export.export(module, args, dynamic_shapes=tuple({0: batch} for _ in args))


class _OnnxOps(TorchFunctionMode):
    """While tracing for ONNX, replaces the calls that ONNX has no operator for:
    ``torch._foreach_mul`` of two lists (MADE's masks) by one product per pair, and
    ``torch.linalg.solve_triangular`` (:class:`~torchnf.layers.linear.LUWeight`) by
    :func:`_solve`."""

    def __torch_function__(
        self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is torch._foreach_mul and isinstance(args[1], list | tuple):
            return [a * b for a, b in zip(*args, strict=True)]
        if func is torch.linalg.solve_triangular:
            return _solve(*args, **kwargs)
        return func(*args, **kwargs)


def _solve(
    a: Tensor, b: Tensor, *, upper: bool, left: bool = True, unitriangular: bool = False
) -> Tensor:
    """``torch.linalg.solve_triangular``: ``X`` with ``A X = B`` (``X A = B`` if not ``left``)
    by substitution, one row of ``X`` per step over the static size of ``A``."""
    if not left:  # X A = B  <=>  A^T X^T = B^T
        return _solve(a.mT, b.mT, upper=not upper, unitriangular=unitriangular).mT
    n = a.shape[-1]
    rows: list[Tensor] = []  # rows of X in the order solved: last to first when upper
    for i in reversed(range(n)) if upper else range(n):
        row = b[..., i, :]
        if rows:
            known = torch.stack(rows[::-1] if upper else rows, -2)  # rows i+1.. or ..i-1
            coefficients = a[..., i : i + 1, i + 1 :] if upper else a[..., i : i + 1, :i]
            row = row - (coefficients @ known).squeeze(-2)
        if not unitriangular:
            row = row / a[..., i, i, None]
        rows.append(row)
    return torch.stack(rows[::-1] if upper else rows, -2)
