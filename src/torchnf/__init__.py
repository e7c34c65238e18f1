"""torchnf: normalizing flows in PyTorch, provably correct and fast."""

from torchnf.core import Bijector, Chain, Flow, FlowDistribution, Inverse
from torchnf.train import fit, load, nll, save

__version__ = "0.1.0"

__all__ = ["Bijector", "Chain", "Flow", "FlowDistribution", "Inverse", "fit", "load", "nll", "save"]
