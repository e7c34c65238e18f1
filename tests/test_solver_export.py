"""solve_increasing under torch.export: the same solution, NaN where eager would raise."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from torchnf.functional.solvers import ConvergenceError, solve_increasing


class _Cubic(nn.Module):
    """``x`` with ``x^3 + x = t``."""

    def __init__(self, max_iter: int) -> None:
        super().__init__()
        self.max_iter = max_iter

    def forward(self, t: Tensor) -> Tensor:
        def fn(x: Tensor) -> tuple[Tensor, Tensor]:
            return x**3 + x, 3 * x**2 + 1

        return solve_increasing(fn, t, t.abs().neg() - 1, t.abs() + 1, max_iter=self.max_iter)


def _exported(max_iter: int, t: Tensor) -> nn.Module:
    batch = torch.export.Dim("batch")
    program = torch.export.export(_Cubic(max_iter), (t,), dynamic_shapes=({0: batch},))
    return program.module()


def test_exported_solve_matches_eager_at_any_batch_size() -> None:
    t = torch.linspace(-50, 50, 7, dtype=torch.float64)
    module = _exported(100, t)
    for n in (1, 7, 12):
        t_n = torch.linspace(-30, 80, n, dtype=torch.float64)
        torch.testing.assert_close(module(t_n), _Cubic(100)(t_n), rtol=1e-12, atol=1e-12)


def test_exported_solve_gives_nan_where_eager_raises() -> None:
    t = torch.tensor([0.0, 1e6], dtype=torch.float64)
    with pytest.raises(ConvergenceError, match="did not converge"):
        _Cubic(3)(t)
    x = _exported(3, t)(t)
    assert x[0] == 0 and x[1].isnan()
