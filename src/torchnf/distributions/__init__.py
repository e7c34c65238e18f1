"""Base distributions."""

from torchnf.distributions.base import (
    BaseDistribution,
    DiagonalNormal,
    GaussianMixture,
    ProductBase,
    StandardNormal,
    StudentT,
    Uniform,
)

__all__ = [
    "BaseDistribution",
    "DiagonalNormal",
    "GaussianMixture",
    "ProductBase",
    "StandardNormal",
    "StudentT",
    "Uniform",
]
