"""Conditioner networks."""

from torchnf.nets.conv import ConvNet
from torchnf.nets.embedding import (
    EMBEDDINGS,
    Conv1dEmbedding,
    Conv2dEmbedding,
    DeepSets,
    Embedding,
    MLPEmbedding,
    build_embedding,
)
from torchnf.nets.mlp import MLP
from torchnf.nets.precision import (
    ConditionerNet,
    conditioner_precision,
    set_conditioner_precision,
)

__all__ = [
    "EMBEDDINGS",
    "MLP",
    "ConditionerNet",
    "Conv1dEmbedding",
    "Conv2dEmbedding",
    "ConvNet",
    "DeepSets",
    "Embedding",
    "MLPEmbedding",
    "build_embedding",
    "conditioner_precision",
    "set_conditioner_precision",
]
