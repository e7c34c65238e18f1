"""Training: nll, fit (threshold, logging, initialization, checks, resume)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import torchnf
from torchnf.data import get_target
from torchnf.layers import ActNorm
from torchnf.models import RealNVP
from torchnf.train.loop import needs_initialize


@pytest.fixture(autouse=True)
def one_thread():
    # Small flows train fastest on one thread, and far faster on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def moons() -> torch.Tensor:
    return get_target("moons").sample(4000, seed=0)


def small_flow(seed: int = 0, context_size: int = 0) -> RealNVP:
    torch.manual_seed(seed)
    return RealNVP(2, n_layers=4, hidden_sizes=(32, 32), context_size=context_size)


def test_nll_is_the_mean_negative_log_prob(moons):
    flow = small_flow()
    assert torch.equal(torchnf.nll(flow, moons[:64]), -flow.log_prob(moons[:64]).mean())


def test_fit_reaches_a_fixed_nll_on_moons(moons):
    # Moons' entropy is 1.03 nats, the best Gaussian's NLL about 1.9.
    flow = small_flow()
    history = torchnf.fit(flow, moons, steps=400, lr=5e-3, seed=0, progress=False)
    assert history["val_nll"][-1] < 1.35
    assert history["val_nll"][-1] < history["val_nll"][0]
    assert not flow.training


def test_fit_writes_json_lines_and_history(moons, tmp_path):
    flow = small_flow()
    history = torchnf.fit(
        flow, moons, steps=30, log_every=10, progress=False, log_path=tmp_path / "m.jsonl"
    )
    lines = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert lines == history.records
    assert [r["step"] for r in lines] == [10, 20, 30]
    assert set(lines[0]) >= {"step", "epoch", "train_nll", "val_nll", "lr", "grad_norm", "time"}
    assert history["lr"][-1] == pytest.approx(0.0, abs=1e-12)  # the cosine schedule ends at 0


def test_fit_initializes_actnorm_once_on_the_first_batch(moons):
    flow = small_flow()
    assert needs_initialize(flow)
    torchnf.fit(flow, moons, steps=1, lr=0.0, progress=False)
    actnorm = flow.bijector[0]
    assert isinstance(actnorm, ActNorm) and bool(actnorm.initialized)
    assert not needs_initialize(flow)
    center = actnorm.center.clone()
    torchnf.fit(flow, moons + 100.0, steps=1, lr=0.0, progress=False)  # not re-initialized
    assert torch.equal(actnorm.center, center)


def test_fit_can_leave_initialization_to_the_user(moons):
    flow = small_flow()
    torchnf.fit(flow, moons, steps=1, lr=0.0, initialize=False, progress=False)
    assert needs_initialize(flow)  # ActNorm stays the identity it starts as


def test_fit_epochs_and_numpy_float64_data(moons):
    flow = small_flow()
    data = moons[:600].double().numpy()
    history = torchnf.fit(
        flow, data, epochs=2, batch_size=100, val_fraction=0.0, progress=False, log_every=1000
    )
    assert history["step"] == [12]  # 2 epochs of 600 // 100 batches
    assert "val_nll" not in history.records[0]


def test_fit_conditional(moons):
    flow = small_flow(context_size=1)
    context = (moons[:, :1] > 0).float()
    history = torchnf.fit(flow, moons, context, steps=20, progress=False, log_every=20)
    assert np.isfinite(history["val_nll"][-1])


def test_fit_resumes_exactly(moons, tmp_path):
    options = dict(lr=3e-3, lr_schedule="constant", progress=False, log_every=10, seed=3)
    straight = small_flow()
    torchnf.fit(straight, moons, steps=40, **options)
    resumed = small_flow()
    torchnf.fit(resumed, moons, steps=20, checkpoint_dir=tmp_path, **options)
    assert torchnf.load(tmp_path).config == resumed.config
    fresh = small_flow(seed=5)  # different weights: everything comes from the checkpoint
    history = torchnf.fit(fresh, moons, steps=40, checkpoint_dir=tmp_path, resume=True, **options)
    assert history["step"] == [30, 40]
    for (name, a), b in zip(
        straight.state_dict().items(), fresh.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def _with(x: torch.Tensor, row: int, value: float) -> torch.Tensor:
    x = x.clone()
    x[row, 0] = value
    return x


BAD_DATA = {
    "integer": (lambda x: x.long(), "expected floating-point data, got dtype torch.int64"),
    "integer-numpy": (lambda x: x.long().numpy(), "expected floating-point data, got dtype int64"),
    "wrong-shape": (lambda x: x[:, :1], r"expected data of shape \(N, 2\), got \(4000, 1\)"),
    "nan": (lambda x: _with(x, 17, float("nan")), "expected finite data, found NaN at row 17"),
    "inf": (lambda x: _with(x, 3, float("inf")), "expected finite data, found inf at row 3"),
    "too-few": (lambda x: x[:100], "expected at least batch_size=256 training points"),
}


@pytest.mark.parametrize("case", list(BAD_DATA.values()), ids=list(BAD_DATA))
def test_fit_refuses_bad_data(moons, case):
    transform, message = case
    with pytest.raises(ValueError, match=message):
        torchnf.fit(small_flow(), transform(moons), steps=1, progress=False)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(steps=1, epochs=1), "either steps or epochs"),
        (dict(steps=0), "expected a positive number of steps"),
        (dict(batch_size=0), "expected batch_size >= 1"),
        (dict(val_fraction=1.0), "expected 0 <= val_fraction < 1"),
        (dict(lr_schedule="linear"), "expected lr_schedule"),
        (dict(resume=True), "resume=True needs a checkpoint_dir"),
    ],
    ids=["steps-and-epochs", "zero-steps", "zero-batch", "all-validation", "schedule", "resume"],
)
def test_fit_refuses_bad_options(moons, options, message):
    with pytest.raises(ValueError, match=message):
        torchnf.fit(small_flow(), moons, progress=False, **options)


def test_fit_conditional_needs_context(moons):
    with pytest.raises(ValueError, match=r"expected a context of shape \(N, 1\)"):
        torchnf.fit(small_flow(context_size=1), moons, steps=1, progress=False)


def test_fit_reports_divergence(moons):
    flow = small_flow()
    with torch.no_grad():
        for p in flow.bijector[1].parameters():
            p.fill_(float("nan"))
    with pytest.raises(ValueError, match="training diverged at step 1"):
        torchnf.fit(flow, moons, steps=1, progress=False)


def test_fit_with_bfloat16_conditioners_trains_and_restores_the_dtype(moons):
    options = dict(steps=150, lr=3e-3, progress=False, log_every=50, seed=0)
    full = torchnf.fit(small_flow(), moons, **options)
    flow = small_flow()
    with torch.no_grad():
        untrained = torchnf.nll(flow, moons).item()  # 2.35 nats
    mixed = torchnf.fit(flow, moons, conditioner_dtype=torch.bfloat16, **options)
    assert mixed["val_nll"][-1] < untrained - 0.5
    # bfloat16 rounding perturbs the trajectory (1.659 against 1.655 here), no more.
    assert mixed["val_nll"][-1] != full["val_nll"][-1]
    assert abs(mixed["val_nll"][-1] - full["val_nll"][-1]) < 0.02
    assert all(m.compute_dtype is None for m in flow.modules() if hasattr(m, "compute_dtype"))


def test_fit_refuses_low_precision_conditioners_on_a_float64_flow(moons):
    with pytest.raises(ValueError, match="needs a float32 flow"):
        torchnf.fit(
            small_flow().double(), moons.double(), steps=1, conditioner_dtype=torch.bfloat16
        )
