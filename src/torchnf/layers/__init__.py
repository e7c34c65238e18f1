"""Invertible layers, one family a module."""

from torchnf.layers.autoregressive import MaskedAffineAutoregressive, MaskedAutoregressive
from torchnf.layers.coupling import AdditiveCoupling, AffineCoupling, Coupling, checkerboard_mask
from torchnf.layers.elementwise import Logit, Sigmoid, Softlog, Softsquare
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
from torchnf.layers.residual import GeneralizedSylvesterBlock, Planar, Radial, SylvesterBlock
from torchnf.layers.splines import RQSTransformer, SplineAutoregressive, SplineCoupling

__all__ = [
    "ActNorm",
    "AdditiveCoupling",
    "AffineCoupling",
    "AffineImageCoupling",
    "Coupling",
    "GeneralizedSylvesterBlock",
    "Householder",
    "ImageCoupling",
    "InvertibleConv1x1",
    "LULinear",
    "LUWeight",
    "Logit",
    "MaskedAffineAutoregressive",
    "MaskedAutoregressive",
    "Permutation",
    "Planar",
    "QRLinear",
    "QRWeight",
    "RQSTransformer",
    "Radial",
    "RandomPermutation",
    "Reverse",
    "Sigmoid",
    "Softlog",
    "Softsquare",
    "SplineAutoregressive",
    "SplineCoupling",
    "Split",
    "Squeeze",
    "SylvesterBlock",
    "checkerboard_mask",
    "image_mask",
]
