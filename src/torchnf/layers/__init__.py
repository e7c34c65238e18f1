"""Invertible layers, one family a module."""

from torchnf.layers.autoregressive import MaskedAffineAutoregressive, MaskedAutoregressive
from torchnf.layers.bounds import BoundedSupport
from torchnf.layers.circular import (
    AngleEmbeddingMLP,
    CircularActNorm,
    CircularRQSTransformer,
    CircularSplineAutoregressive,
    CircularSplineCoupling,
    MixedTransformer,
    wrap_angle,
)
from torchnf.layers.continuous import ContinuousFlow, VectorField
from torchnf.layers.coupling import AdditiveCoupling, AffineCoupling, Coupling, checkerboard_mask
from torchnf.layers.dequantization import VariationalDequantization
from torchnf.layers.elementwise import Logit, Sigmoid, Softlog, Softsquare
from torchnf.layers.image import (
    AffineImageCoupling,
    Flatten,
    ImageCoupling,
    InvertibleConv1x1,
    Split,
    Squeeze,
    image_mask,
)
from torchnf.layers.iresnet import InvertibleResidualBlock
from torchnf.layers.linear import (
    ActNorm,
    Householder,
    LULinear,
    LUWeight,
    QRLinear,
    QRWeight,
    TriangularAffine,
)
from torchnf.layers.neural import DSFTransformer, UMNNTransformer
from torchnf.layers.permutation import Permutation, RandomPermutation, Reverse
from torchnf.layers.polynomial import BernsteinTransformer
from torchnf.layers.preprocessing import LogitPreprocessing, Rescale, dequantize
from torchnf.layers.residual import GeneralizedSylvesterBlock, Planar, Radial, SylvesterBlock
from torchnf.layers.splines import RQSTransformer, SplineAutoregressive, SplineCoupling

__all__ = [
    "ActNorm",
    "AdditiveCoupling",
    "AffineCoupling",
    "AffineImageCoupling",
    "AngleEmbeddingMLP",
    "BernsteinTransformer",
    "BoundedSupport",
    "CircularActNorm",
    "CircularRQSTransformer",
    "CircularSplineAutoregressive",
    "CircularSplineCoupling",
    "ContinuousFlow",
    "Coupling",
    "DSFTransformer",
    "Flatten",
    "GeneralizedSylvesterBlock",
    "Householder",
    "ImageCoupling",
    "InvertibleConv1x1",
    "InvertibleResidualBlock",
    "LULinear",
    "LUWeight",
    "LogitPreprocessing",
    "Logit",
    "MaskedAffineAutoregressive",
    "MaskedAutoregressive",
    "MixedTransformer",
    "Permutation",
    "Planar",
    "QRLinear",
    "QRWeight",
    "RQSTransformer",
    "Radial",
    "RandomPermutation",
    "Rescale",
    "Reverse",
    "Sigmoid",
    "Softlog",
    "Softsquare",
    "SplineAutoregressive",
    "SplineCoupling",
    "Split",
    "Squeeze",
    "SylvesterBlock",
    "TriangularAffine",
    "UMNNTransformer",
    "VariationalDequantization",
    "VectorField",
    "checkerboard_mask",
    "dequantize",
    "image_mask",
    "wrap_angle",
]
