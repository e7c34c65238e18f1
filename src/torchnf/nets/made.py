"""MADE: a masked MLP whose output for feature ``i`` depends only on the features before it."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchnf.nets.mlp import ACTIVATIONS
from torchnf.nets.precision import ConditionerNet


class MADE(ConditionerNet):
    r"""Masked autoencoder for distribution estimation: an autoregressive conditioner.

    Maps ``x`` of shape ``(*batch, D)`` (and ``context`` of shape ``(*batch, context_size)``)
    to parameters of shape ``(*batch, D, params_per_feature)`` such that ``out[..., i, :]``
    depends only on ``x[..., :i]`` (and on the context): the Jacobian
    :math:`\partial\, \mathrm{out}_i / \partial x_j` is zero for ``j >= i``. Hence
    ``out[..., 0, :]`` depends on the context alone.

    Each unit has a degree: input ``i`` has degree ``i + 1``; hidden units have degrees in
    ``1 .. D - 1`` (``0 .. D - 1`` with a context, degree-0 units seeing only the context) and
    connect to units of lower or equal degree; output ``i`` has degree ``i + 1`` and connects
    to hidden units of strictly lower degree. The context feeds every unit of the first hidden
    layer. With ``residual=True``, hidden layers ``k >= 1`` are residual blocks
    :math:`h \leftarrow h + W_k\, \sigma(h)` (all hidden sizes must then be equal).
    The output layer is zero-initialized, so a flow driven by a fresh ``MADE`` starts as the
    identity. The layers run in ``compute_dtype`` when set (see :mod:`torchnf.nets.precision`;
    the context's first-layer term stays in the context's dtype); the output has the input's
    dtype. The masks multiply the weights on every call (so any parameter values, trained or
    perturbed, keep the structure), in one foreach kernel for all of them.

    With an ``input_map``, the network reads ``input_map(x)`` instead of ``x``: ``M`` columns,
    column ``j`` a function of feature ``input_features[j]`` alone (an angle as the pair
    :math:`(\cos\theta, \sin\theta)`, say), with that feature's degree, so a feature may
    enter as several inputs, or none, and the autoregressive property holds unchanged.

    :meth:`reverse_` turns the order around in place: ``out[..., i, :]`` then depends only on
    ``x[..., i + 1:]``, and ``order`` lists the features from first to last in the
    autoregressive order (``D - 1`` down to ``0``). That is how a flow reverses its features
    between two MADE layers without a gather.

    Arguments:
        input_size: number of features ``D``.
        params_per_feature: number of outputs ``P`` per feature.
        hidden_sizes: widths of the hidden layers (at least one).
        context_size: size of the context vector; 0 for none.
        residual: use residual blocks between hidden layers.
        activation: the hidden activation, a key of :data:`~torchnf.nets.mlp.ACTIVATIONS`
            (``"relu"``, ``"tanh"`` as in the seeds, ...).
        input_map: a module from ``x`` ``(*batch, D)`` to the network's inputs
            ``(*batch, M)``; ``None``: ``x`` itself.
        input_features: with ``input_map``, the feature each of its ``M`` columns reads, a
            nondecreasing sequence of indices in ``range(D)``.

    References:
        Germain et al., "MADE: Masked Autoencoder for Distribution Estimation", 2015,
        arXiv:1502.03509.

    Example:
        >>> made = MADE(3, params_per_feature=2, hidden_sizes=(16,))
        >>> made(torch.randn(5, 3)).shape
        torch.Size([5, 3, 2])
    """

    def __init__(
        self,
        input_size: int,
        params_per_feature: int = 1,
        hidden_sizes: Sequence[int] = (64, 64),
        context_size: int = 0,
        residual: bool = False,
        activation: str = "relu",
        input_map: nn.Module | None = None,
        input_features: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        hidden_sizes = tuple(int(h) for h in hidden_sizes)
        if input_size < 1 or params_per_feature < 1:
            raise ValueError(
                f"expected input_size >= 1 and params_per_feature >= 1, got {input_size} "
                f"and {params_per_feature}"
            )
        if not hidden_sizes or min(hidden_sizes) < 1:
            raise ValueError(f"expected at least one positive hidden size, got {hidden_sizes}")
        if residual and len(set(hidden_sizes)) != 1:
            raise ValueError(f"residual=True expects equal hidden sizes, got {hidden_sizes}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"expected activation in {sorted(ACTIVATIONS)}, got {activation!r}")
        self.input_size = input_size
        self.params_per_feature = params_per_feature
        self.context_size = context_size
        self.residual = residual
        self.activation = ACTIVATIONS[activation]()
        self.reversed = False

        d = input_size
        degree_in = torch.arange(1, d + 1)
        if (input_map is None) != (input_features is None):
            raise ValueError("expected input_map and input_features together, or neither")
        if input_features is not None:
            degree_in = torch.tensor([int(i) for i in input_features], dtype=torch.long) + 1
            if (
                degree_in.numel() == 0
                or (degree_in[1:] < degree_in[:-1]).any()
                or not 1 <= int(degree_in.min()) <= int(degree_in.max()) <= d
            ):
                raise ValueError(
                    f"expected input_features nondecreasing in [0, {d}), got {list(input_features)}"
                )
        self.input_map = input_map
        # How many inputs the features before feature i feed: a prefix of the inputs.
        self.inputs_before = [int((degree_in <= i).sum()) for i in range(d)]
        low = 0 if (context_size > 0 or d == 1) else 1
        degrees = [degree_in] + [low + torch.arange(h) % (d - low) for h in hidden_sizes]
        degree_out = torch.arange(1, d + 1).repeat_interleave(params_per_feature)

        self.layers = nn.ModuleList()
        for k, (a, b) in enumerate(zip(degrees[:-1], degrees[1:], strict=True)):
            layer = nn.Linear(len(a), len(b))
            self.register_buffer(f"mask{k}", (b[:, None] >= a[None, :]).to(layer.weight.dtype))
            self.layers.append(layer)
        self.output = nn.Linear(hidden_sizes[-1], d * params_per_feature)
        self.register_buffer("mask_out", (degree_out[:, None] > degrees[-1][None, :]).float())
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)
        self.context_layer = (
            nn.Linear(context_size, hidden_sizes[0], bias=False) if context_size else None
        )
        # Hidden units ordered by degree: feature i's parameters need only the units of degree
        # <= i, a prefix of each layer in this order, so a sequential inverse skips the rest.
        for k, degree in enumerate(degrees[1:]):
            self.register_buffer(f"order{k}", torch.argsort(degree, stable=True), persistent=False)
        self.prefix_sizes = [[int((degree <= i).sum()) for degree in degrees[1:]] for i in range(d)]

    @property
    def order(self) -> range:
        """The features in autoregressive order, ``range(D)`` or ``D - 1`` down to 0 when
        :meth:`reverse_` has turned it around."""
        d = self.input_size
        return range(d - 1, -1, -1) if self.reversed else range(d)

    @torch.no_grad()
    def reverse_(self) -> MADE:
        r"""Conjugate this MADE by the feature reversal ``R`` in place, and return it.

        Afterwards it computes :math:`R\, g(R\, x)`: ``out[..., i, :]`` is what
        ``out[..., D - 1 - i, :]`` was at ``x[..., ::-1]``, so it depends only on
        ``x[..., i + 1:]`` (the autoregressive order runs from the last feature to the first).
        Exact at any parameter values: the first layer's weight columns, its mask's columns,
        and the output layer's weight, mask and bias rows (feature by feature) are reversed;
        nothing else depends on the order of the features. Applying it twice restores the
        MADE. In a flow, :math:`M \circ R = R \circ (R M R)` moves a reversal past a layer, so
        reversals between MADE layers fold into their orders (see
        :func:`~torchnf.models.maf.autoregressive_chain`).

        Example:
            >>> made = MADE(3, 2, (8,))
            >>> _ = torch.nn.init.normal_(made.output.weight)
            >>> x = torch.randn(4, 3)
            >>> before = made(x.flip(-1)).flip(-2)
            >>> torch.allclose(made.reverse_()(x), before), list(made.order)
            (True, [2, 1, 0])
        """
        if self.input_map is not None:
            raise ValueError(
                "reverse_ conjugates by the feature reversal, which an input_map need not "
                "commute with; reverse the features outside the MADE instead"
            )
        shape = (self.input_size, self.params_per_feature)
        for t in (self.layers[0].weight, self.mask0):
            t.copy_(t.flip(-1))
        for t in (self.output.weight, self.mask_out, self.output.bias):
            t.copy_(t.unflatten(0, shape).flip(0).flatten(0, 1))
        self.reversed = not self.reversed
        return self

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Return the parameters ``(*batch, D, params_per_feature)`` of every feature."""
        # The one-pass path of training: the masks applied and the layers run directly,
        # without building a conditioner's closures.
        weights, w_out, biases, shift = self._masked(context)
        return self._in_compute_dtype(
            lambda x: self._head(self._trunk(self._inputs(x), weights, biases, shift), w_out), x
        )

    def conditioner(self, context: Tensor | None = None) -> Callable[..., Tensor]:
        """Return ``net(x, feature=None)``: this MADE with its masks applied once.

        Masked weights and the context's contribution are computed here, once, so the ``D``
        sequential passes of an autoregressive inverse reuse them. ``net(x, feature=i)``
        returns only the parameters of feature ``i``, shape ``(*batch, P)``: it reads only
        the ``r`` features before ``i`` in ``order`` (``x[..., :i]``, or ``x[..., i + 1:]``
        when reversed; with an ``input_map``, the prefix of its columns that they feed) and
        computes only the hidden units of degree ``<= r`` (with the units ordered by degree, a
        prefix of each layer), about a third of a full pass on average for two hidden layers.
        In low precision (``compute_dtype`` set, ``x`` not float64) it runs the full pass
        instead and returns feature ``i``'s slice: the prefix pass sums in another order, which
        in low precision rounds a parameter differently from :meth:`forward` now and then (by
        one step, about 0.4% in bfloat16) and breaks the round trip, while the full pass on
        the same inputs before ``i`` (the masked inputs add exact zeros) gives bit-identical
        parameters.
        """
        weights, w_out, biases, shift = self._masked(context)
        w_out = w_out.view(self.input_size, self.params_per_feature, -1)
        b_out = self.output.bias.view(self.input_size, self.params_per_feature)
        ordered: list = []  # (weights, biases, shift, w_out), hidden units by degree, built once

        def net(x: Tensor, feature: int | None = None) -> Tensor:
            return self._in_compute_dtype(params, x, feature)

        def params(x: Tensor, feature: int | None) -> Tensor:
            lowers, x = self._lowers(x), self._inputs(x)
            if feature is None or lowers:
                out = self._head(self._trunk(x, weights, biases, shift), w_out.flatten(0, 1))
                return out if feature is None else out[..., feature, :]
            if not ordered:
                o = [getattr(self, f"order{k}") for k in range(len(weights))]
                ws = [weights[0][o[0]]]
                ws += [w[i][:, j] for w, i, j in zip(weights[1:], o[1:], o[:-1], strict=True)]
                bs = [b[i] for b, i in zip(biases, o, strict=True)]
                ordered.extend(
                    [ws, bs, None if shift is None else shift[..., o[0]], w_out[..., o[-1]]]
                )
            ws, bs, sh, wo = ordered
            # The inputs before `feature` in the order: a prefix, or a suffix when reversed.
            rank = self.input_size - 1 - feature if self.reversed else feature
            before = self.inputs_before[feature]
            inputs = slice(feature + 1, None) if self.reversed else slice(0, before)
            sizes = self.prefix_sizes[rank]
            h = self._trunk(x[..., inputs], [ws[0][:, inputs], *ws[1:]], bs, sh, sizes)
            return F.linear(h, wo[feature, :, : sizes[-1]], b_out[feature])

        return net

    def _masked(
        self, context: Tensor | None
    ) -> tuple[list[Tensor], Tensor, list[Tensor], Tensor | None]:
        """Masked hidden weights, masked output weight, hidden biases, and the context's shift
        of the first layer."""
        if (context is None) != (self.context_layer is None):
            raise ValueError(
                f"expected context of shape (..., {self.context_size}), got "
                f"{None if context is None else tuple(context.shape)}"
            )
        # One foreach kernel for all the masks: one launch on a GPU where a product per weight
        # is one launch each (autograd's backward of it is still one product per weight).
        *weights, w_out = torch._foreach_mul(
            [layer.weight for layer in self.layers] + [self.output.weight],
            [getattr(self, f"mask{k}") for k in range(len(self.layers))] + [self.mask_out],
        )
        biases = [layer.bias for layer in self.layers]
        # The context enters as a per-row bias of the first layer.
        shift = None if self.context_layer is None else self.context_layer(context)
        return weights, w_out, biases, shift

    def _inputs(self, x: Tensor) -> Tensor:
        """The network's inputs: ``input_map(x)``, or ``x`` itself."""
        return x if self.input_map is None else self.input_map(x)

    def _trunk(
        self,
        x: Tensor,
        weights: list[Tensor],
        biases: list[Tensor],
        shift: Tensor | None,
        sizes: list[int] | None = None,
    ) -> Tensor:
        """The last hidden layer's activations from the inputs ``x``: only the first
        ``sizes[k]`` units of each hidden layer ``k`` (all units if ``sizes`` is None, without
        slices, whose backward would allocate and fill zeros)."""
        if sizes is not None:
            fan_in = [x.shape[-1], *sizes[:-1]]
            weights = [w[:m, :k] for w, m, k in zip(weights, sizes, fan_in, strict=True)]
            biases = [b[:m] for b, m in zip(biases, sizes, strict=True)]
            shift = None if shift is None else shift[..., : sizes[0]]
        act = self.activation
        h = F.linear(x, weights[0], biases[0])
        if shift is not None:
            h = h + shift
        for w, b in zip(weights[1:], biases[1:], strict=True):
            out = F.linear(act(h), w, b)
            h = h + out if self.residual else out
        return act(h)

    def _head(self, h: Tensor, w_out: Tensor) -> Tensor:
        """Every feature's parameters ``(*batch, D, P)`` from the masked output weight."""
        out = F.linear(h, w_out, self.output.bias)
        return out.unflatten(-1, (self.input_size, self.params_per_feature))

    def extra_repr(self) -> str:
        return (
            f"input_size={self.input_size}, params_per_feature={self.params_per_feature}, "
            f"context_size={self.context_size}, residual={self.residual}, "
            f"activation={type(self.activation).__name__}"
            + (", reversed=True" if self.reversed else "")
        )
