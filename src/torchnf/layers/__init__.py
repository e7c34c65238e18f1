"""Invertible layers, one family a module."""

from torchnf.layers.coupling import AdditiveCoupling, AffineCoupling, Coupling, checkerboard_mask
from torchnf.layers.image import (
    AffineImageCoupling,
    ImageCoupling,
    InvertibleConv1x1,
    Split,
    Squeeze,
    image_mask,
)
from torchnf.layers.linear import ActNorm, Householder, LULinear, LUWeight, QRLinear, QRWeight
from torchnf.layers.permutation import Permutation, RandomPermutation, Reverse

__all__ = [
    "ActNorm",
    "AdditiveCoupling",
    "AffineCoupling",
    "AffineImageCoupling",
    "Coupling",
    "Householder",
    "ImageCoupling",
    "InvertibleConv1x1",
    "LULinear",
    "LUWeight",
    "Permutation",
    "QRLinear",
    "QRWeight",
    "RandomPermutation",
    "Reverse",
    "Split",
    "Squeeze",
    "checkerboard_mask",
    "image_mask",
]
