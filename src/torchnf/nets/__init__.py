"""Conditioner networks."""

from torchnf.nets.conv import ConvNet
from torchnf.nets.mlp import MLP
from torchnf.nets.precision import (
    ConditionerNet,
    conditioner_precision,
    set_conditioner_precision,
)

__all__ = [
    "MLP",
    "ConditionerNet",
    "ConvNet",
    "conditioner_precision",
    "set_conditioner_precision",
]
