"""Pyro adapter (extra ``pyro``): a flow's distribution as a Pyro distribution.

``pyro.sample`` accepts only distributions with Pyro's mixin
(:class:`pyro.distributions.torch_distribution.TorchDistributionMixin`), which adds calling,
``to_event``, ``mask`` and ``score_parts``.
:class:`PyroFlowDistribution` is :class:`~torchnf.FlowDistribution` with that mixin. Nothing
needs to be done to get it: once Pyro is imported, :meth:`torchnf.Flow.distribution` returns
one, so a flow is a guide as it is::

    import pyro

    def guide(x):
        pyro.module("flow", flow)                  # the flow's parameters, for SVI
        pyro.sample("z", flow.distribution())      # or flow.distribution(context), in a plate

The class is built on first access (``from torchnf.integrations.pyro import
PyroFlowDistribution``), which imports Pyro; importing this module does not. The examples
that need Pyro run in ``tests/test_pyro.py``.
"""

from __future__ import annotations

import functools

from torchnf.core.flow import FlowDistribution

__all__ = ["PyroFlowDistribution"]  # noqa: F822  (built on first access, by __getattr__)


@functools.cache
def _build() -> type[FlowDistribution]:
    """Create :class:`PyroFlowDistribution` (once): importing Pyro is deferred to here."""
    from pyro.distributions.torch_distribution import TorchDistributionMixin

    class PyroFlowDistribution(FlowDistribution, TorchDistributionMixin):
        """:class:`~torchnf.FlowDistribution` with Pyro's mixin: what ``pyro.sample`` takes.

        Shapes, sampling and densities are those of :class:`~torchnf.FlowDistribution`
        (``batch_shape`` is the context's batch shape); Pyro adds ``dist()`` (a
        reparametrized sample), ``expand_by``, ``to_event``, ``mask`` and ``score_parts``;
        ``expand`` (which ``pyro.plate`` calls) is the flow distribution's own.
        :meth:`torchnf.Flow.distribution` returns this class whenever Pyro is imported.

        Arguments:
            flow: the flow.
            context: the conditioning context, ``(*batch, context_size)``; required exactly
                when the flow is conditional.

        Example:
            >>> import pyro
            >>> from torchnf.models import RealNVP
            >>> flow = RealNVP(2, n_layers=2, hidden_sizes=(8,), context_size=3)
            >>> def guide(x):
            ...     pyro.module("flow", flow)
            ...     with pyro.plate("data", len(x)):
            ...         return pyro.sample("z", flow.distribution(x))
            >>> trace = pyro.poutine.trace(guide).get_trace(torch.randn(5, 3))
            >>> trace.nodes["z"]["value"].shape, trace.log_prob_sum().shape
            (torch.Size([5, 2]), torch.Size([]))
        """

    PyroFlowDistribution.__qualname__ = "PyroFlowDistribution"
    return PyroFlowDistribution


def __getattr__(name: str) -> type[FlowDistribution]:
    if name == "PyroFlowDistribution":
        return _build()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
