"""Multi-scale RealNVP on images: checkerboard and channel affine couplings, squeeze, split."""

from __future__ import annotations

from collections.abc import Sequence

from torchnf.core.bijector import Bijector, Shape
from torchnf.core.chain import Chain
from torchnf.core.flow import Flow
from torchnf.core.registry import register
from torchnf.layers.image import AffineImageCoupling, Squeeze, multi_scale
from torchnf.layers.linear import ActNorm


@register(
    "model",
    example=lambda context_size: RealNVP2d(
        (1, 4, 4), n_levels=2, hidden_channels=4, context_size=context_size
    ),
    conditional=True,
)
class RealNVP2d(Flow):
    r"""Multi-scale RealNVP ``z = f(x | c)`` on images ``(C, H, W)``, standard normal base.

    A standardizing :class:`~torchnf.layers.ActNorm` (per channel, set by
    ``flow.initialize``), then at each scale but the last: three checkerboard
    :class:`~torchnf.layers.AffineImageCoupling` layers (alternating parity), a
    :class:`~torchnf.layers.Squeeze`, three channel couplings (alternating), and half the
    channels factored out (:class:`~torchnf.layers.Split`, standard normal prior as in the
    paper). The last scale is four checkerboard couplings. The latent has the input's shape.

    Shapes: ``x`` and ``z`` are ``(*batch, C, H, W)`` with ``H`` and ``W`` divisible by
    ``2 ** (n_levels - 1)``; ``context`` is ``(*batch, context_size)``.

    Arguments:
        input_shape: ``(C, H, W)``.
        n_levels: number of scales.
        hidden_channels: width of the coupling conditioners (small ResNets).
        n_blocks: residual blocks per conditioner.
        context_size: size of the context (0 for an unconditional flow).

    References:
        Density estimation using Real NVP (Dinh et al., 2017, arXiv:1605.08803).

    Example:
        >>> flow = RealNVP2d((1, 8, 8), n_levels=2, hidden_channels=16)
        >>> x = torch.rand(5, 1, 8, 8)
        >>> z, log_det = flow(x)
        >>> torch.allclose(flow.inverse(z), x, atol=1e-5)
        True
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        n_levels: int = 2,
        hidden_channels: int = 64,
        n_blocks: int = 1,
        context_size: int = 0,
    ) -> None:
        def couplings(shape: Shape, mask: str, n: int) -> list[Bijector]:
            return [
                AffineImageCoupling(shape, mask, hidden_channels, i % 2, n_blocks, context_size)
                for i in range(n)
            ]

        def level(shape: Shape, last: bool) -> list[Bijector]:
            if last:
                return couplings(shape, "checkerboard", 4)
            squeeze = Squeeze(shape)
            return [
                *couplings(shape, "checkerboard", 3),
                squeeze,
                *couplings(squeeze.output_event_shape, "channel", 3),
            ]

        shape = tuple(input_shape)
        super().__init__(Chain(ActNorm(shape), multi_scale(shape, n_levels, level)))
