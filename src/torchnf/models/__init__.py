"""Ready-made flows named after papers."""

from torchnf.models.realnvp import NICE, RealNVP

__all__ = ["NICE", "RealNVP"]
