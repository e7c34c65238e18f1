r"""Targets of known density with angle columns: a mixture on the torus and a cylinder.

Angles are in radians in :math:`[-\pi, \pi)`; a target's ``circular`` lists its angle
columns (the models that take ``circular=``, :class:`~torchnf.models.CircularNSF`, get them
from it in ``torchnf bench`` and ``torchnf train``). Densities are with respect to the
Lebesgue measure on :math:`[-\pi, \pi)` per angle, 0 outside (``log_prob = -inf`` where an
angle leaves the interval), so the KL to a flow on the real line is finite (that flow wastes
mass outside the box) and comparable.

==============  ====  ========================================================================
name            dim   density
==============  ====  ========================================================================
``torus``       2     three components on :math:`T^2`: two products of von Mises, one across
                      both seams, and a band winding around the torus,
                      :math:`\theta_2 | \theta_1 \sim vM(\theta_1 + 1.5, 8)`
``cylinder``    2     :math:`\theta \sim` a mixture of two von Mises;
                      :math:`x | \theta \sim N(2 \sin\theta, (0.3 + 0.25 (1 + \cos\theta))^2)`
==============  ====  ========================================================================

The von Mises density is :math:`vM(\theta; \mu, \kappa) = e^{\kappa \cos(\theta - \mu)} /
(2\pi I_0(\kappa))`, with :math:`\log I_0(\kappa) = \log \mathrm{i0e}(\kappa) + \kappa`
computed stably; its samples come from the rejection sampler of Best and Fisher (1979), driven
by the target's seeded generator.

References:
    Best, Fisher, "Efficient Simulation of the von Mises Distribution", Applied Statistics 28,
    1979. Rezende et al., "Normalizing Flows on Tori and Spheres", 2020, arXiv:2002.02428
    (targets on tori).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from torchnf.data.targets import Target, register_target
from torchnf.layers.circular import wrap_angle

_LOG_2PI = math.log(2 * math.pi)


def _on_box(log_prob: Tensor, angles: Tensor) -> Tensor:
    """``log_prob`` where every angle (columns of ``angles``) is in [-pi, pi), else -inf."""
    inside = ((angles >= -math.pi) & (angles < math.pi)).all(-1)
    return log_prob.masked_fill(~inside, -math.inf)


def von_mises_log_prob(theta: Tensor, loc: Tensor, concentration: Tensor) -> Tensor:
    r""":math:`\log vM(\theta; \mu, \kappa) = \kappa \cos(\theta - \mu) - \log 2\pi
    - \log I_0(\kappa)`, elementwise (broadcast).

    Example:
        >>> von_mises_log_prob(torch.tensor(0.0), torch.tensor(0.0), torch.tensor(1e-9))
        tensor(-1.8379)
    """
    log_i0 = torch.log(torch.special.i0e(concentration)) + concentration
    return concentration * torch.cos(theta - loc) - _LOG_2PI - log_i0


def von_mises_sample(loc: Tensor, concentration: Tensor, generator: torch.Generator) -> Tensor:
    r"""One von Mises draw per entry of ``loc`` and ``concentration`` (same shape, float64,
    :math:`\kappa > 0`), in :math:`[-\pi, \pi)`, by Best and Fisher's (1979) rejection from a
    wrapped Cauchy envelope; rejected entries are redrawn until all are accepted.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> theta = von_mises_sample(torch.zeros(20000), torch.full((20000,), 2.0), g)
        >>> i1_over_i0 = torch.special.i1e(torch.tensor(2.0)) / torch.special.i0e(torch.tensor(2.0))
        >>> bool((theta.cos().mean() - i1_over_i0).abs() < 0.01)
        True
    """
    tau = 1 + torch.sqrt(1 + 4 * concentration.square())
    rho = (tau - torch.sqrt(2 * tau)) / (2 * concentration)
    r = (1 + rho.square()) / (2 * rho)
    offset = torch.zeros_like(loc)
    todo = torch.ones_like(loc, dtype=torch.bool)
    while todo.any():
        index = todo.nonzero(as_tuple=True)
        r_, kappa = r[index], concentration[index]
        u1, u2, u3 = torch.rand(3, len(r_), generator=generator, dtype=loc.dtype)
        z = torch.cos(math.pi * u1)
        f = (1 + r_ * z) / (r_ + z)
        c = kappa * (r_ - f)
        accept = (c * (2 - c) - u2 > 0) | (torch.log(c / u2) + 1 - c >= 0)
        theta = torch.sign(u3 - 0.5) * torch.acos(f.clamp(-1, 1))
        accepted = tuple(i[accept] for i in index)
        offset[accepted] = theta[accept]
        todo[accepted] = False
    return wrap_angle(loc + offset)


class TorusMixture(Target):
    r"""Mixture on the torus :math:`T^2 = [-\pi, \pi)^2` of components
    :math:`vM(\theta_1; \mu_1, \kappa_1)\, vM(\theta_2; \mu_2 + n \theta_1, \kappa_2)`.

    With winding number :math:`n = 0` a component is a product of von Mises; with
    :math:`n = 1` it is a band winding once around the torus (:math:`\theta_2` follows
    :math:`\theta_1`). Each factor is normalized, so
    :math:`\log p(\theta) = \mathrm{logsumexp}_k [\log w_k + \log vM(\theta_1; \mu_{k1},
    \kappa_{k1}) + \log vM(\theta_2; \mu_{k2} + n_k \theta_1, \kappa_{k2})]` exactly.

    Arguments:
        name: the target's name.
        loc: ``(K, 2)`` the :math:`\mu`.
        concentration: ``(K, 2)`` the :math:`\kappa > 0`.
        winding: ``(K,)`` integer :math:`n` per component.
        weights: ``(K,)`` mixture weights (normalized here).

    Example:
        >>> t = TorusMixture("t", [[0.0, 0.0]], [[1.0, 1.0]], [0], [1.0])
        >>> t.log_prob(torch.zeros(1, 2)), t.circular
        (tensor([-2.1476]), (0, 1))
    """

    has_log_prob = True
    dim = 2
    circular = (0, 1)

    def __init__(self, name: str, loc, concentration, winding, weights) -> None:
        self.name = name
        self.loc = torch.as_tensor(loc, dtype=torch.float64)
        self.concentration = torch.as_tensor(concentration, dtype=torch.float64)
        self.winding = torch.as_tensor(winding, dtype=torch.float64)
        w = torch.as_tensor(weights, dtype=torch.float64)
        self.log_weights = torch.log(w / w.sum())

    def _sample(self, n: int, generator: torch.Generator) -> Tensor:
        k = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        theta1 = von_mises_sample(self.loc[k, 0], self.concentration[k, 0], generator)
        loc2 = self.loc[k, 1] + self.winding[k] * theta1
        theta2 = von_mises_sample(loc2, self.concentration[k, 1], generator)
        return torch.stack([theta1, theta2], -1)

    def _log_prob(self, x: Tensor) -> Tensor:
        theta1, theta2 = x[:, None, 0], x[:, None, 1]  # (N, 1) against (K,)
        comp = von_mises_log_prob(theta1, self.loc[:, 0], self.concentration[:, 0])
        loc2 = self.loc[:, 1] + self.winding * theta1
        comp = comp + von_mises_log_prob(theta2, loc2, self.concentration[:, 1])
        return _on_box(torch.logsumexp(comp + self.log_weights, -1), x)


class Cylinder(Target):
    r"""An angle and a real value on the cylinder :math:`[-\pi, \pi) \times \mathbb{R}`:
    :math:`\theta \sim 0.5\, vM(2.5, 4) + 0.5\, vM(-1, 2)`,
    :math:`x | \theta \sim N(2 \sin\theta, s(\theta)^2)`, :math:`s(\theta) = 0.3 + 0.25 (1 +
    \cos\theta)`.

    :math:`\log p(\theta, x) = \log p(\theta) + \log N(x; 2\sin\theta, s(\theta)^2)`, exact.

    Example:
        >>> t = Cylinder("c")
        >>> t.sample(3).shape, t.circular
        (torch.Size([3, 2]), (0,))
    """

    has_log_prob = True
    dim = 2
    circular = (0,)

    def __init__(self, name: str) -> None:
        self.name = name
        self.loc = torch.tensor([2.5, -1.0], dtype=torch.float64)
        self.concentration = torch.tensor([4.0, 2.0], dtype=torch.float64)

    @staticmethod
    def _mean_scale(theta: Tensor) -> tuple[Tensor, Tensor]:
        return 2 * torch.sin(theta), 0.3 + 0.25 * (1 + torch.cos(theta))

    def _sample(self, n: int, generator: torch.Generator) -> Tensor:
        k = torch.randint(2, (n,), generator=generator)
        theta = von_mises_sample(self.loc[k], self.concentration[k], generator)
        mean, scale = self._mean_scale(theta)
        eps = torch.randn(n, generator=generator, dtype=torch.float64)
        return torch.stack([theta, mean + scale * eps], -1)

    def _log_prob(self, x: Tensor) -> Tensor:
        theta, value = x[:, 0], x[:, 1]
        comp = von_mises_log_prob(theta[:, None], self.loc, self.concentration)
        log_theta = torch.logsumexp(comp, -1) - math.log(2)
        mean, scale = self._mean_scale(theta)
        log_x = -0.5 * ((value - mean) / scale).square() - torch.log(scale) - 0.5 * _LOG_2PI
        return _on_box(log_theta + log_x, x[:, :1])


register_target(
    TorusMixture(
        "torus",
        loc=[[2.9, -2.9], [-1.0, 1.5], [1.0, -1.2]],
        concentration=[[5.0, 5.0], [1.0, 8.0], [10.0, 3.0]],
        winding=[0, 1, 0],
        weights=[0.3, 0.4, 0.3],
    )
)
register_target(Cylinder("cylinder"))
