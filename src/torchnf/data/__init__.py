"""Toy data, targets of known density, energies of known normalizer, and loaders for user
data."""

from torchnf.data import densities, torus, toy  # noqa: F401  (registers the built-in targets)
from torchnf.data.densities import Banana, Funnel, GaussianTarget, StudentTTarget
from torchnf.data.energies import (
    ENERGIES,
    TARGET_LOG_NORMALIZER,
    Energy,
    Potential,
    TargetEnergy,
    get_energy,
    grid_log_normalizer,
)
from torchnf.data.images import load_digits, load_images, load_mnist
from torchnf.data.targets import TARGETS, GaussianMixtureTarget, Target, get_target, register_target

__all__ = [
    "TARGETS",
    "Target",
    "get_target",
    "register_target",
    "GaussianMixtureTarget",
    "GaussianTarget",
    "StudentTTarget",
    "Banana",
    "Funnel",
    "ENERGIES",
    "TARGET_LOG_NORMALIZER",
    "Energy",
    "Potential",
    "TargetEnergy",
    "get_energy",
    "grid_log_normalizer",
    "load_digits",
    "load_images",
    "load_mnist",
]
