"""Glow: a multi-scale flow of ActNorm, invertible 1x1 convolutions and affine couplings."""

from __future__ import annotations

from collections.abc import Sequence

from torchnf.core.bijector import Bijector, Shape
from torchnf.core.flow import Flow
from torchnf.core.registry import register
from torchnf.layers.image import AffineImageCoupling, InvertibleConv1x1, Squeeze, multi_scale
from torchnf.layers.linear import ActNorm


@register(
    "model",
    example=lambda context_size: Glow(
        (1, 4, 4), n_levels=2, n_steps=1, hidden_channels=4, context_size=context_size
    ),
    conditional=True,
)
class Glow(Flow):
    r"""Glow ``z = f(x | c)`` on images ``(C, H, W)``, with a standard normal base.

    Each of the ``n_levels`` scales squeezes (``(C, H, W) -> (4C, H/2, W/2)``) and applies
    ``n_steps`` steps of flow, each :class:`~torchnf.layers.ActNorm` (per channel, set from
    data by ``flow.initialize``), :class:`~torchnf.layers.InvertibleConv1x1` and a channel
    :class:`~torchnf.layers.AffineImageCoupling` with a zero-initialized conv conditioner.
    All but the last scale then factor out half the channels (:class:`~torchnf.layers.Split`)
    with a learned conditional prior :math:`N(\mu(h), \sigma(h))` given the kept half ``h``,
    written as a channel affine coupling before the split (so sampling at temperature ``T``,
    ``z ~ N(0, T^2 I)``, is Glow's temperature on every scale). The latent ``z`` has the
    input's shape.

    Shapes: ``x`` and ``z`` are ``(*batch, C, H, W)`` with ``H`` and ``W`` divisible by
    ``2 ** n_levels``; ``context`` is ``(*batch, context_size)``.

    Arguments:
        input_shape: ``(C, H, W)``.
        n_levels: number of scales ``L``.
        n_steps: steps of flow per scale ``K``.
        hidden_channels: width of the coupling conditioners.
        n_blocks: residual blocks per conditioner.
        form: ``"lu"`` or ``"qr"`` parametrization of the 1x1 convolutions.
        context_size: size of the context (0 for an unconditional flow).

    References:
        Glow: Generative Flow with Invertible 1x1 Convolutions (Kingma & Dhariwal, 2018,
        arXiv:1807.03039).

    Example:
        >>> flow = Glow((1, 8, 8), n_levels=2, n_steps=2, hidden_channels=16)
        >>> x = torch.rand(5, 1, 8, 8)
        >>> z, log_det = flow(x)
        >>> z.shape, torch.allclose(flow.inverse(z), x, atol=1e-5)
        (torch.Size([5, 1, 8, 8]), True)
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        n_levels: int = 3,
        n_steps: int = 8,
        hidden_channels: int = 64,
        n_blocks: int = 1,
        form: str = "lu",
        context_size: int = 0,
    ) -> None:
        counter = iter(range(n_levels * n_steps))

        def level(shape: Shape, last: bool) -> list[Bijector]:
            squeeze = Squeeze(shape)
            s = squeeze.output_event_shape
            layers: list[Bijector] = [squeeze]
            for _ in range(n_steps):
                layers += [
                    ActNorm(s),
                    InvertibleConv1x1(s, form, seed=next(counter)),
                    AffineImageCoupling(s, "channel", hidden_channels, 0, n_blocks, context_size),
                ]
            if not last:  # the factored-out half's prior, conditioned on the kept half
                layers.append(
                    AffineImageCoupling(s, "channel", hidden_channels, 0, 0, context_size)
                )
            return layers

        super().__init__(multi_scale(tuple(input_shape), n_levels, level))
