"""The adjoint method for continuous flows: odeint_adjoint's gradients against closed forms and
against backpropagation through the solver, ContinuousFlow(adjoint=True) and CNF(adjoint=True)
through the bijector contract, the memory that stays flat as the steps grow, and refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import test_contract as contract
import torch
from cases import CONTEXT_SIZE, Case

from torchnf.core.registry import Entry, build
from torchnf.functional.adjoint import odeint_adjoint
from torchnf.functional.ode import dopri5
from torchnf.functional.solvers import ConvergenceError
from torchnf.layers import ContinuousFlow, VectorField
from torchnf.models import CNF

F64 = torch.float64
BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "cnf_adjoint.py"


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _perturb(module: torch.nn.Module, seed: int = 1, scale: float = 0.3) -> None:
    with torch.no_grad():
        g = _generator(seed)
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / (1 + b.abs().max()))


# -- odeint_adjoint -----------------------------------------------------------------------------
@pytest.mark.parametrize("seminorm", [False, True], ids=["norm", "seminorm"])
@pytest.mark.parametrize("backwards", [False, True], ids=["forward", "backward"])
def test_odeint_adjoint_gives_the_gradients_of_a_linear_ode(seminorm: bool, backwards: bool):
    # y(t1) = expm((t1 - t0) A) y0: the gradients by autograd through matrix_exp are exact.
    a = (0.5 * torch.randn(3, 3, generator=_generator(0), dtype=F64)).requires_grad_()
    y0 = torch.randn(4, 3, generator=_generator(1), dtype=F64, requires_grad=True)
    w = torch.randn(4, 3, generator=_generator(2), dtype=F64)
    t0, t1 = (1.0, -0.5) if backwards else (0.0, 1.5)
    solution = odeint_adjoint(
        lambda t, y: (y[0] @ a.T,), (y0,), t0, t1, (a,), 1e-10, 1e-10, batch_ndim=1,
        seminorm=seminorm,
    )  # fmt: skip
    grads = torch.autograd.grad((solution.state[0] * w).sum(), (y0, a))
    exact = torch.autograd.grad((y0 @ torch.linalg.matrix_exp((t1 - t0) * a).T * w).sum(), (y0, a))
    for got, want in zip(grads, exact, strict=True):
        assert _relative(got, want) < 1e-8


def test_odeint_adjoint_reports_the_backward_solve_and_needs_no_graph_without_gradients():
    theta = torch.tensor(0.7, dtype=F64, requires_grad=True)
    y0 = torch.ones(2, dtype=F64)
    costs = []
    solution = odeint_adjoint(
        lambda t, y: (theta * y[0] * t,), (y0,), 0.0, 1.0, (theta,), on_backward=costs.append
    )
    assert solution.state[0].grad_fn is not None and solution.nfe > 0 and not costs
    solution.state[0].sum().backward()
    assert len(costs) == 1 and costs[0].nfe > 0
    # y(1) = y0 exp(theta / 2): d sum(y(1)) / d theta = exp(theta / 2) = exp(0.35)
    torch.testing.assert_close(
        theta.grad, torch.tensor(1.4190675485932573, dtype=F64), rtol=1e-5, atol=0
    )
    with torch.no_grad():
        quiet = odeint_adjoint(lambda t, y: (theta * y[0],), (y0,), 0.0, 1.0, (theta,))
    assert quiet.state[0].grad_fn is None


def test_the_seminorm_takes_no_more_backward_steps_and_agrees():
    torch.manual_seed(0)
    layer = ContinuousFlow(VectorField(3, (16,)), atol=1e-7, rtol=1e-7).double()
    _perturb(layer)
    x = torch.randn(6, 3, generator=_generator(3), dtype=F64)
    params = tuple(layer.parameters())

    def field(t, y):
        return (layer.velocity(y[0], t),)

    out = {}
    for seminorm in (False, True):
        costs = []
        solution = odeint_adjoint(
            field, (x,), 0.0, 1.0, params, 1e-7, 1e-7, batch_ndim=1, seminorm=seminorm,
            on_backward=costs.append,
        )  # fmt: skip
        out[seminorm] = torch.autograd.grad(solution.state[0].square().sum(), params)
        out[seminorm, "nfe"] = costs[0].nfe
    assert out[True, "nfe"] <= out[False, "nfe"]
    for a, b in zip(out[True], out[False], strict=True):
        assert _relative(a, b) < 1e-5


# -- the layer and the model against backpropagation through the solver ------------------------
def _cnf(adjoint: bool, divergence: str = "exact", tol: float = 1e-8) -> CNF:
    torch.manual_seed(0)
    flow = CNF(
        3, hidden_sizes=(16,), context_size=2, divergence=divergence, atol=tol, rtol=tol,
        adjoint=adjoint,
    ).double()  # fmt: skip
    _perturb(flow)
    return flow


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_adjoint_gradients_of_log_prob_match_backpropagation(divergence: str) -> None:
    x0 = torch.randn(5, 3, generator=_generator(4), dtype=F64)
    c0 = torch.randn(5, 2, generator=_generator(5), dtype=F64)
    grads = {}
    for adjoint in (False, True):
        flow = _cnf(adjoint, divergence)
        x, c = x0.clone().requires_grad_(), c0.clone().requires_grad_()
        torch.manual_seed(6)  # the same Hutchinson noise for both
        log_prob = flow.log_prob(x, c)
        (-log_prob.mean() + 0.1 * (log_prob * torch.arange(5.0, dtype=F64)).sum()).backward()
        grads[adjoint] = [x.grad, c.grad] + [p.grad for p in flow.parameters()]
        ode = flow.bijector[-1]
        assert ode.nfe > 0 and (ode.nfe_adjoint > 0) == adjoint
    assert len(grads[True]) == len(grads[False]) > 2
    for adjoint_grad, direct_grad in zip(grads[True], grads[False], strict=True):
        assert adjoint_grad is not None
        assert _relative(adjoint_grad, direct_grad) < 1e-6  # the solver's 1e-8, 100 times


def test_the_adjoint_forward_is_the_same_solve_and_eval_keeps_no_graph() -> None:
    x = torch.randn(4, 3, generator=_generator(7), dtype=F64)
    c = torch.randn(4, 2, generator=_generator(8), dtype=F64)
    adjoint, direct = _cnf(True).eval(), _cnf(False).eval()
    torch.testing.assert_close(adjoint.log_prob(x, c), direct.log_prob(x, c), rtol=0, atol=1e-12)
    with torch.no_grad():
        assert adjoint.log_prob(x, c).grad_fn is None
    assert adjoint.bijector[-1].nfe_adjoint == 0  # nothing was backpropagated


def test_gradients_reach_an_embedding_net_through_the_adjoint() -> None:
    spec = {"name": "MLPEmbedding", "input_size": 4, "output_size": 2, "hidden_sizes": [8]}
    flow = CNF(3, hidden_sizes=(8,), embedding=spec, adjoint=True, atol=1e-6, rtol=1e-6)
    _perturb(flow)
    flow.log_prob(torch.randn(5, 3), torch.randn(5, 4)).sum().backward()
    for name, p in flow.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
    assert any(float(p.grad.abs().max()) > 0 for p in flow.context_encoder.parameters())


def test_an_adjoint_cnf_trains_by_likelihood_with_hutchinson() -> None:
    from torchnf import fit

    g = _generator(0)
    data = torch.cat(
        [torch.randn(128, 2, generator=g) * 0.3 + 2, torch.randn(128, 2, generator=g) * 0.3 - 2]
    )
    torch.manual_seed(0)
    flow = CNF(2, hidden_sizes=(16,), divergence="hutchinson", adjoint=True)
    history = fit(flow, data, steps=20, lr=1e-2, log_every=10, progress=False, batch_size=64)
    assert history["val_nll"][-1] < history["val_nll"][0]
    assert flow.bijector[-1].nfe_adjoint > 0


# -- the contract, the config -------------------------------------------------------------------
def _adjoint_entry(cls: type) -> Entry:
    if cls is CNF:
        example = lambda c: CNF(3, (8,), context_size=c, atol=1e-10, rtol=1e-10, adjoint=True)  # noqa: E731
    else:
        example = lambda c: ContinuousFlow(  # noqa: E731
            VectorField(3, hidden_sizes=(8,), context_size=c), atol=1e-10, rtol=1e-10,
            adjoint=True,
        )  # fmt: skip
    return Entry(f"{cls.__name__}[adjoint]", cls, "layer", example, True)


ADJOINT_CASES = [
    Case(_adjoint_entry(cls), context_size, inverse_view)
    for cls in (ContinuousFlow, CNF)
    for context_size in (0, CONTEXT_SIZE)
    for inverse_view in (False, True)
    if cls is ContinuousFlow or not inverse_view  # CNF's inverse view checks nothing new
]
CONTRACT = [
    contract.test_inverse_returns_tensor_and_round_trips,
    contract.test_dtype_follows_input,
    contract.test_state_dict_reload_gives_identical_outputs,
    contract.test_wrong_feature_size_is_refused,
    contract.test_non_floating_input_is_refused,
]


@pytest.mark.parametrize("case", ADJOINT_CASES, ids=[c.id for c in ADJOINT_CASES])
def test_the_adjoint_flow_passes_the_contract(case: Case) -> None:
    # The registered examples with adjoint=True; check() takes the Jacobians by reverse mode,
    # through the adjoint's backward solves, and needs every parameter's gradient.
    layers = [m for m in case.build().modules() if isinstance(m, ContinuousFlow)]
    assert len(layers) == 1 and layers[0].adjoint
    contract.test_check_passes(case)
    for test in CONTRACT:
        test(case)
    if case.context_size:
        contract.test_missing_context_is_refused(case)


def test_cnf_records_adjoint_and_old_configs_rebuild_without_it() -> None:
    flow = CNF(2, hidden_sizes=(8,), adjoint=True)
    assert flow.config["adjoint"] is True and flow.bijector[-1].adjoint
    assert build("CNF", flow.config).bijector[-1].adjoint
    old = {k: v for k, v in flow.config.items() if k != "adjoint"}
    assert build("CNF", old).bijector[-1].adjoint is False
    assert "adjoint=True" in repr(flow.bijector[-1])


# -- refusals -----------------------------------------------------------------------------------
def _one_line(error: pytest.ExceptionInfo) -> None:
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: ContinuousFlow(VectorField(2), adjoint="yes"), "expected adjoint True or False"),
        (lambda: CNF(2, adjoint=1), "expected adjoint True or False"),
        (
            lambda: odeint_adjoint(lambda t, y: y, (torch.ones(2, dtype=torch.long),), 0.0, 1.0),
            "expected floating tensors in state",
        ),
        (
            lambda: odeint_adjoint(lambda t, y: y, (torch.ones(2),), 0.0, 1.0, params=[3.0]),
            "expected floating tensors in params, got float at 0",
        ),
        (
            lambda: odeint_adjoint(lambda t, y: y, (torch.ones(2),), 0.0, 1.0, seminorm="yes"),
            "expected seminorm True or False",
        ),
        (
            lambda: odeint_adjoint(
                lambda t, y: y, (torch.ones(2, requires_grad=True),), 0.0, 1.0, atol=0.0
            ),
            "expected atol > 0",
        ),
        (
            lambda: odeint_adjoint(
                lambda t, y: y, (torch.ones(2, requires_grad=True),), 0.0, 1.0, max_steps=0
            ),
            "expected max_steps >= 1",
        ),
        (
            lambda: dopri5(lambda t, y: y, (torch.ones(2),), 0.0, 1.0, unbatched=2),
            r"expected 0 <= unbatched <= 1",
        ),
        (
            lambda: dopri5(lambda t, y: y, (torch.ones(2),), 0.0, 1.0, controlled=0),
            r"expected 1 <= controlled <= 1 or None",
        ),
    ],
    ids=[
        "layer", "model", "integer-state", "non-tensor-param", "seminorm", "atol",
        "max-steps", "unbatched", "controlled",
    ],
)  # fmt: skip
def test_bad_arguments_are_refused_in_one_line(call, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        call()
    _one_line(error)


def test_a_failing_backward_solve_says_it_is_the_adjoint() -> None:
    theta = torch.tensor(1.0, requires_grad=True)

    def field(t, y):  # finite forward (no grad mode), non-finite in the backward solve
        scale = float("nan") if torch.is_grad_enabled() else 1.0
        return (theta * y[0] * scale,)

    solution = odeint_adjoint(field, (torch.ones(3),), 0.0, 1.0, (theta,))
    with pytest.raises(ConvergenceError, match=r"^the adjoint \(backward\) solve failed: ") as e:
        solution.state[0].sum().backward()
    _one_line(e)


def test_double_backward_through_the_adjoint_is_refused() -> None:
    theta = torch.tensor(0.5, dtype=F64, requires_grad=True)
    solution = odeint_adjoint(lambda t, y: (theta * y[0],), (torch.ones(2, dtype=F64),), 0.0, 1.0,
                              (theta,))  # fmt: skip
    with pytest.raises(RuntimeError, match="cannot be differentiated again") as error:
        torch.autograd.grad(solution.state[0].sum(), theta, create_graph=True)
    _one_line(error)


# -- memory -------------------------------------------------------------------------------------
def test_adjoint_memory_stays_flat_as_the_steps_grow_and_backprop_grows() -> None:
    sys.path.insert(0, str(BENCHMARK.parent))
    try:
        from cnf_adjoint import saved_tensor_meter
    finally:
        sys.path.remove(str(BENCHMARK.parent))
    peaks = {}
    for adjoint in (False, True):
        for tol in (1e-3, 1e-9):
            torch.manual_seed(0)
            flow = CNF(2, hidden_sizes=(16,), atol=tol, rtol=tol, adjoint=adjoint).double()
            _perturb(flow, scale=0.5)
            x = torch.randn(64, 2, generator=_generator(9), dtype=F64)
            with saved_tensor_meter(flow) as meter:
                (-flow.log_prob(x).mean()).backward()
            peaks[adjoint, tol] = (meter.peak, flow.bijector[-1].nfe)
            assert meter.current == 0  # everything saved was released
    (direct_few, nfe_few), (direct_many, nfe_many) = peaks[False, 1e-3], peaks[False, 1e-9]
    assert nfe_many > 3 * nfe_few and direct_many > 3 * direct_few  # grows with the steps
    assert peaks[True, 1e-9] == (peaks[True, 1e-3][0], nfe_many)  # flat, as many steps
    assert peaks[True, 1e-9][0] < direct_few / 10


def test_the_benchmark_prints_its_table() -> None:
    argv = [sys.executable, str(BENCHMARK), "--quick"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=True)
    rows = [line.split(" | ") for line in done.stdout.splitlines() if line.startswith("| 1e-04")]
    assert [r[1] for r in rows] == ["backprop", "adjoint"], done.stdout
    assert float(rows[1][4]) < float(rows[0][4])  # adjoint saves less
