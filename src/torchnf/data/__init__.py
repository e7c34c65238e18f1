"""Toy data, targets of known density, and loaders for user data."""

from torchnf.data import toy  # noqa: F401  (registers the built-in data sets)
from torchnf.data.targets import TARGETS, Target, get_target

__all__ = ["TARGETS", "Target", "get_target"]
