r"""Unnormalized targets of known normalizer, for variational inference.

An :class:`Energy` is an unnormalized density :math:`\tilde p(x) = Z\, p(x)` on
:math:`\mathbb{R}^D`: ``log_prob(x)`` returns :math:`\log \tilde p(x)` and
``log_normalizer`` is :math:`\log Z = \log \int \tilde p(x)\, dx`, known exactly (or to
float64 quadrature accuracy), so a flow fitted by reverse KL can be checked: the importance
sampling estimate of :math:`\log Z` (:func:`torchnf.diagnostics.importance_sample`) must
match it. Energies with an exact sampler also have ``sample(n, seed)``, and then serve as
targets of :func:`torchnf.diagnostics.kl_divergence`, which subtracts ``log_normalizer``.

=====================  ====  =====================================================  =========
name                   dim   :math:`\tilde p`                                       sampler
=====================  ====  =====================================================  =========
``u1`` ... ``u4``      2     the test energies of Rezende and Mohamed (2015),       no
                             :math:`e^{-U_k(z)}` (``u2`` to ``u4`` inside a smooth
                             box, see :class:`Potential`)
each target name       any   every built-in target of :mod:`torchnf.data` (the toy  yes
                             sets, ``banana``, Neal's ``funnel`` and ``funnel10``,
                             the ``ring`` of 8 Gaussians, ...):
                             :math:`\tilde p = e^{c} p` with
                             :math:`c =` :data:`TARGET_LOG_NORMALIZER` :math:`= 2.5`
=====================  ====  =====================================================  =========

The offset :math:`c \ne 0` is deliberate: code that assumes a normalized ``log_prob`` is
off by 2.5 nats and fails its checks. Any :class:`~torchnf.data.Target` becomes an energy
with :class:`TargetEnergy` (e.g. ``TargetEnergy(Funnel("funnel5", dim=5), 2.5)``).
Densities are computed in float64 and returned in the input's dtype; they are
differentiable in ``x`` (except ``checkerboard``, which is piecewise constant, and
``-inf`` off the board: no target for reverse KL).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

import torchnf.data.densities  # noqa: F401  (registers the built-in targets)
import torchnf.data.toy  # noqa: F401
from torchnf.data.targets import TARGETS, Target, count, on_rows, seeded_generator

_CHUNK = 1 << 16  # grid points per block in grid_log_normalizer (bounds the memory)

TARGET_LOG_NORMALIZER = 2.5
""":math:`\\log Z` of the energies made from the built-in targets."""


class Energy:
    r"""An unnormalized density :math:`\tilde p(x) = Z p(x)` over ``R^dim`` with known
    :math:`\log Z`.

    Subclasses set ``name``, ``dim``, ``log_normalizer`` and ``has_sample``, and implement
    ``_log_prob(x)`` on float64 ``x`` of shape ``(N, dim)`` (and ``_sample(n, generator)``,
    returning float64, when ``has_sample``).

    Example:
        >>> energy = get_energy("u2")
        >>> energy.log_prob(torch.zeros(5, 2)).shape, energy.dim, energy.has_sample
        (torch.Size([5]), 2, False)
    """

    name: str
    dim: int
    log_normalizer: float
    has_sample: bool = False

    def log_prob(self, x: Tensor) -> Tensor:
        r"""Unnormalized :math:`\log \tilde p(x)` of ``x`` of shape ``(*batch, dim)``,
        returning ``(*batch,)`` in ``x``'s dtype (computed in float64, differentiable)."""
        return on_rows(self._log_prob, x, self.dim)

    def _log_prob(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def sample(self, n: int, seed: int | None = 0, dtype: torch.dtype = torch.float32) -> Tensor:
        """Exact samples ``(n, dim)`` of :math:`p = \\tilde p / Z`; the same ``seed`` gives the
        same points, ``seed=None`` a fresh, nondeterministic one. Only when ``has_sample``."""
        if not self.has_sample:
            raise ValueError(f"expected an energy with an exact sampler; {self.name!r} has none")
        return self._sample(count(n), seeded_generator(seed)).to(dtype)

    def _sample(self, n: int, generator: torch.Generator) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"


class TargetEnergy(Energy):
    r"""A :class:`~torchnf.data.Target` of exact density as an energy:
    :math:`\log \tilde p(x) = \log p(x) + c`, so :math:`\log Z = c`.

    The samples are the target's (same seeds, same points).

    Arguments:
        target: a target with an exact ``log_prob``.
        log_normalizer: the offset :math:`c = \log Z`.

    Example:
        >>> from torchnf.data import Funnel
        >>> energy = TargetEnergy(Funnel("funnel5", dim=5), log_normalizer=-1.0)
        >>> energy.log_prob(torch.zeros(3, 5)) - energy.target.log_prob(torch.zeros(3, 5))
        tensor([-1., -1., -1.])
        >>> energy.sample(4, seed=0).shape
        torch.Size([4, 5])
    """

    has_sample = True

    def __init__(self, target: Target, log_normalizer: float = TARGET_LOG_NORMALIZER) -> None:
        if not isinstance(target, Target) or not target.has_log_prob:
            raise ValueError(f"expected a torchnf Target with an exact log_prob, got {target!r}")
        self.target = target
        self.name, self.dim = target.name, target.dim
        self.log_normalizer = float(log_normalizer)

    def _log_prob(self, x: Tensor) -> Tensor:
        return self.target._log_prob(x) + self.log_normalizer

    def _sample(self, n: int, generator: torch.Generator) -> Tensor:
        return self.target._sample(n, generator)


def _gauss(t: Tensor) -> Tensor:
    """:math:`-t^2 / 2`, the exponent of an unnormalized standard normal."""
    return -0.5 * t.square()


# log Z of u1..u4: grid_log_normalizer(Potential(k), Potential(k).bounds, 4000) in float64;
# the same rule with 8000 points per side agrees to better than 1e-13.
_POTENTIAL_LOG_Z = {
    1: 1.8775016261097068,
    2: 2.0820893430103666,
    3: 2.6417051309457875,
    4: 2.710698002432739,
}


class Potential(Energy):
    r"""Test energy :math:`U_k` of Rezende and Mohamed (2015, table 1): :math:`\tilde p(z) =
    e^{-U_k(z)}` on :math:`\mathbb{R}^2`, with

    .. math::
        w_1 = \sin\tfrac{2\pi z_1}{4},\quad
        w_2 = 3 e^{-\frac12 ((z_1 - 1)/0.6)^2},\quad
        w_3 = 3\,\sigma\big(\tfrac{z_1 - 1}{0.3}\big),

        U_1 = \tfrac12 \big(\tfrac{\|z\| - 2}{0.4}\big)^2
              - \log\big(e^{-\frac12 ((z_1 - 2)/0.6)^2} + e^{-\frac12 ((z_1 + 2)/0.6)^2}\big),

        U_2 = \tfrac12 \big(\tfrac{z_2 - w_1}{0.4}\big)^2,

        U_3 = -\log\big(e^{-\frac12 ((z_2 - w_1)/0.35)^2}
              + e^{-\frac12 ((z_2 - w_1 + w_2)/0.35)^2}\big),

        U_4 = -\log\big(e^{-\frac12 ((z_2 - w_1)/0.4)^2}
              + e^{-\frac12 ((z_2 - w_1 + w_3)/0.35)^2}\big),

    :math:`\sigma` the logistic function. :math:`U_2, U_3, U_4` do not grow with
    :math:`|z_1|` (:math:`w_1` is periodic, :math:`w_2` and :math:`w_3` tend to constants), so
    :math:`e^{-U}` is not integrable on :math:`\mathbb{R}^2` as written. Here, as in the
    paper's figure (which shows :math:`[-4, 4]^2`), they are restricted to
    :math:`|z_1| \lesssim 4` by the smooth box factor
    :math:`\sigma(4 (4 - z_1))\, \sigma(4 (4 + z_1))`: about 1 inside, decaying like
    :math:`e^{-4(|z_1| - 4)}` outside, analytic, with finite gradients everywhere. ``u1``
    is used as written.

    ``log_normalizer`` is :math:`\log Z`, computed once by :func:`grid_log_normalizer` on
    :attr:`bounds` with 4000 points per side in float64 (the mass outside ``bounds`` is below
    :math:`10^{-15} Z`; the midpoint rule converges geometrically on these analytic,
    rapidly decaying densities: 8000 points agree to better than 1e-13).

    Arguments:
        k: which potential, 1 to 4 (``name`` is ``f"u{k}"``).

    Attributes:
        bounds: the quadrature box ``((low, high), (low, high))``.

    References:
        Rezende, Mohamed, "Variational Inference with Normalizing Flows", 2015,
        arXiv:1505.05770.

    Example:
        >>> u1 = Potential(1)
        >>> u1.log_prob(torch.tensor([[2.0, 0.0], [0.0, 0.0]]))
        tensor([ 2.2336e-10, -1.7362e+01])
        >>> round(u1.log_normalizer, 4)
        1.8775
    """

    dim = 2

    def __init__(self, k: int) -> None:
        if k not in (1, 2, 3, 4):
            raise ValueError(f"expected a potential index k in 1..4, got {k!r}")
        self.k, self.name = k, f"u{k}"
        self.bounds = ((-6.0, 6.0), (-6.0, 6.0)) if k == 1 else ((-14.0, 14.0), (-9.0, 6.0))
        self.log_normalizer = _POTENTIAL_LOG_Z[k]

    def _log_prob(self, z: Tensor) -> Tensor:
        z1, z2 = z[:, 0], z[:, 1]
        if self.k == 1:
            ring = _gauss((torch.linalg.vector_norm(z, dim=-1) - 2) / 0.4)
            return ring + torch.logaddexp(_gauss((z1 - 2) / 0.6), _gauss((z1 + 2) / 0.6))
        w1 = torch.sin(2 * math.pi * z1 / 4)
        if self.k == 2:
            log_p = _gauss((z2 - w1) / 0.4)
        elif self.k == 3:
            w2 = 3 * torch.exp(_gauss((z1 - 1) / 0.6))
            log_p = torch.logaddexp(_gauss((z2 - w1) / 0.35), _gauss((z2 - w1 + w2) / 0.35))
        else:
            w3 = 3 * torch.sigmoid((z1 - 1) / 0.3)
            log_p = torch.logaddexp(_gauss((z2 - w1) / 0.4), _gauss((z2 - w1 + w3) / 0.35))
        # log sigma(4 (4 - z1)) + log sigma(4 (4 + z1)): the smooth box |z1| <~ 4.
        return log_p - F.softplus(4 * (z1 - 4)) - F.softplus(-4 * (z1 + 4))


def grid_log_normalizer(energy: Energy, bounds: Sequence[tuple[float, float]], n: int) -> float:
    r""":math:`\log \int_B \tilde p(x)\, dx` over the box :math:`B` by the midpoint rule, in
    float64.

    The box is cut into :math:`n^D` equal cells of volume :math:`\prod_d h_d`,
    :math:`h_d = (b_d - a_d) / n`; with the cell centres :math:`c_j`,
    :math:`\log Z \approx \operatorname{logsumexp}_j \log \tilde p(c_j) + \sum_d \log h_d`.
    On smooth densities that decay well inside :math:`B` the rule converges geometrically
    in :math:`n`; it is exact for densities constant on cells (e.g. the checkerboard with
    a box and ``n`` aligned to its squares). Costs :math:`n^D` evaluations (in blocks of
    65536), so it is for :math:`D \le 2`, or 3 with a small ``n``.

    Arguments:
        energy: an energy (or any object with ``dim`` and ``log_prob``, such as a
            :class:`~torchnf.data.Target`).
        bounds: ``D`` pairs ``(low, high)``.
        n: points per dimension.

    Returns:
        The log of the integral, a float.

    Example:
        >>> u1 = Potential(1)
        >>> abs(grid_log_normalizer(u1, u1.bounds, 400) - u1.log_normalizer) < 1e-6
        True
    """
    bounds = [tuple(map(float, b)) for b in bounds]
    if len(bounds) != energy.dim or any(len(b) != 2 or not b[0] < b[1] for b in bounds):
        raise ValueError(
            f"expected bounds of {energy.dim} pairs (low, high) with low < high, got {bounds}"
        )
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"expected a number of points per dimension n >= 1, got {n!r}")
    axes = [
        torch.linspace(lo, hi, n + 1, dtype=torch.float64)[:-1] + (hi - lo) / (2 * n)
        for lo, hi in bounds
    ]
    log_volume = sum(math.log((hi - lo) / n) for lo, hi in bounds)
    grid = torch.cartesian_prod(*axes).reshape(-1, energy.dim)
    with torch.no_grad():
        blocks = [torch.logsumexp(energy.log_prob(b), 0) for b in grid.split(_CHUNK)]
    return float(torch.logsumexp(torch.stack(blocks), 0)) + log_volume


ENERGIES: dict[str, Energy] = {
    **{f"u{k}": Potential(k) for k in (1, 2, 3, 4)},
    **{name: TargetEnergy(target) for name, target in TARGETS.items()},
}


def get_energy(name: str) -> Energy:
    """The built-in energy called ``name``; a ``ValueError`` lists the names otherwise.

    Example:
        >>> get_energy("ring").log_normalizer
        2.5
    """
    if name not in ENERGIES:
        raise ValueError(f"unknown energy {name!r}; expected one of {sorted(ENERGIES)}")
    return ENERGIES[name]
