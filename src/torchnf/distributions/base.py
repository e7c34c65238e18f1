"""Base distributions of flows, as modules (so they move with ``.to`` and can learn)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from torchnf.core.bijector import Shape, _as_shape


class BaseDistribution(nn.Module):
    """A distribution over events of shape ``event_shape`` with a differentiable sampler.

    Subclasses implement ``log_prob(z) -> (*batch,)`` for ``z`` of shape
    ``(*batch, *event_shape)`` and ``rsample(shape) -> (*shape, *event_shape)``.
    """

    def __init__(self, event_shape: Shape | int) -> None:
        super().__init__()
        self.event_shape: Shape = _as_shape(event_shape)

    @property
    def event_dim(self) -> int:
        return len(self.event_shape)

    def log_prob(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def rsample(self, shape: tuple[int, ...] = ()) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, shape: tuple[int, ...] = ()) -> Tensor:
        return self.rsample(shape)

    def _sum_event(self, t: Tensor) -> Tensor:
        return t.flatten(t.dim() - self.event_dim).sum(-1)


class StandardNormal(BaseDistribution):
    r"""Standard normal :math:`N(0, I)` over events of shape ``event_shape``.

    :math:`\log p(z) = -\tfrac12 \|z\|^2 - \tfrac{D}{2}\log 2\pi`.

    Arguments:
        event_shape: shape of one event, e.g. ``2`` or ``(1, 8, 8)``.

    Example:
        >>> base = StandardNormal(2)
        >>> base.log_prob(torch.zeros(2))
        tensor(-1.8379)
    """

    def __init__(self, event_shape: Shape | int) -> None:
        super().__init__(event_shape)
        self.register_buffer("_dummy", torch.zeros(()), persistent=False)

    def log_prob(self, z: Tensor) -> Tensor:
        d = math.prod(self.event_shape)
        return -0.5 * self._sum_event(z.square()) - 0.5 * d * math.log(2 * math.pi)

    def rsample(self, shape: tuple[int, ...] = ()) -> Tensor:
        ref = self._dummy
        return torch.randn(*shape, *self.event_shape, device=ref.device, dtype=ref.dtype)


class DiagonalNormal(BaseDistribution):
    r"""Normal :math:`N(\mu, \mathrm{diag}(\sigma^2))` with learnable ``loc`` and ``log_scale``.

    Initialized to the standard normal.

    Arguments:
        event_shape: shape of one event.
    """

    def __init__(self, event_shape: Shape | int) -> None:
        super().__init__(event_shape)
        self.loc = nn.Parameter(torch.zeros(self.event_shape))
        self.log_scale = nn.Parameter(torch.zeros(self.event_shape))

    def log_prob(self, z: Tensor) -> Tensor:
        u = (z - self.loc) * torch.exp(-self.log_scale)
        return self._sum_event(-0.5 * u.square() - self.log_scale) - 0.5 * math.prod(
            self.event_shape
        ) * math.log(2 * math.pi)

    def rsample(self, shape: tuple[int, ...] = ()) -> Tensor:
        eps = torch.randn(*shape, *self.event_shape, device=self.loc.device, dtype=self.loc.dtype)
        return self.loc + eps * torch.exp(self.log_scale)


class GaussianMixture(BaseDistribution):
    r"""Mixture of ``n_components`` diagonal Gaussians over vectors of size ``input_size``.

    :math:`p(z) = \sum_k \pi_k N(z; \mu_k, \mathrm{diag}(\sigma_k^2))`. By default the
    logits, means and log-scales are learned, the means initialized spread out (seeded) and
    the scales at 1; ``loc``, ``scale`` and ``weights`` set them instead, and
    ``trainable=False`` keeps them fixed (buffers, saved with the model but not optimized),
    e.g. a base of known modes. ``rsample`` is reparametrized in the means and scales but not
    in the weights.

    Arguments:
        input_size: dimension ``D`` of the events (shape ``(D,)``).
        n_components: number of components ``K`` (default ``len(loc)``, or 8).
        seed: seed of the random initial means (when ``loc`` is not given).
        loc: the means ``(K, D)``.
        scale: the standard deviations, broadcastable to ``(K, D)`` (default 1).
        weights: the mixture weights ``(K,)``, positive, normalized here (default equal).
        trainable: learn the weights, means and scales (``False``: fixed).

    Example:
        >>> base = GaussianMixture(2, loc=[[-3.0, 0.0], [3.0, 0.0]], scale=0.5, trainable=False)
        >>> list(base.parameters()), base.sample((1000,)).abs().mean(0).round(decimals=0)
        ([], tensor([3., 0.]))
    """

    def __init__(
        self,
        input_size: int,
        n_components: int | None = None,
        seed: int = 0,
        *,
        loc: Tensor | Sequence[Sequence[float]] | None = None,
        scale: Tensor | float | Sequence[float] | Sequence[Sequence[float]] = 1.0,
        weights: Tensor | Sequence[float] | None = None,
        trainable: bool = True,
    ) -> None:
        super().__init__(input_size)
        dtype = torch.get_default_dtype()
        if n_components is None:
            n_components = 8 if loc is None else len(loc)
        if n_components < 1:
            raise ValueError(f"expected n_components >= 1, got {n_components}")
        shape = (n_components, input_size)
        if loc is None:
            loc = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        loc = torch.as_tensor(loc, dtype=dtype)
        if loc.shape != shape:
            raise ValueError(f"expected loc of shape {shape}, got {tuple(loc.shape)}")
        scale = torch.as_tensor(scale, dtype=dtype)
        if not torch.broadcast_shapes(scale.shape, shape) == shape or not (scale > 0).all():
            raise ValueError(f"expected a positive scale broadcastable to {shape}")
        if weights is None:
            weights = torch.ones(n_components)
        weights = torch.as_tensor(weights, dtype=dtype)
        if weights.shape != (n_components,) or not (weights > 0).all():
            raise ValueError(f"expected {n_components} positive weights, got {weights.tolist()}")
        values = {
            "logits": (weights / weights.sum()).log(),
            "loc": loc.clone(),
            "log_scale": scale.log().expand(shape).clone(),
        }
        for name, value in values.items():
            if trainable:
                setattr(self, name, nn.Parameter(value))
            else:
                self.register_buffer(name, value)

    def log_prob(self, z: Tensor) -> Tensor:
        u = (z.unsqueeze(-2) - self.loc) * torch.exp(-self.log_scale)  # (*batch, K, D)
        comp = (-0.5 * u.square() - self.log_scale).sum(-1) - 0.5 * z.shape[-1] * math.log(
            2 * math.pi
        )
        return torch.logsumexp(comp + torch.log_softmax(self.logits, -1), dim=-1)

    def rsample(self, shape: tuple[int, ...] = ()) -> Tensor:
        k = torch.distributions.Categorical(logits=self.logits.detach()).sample(shape)
        eps = torch.randn(*shape, *self.event_shape, device=self.loc.device, dtype=self.loc.dtype)
        return self.loc[k] + eps * torch.exp(self.log_scale[k])


class StudentT(BaseDistribution):
    r"""Independent Student-t components with a learnable degrees of freedom :math:`\nu`.

    :math:`\log p(z) = \sum_i \log t_\nu(z_i)`, a heavy-tailed base for heavy-tailed data
    (Jaini et al., 2020, Tails of Lipschitz Triangular Flows, arXiv:1907.04481).
    :math:`\nu = \nu_{min} + \mathrm{softplus}(\theta)`, initialized at ``df``.

    Arguments:
        event_shape: shape of one event.
        df: initial degrees of freedom (> ``min_df``).
        min_df: lower bound on the degrees of freedom.
    """

    def __init__(self, event_shape: Shape | int, df: float = 5.0, min_df: float = 1.0) -> None:
        super().__init__(event_shape)
        if df <= min_df:
            raise ValueError(f"expected df > min_df = {min_df}, got {df}")
        self.min_df = min_df
        self.raw_df = nn.Parameter(torch.tensor(df - min_df).expm1().log())

    @property
    def df(self) -> Tensor:
        return self.min_df + nn.functional.softplus(self.raw_df)

    def _dist(self) -> torch.distributions.StudentT:
        return torch.distributions.StudentT(self.df)

    def log_prob(self, z: Tensor) -> Tensor:
        return self._sum_event(self._dist().log_prob(z))

    def rsample(self, shape: tuple[int, ...] = ()) -> Tensor:
        return self._dist().rsample((*shape, *self.event_shape))


class Uniform(BaseDistribution):
    r"""Uniform on the box :math:`[low, high]^D`, for flows whose latent space is bounded.

    Arguments:
        event_shape: shape of one event.
        low: lower bound of each coordinate.
        high: upper bound of each coordinate.
    """

    def __init__(self, event_shape: Shape | int, low: float = 0.0, high: float = 1.0) -> None:
        super().__init__(event_shape)
        if not high > low:
            raise ValueError(f"expected high > low, got low={low}, high={high}")
        self.register_buffer("low", torch.tensor(float(low)), persistent=False)
        self.register_buffer("high", torch.tensor(float(high)), persistent=False)

    def log_prob(self, z: Tensor) -> Tensor:
        inside = ((z >= self.low) & (z <= self.high)).flatten(z.dim() - self.event_dim).all(-1)
        log_volume = math.prod(self.event_shape) * torch.log(self.high - self.low)
        return torch.where(inside, -log_volume, -torch.inf).to(z.dtype)

    def rsample(self, shape: tuple[int, ...] = ()) -> Tensor:
        u = torch.rand(*shape, *self.event_shape, device=self.low.device, dtype=self.low.dtype)
        return self.low + (self.high - self.low) * u


class ProductBase(BaseDistribution):
    r"""Independent bases over groups of the features:
    :math:`p(z) = \prod_j p_j(z_{C_j})`.

    ``bases[j]`` is a distribution over vectors of size ``len(columns[j])``, the features
    ``columns[j]``; the columns partition ``range(D)``. E.g. :math:`U(-\pi, \pi)` on the angle
    columns and :math:`N(0, 1)` on the others, the base of a flow on
    :math:`T^k \times \mathbb{R}^{D-k}` (:class:`~torchnf.models.CircularNSF`).

    Shapes: ``z`` ``(*batch, D)``, ``log_prob`` ``(*batch,)``, ``rsample(shape)``
    ``(*shape, D)``.

    Arguments:
        bases: one base per group of columns.
        columns: the columns of each group.

    References:
        Rezende et al., "Normalizing Flows on Tori and Spheres", 2020, arXiv:2002.02428
        (uniform bases on tori).

    Example:
        >>> base = ProductBase([Uniform(1, -math.pi, math.pi), StandardNormal(1)], [[1], [0]])
        >>> base.log_prob(torch.tensor([0.0, 3.0])), base.sample((5,)).shape
        (tensor(-2.7568), torch.Size([5, 2]))
    """

    def __init__(self, bases: Sequence[BaseDistribution], columns: Sequence[Sequence[int]]):
        flat = sorted(c for group in columns for c in group)
        if len(bases) != len(columns) or not flat or flat != list(range(len(flat))):
            raise ValueError(
                "expected one group of columns per base, the groups a partition of range(D), "
                f"got {len(bases)} bases and columns {[list(g) for g in columns]}"
            )
        for base, group in zip(bases, columns, strict=True):
            if base.event_shape != (len(group),):
                raise ValueError(
                    f"expected a base over vectors of size {len(group)} for columns "
                    f"{list(group)}, got event shape {base.event_shape}"
                )
        super().__init__(len(flat))
        self.bases = nn.ModuleList(bases)
        for j, group in enumerate(columns):
            self.register_buffer(f"columns{j}", torch.tensor(list(group)), persistent=False)
        order = torch.tensor([c for group in columns for c in group])
        self.register_buffer("restore", torch.argsort(order), persistent=False)

    def log_prob(self, z: Tensor) -> Tensor:
        return sum(
            base.log_prob(z.index_select(-1, getattr(self, f"columns{j}")))
            for j, base in enumerate(self.bases)
        )

    def rsample(self, shape: tuple[int, ...] = ()) -> Tensor:
        parts = [base.rsample(shape) for base in self.bases]
        return torch.cat(parts, -1).index_select(-1, self.restore)
