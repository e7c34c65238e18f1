"""Masked autoregressive layers: one MADE pass forward, ``D`` sequential passes inverse."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from torchnf.core.bijector import Bijector
from torchnf.core.registry import register
from torchnf.layers.transformers import AffineTransformer, Transformer
from torchnf.nets.made import MADE


@register(
    "layer",
    example=lambda context_size: MaskedAutoregressive(
        AffineTransformer(), MADE(4, 2, (8,), context_size)
    ),
    conditional=True,
)
class MaskedAutoregressive(Bijector):
    r"""Masked autoregressive layer ``y = f(x | c)``: :math:`y_i = \tau(x_i; g_i(x_{<i}, c))`.

    The conditioner :math:`g` is a :class:`~torchnf.nets.made.MADE`, so the Jacobian is
    triangular and :math:`\log|\det| = \sum_i \log \tau'(x_i)`. The forward (normalizing)
    direction is one MADE pass; the inverse (sampling) direction recovers
    :math:`x_i = \tau^{-1}(y_i; g_i(x_{<i}, c))` for ``i = 0 .. D - 1`` in ``D`` passes, each
    computing only feature ``i``'s parameters with the masks applied once per call. Use
    ``layer.inv`` for the inverse autoregressive flow (IAF), whose sampling is one pass.
    With a reversed MADE (:meth:`~torchnf.nets.made.MADE.reverse_`) the order runs from the
    last feature to the first: :math:`y_i = \tau(x_i; g_i(x_{>i}, c))`, inverted for
    ``i = D - 1 .. 0``.

    Shapes: ``x`` and ``y`` are ``(*batch, D)``, ``context`` is ``(*batch, context_size)``,
    ``log_det`` is ``(*batch,)``.

    Arguments:
        transformer: elementwise transformer (see :mod:`torchnf.layers.transformers`).
        made: the conditioner; its ``params_per_feature`` must be the transformer's and its
            ``context_size`` is the layer's.

    References:
        Papamakarios, Pavlakou, Murray, "Masked Autoregressive Flow for Density Estimation",
        2017, arXiv:1705.07057. Kingma et al., "Improved Variational Inference with Inverse
        Autoregressive Flow", 2016, arXiv:1606.04934.

    Example:
        >>> layer = MaskedAutoregressive(AffineTransformer(), MADE(3, 2, (16,)))
        >>> x = torch.randn(4, 3)
        >>> torch.allclose(layer.inverse(layer(x)[0]), x)
        True
    """

    def __init__(self, transformer: Transformer, made: MADE) -> None:
        if made.params_per_feature != transformer.params_per_feature:
            raise ValueError(
                f"expected a MADE with params_per_feature={transformer.params_per_feature} "
                f"(the transformer's), got {made.params_per_feature}"
            )
        super().__init__(made.input_size, made.context_size)
        self.transformer = transformer
        self.made = made

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        y, log_det = self.transformer(x, self.made(x, context))
        return y, log_det.sum(-1)

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        net = self.made.conditioner(context)
        # Feature i's parameters depend only on the features before it in the MADE's order,
        # which are final when step i runs.
        x = torch.zeros_like(y)
        log_det = y.new_zeros(y.shape[:-1])
        # Out of place when autograd must keep the x each pass used, and under compile: torch
        # 2.11's compiled graph (aot_eager, bfloat16 conditioners) disagreed with eager on the
        # in-place update (0.6 apart on the GPU machine); torch 2.13 agrees either way.
        track = torch.is_grad_enabled() or torch.compiler.is_compiling()
        for i in self.made.order:
            out, ld = self._invert_feature(i, y[..., i : i + 1], net(x, i))
            if track:
                x = torch.cat([x[..., :i], out, x[..., i + 1 :]], dim=-1)
            else:
                x[..., i : i + 1] = out
            log_det = log_det + ld.squeeze(-1)
        return x, log_det

    def _invert_feature(self, i: int, y_i: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """Feature ``i``'s inverse and log-det, ``(*batch, 1)`` each, from ``y_i``
        ``(*batch, 1)`` and its parameters ``(*batch, P)``."""
        return self.transformer.inverse(y_i, params.unsqueeze(-2))


@register(
    "layer",
    example=lambda context_size: MaskedAffineAutoregressive(
        4, hidden_sizes=(8,), context_size=context_size
    ),
    conditional=True,
)
class MaskedAffineAutoregressive(MaskedAutoregressive):
    r"""Affine MAF layer ``y = f(x | c)``:
    :math:`y_i = (x_i + t_i) e^{s_i}`, :math:`(t_i, s_i) = g_i(x_{<i}, c)`.

    A :class:`MaskedAutoregressive` with an affine transformer (log-scale soft-clamped to
    ``(-scale_bound, scale_bound)``); :math:`\log|\det| = \sum_i s_i`. Starts as the identity.
    Shapes as :class:`MaskedAutoregressive`.

    The shift comes first, as in the MAF paper's :math:`u_i = (x_i - \mu_i) e^{-\alpha_i}`,
    so ``inverse(forward(x))`` is accurate to a few ulps of ``max(|x_i|, |t_i|)`` per layer.
    With ``shift_first=False``, :math:`y_i = x_i e^{s_i} + t_i`, whose round trip from ``y``
    is the accurate one: the form for a layer used through ``.inv`` on data (:class:`IAF`).
    See :class:`~torchnf.layers.transformers.AffineTransformer`.

    Arguments:
        input_size: number of features ``D``.
        hidden_sizes: widths of the MADE's hidden layers.
        context_size: size of the context (0 for none).
        residual: use residual blocks in the MADE.
        scale_bound: bound on the log-scale.
        shift_first: ``y_i = (x_i + t_i) e^{s_i}`` if True, ``x_i e^{s_i} + t_i`` otherwise.
        activation: the MADE's hidden activation (see :class:`~torchnf.nets.made.MADE`).

    References:
        Papamakarios, Pavlakou, Murray, "Masked Autoregressive Flow for Density Estimation",
        2017, arXiv:1705.07057.

    Example:
        >>> layer = MaskedAffineAutoregressive(3, hidden_sizes=(16,))
        >>> y, log_det = layer(torch.randn(8, 3))
        >>> y.shape, log_det.shape
        (torch.Size([8, 3]), torch.Size([8]))
    """

    def __init__(
        self,
        input_size: int,
        hidden_sizes: Sequence[int] = (64, 64),
        context_size: int = 0,
        residual: bool = False,
        scale_bound: float = 3.0,
        shift_first: bool = True,
        activation: str = "relu",
    ) -> None:
        transformer = AffineTransformer(scale_bound, shift_first)
        made = MADE(input_size, 2, hidden_sizes, context_size, residual, activation)
        super().__init__(transformer, made)
