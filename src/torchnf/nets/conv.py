"""Convolutional conditioners for image couplings (zero-initialized output: identity at init)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from torchnf.nets.precision import ConditionerNet


class ResidualBlock(nn.Module):
    r"""``h + conv_3x3(relu(conv_3x3(relu(h))))`` at constant width and spatial size.

    Arguments:
        channels: number of channels of ``h``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, h: Tensor) -> Tensor:
        return h + self.net(h)


class ConvNet(ConditionerNet):
    r"""A small ResNet mapping ``(*batch, C_in, H, W)`` to ``(*batch, C_out, H, W)``.

    ``conv_3x3 -> n_blocks residual blocks -> relu -> conv_3x3``; the last convolution is
    zero-initialized so a coupling built on it starts as the identity (Glow's ``Conv2dZeros``).
    The context ``(*batch, context_size)``, if any, is broadcast over the pixels and
    concatenated to the input channels. Padding keeps the spatial size; there is no batch
    normalization, so each image's output depends only on that image. The convolutions run
    in ``compute_dtype`` when set (see :mod:`torchnf.nets.precision`); the output has the
    input's dtype.

    Arguments:
        in_channels: input channels ``C_in``.
        out_channels: output channels ``C_out``.
        hidden_channels: width of the hidden convolutions.
        n_blocks: number of residual blocks.
        context_size: size of the context vector (0: unconditional).

    References:
        Deep residual learning for image recognition (He et al., 2015, arXiv:1512.03385);
        Glow: generative flow with invertible 1x1 convolutions (Kingma & Dhariwal, 2018,
        arXiv:1807.03039).

    Example:
        >>> net = ConvNet(2, 4, hidden_channels=8)
        >>> net(torch.randn(5, 2, 4, 4)).abs().max()
        tensor(0., grad_fn=<MaxBackward1>)
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int = 64,
        n_blocks: int = 1,
        context_size: int = 0,
    ) -> None:
        super().__init__()
        if min(in_channels, out_channels, hidden_channels) < 1 or n_blocks < 0:
            raise ValueError(
                "expected positive in_channels, out_channels, hidden_channels and n_blocks >= 0, "
                f"got {in_channels}, {out_channels}, {hidden_channels}, {n_blocks}"
            )
        self.context_size = context_size
        self.out_channels = out_channels
        last = nn.Conv2d(hidden_channels, out_channels, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels + context_size, hidden_channels, 3, padding=1),
            *(ResidualBlock(hidden_channels) for _ in range(n_blocks)),
            nn.ReLU(),
            last,
        )

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        batch, event = x.shape[:-3], x.shape[-3:]
        h = x.reshape(-1, *event)
        if self.context_size:
            c = context.reshape(-1, self.context_size, 1, 1).expand(-1, -1, *event[1:])
            h = torch.cat([h, c.to(h.dtype)], dim=1)
        out = self._in_compute_dtype(self.net, h)
        return out.reshape(*batch, self.out_channels, *event[1:])
