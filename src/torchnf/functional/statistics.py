"""Robust per-feature statistics for data-dependent initialization (pure tensor maths).

:func:`robust_center_scale` is what :class:`~torchnf.layers.ActNorm` and a flow's context
standardizer initialize from: the mean and standard deviation of the data winsorized at the
median :math:`\\pm 5 r`, with ``r`` half the width of the central 68.27% interval (the
standard deviation for Gaussian data, barely moved by a few gross outliers).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: The standard normal CDF at 1, so the central interval [q(1 - p), q(p)] is one standard
#: deviation wide each side for Gaussian data.
PHI_1 = 0.8413447460685429
#: Winsorize at this many robust scales from the median.
CLIP = 5.0


def quantile(ordered: Tensor, p: float) -> Tensor:
    """The ``p``-quantile of each column of the column-sorted ``ordered (M, C)``, linearly
    interpolated (no size limit, unlike :func:`torch.quantile`)."""
    pos = p * (len(ordered) - 1)
    lo = math.floor(pos)
    return torch.lerp(ordered[lo], ordered[min(lo + 1, len(ordered) - 1)], pos - lo)


def robust_center_scale(v: Tensor, eps: float | None = None) -> tuple[Tensor, Tensor]:
    """Per-column center and scale ``(C,)`` of ``v (M, C)``, robust to gross outliers.

    The median and ``r = (q_{84.13%} - q_{15.87%}) / 2`` (the standard deviation where that
    interval is empty: over 68% of a column is one value); the column winsorized at
    ``median +- 5 r``; its mean and standard deviation. The scale is at least ``eps |center|``
    (default ``eps``: the machine epsilon of ``v``'s dtype), and 1 for a column of zeros.

    Arguments:
        v: ``(M, C)`` values, one column per feature.
        eps: relative lower bound on the scale.

    Returns:
        ``(center, scale)``, each ``(C,)``.

    Example:
        >>> v = torch.cat([torch.linspace(-1.0, 1.0, 99), torch.tensor([1e6])])[:, None]
        >>> center, scale = robust_center_scale(v)
        >>> abs(float(center)) < 0.1 and 0.5 < float(scale) < 1.0  # the outlier barely counts
        True
    """
    ordered = v.sort(dim=0).values
    median = quantile(ordered, 0.5)
    spread = (quantile(ordered, PHI_1) - quantile(ordered, 1 - PHI_1)) / 2
    spread = torch.where(spread > 0, spread, v.std(0, correction=0))
    clipped = v.clamp(median - CLIP * spread, median + CLIP * spread)
    center, scale = clipped.mean(0), clipped.std(0, correction=int(len(v) > 1))
    rel = torch.finfo(v.dtype).eps if eps is None else eps
    scale = torch.maximum(scale, rel * center.abs())
    return center, torch.where(scale > 0, scale, torch.ones_like(scale))
