"""Ready-made flows named after papers."""

from torchnf.models.maf import IAF, MAF
from torchnf.models.nsf import NSF
from torchnf.models.realnvp import NICE, RealNVP

__all__ = ["IAF", "MAF", "NICE", "NSF", "RealNVP"]
