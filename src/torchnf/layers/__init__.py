"""Invertible layers, one family a module."""

from torchnf.layers.permutation import Permutation, RandomPermutation, Reverse

__all__ = ["Permutation", "RandomPermutation", "Reverse"]
