"""Invertible layers, one family a module."""

from torchnf.layers.coupling import AdditiveCoupling, AffineCoupling, Coupling, checkerboard_mask
from torchnf.layers.linear import ActNorm, Householder, LULinear, LUWeight, QRLinear, QRWeight
from torchnf.layers.permutation import Permutation, RandomPermutation, Reverse

__all__ = [
    "ActNorm",
    "AdditiveCoupling",
    "AffineCoupling",
    "Coupling",
    "Householder",
    "LULinear",
    "LUWeight",
    "Permutation",
    "QRLinear",
    "QRWeight",
    "RandomPermutation",
    "Reverse",
    "checkerboard_mask",
]
