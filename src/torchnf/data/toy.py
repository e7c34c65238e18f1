r"""The built-in 1-D and 2-D data sets, each with an exact density.

The usual toy sets (moons, circles, two spirals) are noise around a curve, whose density
has no closed form. Here each is *defined* as an equal mixture of isotropic Gaussians of
standard deviation :math:`\sigma` centred on evenly spaced points :math:`c_j` of the curve,

.. math:: p(x) = \frac{1}{M} \sum_{j=1}^{M} N(x; c_j, \sigma^2 I),

with spacing :math:`h` at most about :math:`\sigma` between neighbouring centres, so that the
density along the curve is flat to within :math:`2 e^{-2\pi^2 (\sigma/h)^2} < 10^{-8}` (the
first Fourier coefficient of a comb of Gaussians of spacing :math:`h`): the sets look exactly like
the familiar ones, and their ``log_prob`` is exact. The pinwheel is a Gaussian mixture
warped by an area-preserving swirl (Jacobian determinant 1), and the checkerboard is
uniform on eight squares.

========================  ====  ===============================================================
name                      dim   density
========================  ====  ===============================================================
``mixture1d``             1     :math:`0.3 N(-2, 0.4^2) + 0.45 N(0.5, 0.6^2) + 0.25 N(3, 0.5^2)`
``moons``                 2     two interleaved half circles of radius 1, :math:`\sigma = 0.1`
``circles``               2     circles of radius 1 and 0.5 (half the mass each),
                                :math:`\sigma = 0.05`
``ring``                  2     8 Gaussians of sd 0.5 evenly spaced on a circle of radius 4
``checkerboard``          2     uniform on the 8 black unit squares of a 4 x 4 board on
                                :math:`[-2, 2]^2`: :math:`p = 1/8` there, 0 elsewhere
``spirals``               2     two interleaved Archimedean spirals :math:`r = \theta / 3`,
                                :math:`\theta \in [0, 3\pi]`, :math:`\sigma = 0.1`
``pinwheel``              2     five arms: Gaussians with radial sd 0.3 and tangential sd 0.1
                                centred at radius 1, swirled by
                                :math:`(r, \varphi) \mapsto (r, \varphi + e^r / 4)`
========================  ====  ===============================================================
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from torchnf.data.targets import GaussianMixtureTarget, Target, register_target


def _rotation(angle: Tensor) -> Tensor:
    """Rotation matrices ``(*angle.shape, 2, 2)``."""
    c, s = angle.cos(), angle.sin()
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def mixture_1d() -> Target:
    """1-D: three Gaussians of different widths (the seed's 1-D demonstration)."""
    return GaussianMixtureTarget(
        "mixture1d", [[-2.0], [0.5], [3.0]], [0.4, 0.6, 0.5], [0.3, 0.45, 0.25]
    )


def ring_of_gaussians(n_modes: int = 8, radius: float = 4.0, scale: float = 0.5) -> Target:
    """2-D: ``n_modes`` equal Gaussians evenly spaced on a circle of ``radius``."""
    angles = torch.arange(n_modes, dtype=torch.float64) * (2 * math.pi / n_modes)
    means = radius * torch.stack([angles.cos(), angles.sin()], -1)
    return GaussianMixtureTarget("ring", means, torch.full((n_modes,), scale))


def moons(noise: float = 0.1, n_centres: int = 32) -> Target:
    """2-D: two interleaved half circles (as scikit-learn's ``make_moons``), centred at 0."""
    t = torch.linspace(0, math.pi, n_centres, dtype=torch.float64)
    upper = torch.stack([t.cos(), t.sin()], -1)
    lower = torch.stack([1 - t.cos(), 0.5 - t.sin()], -1)
    centres = torch.cat([upper, lower]) - torch.tensor([0.5, 0.25], dtype=torch.float64)
    return GaussianMixtureTarget("moons", centres, torch.full((2 * n_centres,), noise))


def circles(noise: float = 0.05, factor: float = 0.5, n_centres: int = 128) -> Target:
    """2-D: two concentric circles of radius 1 and ``factor``, half of the mass on each."""
    n_inner = max(int(n_centres * factor), 1)
    outer = torch.arange(n_centres, dtype=torch.float64) * (2 * math.pi / n_centres)
    inner = torch.arange(n_inner, dtype=torch.float64) * (2 * math.pi / n_inner)
    centres = torch.cat(
        [
            torch.stack([outer.cos(), outer.sin()], -1),
            factor * torch.stack([inner.cos(), inner.sin()], -1),
        ]
    )
    weights = torch.cat(
        [torch.full((n_centres,), 0.5 / n_centres), torch.full((n_inner,), 0.5 / n_inner)]
    )
    return GaussianMixtureTarget("circles", centres, torch.full((len(centres),), noise), weights)


def spirals(noise: float = 0.1, turns: float = 1.5, n_centres: int = 160) -> Target:
    r"""2-D: two interleaved spirals :math:`r = \theta / 3`, the second rotated by :math:`\pi`.

    Centres at :math:`\theta_j = \theta_{max} \sqrt{(j + 1/2) / M}`, nearly even in arc length.
    """
    u = (torch.arange(n_centres, dtype=torch.float64) + 0.5) / n_centres
    theta = 2 * math.pi * turns * u.sqrt()
    arm = torch.stack([-theta * theta.cos(), theta * theta.sin()], -1) / 3
    centres = torch.cat([arm, -arm])
    return GaussianMixtureTarget("spirals", centres, torch.full((len(centres),), noise))


class SwirlTarget(Target):
    r"""A 2-D target warped by the swirl :math:`(r, \varphi) \mapsto (r, \varphi + a e^{r})`.

    :math:`x = R(a e^{|u|})\, u` with :math:`u \sim p_U` and :math:`R` a rotation. In polar
    coordinates the map is :math:`(r, \varphi + g(r))`, whose Jacobian is unit triangular,
    and it keeps :math:`r`, so it preserves area: :math:`p(x) = p_U(R(-a e^{|x|})\, x)`.

    Arguments:
        name: the target's name.
        base: the 2-D target :math:`p_U` before the swirl.
        rate: :math:`a`.
    """

    has_log_prob = True
    dim = 2

    def __init__(self, name: str, base: Target, rate: float) -> None:
        if base.dim != 2:
            raise ValueError(f"expected a 2-D base target, got dim {base.dim}")
        self.name, self.base, self.rate = name, base, rate

    def _swirl(self, u: Tensor, sign: float) -> Tensor:
        angle = sign * self.rate * torch.exp(u.norm(dim=-1))
        return (_rotation(angle) @ u.unsqueeze(-1)).squeeze(-1)

    def _sample(self, n: int, generator: torch.Generator) -> Tensor:
        return self._swirl(self.base._sample(n, generator), 1.0)

    def _log_prob(self, x: Tensor) -> Tensor:
        return self.base._log_prob(self._swirl(x, -1.0))


def pinwheel(n_arms: int = 5, radial: float = 0.3, tangential: float = 0.1) -> Target:
    """2-D: ``n_arms`` curved arms (the pinwheel of Johnson et al., 2016, arXiv:1603.06277)."""
    angles = torch.arange(n_arms, dtype=torch.float64) * (2 * math.pi / n_arms)
    rot = _rotation(angles)  # (K, 2, 2)
    means = rot[..., 0]  # the rotated (1, 0)
    scales = rot @ torch.diag(torch.tensor([radial, tangential], dtype=torch.float64))
    # rot @ diag is a valid square-root factor but not triangular: take the Cholesky factor.
    scales = torch.linalg.cholesky(scales @ scales.mT)
    return SwirlTarget("pinwheel", GaussianMixtureTarget("arms", means, scales), 0.25)


class Checkerboard(Target):
    r"""2-D: uniform on the black squares of a ``size`` x ``size`` board of unit squares.

    The board covers :math:`[-s/2, s/2]^2`; a square is black when the sum of its row and
    column indices is even, so :math:`p(x) = 2 / s^2` on black squares and 0 elsewhere
    (``log_prob`` is ``-inf`` there).

    Arguments:
        size: number of squares per side (even).
    """

    has_log_prob = True
    dim = 2

    def __init__(self, size: int = 4) -> None:
        if size < 2 or size % 2:
            raise ValueError(f"expected an even board size >= 2, got {size}")
        self.name, self.size = "checkerboard", size
        i, j = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        black = (i + j) % 2 == 0
        self.corners = torch.stack([i[black], j[black]], -1).double() - size / 2

    def _sample(self, n: int, generator: torch.Generator) -> Tensor:
        k = torch.randint(len(self.corners), (n,), generator=generator)
        return self.corners[k] + torch.rand(n, 2, generator=generator, dtype=torch.float64)

    def _log_prob(self, x: Tensor) -> Tensor:
        cell = torch.floor(x + self.size / 2)
        inside = ((cell >= 0) & (cell < self.size)).all(-1)
        black = cell.sum(-1).remainder(2) == 0
        density = math.log(2 / self.size**2)
        return torch.where(inside & black, density, -math.inf).to(x)


for _target in (
    mixture_1d(),
    moons(),
    circles(),
    ring_of_gaussians(),
    Checkerboard(),
    spirals(),
    pinwheel(),
):
    register_target(_target)
