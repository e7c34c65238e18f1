"""Conditioner networks."""

from torchnf.nets.mlp import MLP

__all__ = ["MLP"]
