"""Base distributions."""

from torchnf.distributions.base import (
    BaseDistribution,
    DiagonalNormal,
    GaussianMixture,
    StandardNormal,
)

__all__ = ["BaseDistribution", "DiagonalNormal", "GaussianMixture", "StandardNormal"]
