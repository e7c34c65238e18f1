"""Diagnostics: inverse and log-det checks, KL benchmark, per-layer trace."""

from torchnf.diagnostics.bits import bits_per_dim, independent_pixels_bits_per_dim
from torchnf.diagnostics.check import CheckReport, check

__all__ = [
    "CheckReport",
    "bits_per_dim",
    "check",
    "independent_pixels_bits_per_dim",
]
