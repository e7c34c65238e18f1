"""Invertible layers, one family a module."""

from torchnf.layers.autoregressive import MaskedAffineAutoregressive, MaskedAutoregressive
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
from torchnf.layers.splines import RQSTransformer, SplineAutoregressive, SplineCoupling

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
    "MaskedAffineAutoregressive",
    "MaskedAutoregressive",
    "Permutation",
    "QRLinear",
    "QRWeight",
    "RQSTransformer",
    "RandomPermutation",
    "Reverse",
    "SplineAutoregressive",
    "SplineCoupling",
    "Split",
    "Squeeze",
    "checkerboard_mask",
    "image_mask",
]
