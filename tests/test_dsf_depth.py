"""Stacked deep sigmoidal flows: ``DSFTransformer(n_layers=L)`` and ``NAF(n_dsf_layers=L)``."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import test_contract
import torch
from cases import CONTEXT_SIZE, Case
from torch import Tensor

from torchnf.core.registry import Entry, build
from torchnf.functional.solvers import default_tol
from torchnf.layers import DSFTransformer
from torchnf.models import NAF

WIDE = torch.cat([torch.linspace(-50, 50, 201), torch.linspace(-3, 3, 61)]).double()
DEPTHS = pytest.mark.parametrize("n_layers", [2, 3])


def _stack(n_layers: int, seed: int = 1, n: int = len(WIDE)) -> tuple[DSFTransformer, Tensor]:
    tau = DSFTransformer(n_components=5, n_layers=n_layers).double()
    g = torch.Generator().manual_seed(seed)
    params = 1.5 * torch.randn(n, 2, tau.params_per_feature, generator=g, dtype=torch.float64)
    return tau, params


def _wide_inputs() -> Tensor:
    return WIDE[:, None].expand(-1, 2).contiguous()


@DEPTHS
def test_stack_is_the_composition_of_single_maps(n_layers: int) -> None:
    tau, params = _stack(n_layers)
    single = DSFTransformer(n_components=5).double()
    chunks = params.chunk(n_layers, -1)
    x = _wide_inputs()
    y, log_det = x, torch.zeros_like(x)
    for chunk in chunks:
        y, log_slope = single(y, chunk)
        log_det = log_det + log_slope
    x_back, log_det_inv = y, torch.zeros_like(x)
    for chunk in reversed(chunks):
        x_back, log_slope = single.inverse(x_back, chunk)
        log_det_inv = log_det_inv + log_slope
    exact = {"atol": 0.0, "rtol": 0.0}
    torch.testing.assert_close(tau(x, params), (y, log_det), **exact)
    torch.testing.assert_close(tau.inverse(y, params), (x_back, log_det_inv), **exact)


@DEPTHS
def test_increasing_with_the_log_derivative_of_the_map(n_layers: int) -> None:
    tau, params = _stack(n_layers, n=1)
    x = torch.linspace(-50, 50, 4001, dtype=torch.float64)[:, None].expand(-1, 2).contiguous()
    x.requires_grad_()
    y, log_det = tau(x, params.expand(len(x), 2, -1))
    (slope,) = torch.autograd.grad(y.sum(), x)
    assert bool((y.diff(dim=0) > 0).all())
    torch.testing.assert_close(slope.log(), log_det, atol=1e-9, rtol=0)


def _documented_bound(tau: DSFTransformer, x: Tensor, params: Tensor, tol: float) -> Tensor:
    """``tol * sum_l (1 + |x_l|) / D_l`` over the intermediate values (float64)."""
    bound, x_l, log_slope = tol * (1 + x.abs()), x, torch.zeros_like(x)
    for prepared in tau._maps(tau._prepare(params)):
        x_l, log_slope_l = tau._evaluate(x_l, prepared)
        log_slope = log_slope + log_slope_l
        bound = bound + tol * (1 + x_l.abs()) / log_slope.exp()
    return bound


@DEPTHS
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_round_trip_within_the_documented_tolerance(n_layers: int, dtype: torch.dtype) -> None:
    tau, params = _stack(n_layers)
    x = _wide_inputs()
    with torch.no_grad():
        bound = _documented_bound(tau, x, params, default_tol(dtype))
        tau = tau.to(dtype)
        y, log_det = tau(x.to(dtype), params.to(dtype))
        x_back, log_det_inv = tau.inverse(y, params.to(dtype))
    assert bool(((x_back.double() - x).abs() <= bound).all())
    assert float(x_back.abs().max()) > 49  # the far tails are in
    atol = 1e-11 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(log_det_inv, -log_det, atol=atol, rtol=0)


def test_the_bracket_holds_each_map() -> None:
    tau, params = _stack(3)
    y = 2 * _wide_inputs()
    for prepared in tau._maps(tau._prepare(3 * params)):
        lower, upper = tau._bracket(y, prepared)
        assert bool((tau._evaluate(lower, prepared)[0] <= y + 1e-9).all())
        assert bool((tau._evaluate(upper, prepared)[0] >= y - 1e-9).all())


def test_one_map_is_the_default_and_old_configs_rebuild() -> None:
    assert DSFTransformer(n_components=4).params_per_feature == 12
    assert DSFTransformer(n_components=4, n_layers=3).params_per_feature == 36
    torch.manual_seed(0)
    flow = NAF(2, n_layers=2, hidden_sizes=(8,), n_components=3)
    assert flow.config["n_dsf_layers"] == 1
    old_config = {k: v for k, v in flow.config.items() if k != "n_dsf_layers"}
    rebuilt = build("NAF", old_config)
    rebuilt.load_state_dict(flow.state_dict())
    x = torch.randn(5, 2)
    torch.testing.assert_close(rebuilt.log_prob(x), flow.log_prob(x), atol=0, rtol=0)
    stacked = NAF(2, n_layers=2, hidden_sizes=(8,), n_components=3, n_dsf_layers=2)
    assert build("NAF", stacked.config).config["n_dsf_layers"] == 2


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: DSFTransformer(n_layers=0), "n_layers >= 1, got 0"),
        (lambda: DSFTransformer(n_layers=2.0), "integer n_layers"),
        (lambda: NAF(2, n_dsf_layers=0), "n_dsf_layers >= 1, got 0"),
        (lambda: NAF(2, n_dsf_layers=True), "integer n_dsf_layers"),
    ],
    ids=["transformer-zero", "transformer-float", "naf-zero", "naf-bool"],
)
def test_bad_depths_are_refused(make: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


# The contract test's checks on a stacked NAF (the registry holds one example per class).
STACKED = Entry(
    "NAF-stacked",
    NAF,
    "model",
    lambda context_size: NAF(
        3, n_layers=2, hidden_sizes=(8,), n_components=3, n_dsf_layers=2, context_size=context_size
    ),
    True,
)
CASES = [Case(STACKED, c, inv) for c in (0, CONTEXT_SIZE) for inv in (False, True)]
CHECKS = [
    test_contract.test_check_passes,
    test_contract.test_inverse_returns_tensor_and_round_trips,
    test_contract.test_dtype_follows_input,
    test_contract.test_state_dict_reload_gives_identical_outputs,
    test_contract.test_wrong_feature_size_is_refused,
    test_contract.test_non_floating_input_is_refused,
]


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__.removeprefix("test_") for c in CHECKS])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_contract_on_a_stacked_naf(check: Callable[[Case], None], case: Case) -> None:
    check(case)


@pytest.mark.parametrize("case", CASES[2:], ids=[c.id for c in CASES[2:]])
def test_stacked_naf_refuses_a_missing_context(case: Case) -> None:
    test_contract.test_missing_context_is_refused(case)
