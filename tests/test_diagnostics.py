"""The KL benchmark, the per-layer trace, and the check/bench/trace commands."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import Tensor

from torchnf import Chain, Flow
from torchnf.cli import main
from torchnf.core.bijector import Bijector
from torchnf.core.registry import REGISTRY, register
from torchnf.data import GaussianTarget, get_energy, get_target
from torchnf.diagnostics import KLEstimate, kl_divergence, trace, trace_layers
from torchnf.distributions.base import DiagonalNormal
from torchnf.layers import Reverse
from torchnf.models import RealNVP


def _correlated_gaussian() -> GaussianTarget:
    return GaussianTarget("g2", [1.0, -0.5], [[1.5, 0.0], [0.8, 0.4]])


def test_kl_estimate_from_terms() -> None:
    kl = KLEstimate.from_terms(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))
    assert kl.value == 2.5 and kl.n == 4
    assert kl.stderr == pytest.approx(math.sqrt(5 / 3) / 2)
    assert str(kl) == "2.5000 ± 0.6455"


@pytest.mark.parametrize(
    "flow_name", ["identity", "untrained-RealNVP"], ids=["identity", "untrained-RealNVP"]
)
@pytest.mark.parametrize("target_name", ["g2", "gaussian16"])
def test_kl_of_an_identity_flow_equals_the_analytic_kl(flow_name: str, target_name: str) -> None:
    target = _correlated_gaussian() if target_name == "g2" else get_target(target_name)
    torch.manual_seed(0)
    flow = Flow(Reverse(target.dim)) if flow_name == "identity" else RealNVP(target.dim).double()
    kl = kl_divergence(flow, target, n=20000, seed=3)
    exact = target.kl_to_standard_normal()
    assert abs(kl.value - exact) < 3 * kl.stderr, (kl, exact)
    assert kl.n == 20000 and 0 < kl.stderr < 0.05 * exact


def test_kl_is_seeded_and_refuses_a_wrong_target() -> None:
    flow = Flow(Reverse(2))
    assert kl_divergence(flow, "ring", 500, seed=1) == kl_divergence(flow, "ring", 500, seed=1)
    with pytest.raises(ValueError, match="expected a target of dimension 2"):
        kl_divergence(flow, "gaussian16", 100)
    with pytest.raises(ValueError, match="unknown data set"):
        kl_divergence(flow, "nope", 100)


def test_kl_of_a_conditional_flow_takes_one_context() -> None:
    torch.manual_seed(0)
    flow = RealNVP(2, n_layers=2, hidden_sizes=(8,), context_size=3).double()
    context = torch.ones(3, dtype=torch.float64)
    kl = kl_divergence(flow, "moons", 300, context=context)
    x = get_target("moons").sample(300, seed=0, dtype=torch.float64)
    with torch.no_grad():
        log_q = flow.log_prob(x, context.expand(300, 3))
    expected = get_target("moons").log_prob(x) - log_q
    assert kl.value == pytest.approx(float(expected.mean()), rel=1e-12)


def _diagonal_gaussian_flow() -> Flow:
    """q = N(m, diag(s^2)) in float64 (a diagonal-normal base behind a Reverse)."""
    base = DiagonalNormal(3).double()
    with torch.no_grad():
        base.loc.copy_(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64))
        base.log_scale.copy_(torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64))
    return Flow(Reverse(3), base)


def _same_distribution(kind: str, flow: Flow) -> torch.distributions.Distribution:
    loc, scale = flow.base.loc.detach().flip(0), flow.base.log_scale.detach().exp().flip(0)
    if kind == "Independent(Normal)":
        return torch.distributions.Independent(torch.distributions.Normal(loc, scale), 1)
    return torch.distributions.MultivariateNormal(loc, torch.diag(scale.square()))


@pytest.mark.parametrize("kind", ["Independent(Normal)", "MultivariateNormal"])
def test_kl_to_a_torch_distribution_equal_to_the_flow_is_zero(kind: str) -> None:
    flow = _diagonal_gaussian_flow()
    kl = kl_divergence(flow, _same_distribution(kind, flow), n=2000, seed=1)
    assert abs(kl.value) <= 3 * kl.stderr + 1e-12 and kl.stderr < 1e-12


def _torch_gaussian(dim: int) -> tuple[torch.distributions.Distribution, float]:
    """A torch Gaussian target of dimension ``dim`` and its exact KL to N(0, I)."""
    d = torch.distributions
    if dim == 1:
        target = d.Normal(torch.tensor(0.5, dtype=torch.float64), 1.5)
        reference = d.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0)
    else:
        tril = torch.tensor([[1.5, 0, 0], [0.4, 0.8, 0], [-0.3, 0.2, 1.1]], dtype=torch.float64)
        target = d.MultivariateNormal(torch.tensor([0.5, 0.0, -0.5]).double(), scale_tril=tril)
        reference = d.MultivariateNormal(torch.zeros(3).double(), torch.eye(3).double())
    return target, float(d.kl_divergence(target, reference))


@pytest.mark.parametrize("dim", [1, 3], ids=["Normal-1d", "MultivariateNormal-3d"])
def test_kl_to_a_torch_distribution_matches_the_analytic_kl(dim: int) -> None:
    target, exact = _torch_gaussian(dim)
    kl = kl_divergence(Flow(Reverse(dim)).double(), target, n=20000, seed=3)
    assert abs(kl.value - exact) < 3 * kl.stderr, (kl, exact)


def test_trace_of_a_torch_distribution_is_seeded_and_leaves_the_global_rng_alone() -> None:
    target, _ = _torch_gaussian(3)
    flow = Flow(Chain(Reverse(3), Reverse(3))).double()
    rng = torch.get_rng_state()
    points = trace(flow, target, n=500, seed=2)
    assert torch.equal(torch.get_rng_state(), rng)
    assert points[-1] == kl_divergence(flow, target, n=500, seed=2) == points[0]
    assert kl_divergence(flow, target, n=500, seed=3) != points[-1]


def test_kl_to_an_energy_subtracts_its_log_normalizer() -> None:
    flow = _perturbed_realnvp(2)
    # the energy's samples are float32 (its default), the target's float64
    by_energy = kl_divergence(flow, get_energy("banana"), n=1000, seed=4)
    by_target = kl_divergence(flow, "banana", n=1000, seed=4)
    assert by_energy.value == pytest.approx(by_target.value, abs=1e-4)


@pytest.mark.parametrize(
    "target, match",
    [
        (
            torch.distributions.Normal(torch.zeros(2), 1.0),
            r"got a Normal of batch_shape \(2,\) and event_shape \(\).*Independent",
        ),
        (3.0, r"expected a target: a torchnf Target .* got float"),
        (get_energy("u1"), "expected an energy with an exact sampler; 'u1' has none"),
        (get_target("gaussian16"), "expected a target of dimension 2 for this flow"),
    ],
    ids=["batched-distribution", "float", "energy-without-sampler", "wrong-dimension"],
)
def test_kl_refuses_what_is_not_a_target(target, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        kl_divergence(Flow(Reverse(2)), target, n=100)


def _perturbed_realnvp(n_layers: int = 3) -> Flow:
    flow = RealNVP(2, n_layers=n_layers, hidden_sizes=(16,)).double()
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in flow.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return flow


def test_trace_has_a_point_per_layer_and_ends_at_the_kl() -> None:
    flow = _perturbed_realnvp(3)
    points = trace(flow, "moons", n=4000, seed=2)
    assert len(points) == len(trace_layers(flow)) + 1 == len(flow.bijector) + 1
    kl = kl_divergence(flow, "moons", n=4000, seed=2)
    assert points[-1].value == pytest.approx(kl.value, rel=1e-10, abs=1e-12)
    assert points[-1].stderr == pytest.approx(kl.stderr, rel=1e-8)
    target = get_target("moons")
    x = target.sample(4000, seed=2, dtype=torch.float64)
    start = target.log_prob(x) - flow.base.log_prob(x)
    assert points[0].value == pytest.approx(float(start.mean()), rel=1e-12)
    assert len({round(p.value, 6) for p in points}) > 2  # the layers change the KL


def test_trace_counts_a_nested_chain_as_one_layer_and_a_lone_bijector_as_one() -> None:
    nested = Flow(Chain(Reverse(2), Chain(Reverse(2), Reverse(2))))
    assert len(trace(nested, "ring", n=100)) == 3
    assert len(trace(Flow(Reverse(2)), "ring", n=100)) == 2


class BrokenScale(Bijector):
    """y = 2x with a wrong log-det (log 2 instead of D log 2): what `torchnf check` must catch."""

    def __init__(self, input_size: int) -> None:
        super().__init__((input_size,))
        self.weight = torch.nn.Parameter(torch.ones(input_size))

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return 2 * x * self.weight, x.new_full(x.shape[:-1], math.log(2))

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return y / (2 * self.weight), y.new_full(y.shape[:-1], -math.log(2))


@pytest.fixture
def broken_layer():
    register("layer", example=lambda context_size: BrokenScale(3))(BrokenScale)
    try:
        yield "BrokenScale"
    finally:
        REGISTRY.pop("BrokenScale")


def test_check_command_passes_on_registered_entries(capsys) -> None:
    assert main(["check", "Reverse", "AffineCoupling", "RealNVP"]) == 0
    out = capsys.readouterr().out
    assert "5 of 5 passed" in out and "FAIL" not in out


def test_check_command_fails_with_a_clear_row_on_a_broken_layer(broken_layer, capsys) -> None:
    assert main(["check", broken_layer, "Reverse"]) == 1
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith(f"| {broken_layer}"))
    assert "FAIL: log_det error" in row
    assert "1 of 2 passed" in out
    assert "BrokenScale" in REGISTRY  # the fixture removes it afterwards


def test_check_command_refuses_an_unknown_name(capsys) -> None:
    assert main(["check", "NoSuchLayer"]) == 1
    assert "unknown layer or model" in capsys.readouterr().err


def test_bench_command_writes_a_table_json_and_plot(tmp_path, capsys) -> None:
    argv = ["bench", "--models", "RealNVP", "--targets", "moons", "mixture1d", "--steps", "20"]
    argv += ["--n-points", "500", "--n-eval", "500", "--n-layers", "2", "--out", str(tmp_path)]
    status = main(argv)
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "bench.json").read_text())["results"]
    assert [r["target"] for r in results] == ["moons", "mixture1d"]
    assert (tmp_path / "bench.png").stat().st_size > 0 and "| RealNVP | moons" in out
    # RealNVP's couplings need two features: the 1-D row fails, clearly, and so does the exit.
    assert status == 1 and "error" in results[1] and "kl" in results[0]


def test_trace_command_on_a_trained_run(tmp_path, capsys) -> None:
    argv = ["train", "--data", "moons", "--model", "RealNVP", "--steps", "20", "--n-points"]
    argv += ["500", "--n-layers", "2", "--out", str(tmp_path), "--name", "r", "--no-plots"]
    assert main([*argv, "--quiet"]) == 0
    assert main(["trace", str(tmp_path / "r"), "-n", "500"]) == 0
    out = capsys.readouterr().out
    assert out.count("| start") == 1 and "| 3: AffineCoupling" in out
    assert (tmp_path / "r" / "trace.png").stat().st_size > 0
    assert main(["trace", str(tmp_path / "r"), "--target", "ring", "-n", "500"]) == 0
    assert main(["trace", str(tmp_path / "r"), "--target", "gaussian16"]) == 1
