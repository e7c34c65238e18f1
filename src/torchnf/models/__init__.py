"""Ready-made flows named after papers."""

from torchnf.models.maf import IAF, MAF
from torchnf.models.nsf import NSF
from torchnf.models.realnvp import NICE, RealNVP
from torchnf.models.residual import GeneralizedSylvesterNet, PlanarFlow, RadialFlow, SylvesterNet

__all__ = [
    "GeneralizedSylvesterNet",
    "IAF",
    "MAF",
    "NICE",
    "NSF",
    "PlanarFlow",
    "RadialFlow",
    "RealNVP",
    "SylvesterNet",
]
