"""Training and sampling on a GPU: CUDA equals CPU, no host syncs per step, CUDA graphs.

Skipped where no CUDA device is present (CI has none); ``benchmarks/gpu.sh`` runs this file
on a GPU machine.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import torchnf
from torchnf.data import get_target
from torchnf.models import MAF, NSF, RealNVP
from torchnf.nets import conditioner_precision

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

MODELS = {
    "RealNVP": lambda: RealNVP(2, n_layers=4, hidden_sizes=(32, 32)),
    "MAF": lambda: MAF(2, n_layers=3, hidden_sizes=(32, 32)),
    "NSF": lambda: NSF(2, n_layers=3, hidden_sizes=(32, 32), n_bins=6),
}
every_model = pytest.mark.parametrize("name", list(MODELS))


@pytest.fixture(scope="module")
def moons() -> torch.Tensor:
    return get_target("moons").sample(4000, seed=0)


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return MODELS[name]()


@every_model
def test_fit_on_cuda_matches_cpu(name: str, moons: torch.Tensor) -> None:
    options = dict(steps=50, lr=3e-3, progress=False, log_every=25, seed=0)
    cpu, cuda = build(name).double(), build(name).double()
    torchnf.fit(cpu, moons.double(), **options)
    history = torchnf.fit(cuda, moons.double(), device="cuda", **options)
    assert next(cuda.parameters()).is_cuda and np.isfinite(history["val_nll"][-1])
    for (key, a), b in zip(cpu.state_dict().items(), cuda.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b.cpu(), rtol=1e-6, atol=1e-8, msg=key)


def _host_syncs(name: str, data: torch.Tensor, steps: int) -> int:
    """Number of device-to-host synchronizations of a whole ``fit`` of ``steps`` steps that
    logs once (at the end) and holds nothing out for validation."""
    flow = build(name).cuda()
    flow.initialize(data[:256].cuda())  # outside the count: a one-off before training
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torchnf.fit(flow, data, steps=steps, log_every=steps, val_fraction=0, progress=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@every_model
def test_fit_has_no_host_sync_per_step(name: str, moons: torch.Tensor) -> None:
    # The syncs of one log record and the end do not grow with the number of steps.
    assert _host_syncs(name, moons, 4) == _host_syncs(name, moons, 12)


@every_model
@pytest.mark.parametrize("mode", ["reduce-overhead"])
def test_fit_with_cuda_graphs_matches_eager(name: str, mode: str, moons: torch.Tensor) -> None:
    # In float64: the compiled step runs other (fused) kernels, whose float32 rounding 20 Adam
    # steps amplify to ~1e-4 relative (measured on an H200, at ActNorm's loc); float64 leaves
    # ~4e-11, so a tolerance far below any real difference between the two trainings.
    options = dict(steps=20, lr=3e-3, progress=False, log_every=10, seed=0, device="cuda")
    eager, graphed = build(name).double(), build(name).double()
    torchnf.fit(eager, moons.double(), **options)
    torchnf.fit(graphed, moons.double(), compile=mode, **options)
    for (key, a), b in zip(eager.state_dict().items(), graphed.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-9, msg=key)


@every_model
def test_sample_and_log_prob_on_cuda_match_cpu(name: str) -> None:
    flow = build(name).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(64, 2, dtype=torch.float64)
    expected = flow.log_prob(x)
    actual = flow.cuda().log_prob(x.cuda())
    torch.testing.assert_close(actual.cpu(), expected, rtol=1e-9, atol=1e-9)
    z = flow.sample(128)
    assert z.is_cuda and z.shape == (128, 2) and z.isfinite().all()


@every_model
def test_fit_with_bfloat16_conditioners_on_cuda(name: str, moons: torch.Tensor) -> None:
    options = dict(steps=100, lr=3e-3, progress=False, log_every=50, seed=0, device="cuda")
    full = torchnf.fit(build(name), moons, **options)
    flow = build(name)
    mixed = torchnf.fit(flow, moons, conditioner_dtype=torch.bfloat16, **options)
    assert abs(mixed["val_nll"][-1] - full["val_nll"][-1]) < 0.05
    x = moons[:512].cuda()
    with torch.no_grad(), conditioner_precision(flow, torch.bfloat16):
        y, log_det = flow(x)
        x_back, inverse_log_det = flow.inverse_and_log_det(y)
    # Exact bijection to float32 rounding, but for rare points near a bf16 rounding boundary.
    close = ((x_back - x).abs() < 1e-4).all(-1)
    assert close.float().mean() > 0.99
    torch.testing.assert_close(inverse_log_det[close], -log_det[close], rtol=1e-4, atol=1e-4)
