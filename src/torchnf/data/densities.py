r"""Targets of known density beyond the toy sets: correlated, heavy-tailed and curved.

With the toy sets of :mod:`torchnf.data.toy` they make the KL benchmark's targets, from
1-D to 16-D. Each is a pushforward of Gaussian noise through a map with a known Jacobian
(or an elliptical law), so ``log_prob`` is exact and ``sample`` seeded.

=============  ====  ===========================================================================
name           dim   density
=============  ====  ===========================================================================
``banana``     2     twisted Gaussian: :math:`x_1 \sim N(0, 2^2)`,
                     :math:`x_2 + \tfrac12 (x_1^2 - 4) \sim N(0, 0.5^2)`
``funnel``     2     Neal's funnel: :math:`v \sim N(0, 3^2)`, :math:`x_1 | v \sim N(0, e^{v})`
``funnel10``   10    the same with nine :math:`x_i | v \sim N(0, e^{v})`
``student8``   8     multivariate Student-t, 3 degrees of freedom, correlation 0.5
``gaussian16`` 16    :math:`N(\mu, \Sigma)`, :math:`\Sigma_{ij} = s_i s_j 0.9^{|i-j|}`,
                     :math:`s_i` from :math:`e^{-1}` to :math:`e`, :math:`\mu_i = s_i`
=============  ====  ===========================================================================
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from torchnf.data.targets import Target, register_target

_LOG_2PI = math.log(2 * math.pi)


def _std_normal_log_prob(z: Tensor) -> Tensor:
    return -0.5 * z.square().sum(-1) - 0.5 * z.shape[-1] * _LOG_2PI


class GaussianTarget(Target):
    r"""Multivariate normal :math:`N(\mu, \Sigma)`, :math:`\Sigma = L L^\top`.

    :math:`\log p(x) = -\tfrac12 \|L^{-1}(x - \mu)\|^2 - \sum_i \log L_{ii}
    - \tfrac{D}{2} \log 2\pi`. :meth:`kl_to_standard_normal` gives
    :math:`KL(p \| N(0, I)) = \tfrac12 (\operatorname{tr}\Sigma + \|\mu\|^2 - D
    - \log\det\Sigma)`, the KL of an identity flow.

    Arguments:
        name: the target's name.
        loc: ``(D,)`` mean.
        scale_tril: ``(D, D)`` lower-triangular :math:`L` with a positive diagonal.

    Example:
        >>> t = GaussianTarget("g", torch.zeros(2), torch.eye(2))
        >>> t.log_prob(torch.zeros(2)), t.kl_to_standard_normal()
        (tensor(-1.8379), 0.0)
    """

    has_log_prob = True

    def __init__(self, name: str, loc, scale_tril) -> None:
        self.name = name
        self.loc = torch.as_tensor(loc, dtype=torch.float64)
        self.scale_tril = torch.as_tensor(scale_tril, dtype=torch.float64)
        self.dim = len(self.loc)
        if self.scale_tril.shape != (self.dim, self.dim):
            raise ValueError(
                f"expected scale_tril of shape ({self.dim}, {self.dim}), "
                f"got {tuple(self.scale_tril.shape)}"
            )

    def _sample(self, n: int, generator: torch.Generator) -> Tensor:
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.loc + eps @ self.scale_tril.T

    def _log_prob(self, x: Tensor) -> Tensor:
        z = torch.linalg.solve_triangular(self.scale_tril, (x - self.loc).T, upper=False).T
        return _std_normal_log_prob(z) - torch.log(self.scale_tril.diagonal()).sum()

    def kl_to_standard_normal(self) -> float:
        """:math:`KL(p \\| N(0, I))` in nats."""
        trace = self.scale_tril.square().sum()
        log_det = 2 * torch.log(self.scale_tril.diagonal()).sum()
        return float(0.5 * (trace + self.loc.square().sum() - self.dim - log_det))


class StudentTTarget(Target):
    r"""Multivariate Student-t with ``df`` degrees of freedom and scale :math:`\Sigma = LL^\top`.

    :math:`\log p(x) = \log\Gamma(\tfrac{\nu + D}{2}) - \log\Gamma(\tfrac{\nu}{2})
    - \tfrac{D}{2}\log(\nu\pi) - \sum_i \log L_{ii} - \tfrac{\nu + D}{2}
    \log(1 + \|L^{-1}x\|^2 / \nu)`. Sampled as :math:`x = L z \sqrt{\nu / u}`,
    :math:`z \sim N(0, I)`, :math:`u \sim \chi^2_\nu` (a sum of ``df`` squared normals, so
    ``df`` is a positive integer). Heavy-tailed: moments of order :math:`\ge \nu` are infinite.

    Arguments:
        name: the target's name.
        df: degrees of freedom :math:`\nu` (integer >= 1).
        scale_tril: ``(D, D)`` lower-triangular :math:`L` with a positive diagonal.
    """

    has_log_prob = True

    def __init__(self, name: str, df: int, scale_tril) -> None:
        if int(df) != df or df < 1:
            raise ValueError(f"expected an integer number of degrees of freedom >= 1, got {df}")
        self.name, self.df = name, int(df)
        self.scale_tril = torch.as_tensor(scale_tril, dtype=torch.float64)
        self.dim = len(self.scale_tril)

    def _sample(self, n: int, generator: torch.Generator) -> Tensor:
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        u = torch.randn(n, self.df, generator=generator, dtype=torch.float64).square().sum(-1)
        return (z @ self.scale_tril.T) * (self.df / u).sqrt().unsqueeze(-1)

    def _log_prob(self, x: Tensor) -> Tensor:
        nu, d = self.df, self.dim
        z = torch.linalg.solve_triangular(self.scale_tril, x.T, upper=False).T
        const = (
            math.lgamma((nu + d) / 2)
            - math.lgamma(nu / 2)
            - 0.5 * d * math.log(nu * math.pi)
            - float(torch.log(self.scale_tril.diagonal()).sum())
        )
        return const - 0.5 * (nu + d) * torch.log1p(z.square().sum(-1) / nu)


class Banana(Target):
    r"""The twisted Gaussian ("banana") of Haario, Saksman and Tamminen (1999).

    :math:`x = T(z)`, :math:`z \sim N(0, I_D)`: :math:`x_1 = a z_1`,
    :math:`x_2 = s z_2 - b (x_1^2 - a^2)`, :math:`x_i = z_i` for :math:`i > 2`. :math:`T` is
    triangular, so :math:`\log p(x) = \log N(T^{-1}(x); 0, I) - \log a - \log s`.

    Arguments:
        name: the target's name.
        dim: :math:`D \ge 2`.
        a: scale of :math:`x_1`.
        s: scale of :math:`x_2` around the curve.
        b: curvature of the curve :math:`x_2 = -b (x_1^2 - a^2)`.

    References:
        Haario, Saksman, Tamminen, "Adaptive proposal distribution for random walk
        Metropolis algorithm", Computational Statistics, 1999.
    """

    has_log_prob = True

    def __init__(self, name: str, dim: int = 2, a: float = 2.0, s: float = 0.5, b: float = 0.5):
        if dim < 2:
            raise ValueError(f"expected dim >= 2, got {dim}")
        self.name, self.dim, self.a, self.s, self.b = name, dim, a, s, b

    def _sample(self, n: int, generator: torch.Generator) -> Tensor:
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x1 = self.a * z[:, :1]
        x2 = self.s * z[:, 1:2] - self.b * (x1.square() - self.a**2)
        return torch.cat([x1, x2, z[:, 2:]], -1)

    def _log_prob(self, x: Tensor) -> Tensor:
        x1 = x[:, :1]
        z2 = (x[:, 1:2] + self.b * (x1.square() - self.a**2)) / self.s
        z = torch.cat([x1 / self.a, z2, x[:, 2:]], -1)
        return _std_normal_log_prob(z) - math.log(self.a * self.s)


class Funnel(Target):
    r"""Neal's funnel: :math:`v \sim N(0, \sigma^2)`, :math:`x_i | v \sim N(0, e^{v})`.

    Coordinates ``(v, x_1, ..., x_{D-1})``; :math:`\log p = \log N(v; 0, \sigma^2)
    + \sum_i \log N(x_i; 0, e^{v})`. The scale of the :math:`x_i` changes by
    :math:`e^{\pm 3\sigma/2}` across the bulk of :math:`v`: strongly curved, hard for
    flows with global affine layers.

    Arguments:
        name: the target's name.
        dim: :math:`D \ge 2`.
        scale: :math:`\sigma`.

    References:
        Neal, "Slice sampling", Annals of Statistics, 2003.
    """

    has_log_prob = True

    def __init__(self, name: str, dim: int = 2, scale: float = 3.0) -> None:
        if dim < 2:
            raise ValueError(f"expected dim >= 2, got {dim}")
        self.name, self.dim, self.scale = name, dim, scale

    def _sample(self, n: int, generator: torch.Generator) -> Tensor:
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        v = self.scale * z[:, :1]
        return torch.cat([v, z[:, 1:] * torch.exp(v / 2)], -1)

    def _log_prob(self, x: Tensor) -> Tensor:
        v = x[:, 0]
        z = torch.cat([x[:, :1] / self.scale, x[:, 1:] * torch.exp(-v / 2).unsqueeze(-1)], -1)
        return _std_normal_log_prob(z) - math.log(self.scale) - 0.5 * (self.dim - 1) * v


def _equicorrelated_tril(dim: int, rho: float) -> Tensor:
    cov = torch.full((dim, dim), rho, dtype=torch.float64).fill_diagonal_(1.0)
    return torch.linalg.cholesky(cov)


def gaussian16(dim: int = 16, rho: float = 0.9) -> Target:
    """16-D correlated Gaussian with scales from e^-1 to e (AR(1) correlation ``rho``)."""
    s = torch.exp(torch.linspace(-1, 1, dim, dtype=torch.float64))
    i = torch.arange(dim)
    cov = s[:, None] * s * rho ** (i[:, None] - i).abs().double()
    return GaussianTarget(f"gaussian{dim}", s, torch.linalg.cholesky(cov))


for _target in (
    Banana("banana"),
    Funnel("funnel"),
    Funnel("funnel10", dim=10),
    StudentTTarget("student8", 3, _equicorrelated_tril(8, 0.5)),
    gaussian16(),
):
    register_target(_target)
