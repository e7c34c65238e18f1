"""Diagnostics: inverse and log-det checks, KL benchmark, per-layer trace, importance
sampling."""

from torchnf.diagnostics.bits import bits_per_dim, independent_pixels_bits_per_dim
from torchnf.diagnostics.check import CheckReport, check
from torchnf.diagnostics.importance import ImportanceEstimate, importance_sample, pareto_k
from torchnf.diagnostics.kl import KLEstimate, kl_divergence
from torchnf.diagnostics.trace import trace, trace_layers

__all__ = [
    "CheckReport",
    "ImportanceEstimate",
    "KLEstimate",
    "bits_per_dim",
    "check",
    "importance_sample",
    "independent_pixels_bits_per_dim",
    "kl_divergence",
    "pareto_k",
    "trace",
    "trace_layers",
]
