"""Diagnostics: inverse and log-det checks, KL benchmark, per-layer trace."""

from torchnf.diagnostics.check import CheckReport, check

__all__ = ["CheckReport", "check"]
