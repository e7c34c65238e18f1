"""Invertible elementwise maps; each returns ``(out, log|dout/din|)`` elementwise."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def softlog(x: Tensor) -> tuple[Tensor, Tensor]:
    r""":math:`y = \mathrm{sign}(x) \log(1 + |x|)`, log-derivative :math:`-\log(1 + |x|)`."""
    log1p = torch.log1p(x.abs())
    return torch.sign(x) * log1p, -log1p


def softlog_inverse(y: Tensor) -> tuple[Tensor, Tensor]:
    r""":math:`x = \mathrm{sign}(y) (e^{|y|} - 1)`, log-derivative :math:`|y|`."""
    return torch.sign(y) * torch.expm1(y.abs()), y.abs()


def softsquare(x: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    r""":math:`y = a x + b\,\mathrm{sign}(x) x^2` (:math:`a > 0, b \ge 0`), log-derivative
    :math:`\log(a + 2b|x|)`."""
    return a * x + b * x * x.abs(), torch.log(a + 2 * b * x.abs())


def softsquare_inverse(y: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    r"""Inverse of :func:`softsquare`: :math:`|x| = 2|y| / (a + \sqrt{a^2 + 4b|y|})`, the
    non-negative root of :math:`b x^2 + a x = |y|` without cancellation."""
    magnitude = 2 * y.abs() / (a + torch.sqrt(a.square() + 4 * b * y.abs()))
    return torch.sign(y) * magnitude, -torch.log(a + 2 * b * magnitude)


def logit(x: Tensor, alpha: float = 0.0) -> tuple[Tensor, Tensor]:
    r""":math:`y = \mathrm{logit}(\alpha + (1 - 2\alpha) x)` for :math:`x \in [0, 1]`
    (:math:`x \in (0, 1)` when :math:`\alpha = 0`), log-derivative
    :math:`\log(1 - 2\alpha) - \log p - \log(1 - p)`, :math:`p = \alpha + (1 - 2\alpha) x`."""
    p = alpha + (1 - 2 * alpha) * x
    return torch.logit(p), math.log1p(-2 * alpha) - torch.log(p) - torch.log1p(-p)


def logit_inverse(y: Tensor, alpha: float = 0.0) -> tuple[Tensor, Tensor]:
    r"""Inverse of :func:`logit`: :math:`x = (\sigma(y) - \alpha) / (1 - 2\alpha)`,
    log-derivative :math:`\log\sigma(y) + \log\sigma(-y) - \log(1 - 2\alpha)`."""
    x = (torch.sigmoid(y) - alpha) / (1 - 2 * alpha)
    return x, F.logsigmoid(y) + F.logsigmoid(-y) - math.log1p(-2 * alpha)
