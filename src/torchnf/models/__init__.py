"""Ready-made flows named after papers."""

from torchnf.models.circular import CircularNSF
from torchnf.models.continuous import CNF
from torchnf.models.discrete import Dequantized
from torchnf.models.glow import Glow
from torchnf.models.image import ImageFlow
from torchnf.models.iresnet import ResidualFlow
from torchnf.models.maf import IAF, MAF
from torchnf.models.neural import NAF, UMNN
from torchnf.models.nsf import NSF
from torchnf.models.polynomial import BernsteinFlow
from torchnf.models.realnvp import NICE, RealNVP
from torchnf.models.realnvp2d import RealNVP2d
from torchnf.models.residual import GeneralizedSylvesterNet, PlanarFlow, RadialFlow, SylvesterNet
from torchnf.models.vae import VAE

__all__ = [
    "BernsteinFlow",
    "CNF",
    "CircularNSF",
    "Dequantized",
    "GeneralizedSylvesterNet",
    "Glow",
    "IAF",
    "ImageFlow",
    "MAF",
    "NAF",
    "NICE",
    "NSF",
    "PlanarFlow",
    "RadialFlow",
    "RealNVP",
    "RealNVP2d",
    "ResidualFlow",
    "SylvesterNet",
    "UMNN",
    "VAE",
]
