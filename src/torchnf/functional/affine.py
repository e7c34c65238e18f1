"""Elementwise affine maps and the soft clamp that keeps their scales stable."""

from __future__ import annotations

import torch
from torch import Tensor


def soft_clamp(s: Tensor, bound: float) -> Tensor:
    r"""Smoothly limit ``s`` to ``(-bound, bound)``: :math:`b \tanh(s / b)` (identity near 0)."""
    return bound * torch.tanh(s / bound)


def affine_forward(x: Tensor, shift: Tensor, log_scale: Tensor) -> tuple[Tensor, Tensor]:
    r"""``y = x * exp(log_scale) + shift``; returns ``(y, log_scale)`` (elementwise log-det)."""
    # Not addcmul: its backward scales each gradient by `value` too, slower when x needs one.
    return x * torch.exp(log_scale) + shift, log_scale


def affine_inverse(y: Tensor, shift: Tensor, log_scale: Tensor) -> tuple[Tensor, Tensor]:
    r"""``x = (y - shift) * exp(-log_scale)``; returns ``(x, -log_scale)``."""
    return (y - shift) * torch.exp(-log_scale), -log_scale
