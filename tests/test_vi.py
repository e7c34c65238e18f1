"""Variational inference: the reverse-KL objective, its path-derivative estimator, and
``fit(flow, target=...)`` with annealing, ESS in the log, seeding, checkpoints and resume."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

import torchnf
from torchnf import Flow
from torchnf.distributions.base import DiagonalNormal
from torchnf.layers import Reverse
from torchnf.models import RealNVP

MEAN = torch.tensor([1.0, -2.0])
COV = torch.tensor([[1.0, 0.8], [0.8, 2.0]])
OPTIONS = dict(lr=1e-2, lr_schedule="constant", progress=False, log_every=50, seed=0)


def target() -> MultivariateNormal:
    return MultivariateNormal(MEAN, COV)


def small_flow(seed: int = 0) -> RealNVP:
    torch.manual_seed(seed)
    return RealNVP(2, n_layers=2, hidden_sizes=(16,))


def exact_kl(flow, n: int = 20000) -> float:
    """KL(q || p) by Monte Carlo under q, with p normalized (exact densities)."""
    with torch.no_grad():
        x, log_q = flow.sample_and_log_prob(n)
        return float((log_q - target().log_prob(x)).mean())


def matched_flow(seed: int = 0) -> Flow:
    """A flow equal to a Gaussian with diagonal covariance (the base), perturbed or not."""
    flow = Flow(Reverse(2), DiagonalNormal(2))
    with torch.no_grad():
        flow.base.loc.copy_(torch.tensor([0.3, -0.1]) * seed)
    return flow


def test_reverse_kl_is_kl_minus_log_z_for_an_unnormalized_target():
    flow = matched_flow(seed=1)
    torch.manual_seed(0)
    normalized = torchnf.reverse_kl(flow, target(), 4096)
    torch.manual_seed(0)
    shifted = torchnf.reverse_kl(flow, lambda x: target().log_prob(x) + 3.0, 4096)
    assert float(shifted.detach()) == pytest.approx(float(normalized.detach()) - 3.0, abs=1e-5)


def test_the_path_gradient_vanishes_at_the_optimum():
    # q = p exactly: the path-derivative gradient is 0 for every draw; the score term is not.
    flow = matched_flow()
    standard = MultivariateNormal(torch.zeros(2), torch.eye(2))
    torch.manual_seed(0)
    torchnf.reverse_kl(flow, standard, 64, path_gradient=True).backward()
    assert all(float(p.grad.abs().max()) < 1e-6 for p in flow.parameters())
    flow.zero_grad()
    torch.manual_seed(0)
    torchnf.reverse_kl(flow, standard, 64).backward()
    assert max(float(p.grad.abs().max()) for p in flow.parameters()) > 1e-3


@pytest.mark.parametrize("path_gradient", [False, True], ids=["standard", "path-gradient"])
def test_fit_to_a_target_reaches_a_small_kl(path_gradient):
    flow = small_flow()
    history = torchnf.fit(
        flow,
        target=lambda x: target().log_prob(x) + 5.0,  # unnormalized: log Z = 5
        steps=400,
        batch_size=256,
        path_gradient=path_gradient,
        **OPTIONS,
    )
    assert exact_kl(flow) < 0.02
    # The loss is KL - log Z; the last batches' importance weights are nearly uniform.
    assert history["val_reverse_kl"][-1] == pytest.approx(-5.0, abs=0.05)
    assert history["ess"][-1] > 0.9


def test_annealing_logs_beta_rising_to_one():
    history = torchnf.fit(
        small_flow(), target=target(), steps=200, batch_size=64, anneal_steps=100, **OPTIONS
    )
    assert history["beta"] == pytest.approx([0.01 + 0.99 * 0.5, 1.0, 1.0, 1.0])


def test_fit_to_a_target_is_seeded_and_leaves_the_global_random_state():
    a, b = small_flow(), small_flow()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    torchnf.fit(a, target=target(), steps=20, batch_size=64, **OPTIONS)
    torchnf.fit(b, target=target(), steps=20, batch_size=64, **OPTIONS)
    assert torch.equal(torch.get_rng_state(), before)
    for x, y in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(x, y)


def test_a_target_run_checkpoints_and_resumes(tmp_path):
    run = tmp_path / "run"
    torchnf.fit(small_flow(), target=target(), steps=50, batch_size=64, run=run, **OPTIONS)
    history = torchnf.fit(
        small_flow(1), target=target(), steps=100, batch_size=64, run=run, resume=True, **OPTIONS
    )
    assert history["step"] == [100]
    with pytest.raises(ValueError, match="cannot resume, the checkpoint has another data"):
        other = MultivariateNormal(MEAN + 1, COV)
        torchnf.fit(small_flow(), target=other, steps=150, run=run, resume=True, **OPTIONS)


def test_early_stopping_on_the_validation_estimate():
    history = torchnf.fit(
        small_flow(), target=target(), steps=5000, batch_size=64, patience=2, **OPTIONS
    )
    assert history.stopped is not None and history["step"][-1] < 5000


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda f: torchnf.fit(f, torch.zeros(300, 2), target=target()), "data or a target"),
        (lambda f: torchnf.fit(f, path_gradient=True), "expected data to fit"),
        (lambda f: torchnf.fit(f, torch.zeros(300, 2), anneal_steps=5), "are for fit"),
        (lambda f: torchnf.fit(f, target=3.0), "expected the target as a callable"),
        (lambda f: torchnf.reverse_kl(f, target(), 0), "expected n_samples >= 1"),
        (lambda f: torchnf.reverse_kl(f, lambda x: x, 8), r"to return shape \(8,\)"),
        (
            lambda f: torchnf.fit(
                RealNVP(2, n_layers=1, context_size=1), target=target(), progress=False
            ),
            "fits an unconditional flow",
        ),
    ],
    ids=[
        "data-and-target",
        "nothing",
        "anneal-with-data",
        "not-callable",
        "no-samples",
        "wrong-shape",
        "conditional",
    ],
)
def test_bad_calls_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call(small_flow())


def test_a_conditional_reverse_kl_takes_one_context():
    flow = RealNVP(2, n_layers=1, hidden_sizes=(8,), context_size=1)
    loss = torchnf.reverse_kl(flow, target(), 32, context=torch.ones(1))
    assert loss.shape == () and math.isfinite(float(loss.detach()))
