r"""Circular splines: flows on the circle and on products of circles and lines.

An angle lives on the circle :math:`S^1`, read here as the interval :math:`[-\pi, \pi)` with
its two ends glued. A flow on it must map the circle to itself, with a density that is
continuous across the seam at :math:`\pm\pi`. :class:`CircularRQSTransformer` is the
circular spline of Rezende et al. (2020): a monotone rational-quadratic spline on
:math:`[-\pi, \pi]` with its end knots pinned at :math:`(-\pi, -\pi)` and :math:`(\pi, \pi)`
and one derivative shared by both ends, then a learned rotation mod :math:`2\pi`.
:class:`MixedTransformer` runs different transformers on different features of one layer,
and :class:`CircularSplineCoupling` is the coupling layer for data with angle and real
columns: circular splines on the angles, the spline with an affine map of NSF on the real
ones, and a conditioner that sees each angle as :math:`(\cos\theta, \sin\theta)`.
:class:`CircularSplineAutoregressive` is its autoregressive counterpart, with a MADE that
reads each angle as that pair through :class:`AngleEmbedding`.

References:
    Rezende, Papamakarios, Racanière, Albergo, Kanwar, Shanahan, Cranmer, "Normalizing
    Flows on Tori and Spheres", 2020, arXiv:2002.02428.
    Durkan, Bekasov, Murray, Papamakarios, "Neural Spline Flows", 2019, arXiv:1906.04032.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import constraints
from torch.nn.utils import parametrize

from torchnf.core.registry import register
from torchnf.functional.splines import rqs_forward, rqs_inverse, rqs_knots
from torchnf.layers.autoregressive import MaskedAutoregressive
from torchnf.layers.coupling import Coupling, checkerboard_mask
from torchnf.layers.linear import ActNorm
from torchnf.layers.splines import RQSTransformer
from torchnf.layers.transformers import Transformer
from torchnf.nets.made import MADE
from torchnf.nets.mlp import MLP


def wrap_angle(x: Tensor) -> Tensor:
    r"""``x`` mod :math:`2\pi`, into :math:`[-\pi, \pi)`: :math:`x - 2\pi
    \lfloor (x + \pi) / 2\pi \rfloor`.

    Angles already in :math:`[-\pi, \pi)` come back unchanged, bit for bit (the floor is 0);
    a result rounded onto :math:`\pi` moves to :math:`-\pi`, and one rounded below
    :math:`-\pi` is clamped. The derivative is 1 everywhere.

    Example:
        >>> wrap_angle(torch.tensor([0.5, 4.0, -4.0]))
        tensor([ 0.5000, -2.2832,  2.2832])
    """
    y = x - 2 * math.pi * torch.floor((x + math.pi) / (2 * math.pi))
    return torch.where(y >= math.pi, y - 2 * math.pi, y).clamp(min=-math.pi)


def circular_columns(circular: Sequence[int] | None, input_size: int) -> list[int]:
    """The angle columns ``circular`` checked against ``input_size``, sorted (``None``: all).

    Example:
        >>> circular_columns([2, 0], 3), circular_columns(None, 2)
        ([0, 2], [0, 1])
    """
    if circular is None:
        return list(range(input_size))
    columns = list(circular) if isinstance(circular, Sequence) else None
    if (
        columns is None
        or any(isinstance(c, bool) or not isinstance(c, int) for c in columns)
        or len(set(columns)) != len(columns)
        or any(not 0 <= c < input_size for c in columns)
    ):
        raise ValueError(
            f"expected circular as distinct column indices in [0, {input_size}), got {circular!r}"
        )
    return sorted(columns)


def torus_constraint(input_size: int, circular: Sequence[int]) -> constraints.Constraint:
    r"""The support :math:`[-\pi, \pi]` on the ``circular`` columns, the real line elsewhere."""
    angle = constraints.interval(-math.pi, math.pi)
    parts = [angle if i in circular else constraints.real for i in range(input_size)]
    return constraints.cat(parts, dim=-1, lengths=[1] * input_size)


def check_angles(x: Tensor | np.ndarray, circular: Sequence[int], chunk: int = 65536) -> None:
    r"""Refuse data whose ``circular`` columns leave :math:`[-\pi, \pi)`, naming the column.

    Angles must be given in radians in :math:`[-\pi, \pi)` (wrap them first, e.g.
    ``torch.remainder(x + pi, 2 pi) - pi``); a circular flow would otherwise read them mod
    :math:`2\pi` silently. ``x`` is ``(N, D)``, a tensor or a (memory-mapped) array, read in
    blocks of ``chunk`` rows.

    Example:
        >>> check_angles(torch.tensor([[0.0, 9.0], [3.0, -9.0]]), [0])
        >>> check_angles(torch.tensor([[0.0, 9.0], [4.0, -9.0]]), [0])
        Traceback (most recent call last):
        ...
        ValueError: column 0 is an angle but row 1 holds 4.0; expected radians in [-pi, pi)
    """
    for start in range(0, len(x), chunk):
        rows = torch.as_tensor(np.asarray(x[start : start + chunk]))
        angles = rows[:, list(circular)].double()
        bad = ~((angles >= -math.pi) & (angles < math.pi))
        if bad.any():
            row, k = (int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"column {circular[k]} is an angle but row {start + row} holds "
                f"{float(angles[row, k])}; expected radians in [-pi, pi)"
            )


class CircularRQSTransformer(Transformer):
    r"""Circular spline on :math:`[-\pi, \pi)`:
    :math:`y_i = f(x_i; \theta_i) = \mathrm{wrap}(\mathrm{RQS}(\mathrm{wrap}(x_i)) + \phi_i)`.

    :math:`\mathrm{RQS}` is a monotone rational-quadratic spline on :math:`[-\pi, \pi]`
    (:func:`~torchnf.functional.splines.rqs_knots` with ``periodic=True``) whose end knots are
    pinned at :math:`(-\pi, -\pi)` and :math:`(\pi, \pi)` and whose derivatives at the two ends
    are one learned value, so it is a diffeomorphism of the circle with a continuous density;
    :math:`\phi_i` is a learned rotation, applied mod :math:`2\pi`
    (:func:`wrap_angle`), so the point :math:`\pm\pi` is not fixed. The map is defined on
    every real input by wrapping it first (an angle is read mod :math:`2\pi`), and maps
    :math:`[-\pi, \pi)` onto itself. :math:`\log|dy/dx| = \log \mathrm{RQS}'(x)`, the same at
    :math:`-\pi` and :math:`\pi`. The round trip is exact mod :math:`2\pi`: an input within
    rounding of the seam may come back as its image on the other side.

    ``params[..., i, :]`` holds ``n_bins`` unnormalized widths, ``n_bins`` unnormalized heights,
    ``n_bins - 1`` unconstrained interior derivatives, the boundary derivative and the
    rotation: ``params_per_feature = 3 n_bins + 1`` (that of :class:`RQSTransformer` with its
    affine map, so the two mix in one layer without padding). All-zero parameters give the
    identity. Shapes as every :class:`~torchnf.layers.transformers.Transformer`: ``x``
    ``(*batch, D)``, ``params`` ``(*batch, D, 3 n_bins + 1)``, elementwise ``log_det``
    ``(*batch, D)``.

    Arguments:
        n_bins: number of bins ``K``.
        min_bin_width: smallest bin width, as a fraction of :math:`2\pi`.
        min_bin_height: smallest bin height, as a fraction of :math:`2\pi`.
        min_derivative: smallest derivative at a knot.

    References:
        Rezende et al., "Normalizing Flows on Tori and Spheres", 2020, arXiv:2002.02428.

    Example:
        >>> tau = CircularRQSTransformer(n_bins=4)
        >>> params = torch.zeros(3, 1, tau.params_per_feature)
        >>> params[..., -1] = 1.0  # a rotation by 1 radian
        >>> y, log_det = tau(torch.tensor([[-3.0], [0.0], [3.0]]), params)
        >>> y.squeeze(-1), bool(log_det.abs().max() < 1e-6)
        (tensor([-2.0000,  1.0000, -2.2832]), True)
    """

    def __init__(
        self,
        n_bins: int = 8,
        min_bin_width: float = 1e-3,
        min_bin_height: float = 1e-3,
        min_derivative: float = 1e-3,
    ) -> None:
        super().__init__()
        if n_bins < 1:
            raise ValueError(f"expected n_bins >= 1, got {n_bins}")
        self.n_bins = n_bins
        self.minimums = (min_bin_width, min_bin_height, min_derivative)
        self.params_per_feature = 3 * n_bins + 1

    def _split(self, params: Tensor) -> tuple[tuple[Tensor, Tensor, Tensor], Tensor]:
        """The knots and the rotation ``(*batch, D)``."""
        k = self.n_bins
        widths, heights, derivatives, rotation = params.split([k, k, k, 1], dim=-1)
        knots = rqs_knots(widths, heights, derivatives, math.pi, *self.minimums, periodic=True)
        return knots, rotation.squeeze(-1)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        knots, rotation = self._split(params)
        u, log_det = rqs_forward(wrap_angle(x), *knots)
        return wrap_angle(u + rotation), log_det

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        knots, rotation = self._split(params)
        return rqs_inverse(wrap_angle(y - rotation), *knots)

    def extra_repr(self) -> str:
        return f"n_bins={self.n_bins}"


class MixedTransformer(Transformer):
    r"""Different transformers on different features: :math:`y_i = \tau_{g(i)}(x_i;
    \theta_i)`, where feature ``i`` belongs to group :math:`g(i)`.

    ``groups[j]`` lists the features (positions in the last dimension of ``x``) that
    ``transformers[j]`` handles; the groups partition ``range(D)``. ``params_per_feature`` is
    the largest of the transformers'; each reads the first ``t.params_per_feature`` entries of
    its features' parameters (the rest are unused). Shapes as every
    :class:`~torchnf.layers.transformers.Transformer`, with ``D`` fixed by ``groups``.

    Arguments:
        transformers: the elementwise transformers.
        groups: one list of feature positions per transformer.

    References:
        Rezende et al., "Normalizing Flows on Tori and Spheres", 2020, arXiv:2002.02428
        (circular and real features in one coupling layer).

    Example:
        >>> tau = MixedTransformer([CircularRQSTransformer(4), RQSTransformer(4)], [[1], [0]])
        >>> x = torch.tensor([[10.0, 3.0]])
        >>> y, log_det = tau(x, torch.zeros(1, 2, tau.params_per_feature))
        >>> y, log_det.shape  # the identity, at zero parameters
        (tensor([[10.,  3.]]), torch.Size([1, 2]))
    """

    def __init__(self, transformers: Sequence[Transformer], groups: Sequence[Sequence[int]]):
        super().__init__()
        flat = sorted(i for group in groups for i in group)
        if len(transformers) != len(groups) or flat != list(range(len(flat))) or not flat:
            raise ValueError(
                "expected one group per transformer, the groups a partition of range(D), got "
                f"{len(transformers)} transformers and groups {[list(g) for g in groups]}"
            )
        self.transformers = nn.ModuleList(transformers)
        self.params_per_feature = max(t.params_per_feature for t in transformers)
        self.n_features = len(flat)
        for j, group in enumerate(groups):
            self.register_buffer(f"group{j}", torch.tensor(list(group)), persistent=False)
        order = torch.tensor([i for group in groups for i in group])
        self.register_buffer("restore", torch.argsort(order), persistent=False)

    def _apply_groups(self, name: str, v: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        if v.shape[-1] != self.n_features:
            raise ValueError(f"expected {self.n_features} features, got {v.shape[-1]}")
        outs, log_dets = [], []
        for j, tau in enumerate(self.transformers):
            index = getattr(self, f"group{j}")
            p = params.index_select(-2, index)[..., : tau.params_per_feature]
            out, log_det = getattr(tau, name)(v.index_select(-1, index), p)
            outs.append(out)
            log_dets.append(log_det.expand_as(out))
        return (
            torch.cat(outs, -1).index_select(-1, self.restore),
            torch.cat(log_dets, -1).index_select(-1, self.restore),
        )

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._apply_groups("forward", x, params)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._apply_groups("inverse", y, params)


def torus_transformer(
    features: Sequence[int], circular: Sequence[int], n_bins: int, tail_bound: float
) -> Transformer:
    r"""The transformer of ``features`` (its ``D`` columns, in this order):
    :class:`CircularRQSTransformer` on those in ``circular``, NSF's :class:`RQSTransformer`
    (an affine map, then a spline on ``[-tail_bound, tail_bound]``) on the others, in a
    :class:`MixedTransformer` when there are both.

    Example:
        >>> torus_transformer([0, 2], circular=[2], n_bins=4, tail_bound=5.0).transformers
        ModuleList(
          (0): CircularRQSTransformer(n_bins=4)
          (1): RQSTransformer(n_bins=4, tail_bound=5.0, affine=True)
        )
    """
    groups = [
        [j for j, i in enumerate(features) if i in circular],
        [j for j, i in enumerate(features) if i not in circular],
    ]
    candidates = [CircularRQSTransformer(n_bins), RQSTransformer(n_bins, tail_bound)]
    used = [(t, g) for t, g in zip(candidates, groups, strict=True) if g]
    return used[0][0] if len(used) == 1 else MixedTransformer(*zip(*used, strict=True))


class AngleEmbedding(nn.Module):
    r"""``e(x)``: each angle :math:`x_i` as the pair :math:`(\cos x_i, \sin x_i)`, each real
    feature as itself, feature by feature in the order of ``x``.

    The input map of the MADE of :class:`CircularSplineAutoregressive`: column ``j`` of the
    output reads feature ``features[j]`` alone (``features`` is nondecreasing), and is
    :math:`2\pi`-periodic in it where that feature is an angle. Shapes: ``x``
    ``(*batch, input_size)``, output ``(*batch, input_size + len(circular))``.

    Arguments:
        input_size: number of features ``D``.
        circular: the angle columns.

    Example:
        >>> e = AngleEmbedding(2, circular=[0])
        >>> e(torch.tensor([[0.0, 5.0]])), e.features
        (tensor([[1., 0., 5.]]), [0, 0, 1])
    """

    def __init__(self, input_size: int, circular: Sequence[int]) -> None:
        super().__init__()
        circular = circular_columns(circular, input_size)
        #: The feature each output column reads.
        self.features = [i for i in range(input_size) for _ in range(2 if i in circular else 1)]
        # Columns of stack([x, cos x, sin x], -1).flatten(-2): 3 i for a real x_i,
        # 3 i + 1 and 3 i + 2 for an angle.
        columns = [
            3 * i + k for i in range(input_size) for k in ((1, 2) if i in circular else (0,))
        ]
        self.register_buffer("columns", torch.tensor(columns), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([x, x.cos(), x.sin()], -1).flatten(-2).index_select(-1, self.columns)


class AngleEmbeddingMLP(nn.Module):
    r"""Conditioner ``params = MLP([x_{real}, \cos x_{angle}, \sin x_{angle}, c])``.

    Each angle enters as :math:`(\cos\theta, \sin\theta)`, so the conditioner, and with it
    the flow's density, is continuous on the circle (Rezende et al., 2020). The
    :class:`~torchnf.nets.MLP` has a zero-initialized last layer.

    Shapes: ``x`` ``(*batch, input_size)``, ``context`` ``(*batch, context_size)``, output
    ``(*batch, output_size)``.

    Arguments:
        input_size: number of input features.
        output_size: number of outputs.
        circular: positions of the angle features in ``x``.
        hidden_sizes: widths of the MLP's hidden layers.
        context_size: size of the context (0 for none).

    References:
        Rezende et al., "Normalizing Flows on Tori and Spheres", 2020, arXiv:2002.02428.

    Example:
        >>> net = AngleEmbeddingMLP(2, 3, circular=[1], hidden_sizes=(8,))
        >>> net(torch.randn(5, 2)).shape
        torch.Size([5, 3])
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        circular: Sequence[int],
        hidden_sizes: Sequence[int] = (64, 64),
        context_size: int = 0,
    ) -> None:
        super().__init__()
        angles = torch.zeros(input_size, dtype=torch.bool)
        angles[list(circular)] = True
        self.register_buffer("angles", torch.nonzero(angles).squeeze(-1), persistent=False)
        self.register_buffer("reals", torch.nonzero(~angles).squeeze(-1), persistent=False)
        self.context_size = context_size
        self.mlp = MLP(input_size + len(circular), output_size, hidden_sizes, context_size)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        theta = x.index_select(-1, self.angles)
        features = torch.cat([x.index_select(-1, self.reals), theta.cos(), theta.sin()], -1)
        return self.mlp(features, context)


@register(
    "layer",
    example=lambda context_size: CircularSplineCoupling(
        4, circular=[0, 1, 3], hidden_sizes=(8,), context_size=context_size, n_bins=4
    ),
    conditional=True,
)
class CircularSplineCoupling(Coupling):
    r"""Spline coupling on angles and reals ``y = f(x | c)``:
    :math:`y_{\bar m} = \tau(x_{\bar m}; g(e(x_m), c))`.

    A :class:`~torchnf.layers.coupling.Coupling` whose transformed angle features go through
    a :class:`CircularRQSTransformer` and whose transformed real features go through the
    :class:`~torchnf.layers.RQSTransformer` of NSF (an affine map, then a spline on
    ``[-tail_bound, tail_bound]``), with an :class:`AngleEmbeddingMLP` conditioner:
    :math:`e` embeds each kept angle as :math:`(\cos\theta, \sin\theta)`. So the layer maps
    :math:`T^k \times \mathbb{R}^{D-k}` to itself, with a Jacobian continuous across every
    seam; :math:`\log|\det| = \sum_{i \notin m} \log \tau'(x_i)`. The identity at
    initialization. Angle columns are read mod :math:`2\pi` and returned in
    :math:`[-\pi, \pi)`; ``domain`` and ``codomain`` say :math:`[-\pi, \pi]` on them.

    Shapes: ``x`` and ``y`` are ``(*batch, D)``, ``context`` is ``(*batch, context_size)``,
    ``log_det`` is ``(*batch,)``.

    Arguments:
        input_size: number of features ``D >= 2``.
        circular: the angle columns (the others are real).
        mask: bool ``(D,)`` of kept features; default alternating, starting at ``parity``.
        parity: 0 keeps even features, 1 odd ones.
        hidden_sizes: widths of the conditioner MLP.
        context_size: size of the context (0 for none).
        n_bins: number of bins of every spline.
        tail_bound: half-width of the real features' spline interval.

    References:
        Rezende et al., "Normalizing Flows on Tori and Spheres", 2020, arXiv:2002.02428.
        Durkan et al., "Neural Spline Flows", 2019, arXiv:1906.04032.

    Example:
        >>> layer = CircularSplineCoupling(3, circular=[0, 1], hidden_sizes=(16,))
        >>> x = torch.tensor([[3.0, -3.0, 100.0]])
        >>> y, log_det = layer(x)
        >>> torch.equal(y, x), log_det.tolist()
        (True, [0.0])
    """

    def __init__(
        self,
        input_size: int,
        circular: Sequence[int],
        mask: Tensor | None = None,
        parity: int = 0,
        hidden_sizes: Sequence[int] = (64, 64),
        context_size: int = 0,
        n_bins: int = 8,
        tail_bound: float = 5.0,
    ) -> None:
        if input_size < 2:
            raise ValueError(f"a coupling layer needs input_size >= 2, got {input_size}")
        circular = circular_columns(circular, input_size)
        mask = checkerboard_mask(input_size, parity) if mask is None else torch.as_tensor(mask)
        kept = torch.nonzero(mask).squeeze(-1).tolist()
        transformed = torch.nonzero(~mask).squeeze(-1).tolist()
        transformer = torus_transformer(transformed, circular, n_bins, tail_bound)
        conditioner = AngleEmbeddingMLP(
            len(kept),
            len(transformed) * transformer.params_per_feature,
            [j for j, i in enumerate(kept) if i in circular],
            hidden_sizes,
            context_size,
        )
        super().__init__(transformer, conditioner, mask)
        self.circular = circular
        self.domain = self.codomain = torus_constraint(input_size, circular)


@register(
    "layer",
    example=lambda context_size: CircularSplineAutoregressive(
        4, circular=[0, 1, 3], hidden_sizes=(8,), context_size=context_size, n_bins=4
    ),
    conditional=True,
)
class CircularSplineAutoregressive(MaskedAutoregressive):
    r"""Autoregressive spline on angles and reals ``y = f(x | c)``:
    :math:`y_i = \tau_i(x_i; g_i(e(x)_{<i}, c))`.

    A :class:`~torchnf.layers.autoregressive.MaskedAutoregressive` layer whose transformer is
    that of :class:`CircularSplineCoupling` (:func:`torus_transformer`: a
    :class:`CircularRQSTransformer` on each angle, NSF's :class:`~torchnf.layers.RQSTransformer`
    on each real feature) and whose conditioner is a :class:`~torchnf.nets.made.MADE` reading
    :math:`e(x)` (:class:`AngleEmbedding`): angle :math:`x_j` enters as the two inputs
    :math:`(\cos x_j, \sin x_j)`, both with the degree of feature ``j``, so the parameters of
    feature ``i`` depend on :math:`x_{<i}` alone and are continuous and periodic in every
    angle among them. The Jacobian is lower triangular; :math:`\log|\det| = \sum_i \log
    \tau_i'(x_i)`. The identity at initialization. The forward (normalizing) direction is one
    MADE pass; the inverse ``D`` passes, feature by feature. Angle columns are read mod
    :math:`2\pi` and returned in :math:`[-\pi, \pi)`; ``domain`` and ``codomain`` say
    :math:`[-\pi, \pi]` on them. The order is always ``0 .. D - 1`` (an input-mapped MADE
    has no :meth:`~torchnf.nets.made.MADE.reverse_`); :class:`~torchnf.models.CircularNSF`
    reverses the features between layers with :class:`~torchnf.layers.Reverse` instead.

    Shapes: ``x`` and ``y`` are ``(*batch, D)``, ``context`` is ``(*batch, context_size)``,
    ``log_det`` is ``(*batch,)``.

    Arguments:
        input_size: number of features ``D >= 1``.
        circular: the angle columns (the others are real).
        hidden_sizes: widths of the MADE's hidden layers.
        context_size: size of the context (0 for none).
        n_bins: number of bins of every spline.
        tail_bound: half-width of the real features' spline interval.

    References:
        Rezende et al., "Normalizing Flows on Tori and Spheres", 2020, arXiv:2002.02428.
        Durkan et al., "Neural Spline Flows", 2019, arXiv:1906.04032.

    Example:
        >>> layer = CircularSplineAutoregressive(3, circular=[0, 1], hidden_sizes=(16,))
        >>> x = torch.tensor([[3.0, -3.0, 100.0]])
        >>> y, log_det = layer(x)
        >>> torch.equal(y, x), log_det.tolist()
        (True, [0.0])
    """

    def __init__(
        self,
        input_size: int,
        circular: Sequence[int],
        hidden_sizes: Sequence[int] = (64, 64),
        context_size: int = 0,
        n_bins: int = 8,
        tail_bound: float = 5.0,
    ) -> None:
        circular = circular_columns(circular, input_size)
        transformer = torus_transformer(range(input_size), circular, n_bins, tail_bound)
        embedding = AngleEmbedding(input_size, circular)
        made = MADE(
            input_size,
            transformer.params_per_feature,
            hidden_sizes,
            context_size,
            input_map=embedding,
            input_features=embedding.features,
        )
        super().__init__(transformer, made)
        self.circular = circular
        self.domain = self.codomain = torus_constraint(input_size, circular)

    def _transformer_of(self, i: int) -> Transformer:
        """Feature ``i``'s transformer."""
        tau = self.transformer
        if isinstance(tau, MixedTransformer):
            kind = CircularRQSTransformer if i in self.circular else RQSTransformer
            return next(t for t in tau.transformers if isinstance(t, kind))
        return tau

    def _invert_feature(self, i: int, y_i: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        # Feature i's own transformer: a MixedTransformer dispatches by position among all D
        # features, not one.
        tau = self._transformer_of(i)
        return tau.inverse(y_i, params[..., : tau.params_per_feature].unsqueeze(-2))


class _Masked(nn.Module):
    """Parametrization ``v -> v * mask``: the masked entries are held at 0."""

    def __init__(self, mask: Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, v: Tensor) -> Tensor:
        return v * self.mask


@register("layer", example=lambda context_size: CircularActNorm(3, circular=[1]))
class CircularActNorm(ActNorm):
    r""":class:`~torchnf.layers.ActNorm` on the real columns, the identity on the angles:
    ``y = f(x)`` with :math:`y_i = ((x_i - m_i) / s_i) e^{-a_i} - b_i` for a real column and
    :math:`y_i = x_i` for an angle.

    A rescaling or shift of an angle would break its periodicity (the image of
    :math:`[-\pi, \pi)` would no longer be the circle), so on the ``circular`` columns
    :meth:`initialize` leaves ``m = 0``, ``s = 1`` and the learned ``a``, ``b`` are held at 0
    (a ``torch.nn.utils.parametrize`` mask). :math:`\log|\det| = -\sum_{i \, real}
    (\log s_i + a_i)`. Shapes: ``x``, ``y`` ``(*batch, D)``, ``log_det`` ``(*batch,)``.

    Arguments:
        input_size: number of features ``D``.
        circular: the angle columns.

    References:
        Kingma, Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", 2018,
        arXiv:1807.03039 (ActNorm).

    Example:
        >>> layer = CircularActNorm(2, circular=[0])
        >>> x = torch.stack([torch.rand(500) * 6 - 3, 100 + 10 * torch.randn(500)], -1)
        >>> y = layer.initialize(x)
        >>> torch.equal(y[:, 0], x[:, 0]), round(float(y[:, 1].std()), 2)
        (True, 1.0)
    """

    def __init__(self, input_size: int, circular: Sequence[int]) -> None:
        super().__init__(input_size)
        self.circular = circular_columns(circular, input_size)
        real = torch.ones(input_size)
        real[self.circular] = 0.0
        for name in ("loc", "log_scale"):
            parametrize.register_parametrization(self, name, _Masked(real))
        self.domain = self.codomain = torus_constraint(input_size, self.circular)

    def _initialize(self, x: Tensor, context: Tensor | None) -> None:
        super()._initialize(x, context)
        self.center[self.circular] = 0.0
        self.log_inv_scale[self.circular] = 0.0
        for name in ("loc", "log_scale"):
            getattr(self.parametrizations, name).original.zero_()
