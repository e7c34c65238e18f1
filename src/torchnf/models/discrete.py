r"""Flows on data with integer and categorical columns, with their discrete likelihood bound.

A point ``x`` has continuous columns ``x_c``, integer columns ``k`` and categorical columns.
Each categorical column of ``K`` categories is *encoded* as ``B = ceil(log2 K)`` bit columns
(binary argmax dequantization, Hoogeboom et al., 2021, arXiv:2102.05379, section 4: the
category is read back from the signs of a ``B``-dimensional continuous vector, here the bins
``[0, 1)`` and ``[1, 2)`` of each bit), so every discrete column of the encoded point ``e(x)``
is an integer. The flow is a density ``p`` on the encoded columns made continuous,
``v = e(x) + u`` with ``u`` in ``[0, 1)^d`` on the ``d`` discrete ones, and the likelihood of
the mixed point (a probability for the discrete columns times a density for the continuous
ones) is bounded by the ELBO (Flow++, Ho et al., 2019, arXiv:1902.00275):

.. math::
    \log P(x) = \log \int_{[0,1)^d} p(e(x) + u)\,du
    \ge E_{q(u | x)}[\log p(e(x) + u) - \log q(u | x)],

with ``q`` uniform (uniform dequantization, the bound of Theis et al., 2016,
arXiv:1511.01844) or a learned conditional flow (variational dequantization,
:class:`~torchnf.layers.VariationalDequantization`). With ``S`` draws ``u_s ~ q``, the
importance-weighted estimate :math:`\log \frac1S \sum_s p(e(x) + u_s) / q(u_s | x)` is a
tighter bound, exact as ``S`` grows (Burda et al., 2016, arXiv:1509.00519). A category code
``>= K`` (``K`` not a power of two) that a sample lands on has its top bit cleared, which only
adds mass to valid categories: the bounds stay bounds for the sampler's distribution.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from torchnf.core.bijector import Bijector
from torchnf.core.chain import Chain
from torchnf.core.flow import Flow
from torchnf.core.registry import get, register
from torchnf.layers.dequantization import VariationalDequantization

DEQUANTIZERS = ("uniform", "variational")


def check_columns(
    n_columns: int, discrete: Sequence[int] = (), categorical: Sequence[int] = ()
) -> None:
    """Refuse column indices out of ``[0, n_columns)``, repeated, or both discrete and
    categorical, with a one-line ``ValueError``.

    Example:
        >>> check_columns(4, [0, 3], [1])
        >>> check_columns(4, [0, 4])
        Traceback (most recent call last):
        ...
        ValueError: expected discrete column indices in [0, 4) (the data's columns), got 4
    """
    for name, columns in (("discrete", discrete), ("categorical", categorical)):
        for column in columns:
            if not 0 <= column < n_columns:
                raise ValueError(
                    f"expected {name} column indices in [0, {n_columns}) (the data's "
                    f"columns), got {column}"
                )
        if len(set(columns)) != len(columns):
            raise ValueError(f"expected distinct {name} columns, got {list(columns)}")
    both = sorted(set(discrete) & set(categorical))
    if both:
        raise ValueError(f"columns {both} are both discrete and categorical; name each once")


def check_integers(x: Tensor, columns: Sequence[int], name: str = "discrete") -> None:
    """Refuse a non-integer (or non-finite) value in ``columns`` of the ``(N, D)`` rows ``x``,
    naming its column, row and value; ``name`` says what the columns are.

    Example:
        >>> check_integers(torch.tensor([[1.0, 0.5], [2.0, 1.0]]), [1])
        Traceback (most recent call last):
        ...
        ValueError: discrete column 1 holds 0.5 at row 0; expected integer values
    """
    if not columns:
        return
    values = x[:, list(columns)]
    bad = ~torch.isfinite(values) | (values != values.floor())
    if name == "categorical":
        bad |= values < 0
    if bool(bad.any()):
        row, j = (int(i) for i in bad.nonzero()[0])
        expected = "integers >= 0 (category codes)" if name == "categorical" else "integer values"
        raise ValueError(
            f"{name} column {columns[j]} holds {float(values[row, j])} at row {row}; "
            f"expected {expected}"
        )


@register(
    "model",
    example=lambda context_size: Dequantized(
        2,
        "RealNVP",
        {"n_layers": 2, "hidden_sizes": [4]},
        discrete_columns=[0],
        categorical_columns=[1],
        n_categories=[3],
        hidden_sizes=[4],
        n_bins=4,
    ),
)
class Dequantized(Flow):
    r"""A flow ``z = f(v)`` on dequantized mixed data, with its discrete likelihood bound.

    :math:`f = g \circ h`: ``h`` is the identity (``dequantizer="uniform"``) or a
    :class:`~torchnf.layers.VariationalDequantization` on the discrete columns, ``g`` the
    registered model ``model`` built with ``model_config`` for the encoded points. So
    ``log_prob(v)`` at ``v = e(x) + \epsilon``, ``\epsilon ~ U[0, 1)^d`` on the discrete
    columns (:attr:`dequantize_columns`), is the ELBO's integrand
    :math:`\log p(e(x) + u) - \log q(u | x)`, ``u = h``'s offset: :func:`~torchnf.fit`
    trains ``p`` and ``q`` jointly by adding that noise (its ``dequantize`` default takes
    :attr:`dequantize_columns`), and checkpoints, the command and ``evaluate`` see a plain
    flow. :meth:`log_prob_discrete` estimates the bound on raw points (see the module).

    Shapes: raw points ``x`` are ``(N, D)`` (``(N, *input_size)`` for a shape); encoded and
    continuous points ``v``, the flow's events, are ``(N, *event_shape)``: the raw shape with
    each categorical column replaced by its ``ceil(log2 K)`` bits (vector data only).

    Arguments:
        input_size: number of raw columns ``D``, or the shape of one point (``(C, H, W)`` for
            images).
        model: name of a registered unconditional model (case-insensitive), e.g. ``NSF`` or
            ``ImageFlow``.
        model_config: its other arguments (``input_size``/``input_shape`` is filled in).
        discrete_columns: integer columns (indices into the flattened point); ``None``: every
            column that is not categorical.
        categorical_columns: categorical columns, holding codes ``0 .. K - 1``.
        n_categories: ``K >= 2`` of each categorical column.
        dequantizer: ``"uniform"`` or ``"variational"``.
        hidden_sizes: widths of the variational dequantizer's MADEs.
        n_layers: its autoregressive spline layers.
        n_bins: its spline bins.

    References:
        Flow++ (Ho et al., 2019, arXiv:1902.00275); Argmax Flows and Multinomial Diffusion
        (Hoogeboom et al., 2021, arXiv:2102.05379).

    Example:
        >>> flow = Dequantized(3, "RealNVP", {"hidden_sizes": [8]}, discrete_columns=[0],
        ...                    categorical_columns=[2], n_categories=[3])
        >>> x = torch.tensor([[2.0, 0.3, 1.0], [0.0, -1.2, 2.0]])
        >>> flow.encode(x)  # column 2's codes 1 and 2 as bits (low bit first)
        tensor([[ 2.0000,  0.3000,  1.0000,  0.0000],
                [ 0.0000, -1.2000,  0.0000,  1.0000]])
        >>> flow.log_prob_discrete(x, n_samples=4).shape, flow.sample_discrete(5).shape
        (torch.Size([2]), torch.Size([5, 3]))
    """

    def __init__(
        self,
        input_size: int | Sequence[int],
        model: str = "NSF",
        model_config: dict[str, Any] | None = None,
        discrete_columns: Sequence[int] | None = None,
        categorical_columns: Sequence[int] = (),
        n_categories: Sequence[int] = (),
        dequantizer: Literal["uniform", "variational"] = "variational",
        hidden_sizes: Sequence[int] = (64,),
        n_layers: int = 2,
        n_bins: int = 8,
    ) -> None:
        shape = (int(input_size),) if isinstance(input_size, int) else tuple(input_size)
        shape = tuple(int(s) for s in shape)
        size = math.prod(shape)
        categorical = [int(j) for j in categorical_columns]
        if dequantizer not in DEQUANTIZERS:
            raise ValueError(f"expected dequantizer in {DEQUANTIZERS}, got {dequantizer!r}")
        if len(n_categories) != len(categorical) or min(n_categories, default=2) < 2:
            raise ValueError(
                f"expected one n_categories >= 2 per categorical column {categorical}, got "
                f"{list(n_categories)}"
            )
        if categorical and len(shape) != 1:
            raise ValueError(f"categorical columns need vector points, got shape {shape}")
        discrete = (
            [j for j in range(size) if j not in categorical]
            if discrete_columns is None
            else [int(j) for j in discrete_columns]
        )
        check_columns(size, discrete, categorical)
        bits = {j: math.ceil(math.log2(k)) for j, k in zip(categorical, n_categories, strict=True)}
        starts, width = [], 0  # where each raw column starts among the encoded ones
        for j in range(size):
            starts.append(width)
            width += bits.get(j, 1)
        encoded = (width,) if len(shape) == 1 else shape
        body = _build(model, model_config, encoded)
        columns = [starts[j] for j in discrete] + [
            starts[j] + b for j in categorical for b in range(bits[j])
        ]
        layers: list[Bijector] = [body.bijector]
        if dequantizer == "variational" and columns:
            layers.insert(
                0, VariationalDequantization(encoded, columns, hidden_sizes, n_layers, n_bins)
            )
        super().__init__(Chain(*layers), body.base)
        self.domain = body.domain
        #: Columns of the encoded points that get the dequantization noise.
        self.dequantize_columns: list[int] = sorted(columns)
        self.raw_shape = shape
        self.discrete_columns = sorted(discrete)
        #: Each categorical column's first encoded column, number of bits and of categories.
        self.categories = {
            j: (starts[j], bits[j], int(k)) for j, k in zip(categorical, n_categories, strict=True)
        }

    def encode(self, x: Tensor) -> Tensor:
        """Raw points ``(N, *raw_shape)`` to encoded ones ``(N, *event_shape)``: category codes
        to bits (low bit first), after checking that the discrete and categorical columns hold
        integers and the codes are below ``K`` (``ValueError`` naming column, row, value)."""
        flat = x.reshape(len(x), -1)
        if flat.shape[1] != math.prod(self.raw_shape):
            raise ValueError(
                f"expected raw points of shape (N, {', '.join(map(str, self.raw_shape))}), "
                f"got {tuple(x.shape)}"
            )
        check_integers(flat, self.discrete_columns)
        check_integers(flat, list(self.categories), "categorical")
        parts, last = [], 0
        for j, (_, n_bits, k) in sorted(self.categories.items()):
            codes = flat[:, j]
            if bool((codes >= k).any()):
                row = int((codes >= k).nonzero()[0])
                raise ValueError(
                    f"categorical column {j} holds {float(codes[row])} at row {row}; expected "
                    f"codes 0 .. {k - 1} (its n_categories is {k})"
                )
            powers = 2 ** torch.arange(n_bits, device=x.device)
            parts += [flat[:, last:j], ((codes.long()[:, None] // powers) % 2).to(flat.dtype)]
            last = j + 1
        encoded = torch.cat([*parts, flat[:, last:]], dim=1)
        return encoded.reshape(len(x), *self.event_shape)

    def decode(self, v: Tensor) -> Tensor:
        """Continuous encoded points ``(N, *event_shape)`` to raw ones: discrete columns
        floored, categories read from their bits' bins (a code ``>= K`` loses its top bit)."""
        flat = v.reshape(len(v), -1)
        columns = torch.tensor(self.dequantize_columns, device=v.device, dtype=torch.long)
        floored = flat.index_copy(1, columns, flat.index_select(1, columns).floor())
        parts, last = [], 0
        for start, n_bits, k in sorted(self.categories.values()):
            bits = floored[:, start : start + n_bits].clamp(0, 1)
            code = (bits * 2 ** torch.arange(n_bits, device=v.device)).sum(1, keepdim=True)
            code = torch.where(code >= k, code - 2 ** (n_bits - 1), code)
            parts += [floored[:, last:start], code]
            last = start + n_bits
        return torch.cat([*parts, floored[:, last:]], dim=1).reshape(len(v), *self.raw_shape)

    def _noise(self, v: Tensor, generator: torch.Generator | None) -> Tensor:
        """``v`` plus ``U[0, 1)`` noise on the :attr:`dequantize_columns`."""
        flat = v.reshape(len(v), -1)
        columns = torch.tensor(self.dequantize_columns, device=v.device, dtype=torch.long)
        noise = torch.rand((len(v), len(columns)), generator=generator, dtype=v.dtype)
        return flat.index_add(1, columns, noise.to(v.device)).reshape(v.shape)

    def log_weights(
        self, x: Tensor, n_samples: int = 1, generator: torch.Generator | None = None
    ) -> Tensor:
        r"""``(n_samples, N)`` draws of :math:`\log p(e(x) + u) - \log q(u | x)`, ``u ~ q``,
        for raw points ``x`` ``(N, *raw_shape)`` (one batch of ``n_samples * N`` points):
        their mean estimates the ELBO."""
        if n_samples < 1:
            raise ValueError(f"expected n_samples >= 1, got {n_samples}")
        v = self.encode(x)  # all draws in one batch: (n_samples * N, ...)
        v = v.expand(n_samples, *v.shape).reshape(n_samples * len(v), *v.shape[1:])
        return self.log_prob(self._noise(v, generator)).reshape(n_samples, len(x))

    def log_prob_discrete(
        self, x: Tensor, n_samples: int = 1, generator: torch.Generator | None = None
    ) -> Tensor:
        r"""Lower bound on :math:`\log P(x)` (nats, discrete columns as probabilities) of raw
        points ``(N, *raw_shape)``, shape ``(N,)``: with ``n_samples = 1`` an unbiased
        draw of the ELBO, with ``S`` the importance-weighted bound
        :math:`\log \frac1S \sum_s e^{w_s}` of :meth:`log_weights`."""
        weights = self.log_weights(x, n_samples, generator)
        return torch.logsumexp(weights, 0) - math.log(n_samples)

    @torch.no_grad()
    def sample_discrete(self, n: int | tuple[int, ...] = ()) -> Tensor:
        """Raw samples ``(n, *raw_shape)``: :meth:`decode` of the flow's samples."""
        shape = (n,) if isinstance(n, int) else tuple(n)
        v = self.sample(shape)
        return self.decode(v.reshape(-1, *self.event_shape)).reshape(*shape, *self.raw_shape)


@torch.no_grad()
def discrete_nll(
    flow: Dequantized,
    x: Tensor,
    n_samples: int = 16,
    batch_size: int = 1024,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    r"""Mean negative log-likelihood bounds of raw points ``x`` (nats per point).

    Returns ``(elbo, importance)``: :math:`-\frac1N \sum_n \frac1S \sum_s w_{ns}` (the ELBO
    bound) and :math:`-\frac1N \sum_n \log \frac1S \sum_s e^{w_{ns}}` (the tighter
    importance-weighted one, from the same ``S = n_samples`` draws
    :math:`w_{ns}` of :meth:`Dequantized.log_weights`); both are upper bounds on the exact
    discrete NLL, ``importance <= elbo``. Evaluated in eval mode, in batches.

    Example:
        >>> flow = Dequantized(2, "RealNVP", {"hidden_sizes": [8]}, dequantizer="uniform")
        >>> elbo, importance = discrete_nll(flow, torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
        >>> importance <= elbo
        True
    """
    flow.eval()
    elbo = importance = 0.0
    for start in range(0, len(x), batch_size):
        weights = flow.log_weights(x[start : start + batch_size], n_samples, generator).double()
        elbo -= float(weights.mean(0).sum())
        importance -= float((torch.logsumexp(weights, 0) - math.log(n_samples)).sum())
    return elbo / len(x), importance / len(x)


def _build(model: str, config: dict[str, Any] | None, shape: tuple[int, ...]) -> Flow:
    """The registered unconditional ``model`` for encoded points of ``shape``."""
    entry = get(model)
    config = dict(config or {})
    parameters = inspect.signature(entry.cls).parameters
    if entry.kind != "model" or entry.cls is Dequantized:
        raise ValueError(f"expected the name of a model other than Dequantized, got {model!r}")
    key = "input_size" if "input_size" in parameters else "input_shape"
    if key not in parameters or (key == "input_size" and len(shape) != 1):
        raise ValueError(f"{entry.name} cannot model points of shape {shape}")
    if key in config:
        raise ValueError(f"model_config must not set {key!r}: it is filled in")
    config[key] = shape[0] if key == "input_size" else list(shape)
    body = entry.cls(**config)
    if body.context_size:
        raise ValueError(f"expected an unconditional model, got {model!r} with context")
    return body
