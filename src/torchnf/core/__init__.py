"""The bijector contract: Bijector, Inverse, Chain, Flow and the registry."""

from torchnf.core.bijector import Bijector, Inverse
from torchnf.core.chain import Chain
from torchnf.core.flow import Flow, FlowDistribution

__all__ = ["Bijector", "Chain", "Flow", "FlowDistribution", "Inverse"]
