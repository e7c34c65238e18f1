"""Distributed training: 2 gloo processes on CPU follow the single-process trajectory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import torchnf
from torchnf import cli
from torchnf.data import get_target
from torchnf.distributions.base import DiagonalNormal
from torchnf.models import RealNVP
from torchnf.train.checkpoint import load_training_state

STEPS, BATCH = 6, 64

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed missing")


def _flow() -> RealNVP:
    torch.manual_seed(0)
    flow = RealNVP(2, n_layers=2, hidden_sizes=(16,)).double()
    flow.base = DiagonalNormal(2).double()  # a learnable base: its gradients must sync too
    return flow


def _data() -> torch.Tensor:
    return get_target("moons").sample(1000, seed=0, dtype=torch.float64)


def _train(flow: RealNVP, data, checkpoint_dir=None) -> None:
    torchnf.fit(
        flow,
        data,
        steps=STEPS,
        batch_size=BATCH,
        lr=1e-2,
        seed=1,
        log_every=3,
        progress=False,
        checkpoint_dir=checkpoint_dir,
    )


def _worker(rank: int, world: int, directory: str, kind: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{directory}/rendezvous", rank=rank, world_size=world
    )
    try:
        flow = _flow()
        _train(flow, _source(kind, directory), checkpoint_dir=f"{directory}/run")
        torch.save(flow.state_dict(), f"{directory}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _source(kind: str, directory: str):
    """The data as a tensor, or as a memory-mapped .npy file that each rank reads its rows of."""
    return _data() if kind == "tensor" else f"{directory}/data.npy"


@pytest.mark.parametrize("kind", ["tensor", "npy"])
def test_two_gloo_processes_match_one_process(tmp_path, kind):
    np.save(tmp_path / "data.npy", _data().numpy())
    mp.spawn(_worker, args=(2, str(tmp_path), kind), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = _flow()
        _train(single, _data())
    finally:
        torch.set_num_threads(threads)
    initial = _flow().state_dict()
    assert not torch.equal(ranks[0]["base.loc"], initial["base.loc"])  # the base learned
    for key, value in single.state_dict().items():
        assert torch.equal(ranks[0][key], ranks[1][key]), key  # ranks identical
        torch.testing.assert_close(ranks[0][key], value, rtol=1e-7, atol=1e-8, msg=key)
    # Only rank 0 wrote the checkpoint, and it holds the trained weights.
    loaded = torchnf.load(tmp_path / "run", model=_flow())
    for key, value in ranks[0].items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_torchrun_command_trains_then_resumes(tmp_path):
    argv = ["train", "--data", "moons", "--model", "RealNVP", "--n-points", "1000"]
    argv += ["--n-layers", "2", "--hidden-sizes", "16", "--batch-size", "64", "--log-every", "5"]
    argv += ["--no-plots", "--quiet", "--out", str(tmp_path), "--name", "ddp", "--device", "cpu"]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    result = subprocess.run(
        [*launch, "-m", "torchnf", *argv, "--steps", "10"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    # Resume the 2-process run's checkpoint (written by rank 0 alone) in this process.
    assert cli.main([*argv, "--steps", "20", "--resume"]) == 0
    records = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").open()]
    assert [r["step"] for r in records] == [5, 10, 15, 20]
    assert load_training_state(tmp_path / "ddp")["step"] == 20
