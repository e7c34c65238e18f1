"""torchnf: normalizing flows in PyTorch, provably correct and fast."""

from torchnf.core import Bijector, Chain, Flow, FlowDistribution, Inverse

__version__ = "0.1.0"

__all__ = ["Bijector", "Chain", "Flow", "FlowDistribution", "Inverse"]
