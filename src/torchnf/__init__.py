"""torchnf: normalizing flows in PyTorch, provably correct and fast.

Importing any ``torchnf`` module runs this file first, which imports :mod:`torchnf.layers`
and :mod:`torchnf.models`: every ``@register`` decorator has run, and the registry
(:mod:`torchnf.core.registry`) is complete, without ``core`` importing upward.
"""

from torchnf import layers, models  # noqa: F401  (fills the registry)
from torchnf.core import Bijector, Chain, Flow, FlowDistribution, Inverse
from torchnf.export import export
from torchnf.train import fit, flow_matching_loss, load, nll, reverse_kl, save

__version__ = "0.1.0"

__all__ = [
    "Bijector",
    "Chain",
    "Flow",
    "FlowDistribution",
    "Inverse",
    "export",
    "fit",
    "flow_matching_loss",
    "load",
    "nll",
    "reverse_kl",
    "save",
]
