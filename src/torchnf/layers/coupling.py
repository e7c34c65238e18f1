"""Coupling layers: half the features drive an elementwise transform of the other half."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from torchnf.core.bijector import Bijector
from torchnf.core.registry import register
from torchnf.layers.transformers import AdditiveTransformer, AffineTransformer, Transformer
from torchnf.nets.mlp import MLP


def checkerboard_mask(input_size: int, parity: int = 0) -> Tensor:
    """Alternating binary mask ``[1, 0, 1, ...]`` (``parity=0``) or ``[0, 1, 0, ...]``."""
    return (torch.arange(input_size) + parity) % 2 == 0


@register(
    "layer",
    example=lambda context_size: Coupling(
        AffineTransformer(),
        MLP(2, 4, (8,), context_size),
        torch.tensor([True, False, True, False]),
    ),
    conditional=True,
)
class Coupling(Bijector):
    r"""Coupling layer ``y = f(x | c)`` with a binary mask ``m``.

    :math:`y_m = x_m` and :math:`y_{\bar m} = \tau(x_{\bar m}; g(x_m, c))` where :math:`\tau`
    is an elementwise transformer and :math:`g` the conditioner. The Jacobian is triangular
    after permutation, so :math:`\log|\det| = \sum_{i \notin m} \log \tau'(x_i)`.

    Shapes: ``x`` and ``y`` are ``(*batch, D)``, ``context`` is ``(*batch, context_size)``,
    ``log_det`` is ``(*batch,)``.

    Arguments:
        transformer: elementwise transformer (see :mod:`torchnf.layers.transformers`).
        conditioner: module mapping ``(x[..., mask], context)`` to
            ``(*batch, n_transformed * transformer.params_per_feature)``; its
            ``context_size`` attribute (0 if absent) is the layer's.
        mask: bool tensor ``(D,)``; ``True`` marks the features passed through unchanged.

    References:
        Density estimation using Real NVP (Dinh et al., 2017, arXiv:1605.08803).

    Example:
        >>> layer = Coupling(AffineTransformer(), MLP(1, 2, (8,)), torch.tensor([True, False]))
        >>> x = torch.randn(4, 2)
        >>> torch.allclose(layer.inverse(layer(x)[0]), x)
        True
    """

    def __init__(self, transformer: Transformer, conditioner: nn.Module, mask: Tensor) -> None:
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if mask.dim() != 1 or mask.all() or not mask.any():
            raise ValueError(
                "expected a 1-D boolean mask with at least one True (kept) and one False "
                f"(transformed) feature, got {mask.tolist()}"
            )
        super().__init__(len(mask), getattr(conditioner, "context_size", 0))
        self.transformer = transformer
        self.conditioner = conditioner
        self.register_buffer("mask", mask)
        self.register_buffer("kept", torch.nonzero(mask).squeeze(-1))
        self.register_buffer("transformed", torch.nonzero(~mask).squeeze(-1))
        # An alternating mask of even length splits x into two strided views (and merges
        # with one stack), which saves the gathers, scatters and zero-filled gradients of
        # index_select/index_copy in eager mode: a RealNVP training step at D = 64 and batch
        # 4096 goes from 251 to 211 kernels and 142 to 107 MB written, 1.2x faster on a CPU.
        # Under torch.compile the gathers fuse into their consumers; there the strided form
        # made inductor's CPU code of that step 1.28x slower (69 against 54 ms). Measured by
        # benchmarks/ablations.py and benchmarks/speed.py (RESULTS.md).
        self.parity = next(
            (
                p
                for p in (0, 1)
                if len(mask) % 2 == 0 and torch.equal(mask, checkerboard_mask(len(mask), p))
            ),
            None,
        )

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The kept and the transformed features of ``x``."""
        if self.parity is None or torch.compiler.is_compiling():
            return x.index_select(-1, self.kept), x.index_select(-1, self.transformed)
        pairs = x.unflatten(-1, (-1, 2)).unbind(-1)
        return pairs[self.parity], pairs[1 - self.parity]

    def _merge(self, x: Tensor, kept: Tensor, out: Tensor) -> Tensor:
        """``x`` with its transformed features replaced by ``out``."""
        if self.parity is None or torch.compiler.is_compiling():
            return x.index_copy(-1, self.transformed, out)
        pairs = (kept, out) if self.parity == 0 else (out, kept)
        return torch.stack(pairs, -1).flatten(-2)

    def _transform(self, method, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        kept, transformed = self._split(x)
        params = self.conditioner(kept, context).unflatten(
            -1, (len(self.transformed), self.transformer.params_per_feature)
        )
        out, log_det = method(transformed, params)
        return self._merge(x, kept, out), log_det.sum(-1)

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._transform(self.transformer.forward, x, context)

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._transform(self.transformer.inverse, y, context)


def _mlp_coupling_args(
    transformer: Transformer,
    input_size: int,
    mask: Tensor | None,
    parity: int,
    hidden_sizes: Sequence[int],
    context_size: int,
    activation: str = "relu",
) -> tuple[Transformer, MLP, Tensor]:
    if input_size < 2:
        raise ValueError(f"a coupling layer needs input_size >= 2, got {input_size}")
    mask = checkerboard_mask(input_size, parity) if mask is None else torch.as_tensor(mask)
    n_kept = int(mask.sum())
    n_out = (input_size - n_kept) * transformer.params_per_feature
    return transformer, MLP(n_kept, n_out, hidden_sizes, context_size, activation), mask


@register(
    "layer",
    example=lambda context_size: AffineCoupling(4, hidden_sizes=(8,), context_size=context_size),
    conditional=True,
)
class AffineCoupling(Coupling):
    r"""RealNVP affine coupling ``y = f(x | c)``: :math:`y_{\bar m} = x_{\bar m} e^{s} + t`.

    ``(t, s) = MLP(x_m, c)`` with ``s`` soft-clamped to ``(-scale_bound, scale_bound)``;
    :math:`\log|\det| = \sum s`. Shapes as :class:`Coupling`.

    Arguments:
        input_size: number of features ``D >= 2``.
        mask: bool ``(D,)`` of kept features; default alternating, starting at ``parity``.
        parity: 0 keeps even features, 1 odd ones (alternate it between layers).
        hidden_sizes: widths of the conditioner MLP.
        context_size: size of the context (0 for none).
        scale_bound: bound on the log-scale.
        activation: the conditioner's hidden activation (see :class:`~torchnf.nets.MLP`).

    References:
        Density estimation using Real NVP (Dinh et al., 2017, arXiv:1605.08803).

    Example:
        >>> layer = AffineCoupling(4, hidden_sizes=(16,))
        >>> y, log_det = layer(torch.randn(8, 4))
        >>> y.shape, log_det.shape
        (torch.Size([8, 4]), torch.Size([8]))
    """

    def __init__(
        self,
        input_size: int,
        mask: Tensor | None = None,
        parity: int = 0,
        hidden_sizes: Sequence[int] = (64, 64),
        context_size: int = 0,
        scale_bound: float = 3.0,
        activation: str = "relu",
    ) -> None:
        transformer = AffineTransformer(scale_bound)
        super().__init__(
            *_mlp_coupling_args(
                transformer, input_size, mask, parity, hidden_sizes, context_size, activation
            )
        )


@register(
    "layer",
    example=lambda context_size: AdditiveCoupling(5, hidden_sizes=(8,), context_size=context_size),
    conditional=True,
)
class AdditiveCoupling(Coupling):
    r"""NICE additive coupling ``y = f(x | c)``: :math:`y_{\bar m} = x_{\bar m} + t(x_m, c)`.

    Volume preserving: ``log_det = 0``. Shapes and arguments as :class:`AffineCoupling`
    (without ``scale_bound``).

    References:
        NICE: Non-linear Independent Components Estimation (Dinh et al., 2014,
        arXiv:1410.8516).

    Example:
        >>> layer = AdditiveCoupling(3, hidden_sizes=(8,))
        >>> y, log_det = layer(torch.randn(4, 3))
        >>> y.shape, log_det
        (torch.Size([4, 3]), tensor([0., 0., 0., 0.]))
    """

    def __init__(
        self,
        input_size: int,
        mask: Tensor | None = None,
        parity: int = 0,
        hidden_sizes: Sequence[int] = (64, 64),
        context_size: int = 0,
        activation: str = "relu",
    ) -> None:
        super().__init__(
            *_mlp_coupling_args(
                AdditiveTransformer(),
                input_size,
                mask,
                parity,
                hidden_sizes,
                context_size,
                activation,
            )
        )
