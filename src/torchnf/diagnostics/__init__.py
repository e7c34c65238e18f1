"""Diagnostics: inverse and log-det checks, KL benchmark, per-layer trace."""

from torchnf.diagnostics.bits import bits_per_dim, independent_pixels_bits_per_dim
from torchnf.diagnostics.check import CheckReport, check
from torchnf.diagnostics.kl import KLEstimate, kl_divergence
from torchnf.diagnostics.trace import trace, trace_layers

__all__ = [
    "CheckReport",
    "KLEstimate",
    "bits_per_dim",
    "check",
    "independent_pixels_bits_per_dim",
    "kl_divergence",
    "trace",
    "trace_layers",
]
