"""Base distributions."""

from torchnf.distributions.base import (
    BaseDistribution,
    DiagonalNormal,
    GaussianMixture,
    StandardNormal,
    StudentT,
    Uniform,
)

__all__ = [
    "BaseDistribution",
    "DiagonalNormal",
    "GaussianMixture",
    "StandardNormal",
    "StudentT",
    "Uniform",
]
