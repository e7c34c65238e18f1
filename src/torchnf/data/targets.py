"""Distributions to learn: toy data sets and targets of known density.

Every target is a seeded sampler ``target.sample(n, seed) -> (n, dim)`` (float32 by default);
those whose density is known in closed form also have an exact ``log_prob(x) -> (n,)`` and
``has_log_prob = True`` (the KL benchmark needs it). Targets are looked up by name in
:data:`TARGETS` through :func:`get_target`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class Target:
    """A distribution over ``R^dim`` with a seeded sampler and (maybe) an exact density.

    Subclasses set ``name``, ``dim``, ``has_log_prob`` and implement ``_sample(n, generator)``
    (float64) and, when the density is known, ``log_prob``.
    """

    name: str
    dim: int
    has_log_prob: bool = False

    def sample(self, n: int, seed: int | None = 0, dtype: torch.dtype = torch.float32) -> Tensor:
        """Draw ``n`` points of shape ``(n, dim)``; the same ``seed`` gives the same points."""
        if n < 0:
            raise ValueError(f"expected a number of samples n >= 0, got {n}")
        g = torch.Generator()
        if seed is None:
            g.seed()
        else:
            g.manual_seed(seed)
        return self._sample(n, g).to(dtype)

    def _sample(self, n: int, generator: torch.Generator) -> Tensor:
        raise NotImplementedError

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density of ``x`` of shape ``(*batch, dim)``, returning ``(*batch,)``."""
        raise NotImplementedError(f"the density of {self.name!r} is not known in closed form")

    def _check(self, x: Tensor) -> None:
        if x.shape[-1:] != (self.dim,):
            raise ValueError(f"expected x of shape (..., {self.dim}), got {tuple(x.shape)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"


class GaussianMixtureTarget(Target):
    r"""Mixture of isotropic Gaussians :math:`p(x) = \sum_k w_k N(x; \mu_k, \sigma_k^2 I)`.

    Arguments:
        name: the target's name.
        means: ``(K, dim)`` component means.
        scales: ``(K,)`` component standard deviations.
        weights: ``(K,)`` mixture weights (normalized here); uniform if omitted.
    """

    has_log_prob = True

    def __init__(
        self, name: str, means: Tensor, scales: Tensor, weights: Tensor | None = None
    ) -> None:
        self.name = name
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.scales = torch.as_tensor(scales, dtype=torch.float64).expand(len(self.means))
        w = torch.ones(len(self.means)) if weights is None else torch.as_tensor(weights)
        self.weights = (w / w.sum()).to(torch.float64)
        self.dim = self.means.shape[-1]

    def _sample(self, n: int, generator: torch.Generator) -> Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[k] + self.scales[k, None] * eps

    def log_prob(self, x: Tensor) -> Tensor:
        self._check(x)
        means, scales, w = (t.to(x) for t in (self.means, self.scales, self.weights))
        sq = (x.unsqueeze(-2) - means).square().sum(-1)  # (*batch, K)
        comp = -0.5 * sq / scales**2 - self.dim * (torch.log(scales) + 0.5 * math.log(2 * math.pi))
        return torch.logsumexp(comp + torch.log(w), dim=-1)


def ring_of_gaussians(n_modes: int = 8, radius: float = 4.0, scale: float = 0.5) -> Target:
    """2-D: ``n_modes`` equal Gaussians evenly spaced on a circle of ``radius``."""
    angles = torch.arange(n_modes, dtype=torch.float64) * (2 * math.pi / n_modes)
    means = radius * torch.stack([angles.cos(), angles.sin()], -1)
    return GaussianMixtureTarget("ring", means, torch.full((n_modes,), scale))


TARGETS: dict[str, Target] = {t.name: t for t in [ring_of_gaussians()]}


def get_target(name: str) -> Target:
    """The built-in target called ``name``; a ``ValueError`` lists the names otherwise."""
    if name not in TARGETS:
        raise ValueError(f"unknown data set {name!r}; expected one of {sorted(TARGETS)}")
    return TARGETS[name]
