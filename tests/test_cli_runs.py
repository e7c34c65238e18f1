"""``torchnf train`` and its run folder: refusal of an existing run, --overwrite, --resume
checks, a checkpoint on SIGTERM, the umask on every file (plots included), early stopping,
data warnings and --dequantize."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from torchnf import cli
from torchnf.train.checkpoint import load_training_state

SMALL = ["--model", "RealNVP", "--n-layers", "2", "--hidden-sizes", "8", "--batch-size", "64"]
SMALL += ["--log-every", "5", "--quiet"]


def train(tmp_path, *extra: str, data: str = "moons") -> int:
    argv = ["train", "--data", data, "--n-points", "600", "--steps", "10", *SMALL, "--no-plots"]
    return cli.main([*argv, "--out", str(tmp_path), "--name", "run", *extra])


def snapshot(path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_an_existing_run_is_refused_in_one_line(tmp_path, capsys):
    assert train(tmp_path) == 0
    before = snapshot(tmp_path / "run")
    capsys.readouterr()
    assert train(tmp_path, "--steps", "20") == 1
    line = one_error_line(capsys)
    assert "already holds a run" in line and "--overwrite" in line and "--resume" in line
    assert snapshot(tmp_path / "run") == before


def test_overwrite_replaces_and_resume_continues(tmp_path):
    assert train(tmp_path) == 0
    assert train(tmp_path, "--overwrite", "--seed", "1") == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["seed"] == 1
    assert train(tmp_path, "--steps", "20", "--seed", "1", "--resume") == 0
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [r["step"] for r in records] == [5, 10, 15, 20]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize(
    "change, what",
    [(["--n-layers", "3"], "model config"), (["--seed", "2"], "data")],
    ids=["model", "data"],
)
def test_resume_refuses_another_model_or_data(tmp_path, capsys, change, what):
    assert train(tmp_path) == 0
    before = snapshot(tmp_path / "run")
    capsys.readouterr()
    assert train(tmp_path, "--steps", "20", "--resume", *change) == 1
    assert f"cannot resume, the checkpoint has another {what}" in one_error_line(capsys)
    assert snapshot(tmp_path / "run") == before


def test_resume_and_overwrite_exclude_each_other(tmp_path, capsys):
    assert train(tmp_path, "--resume", "--overwrite") == 2
    assert "not allowed with argument" in one_error_line(capsys)


def test_sigterm_writes_a_checkpoint_then_resume_finishes(tmp_path):
    argv = ["train", "--data", "moons", "--n-points", "600", "--steps", "100000", *SMALL]
    argv += ["--no-plots", "--out", str(tmp_path), "--name", "run"]
    process = subprocess.Popen(
        [sys.executable, "-m", "torchnf", *argv],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    log = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (log.exists() and log.read_text().count("\n") >= 2):
        assert time.monotonic() < deadline and process.poll() is None, "training did not start"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "interrupted by SIGTERM at step" in err and "continue it with --resume" in err
    step = load_training_state(tmp_path / "run")["step"]
    records = [json.loads(x) for x in log.open()]
    assert records[-1]["step"] == step  # the interruption is logged and checkpointed
    final = str(step + 5)
    assert train(tmp_path, "--steps", final, "--resume") == 0
    steps = [json.loads(x)["step"] for x in log.open()]
    assert steps == sorted(set(steps)) and steps[-1] == step + 5


@pytest.mark.parametrize("umask", [0o022, 0o077], ids=oct)
def test_every_file_of_a_run_has_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        argv = ["train", "--data", "moons", "--n-points", "600", "--steps", "5", *SMALL]
        assert cli.main([*argv, "--out", str(tmp_path), "--name", "run"]) == 0
    finally:
        os.umask(old)
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"loss.png", "samples.png", "model.safetensors", "config.json"} <= names
    for path in (tmp_path / "run").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path.name


def test_patience_stops_early(tmp_path, capsys):
    argv = ["--steps", "3000", "--lr", "0.05", "--patience", "1", "--log-every", "10"]
    assert train(tmp_path, *argv) == 0
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").open()]
    assert steps[-1] < 3000


def test_integer_data_are_flagged_and_dequantized(tmp_path, capsys):
    counts = np.random.default_rng(0).poisson([3.0, 8.0], size=(600, 2)).astype(np.float64)
    np.save(tmp_path / "counts.npy", counts)
    data = str(tmp_path / "counts.npy")
    assert train(tmp_path, data=data) == 0
    assert "warning: all values are integers" in capsys.readouterr().err
    assert train(tmp_path, "--overwrite", "--dequantize", data=data) == 0
    assert "warning" not in capsys.readouterr().err


def test_dequantize_refuses_fractional_data(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(600, 2)))
    assert train(tmp_path, "--dequantize", data=str(tmp_path / "x.npy")) == 1
    assert "--dequantize needs integer-valued data" in one_error_line(capsys)
