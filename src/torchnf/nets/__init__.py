"""Conditioner networks."""

from torchnf.nets.conv import ConvNet
from torchnf.nets.mlp import MLP

__all__ = ["ConvNet", "MLP"]
