"""The contract every registered layer and model passes (DESIGN.md)."""

from __future__ import annotations

import io

import pytest
import torch
from cases import CASES, Case

from torchnf.diagnostics import check

CONDITIONAL = [c for c in CASES if c.context_size]
every_case = pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])


def _inputs(case: Case, bijector, dtype=torch.float64, batch: int = 4):
    g = torch.Generator().manual_seed(7)
    u = torch.randn(batch, *bijector.event_shape, generator=g, dtype=dtype)
    x = torch.distributions.transform_to(bijector.domain)(u)
    context = (
        torch.randn(batch, bijector.context_size, generator=g, dtype=dtype)
        if bijector.context_size
        else None
    )
    return x, context


@every_case
def test_check_passes(case: Case) -> None:
    report = check(case.build(), atol=1e-6)
    assert report.passed, report.failures


@every_case
def test_inverse_returns_tensor_and_round_trips(case: Case) -> None:
    bijector = case.build()
    x, context = _inputs(case, bijector)
    y, log_det = bijector(x, context)
    assert y.shape == (4, *bijector.output_event_shape)
    assert log_det.shape == (4,)
    x_back = bijector.inverse(y, context)
    assert isinstance(x_back, torch.Tensor)
    torch.testing.assert_close(x_back, x, atol=1e-7, rtol=1e-7)


@every_case
def test_dtype_follows_input(case: Case) -> None:
    bijector = case.build().float()
    x, context = _inputs(case, bijector, dtype=torch.float32)
    y, log_det = bijector(x, context)
    assert y.dtype == log_det.dtype == torch.float32
    assert bijector.inverse(y, context).dtype == torch.float32


@every_case
def test_state_dict_reload_gives_identical_outputs(case: Case) -> None:
    source = case.build(seed=0)
    target = case.build(seed=1)
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    target.load_state_dict(torch.load(buffer))
    x, context = _inputs(case, source)
    y0, ld0 = source(x, context)
    y1, ld1 = target(x, context)
    assert torch.equal(y0, y1) and torch.equal(ld0, ld1)


@every_case
def test_wrong_feature_size_is_refused(case: Case) -> None:
    bijector = case.build()
    shape = list(bijector.event_shape)
    shape[-1] += 1
    context = (
        torch.randn(2, bijector.context_size, dtype=torch.float64)
        if bijector.context_size
        else None
    )
    with pytest.raises(ValueError, match="expected"):
        bijector(torch.randn(2, *shape, dtype=torch.float64), context)


@every_case
def test_non_floating_input_is_refused(case: Case) -> None:
    bijector = case.build()
    x = torch.zeros(2, *bijector.event_shape, dtype=torch.long)
    context = (
        torch.randn(2, bijector.context_size, dtype=torch.float64)
        if bijector.context_size
        else None
    )
    with pytest.raises(ValueError, match="floating"):
        bijector(x, context)


@pytest.mark.parametrize("case", CONDITIONAL, ids=[c.id for c in CONDITIONAL])
def test_missing_context_is_refused(case: Case) -> None:
    bijector = case.build()
    x, _ = _inputs(case, bijector)
    with pytest.raises(ValueError, match="context"):
        bijector(x)
