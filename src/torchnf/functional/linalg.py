"""Linear algebra for invertible linear layers: reflections and triangular solves."""

from __future__ import annotations

import torch
from torch import Tensor


def reflect(x: Tensor, v: Tensor) -> Tensor:
    r"""Householder reflection :math:`H x = x - 2 v (v^\top x) / \|v\|^2` of rows ``x (..., D)``."""
    return x - 2 * (x @ v / v.square().sum()).unsqueeze(-1) * v


def householder_product(vectors: Tensor) -> Tensor:
    r"""The orthogonal matrix :math:`Q = H_1 H_2 \cdots H_K` of reflections ``vectors (K, D)``."""
    q = torch.eye(vectors.shape[-1], dtype=vectors.dtype, device=vectors.device)
    for v in vectors.flip(0):
        q = q - 2 * torch.outer(v, v @ q) / v.square().sum()
    return q


def solve_upper_right(y: Tensor, upper: Tensor) -> Tensor:
    r"""Rows ``x`` with :math:`x U^\top = y` (``U`` upper-triangular)."""
    flat = y.reshape(-1, y.shape[-1])
    x = torch.linalg.solve_triangular(upper.mT, flat, upper=False, left=False)
    return x.reshape(y.shape)


def solve_lower_right(y: Tensor, lower: Tensor) -> Tensor:
    r"""Rows ``x`` with :math:`x L^\top = y` (``L`` lower-triangular)."""
    flat = y.reshape(-1, y.shape[-1])
    x = torch.linalg.solve_triangular(lower.mT, flat, upper=True, left=False)
    return x.reshape(y.shape)
