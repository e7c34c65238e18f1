"""Distributions to learn: toy data sets and targets of known density.

Every target is a seeded sampler ``target.sample(n, seed) -> (n, dim)`` (float32 by default);
those whose density is known in closed form also have an exact ``log_prob(x) -> (*batch,)``
and ``has_log_prob = True`` (the KL benchmark needs it). All built-in targets have one.
Targets are looked up by name in :data:`TARGETS` through :func:`get_target`; the built-in
ones live in :mod:`torchnf.data.toy` (the 1-D and 2-D sets),
:mod:`torchnf.data.densities` (higher-dimensional, heavy-tailed and curved densities) and
:mod:`torchnf.data.torus` (angles: ``torus`` and ``cylinder``).

Densities are computed in float64 and returned in the input's dtype; they are
differentiable in ``x``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

_CHUNK = 4096  # rows per block when a mixture has many components (bounds the memory)


def count(n: object) -> int:
    """``n`` checked as a number of samples (an int >= 0)."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"expected a number of samples n >= 0, got {n!r}")
    return n


def on_rows(log_prob: Callable[[Tensor], Tensor], x: Tensor, dim: int) -> Tensor:
    """``log_prob`` (on float64 rows ``(N, dim)``) of ``x`` of shape ``(*batch, dim)``, checked,
    returned as ``(*batch,)`` in ``x``'s dtype."""
    if not torch.is_tensor(x) or not torch.is_floating_point(x):
        raise ValueError(f"expected a floating-point tensor x, got {type(x).__name__}")
    if x.shape[-1:] != (dim,):
        raise ValueError(f"expected x of shape (..., {dim}), got {tuple(x.shape)}")
    return log_prob(x.reshape(-1, dim).double()).reshape(x.shape[:-1]).to(x.dtype)


def seeded_generator(seed: int | None) -> torch.Generator:
    """A CPU generator seeded by ``seed``, or from a fresh, nondeterministic seed (``None``)."""
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


class Target:
    """A distribution over ``R^dim`` with a seeded sampler and (maybe) an exact density.

    Subclasses set ``name``, ``dim``, ``has_log_prob`` and implement ``_sample(n, generator)``
    (returning float64) and, when the density is known, ``_log_prob(x)`` on float64 ``x`` of
    shape ``(N, dim)``. ``circular`` lists the columns that are angles in ``[-pi, pi)``
    (:mod:`torchnf.data.torus`), for models that take ``circular=``.
    """

    name: str
    dim: int
    has_log_prob: bool = False
    circular: tuple[int, ...] = ()

    def sample(self, n: int, seed: int | None = 0, dtype: torch.dtype = torch.float32) -> Tensor:
        """Draw ``n`` points of shape ``(n, dim)``; the same ``seed`` gives the same points.

        ``seed=None`` draws from a fresh, nondeterministic seed.
        """
        return self._sample(count(n), seeded_generator(seed)).to(dtype)

    def _sample(self, n: int, generator: torch.Generator) -> Tensor:
        raise NotImplementedError

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density of ``x`` of shape ``(*batch, dim)``, returning ``(*batch,)``."""
        if not self.has_log_prob:
            raise NotImplementedError(f"the density of {self.name!r} is not known in closed form")
        return on_rows(self._log_prob, x, self.dim)

    def _log_prob(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"


def _as_f64(t) -> Tensor:
    return torch.as_tensor(t, dtype=torch.float64)


class GaussianMixtureTarget(Target):
    r"""Mixture of Gaussians :math:`p(x) = \sum_k w_k N(x; \mu_k, \Sigma_k)`.

    Either isotropic components, :math:`\Sigma_k = \sigma_k^2 I` (``scales`` of shape
    ``(K,)``; fast even for hundreds of components), or full ones,
    :math:`\Sigma_k = L_k L_k^\top` (``scales`` of shape ``(K, dim, dim)``, lower-triangular
    factors with a positive diagonal).

    Arguments:
        name: the target's name.
        means: ``(K, dim)`` component means.
        scales: ``(K,)`` standard deviations or ``(K, dim, dim)`` Cholesky factors.
        weights: ``(K,)`` mixture weights (normalized here); uniform if omitted.

    Example:
        >>> t = GaussianMixtureTarget("two", torch.tensor([[-1.0], [1.0]]), torch.ones(2))
        >>> t.sample(4, seed=0).shape, t.log_prob(torch.zeros(3, 1)).shape
        (torch.Size([4, 1]), torch.Size([3]))
    """

    has_log_prob = True

    def __init__(self, name: str, means, scales, weights=None) -> None:
        self.name = name
        self.means = _as_f64(means)
        if self.means.dim() != 2:
            raise ValueError(f"expected means of shape (K, dim), got {tuple(self.means.shape)}")
        k, self.dim = self.means.shape
        scales = _as_f64(scales)
        self.full = scales.dim() == 3
        self.scales = scales if self.full else scales.expand(k)
        if self.full and self.scales.shape != (k, self.dim, self.dim):
            raise ValueError(
                f"expected scales of shape ({k},) or ({k}, {self.dim}, {self.dim}), "
                f"got {tuple(scales.shape)}"
            )
        w = torch.ones(k, dtype=torch.float64) if weights is None else _as_f64(weights)
        self.weights = w / w.sum()
        if not self.full:
            inv_var = self.scales**-2
            self._expanded = torch.cat(
                [
                    (self.means * inv_var[:, None]).T,
                    -0.5 * inv_var[None],
                    (-0.5 * inv_var * self.means.square().sum(-1))[None]
                    - self.dim * torch.log(self.scales)[None],
                ]
            )

    def _sample(self, n: int, generator: torch.Generator) -> Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        if self.full:
            return self.means[k] + (self.scales[k] @ eps.unsqueeze(-1)).squeeze(-1)
        return self.means[k] + self.scales[k, None] * eps

    def _log_prob(self, x: Tensor) -> Tensor:
        return torch.cat([self._log_prob_block(b) for b in x.split(_CHUNK)]) if len(x) else x[:, 0]

    def _log_prob_block(self, x: Tensor) -> Tensor:
        const = 0.5 * self.dim * math.log(2 * math.pi)
        if self.full:
            diff = (x.unsqueeze(-2) - self.means).unsqueeze(-1)  # (N, K, dim, 1)
            u = torch.linalg.solve_triangular(self.scales, diff, upper=False).squeeze(-1)
            log_det = torch.log(torch.diagonal(self.scales, dim1=-2, dim2=-1)).sum(-1)
            comp = -0.5 * u.square().sum(-1) - log_det - const
        else:
            # -|x - mu_k|^2 / (2 s_k^2) expanded into one (N, D + 2) x (D + 2, K) product.
            features = torch.cat(
                [x, x.square().sum(-1, keepdim=True), torch.ones_like(x[:, :1])], -1
            )
            comp = features @ self._expanded - const
        return torch.logsumexp(comp + torch.log(self.weights), dim=-1)


#: Every target by name, filled by :func:`register_target`.
TARGETS: dict[str, Target] = {}


def register_target(target: Target) -> Target:
    """Add ``target`` to :data:`TARGETS` under its name (names are unique)."""
    if target.name in TARGETS:
        raise ValueError(f"a target named {target.name!r} already exists")
    TARGETS[target.name] = target
    return target


def get_target(name: str) -> Target:
    """The built-in target called ``name``; a ``ValueError`` lists the names otherwise."""
    if name not in TARGETS:
        raise ValueError(f"unknown data set {name!r}; expected one of {sorted(TARGETS)}")
    return TARGETS[name]
