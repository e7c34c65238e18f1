"""Continuous normalizing flows and flow matching: the ODE solver, the divergence estimators,
the ContinuousFlow layer and CNF model, flow_matching_loss, and the objective through fit and
the command. (The bijector contract, log-det against autograd included, is test_contract.py.)"""

from __future__ import annotations

import itertools
import math
import sys

import pytest
import torch
from torch import Tensor

import torchnf
from torchnf import Flow, fit, flow_matching_loss
from torchnf.cli import main
from torchnf.functional.ode import (
    conditional_path,
    divergence_exact,
    divergence_hutchinson,
    divergence_noise,
    dopri5,
    ot_pairing,
    sinkhorn,
    tolerance_floor,
)
from torchnf.functional.solvers import ConvergenceError
from torchnf.layers import ActNorm, ContinuousFlow, Reverse, VectorField
from torchnf.models import CNF, NSF
from torchnf.train.loop import evaluate_nll
from torchnf.train.objectives import Batch, FlowMatching, get_objective

F64 = torch.float64


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _perturbed_layer(context_size: int = 0, divergence: str = "exact", seed: int = 0):
    torch.manual_seed(seed)
    field = VectorField(3, hidden_sizes=(16,), context_size=context_size)
    layer = ContinuousFlow(field, divergence=divergence, atol=1e-9, rtol=1e-9).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=_generator(seed + 1), dtype=F64))
    return layer


# -- the solver ---------------------------------------------------------------------------------
@pytest.mark.parametrize("tol", [1e-4, 1e-7, 1e-10], ids=["1e-4", "1e-7", "1e-10"])
@pytest.mark.parametrize("backwards", [False, True], ids=["forward", "backward"])
def test_dopri5_solves_a_linear_ode_to_its_tolerance(tol: float, backwards: bool) -> None:
    a = torch.randn(4, 4, generator=_generator(), dtype=F64)
    y0 = torch.randn(6, 4, generator=_generator(1), dtype=F64)
    t0, t1 = (1.0, -0.5) if backwards else (0.0, 1.5)
    solution = dopri5(lambda t, y: (y[0] @ a.T,), (y0,), t0, t1, tol, tol, batch_ndim=1)
    exact = y0 @ torch.linalg.matrix_exp((t1 - t0) * a).T
    error = float(((solution.state[0] - exact).abs() / (1 + exact.abs())).max())
    assert error < 10 * tol
    assert solution.nfe == 2 + 6 * (solution.n_steps + solution.n_rejected)


def test_dopri5_tracks_a_time_dependent_ode_and_its_cost_grows_as_the_tolerance_shrinks() -> None:
    y0 = torch.tensor([[1.0], [-2.0]], dtype=F64)
    nfes = []
    for tol in (1e-5, 1e-10):
        solution = dopri5(lambda t, y: (t * y[0],), (y0,), 0.0, 2.0, tol, tol, batch_ndim=1)
        torch.testing.assert_close(solution.state[0], y0 * math.exp(2.0), rtol=10 * tol, atol=0)
        nfes.append(solution.nfe)
    assert nfes[0] < nfes[1]


def test_dopri5_controls_the_error_of_every_batch_element() -> None:
    # One fast-decaying element among 99 easy ones: it alone sets the steps, so it is solved
    # to the tolerance too; an RMS over the whole batch (batch_ndim=0) averages it away.
    rates = torch.tensor([[0.1]] * 99 + [[-8.0]], dtype=F64)
    y0 = torch.ones(100, 1, dtype=F64)
    errors = []
    for batch_ndim in (1, 0):
        solution = dopri5(
            lambda t, y: (rates * y[0],), (y0,), 0.0, 1.0, 1e-6, 1e-6, 100, batch_ndim
        )
        errors.append(float((solution.state[0] - torch.exp(rates)).abs().max()))
    assert errors[0] < 2e-7 < 5 * errors[0] < errors[1]


def test_dopri5_floors_tolerances_at_the_dtype_and_solves_nothing_for_an_empty_interval() -> None:
    y0 = torch.ones(3)
    solution = dopri5(lambda t, y: (-y[0],), (y0,), 0.0, 1.0, 1e-14, 1e-14)
    assert solution.n_steps < 100  # float32 tolerances are raised to 64 eps, ~7.6e-6
    assert tolerance_floor(torch.float32) == 64 * torch.finfo(torch.float32).eps
    assert dopri5(lambda t, y: (-y[0],), (y0,), 0.5, 0.5).nfe == 0


def test_dopri5_reports_too_many_steps_with_where_it_stopped() -> None:
    with pytest.raises(ConvergenceError, match=r"did not reach t=1 in 3 steps \(stopped at t="):
        dopri5(lambda t, y: (-50 * y[0],), (torch.ones(2, dtype=F64),), 0.0, 1.0, 1e-12, 1e-12, 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"atol": 0.0}, "expected atol > 0 and rtol >= 0"),
        ({"rtol": -1.0}, "expected atol > 0 and rtol >= 0"),
        ({"max_steps": 0}, "expected max_steps >= 1"),
    ],
    ids=["atol", "rtol", "max-steps"],
)
def test_dopri5_refuses_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dopri5(lambda t, y: y, (torch.ones(2),), 0.0, 1.0, **kwargs)


def test_dopri5_refuses_non_finite_dynamics() -> None:
    with pytest.raises(ConvergenceError, match="non-finite"):
        dopri5(lambda t, y: (y[0] / 0.0,), (torch.ones(2),), 0.0, 1.0)


# -- divergence -------------------------------------------------------------------------------
def _field_and_points() -> tuple[VectorField, Tensor]:
    field = _perturbed_layer().field
    x = torch.randn(5, 3, generator=_generator(2), dtype=F64)
    return field, x


def test_exact_divergence_is_the_trace_of_the_jacobian() -> None:
    field, x = _field_and_points()
    t = torch.tensor(0.3, dtype=F64)
    y = x.clone().requires_grad_(True)
    div = divergence_exact(field(y, t), y)
    for i in range(len(x)):
        jacobian = torch.autograd.functional.jacobian(lambda v: field(v, t), x[i])
        torch.testing.assert_close(div[i], torch.trace(jacobian))


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(kind: str) -> None:
    field, x = _field_and_points()
    t = torch.tensor(0.7, dtype=F64)
    point = x[:1].expand(40000, 3)  # one point, many independent noise draws
    y = point.clone().requires_grad_(True)
    v = field(y, t)
    exact = divergence_exact(v, y)[0]
    noise = divergence_noise(y, kind, _generator(3))
    estimates = divergence_hutchinson(v, y, noise)
    stderr = float(estimates.std()) / math.sqrt(len(estimates))
    assert float(estimates.std()) > 1e-3  # the estimates do vary
    assert abs(float(estimates.mean() - exact)) < 4 * stderr


def test_divergence_noise_refuses_an_unknown_kind() -> None:
    with pytest.raises(ValueError, match="expected noise 'rademacher' or 'gaussian'"):
        divergence_noise(torch.zeros(2, 2), "uniform")


# -- the layer --------------------------------------------------------------------------------
def test_a_fresh_layer_is_the_identity() -> None:
    layer = ContinuousFlow(VectorField(2, (8,)))
    x = torch.randn(7, 2)
    z, log_det = layer(x)
    assert torch.equal(z, x) and torch.equal(log_det, torch.zeros(7))


def test_log_det_is_the_integrated_divergence_of_a_linear_field() -> None:
    # v(x) = A x: z = exp(A) x and log|det| = tr(A), exactly.
    class Linear(torch.nn.Module):
        input_size, context_size = 2, 0

        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Parameter(torch.tensor([[0.3, -1.0], [0.5, -0.2]], dtype=F64))

        def forward(self, x: Tensor, t: Tensor, context: Tensor | None = None) -> Tensor:
            return x @ self.a.T

    layer = ContinuousFlow(Linear(), atol=1e-10, rtol=1e-10)
    x = torch.randn(4, 2, dtype=F64)
    z, log_det = layer(x)
    torch.testing.assert_close(z, x @ torch.linalg.matrix_exp(layer.field.a).T)
    torch.testing.assert_close(log_det, torch.full((4,), 0.1, dtype=F64))


def test_hutchinson_applies_in_training_mode_and_eval_is_exact() -> None:
    exact = _perturbed_layer(divergence="exact")
    estimated = _perturbed_layer(divergence="hutchinson")
    x = torch.randn(6, 3, generator=_generator(4), dtype=F64)
    with torch.no_grad():
        z, log_det = exact(x)
        z_train, log_det_train = estimated.train()(x)
        z_eval, log_det_eval = estimated.eval()(x)
    torch.testing.assert_close(z_train, z, atol=1e-7, rtol=1e-7)  # the state is the same ODE
    assert float((log_det_train - log_det).abs().max()) > 1e-4  # the log-det is estimated
    torch.testing.assert_close(z_eval, z, atol=0, rtol=0)
    torch.testing.assert_close(log_det_eval, log_det, atol=0, rtol=0)


def test_gradients_reach_the_field_through_the_solver_and_the_divergence() -> None:
    layer = _perturbed_layer(context_size=2, divergence="hutchinson")
    x = torch.randn(5, 3, dtype=F64)
    z, log_det = layer(x, torch.randn(5, 2, dtype=F64))
    log_det.sum().backward()
    grads = [p.grad for p in layer.parameters()]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    assert layer.nfe > 0


def test_a_solve_without_gradients_keeps_no_graph() -> None:
    layer = _perturbed_layer()
    with torch.no_grad():
        z, log_det = layer(torch.randn(4, 3, dtype=F64))
    assert not z.requires_grad and not log_det.requires_grad


def test_too_few_steps_raise_a_convergence_error() -> None:
    layer = _perturbed_layer()
    layer.max_steps = 2
    with pytest.raises(ConvergenceError, match="raise max_steps or the tolerances"):
        layer(torch.randn(4, 3, dtype=F64))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ContinuousFlow(VectorField(2), divergence="trace"), "expected divergence"),
        (lambda: ContinuousFlow(VectorField(2), noise="uniform"), "expected noise"),
        (lambda: ContinuousFlow(VectorField(2), atol=0), "expected atol > 0"),
        (lambda: ContinuousFlow(VectorField(2), max_steps=0), "expected max_steps >= 1"),
        (lambda: VectorField(2, activation="relu"), "expected activation in"),
        (lambda: VectorField(2, hidden_sizes=(0,)), "positive hidden_sizes"),
    ],
    ids=["divergence", "noise", "atol", "max-steps", "activation", "hidden-sizes"],
)
def test_bad_settings_are_refused(build, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


# -- flow matching maths ----------------------------------------------------------------------
@pytest.mark.parametrize("sigma_min", [0.0, 0.1])
def test_conditional_path_runs_from_data_to_noise_at_its_velocity(sigma_min: float) -> None:
    x, z = torch.randn(5, 3, dtype=F64), torch.randn(5, 3, dtype=F64)
    start, _ = conditional_path(x, z, torch.zeros(5, dtype=F64), sigma_min)
    end, _ = conditional_path(x, z, torch.ones(5, dtype=F64), sigma_min)
    torch.testing.assert_close(start, x + sigma_min * z)
    torch.testing.assert_close(end, z)
    t, h = torch.rand(5, dtype=F64), 1e-6
    (ahead, u), (behind, _) = (conditional_path(x, z, t + s, sigma_min) for s in (h, -h))
    torch.testing.assert_close((ahead - behind) / (2 * h), u)


def test_ot_pairing_is_the_optimal_assignment() -> None:
    pytest.importorskip("scipy")
    x = torch.randn(6, 2, generator=_generator(5))
    z = torch.randn(6, 2, generator=_generator(6))
    index = ot_pairing(x, z, "exact")
    cost = torch.cdist(x, z).square()
    best = min(float(cost[range(6), list(p)].sum()) for p in itertools.permutations(range(6)))
    assert sorted(index.tolist()) == list(range(6))
    assert math.isclose(float(cost[range(6), index].sum()), best, rel_tol=1e-5)


def test_ot_pairing_falls_back_to_sinkhorn_without_scipy(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "scipy.optimize", None)
    x = torch.randn(64, 2, generator=_generator(7))
    z = torch.randn(64, 2, generator=_generator(8))
    with pytest.raises(ImportError, match="needs SciPy"):
        ot_pairing(x, z, "exact")
    index = ot_pairing(x, z, "auto", _generator(9))
    paired = (x - z[index]).square().sum(-1).mean()
    independent = (x - z).square().sum(-1).mean()
    assert float(paired) < 0.5 * float(independent)  # far shorter pairs than at random


def test_sinkhorn_has_uniform_marginals() -> None:
    cost = torch.rand(5, 7, generator=_generator(10), dtype=F64)
    plan = sinkhorn(cost, reg=0.1)
    torch.testing.assert_close(plan.sum(1), torch.full((5,), 1 / 5, dtype=F64))
    torch.testing.assert_close(plan.sum(0), torch.full((7,), 1 / 7, dtype=F64))


# -- flow matching: the loss and the objective ------------------------------------------------
def _two_clusters(n: int, seed: int = 0) -> Tensor:
    """2-D data in two tight clusters, which a standardizing ActNorm alone fits badly."""
    g = _generator(seed)
    sign = torch.randint(0, 2, (n, 1), generator=g) * 2 - 1
    return torch.cat([3.0 * sign, torch.zeros(n, 1)], 1) + 0.4 * torch.randn(n, 2, generator=g)


def test_flow_matching_trains_a_cnf_that_beats_its_initial_density() -> None:
    torch.manual_seed(0)
    data, held_out = _two_clusters(2048), _two_clusters(1000, seed=1)
    flow = CNF(2, hidden_sizes=(32, 32))
    flow.initialize(data)
    initial = evaluate_nll(flow, held_out)
    history = fit(
        flow,
        data,
        objective="flow_matching",
        steps=600,
        lr=5e-3,
        progress=False,
        log_every=200,
        initialize=False,
    )
    losses = history["train_flow_matching"]
    assert losses[-1] < losses[0]
    # The initial flow is the standardized Gaussian (3.0 nats); the trained one, about 2.0.
    assert evaluate_nll(flow, held_out) < initial - 0.5


def test_flow_matching_loss_needs_a_continuous_flow() -> None:
    with pytest.raises(ValueError, match="got NSF, which has none: use the nll objective"):
        flow_matching_loss(NSF(2, n_layers=1, hidden_sizes=(4,)), torch.randn(4, 2))


def test_flow_matching_loss_takes_a_bare_continuous_layer_and_any_base() -> None:
    flow = Flow(ContinuousFlow(VectorField(2, (8,))))
    loss = flow_matching_loss(flow, torch.randn(16, 2))
    loss.backward()
    assert all(p.grad is not None for p in flow.bijector.field.parameters())
    assert loss.shape == ()


def test_flow_matching_leaves_the_layers_before_the_field_alone() -> None:
    flow = CNF(2, hidden_sizes=(8,))
    flow_matching_loss(flow, torch.randn(16, 2) + 5).backward()
    actnorm = flow.bijector[0]
    assert isinstance(actnorm, ActNorm) and actnorm.loc.grad is None


def test_flow_matching_of_a_conditional_cnf_and_ot_refused_with_context() -> None:
    flow = CNF(2, hidden_sizes=(8,), context_size=3)
    x, c = torch.randn(16, 2), torch.randn(16, 3)
    assert flow_matching_loss(flow, x, c).isfinite()
    with pytest.raises(ValueError, match="ot=True is for unconditional flows"):
        flow_matching_loss(flow, x, c, ot=True)
    with pytest.raises(ValueError, match="conditional: expected context"):
        flow_matching_loss(flow, x)


def test_ot_pairing_shortens_the_paths_the_field_regresses() -> None:
    pytest.importorskip("scipy")
    flow = CNF(2, hidden_sizes=(8,))  # the field is 0: the loss is the mean |z - x|^2
    x = torch.randn(256, 2, generator=_generator(11))
    torch.manual_seed(0)
    independent = float(flow_matching_loss(flow, x).detach())
    torch.manual_seed(0)
    paired = float(flow_matching_loss(flow, x, ot=True).detach())
    assert paired < 0.5 * independent


def test_the_validation_loss_is_seeded_and_leaves_the_global_generator_alone() -> None:
    flow = CNF(2, hidden_sizes=(8,))
    batch = Batch(torch.randn(32, 2))
    objective = FlowMatching(seed=3)
    flow.eval()
    state = torch.random.get_rng_state()
    first, second = objective(flow, batch), objective(flow, batch)
    assert torch.equal(first, second)
    assert torch.equal(torch.random.get_rng_state(), state)
    flow.train()
    assert not torch.equal(objective(flow, batch), objective(flow, batch))


def test_fit_with_flow_matching_logs_its_losses_and_is_reproducible() -> None:
    data = _two_clusters(512)

    def run() -> list[float]:
        torch.manual_seed(0)
        flow = CNF(2, hidden_sizes=(8,))
        history = fit(flow, data, objective="flow_matching", steps=20, log_every=10, progress=False)
        assert set(history.records[-1]) >= {"train_flow_matching", "val_flow_matching"}
        return history["val_flow_matching"]

    assert run() == run()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"objective": "kl"}, "expected objective 'nll' or 'flow_matching'"),
        ({"objective": 3}, "expected objective 'nll', 'flow_matching' or an Objective"),
        ({"model": "NSF", "objective": "flow_matching"}, "got NSF, which has none"),
        (
            {"objective": "flow_matching", "target": torch.distributions.Normal(0.0, 1.0)},
            "fit\\(target=...\\) minimizes the reverse KL",
        ),
    ],
    ids=["unknown", "not-an-objective", "not-continuous", "with-target"],
)
def test_fit_refuses_a_bad_objective_in_one_line(kwargs: dict, message: str) -> None:
    model = kwargs.pop("model", "CNF")
    flow = CNF(2, hidden_sizes=(8,)) if model == "CNF" else NSF(2, n_layers=1, hidden_sizes=(4,))
    data = None if "target" in kwargs else torch.randn(64, 2)
    with pytest.raises(ValueError, match=message) as error:
        fit(flow, data, steps=1, progress=False, **kwargs)
    assert "\n" not in str(error.value)


def test_get_objective_passes_objects_through() -> None:
    objective = FlowMatching(ot=True)
    assert get_objective(objective) is objective and get_objective("nll").name == "nll"


def test_a_cnf_trained_by_likelihood_improves_and_log_prob_is_exact_in_eval_mode() -> None:
    torch.manual_seed(0)
    data = _two_clusters(512)
    flow = CNF(2, hidden_sizes=(16,), divergence="hutchinson")
    history = fit(flow, data, steps=30, lr=1e-2, log_every=10, progress=False)
    assert history["val_nll"][-1] < history["val_nll"][0]
    flow.eval()
    exact = CNF(2, hidden_sizes=(16,))
    exact.load_state_dict(flow.state_dict())
    torch.testing.assert_close(flow.log_prob(data[:8]), exact.eval().log_prob(data[:8]))


# -- the command ------------------------------------------------------------------------------
SMALL = ["--n-points", "300", "--batch-size", "64", "--hidden-sizes", "8", "--no-plots"]


def test_train_command_fits_a_cnf_by_flow_matching(tmp_path, capsys) -> None:
    argv = ["train", "--data", "moons", "--model", "CNF", "--objective", "flow_matching", "--ot"]
    argv += [*SMALL, "--steps", "10", "--out", str(tmp_path), "--name", "fm"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "CNF on moons: NLL " in out and "(flow-matching loss " in out
    run = tmp_path / "fm"
    loaded = torchnf.load(run)
    assert type(loaded) is CNF
    metrics = (run / "metrics.jsonl").read_text()
    assert "val_flow_matching" in metrics
    assert '"objective": "flow_matching"' in (run / "config.json").read_text()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "NSF", "--objective", "flow_matching"], "NSF is not one (use --model CNF"),
        (["--model", "CNF", "--ot"], "--ot pairs data and noise for --objective flow_matching"),
    ],
    ids=["not-continuous", "ot-without-flow-matching"],
)
def test_train_command_refuses_before_any_work(tmp_path, capsys, extra, message) -> None:
    argv = ["train", "--data", "moons", *SMALL, "--steps", "1", "--out", str(tmp_path / "o")]
    assert main([*argv, *extra]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "o").exists()


def test_bench_refuses_flow_matching_for_other_models(tmp_path, capsys) -> None:
    argv = ["bench", "--models", "CNF", "RealNVP", "--objective", "flow_matching"]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 1
    assert "RealNVP is not one (use --models CNF)" in capsys.readouterr().err


def test_bench_labels_the_flow_matching_rows(tmp_path, capsys) -> None:
    argv = ["bench", "--models", "CNF", "--targets", "moons", "--objective", "flow_matching"]
    argv += ["--steps", "5", "--n-points", "500", "--n-eval", "200", "--hidden-sizes", "8"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    assert "| CNF (flow_matching) | moons" in capsys.readouterr().out


def test_reverse_a_noncontinuous_layer_chain_is_not_continuous() -> None:
    with pytest.raises(ValueError, match="got Flow, which has none"):
        flow_matching_loss(Flow(Reverse(2)), torch.randn(4, 2))


def _ddp_worker(rank: int, world: int, directory: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{directory}/rendezvous", rank=rank, world_size=world
    )
    try:
        torch.manual_seed(0)
        flow = CNF(2, hidden_sizes=(8,))
        fit(
            flow,
            _two_clusters(512),
            objective="flow_matching",
            steps=4,
            batch_size=64,
            log_every=2,
            progress=False,
        )
        torch.save(flow.state_dict(), f"{directory}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_flow_matching_trains_under_ddp_with_the_actnorm_left_out(tmp_path) -> None:
    # The ActNorm gets no gradient from flow matching: DDP must be told, or it waits for one.
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed missing")
    import torch.multiprocessing as torch_mp

    torch_mp.spawn(_ddp_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for key, value in ranks[0].items():
        assert torch.equal(ranks[1][key], value), key


def test_a_flow_matching_run_resumes_only_by_flow_matching(tmp_path, capsys) -> None:
    argv = ["train", "--data", "moons", "--model", "CNF", *SMALL, "--quiet", "--out", str(tmp_path)]
    argv += ["--name", "run"]
    assert main([*argv, "--objective", "flow_matching", "--steps", "4"]) == 0
    assert main([*argv, "--steps", "8", "--resume"]) == 1
    assert "has another objective ('flow_matching' saved, None now)" in capsys.readouterr().err
    assert main([*argv, "--objective", "flow_matching", "--steps", "8", "--resume"]) == 0
