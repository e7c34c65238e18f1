"""The `torchnf` command end to end, its help, and its one-line errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import torchnf
from torchnf import cli
from torchnf.train.checkpoint import load_training_state

SMALL = ["--steps", "30", "--n-points", "1500", "--n-layers", "2", "--hidden-sizes", "16"]
SMALL += ["--log-every", "10", "--quiet"]
COMMANDS = ["train", "sample", "evaluate", "check", "bench", "trace"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    status = cli.main(["train", "--data", "moons", "--model", "RealNVP", "--out", str(out)] + SMALL)
    assert status == 0
    return out / "moons-realnvp"


def test_train_writes_the_run(run):
    names = {p.name for p in run.iterdir()}
    assert names >= {"model.safetensors", "config.json", "metrics.jsonl"}
    assert names >= {"loss.png", "density.png", "samples.png"}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [10, 20, 30]
    info = json.loads((run / "config.json").read_text())
    assert (info["model"], info["data"]) == ("RealNVP", "moons")
    assert load_training_state(run)["step"] == 30
    assert info["config"]["n_layers"] == 2 and info["config"]["hidden_sizes"] == [16]
    assert torchnf.load(run).config == info["config"]


@pytest.mark.parametrize("suffix", [".npy", ".csv"], ids=["npy", "csv"])
def test_sample_then_evaluate(run, tmp_path, capsys, suffix):
    output = tmp_path / f"samples{suffix}"
    assert cli.main(["sample", str(run), "-n", "300", "-o", str(output), "--seed", "2"]) == 0
    samples = torchnf.data.loaders.load_array(output)
    assert samples.shape == (300, 2)
    capsys.readouterr()
    assert cli.main(["evaluate", str(run), "--data", str(output)]) == 0
    line = capsys.readouterr().out.strip()
    nll = float(line.split()[2])
    expected = -torchnf.load(run).log_prob(samples).mean().item()
    assert nll == pytest.approx(expected, rel=1e-5)
    assert "nats per dimension" in line and "over 300 points" in line


def test_train_on_a_csv_file(tmp_path):
    x = torch.randn(600, 3, generator=torch.Generator().manual_seed(0)) * 2 + 1
    np.savetxt(tmp_path / "points.csv", x.numpy(), delimiter=",", header="a,b,c", comments="")
    argv = ["train", "--data", str(tmp_path / "points.csv"), "--model", "RealNVP"]
    argv += ["--out", str(tmp_path), "--batch-size", "64", "--no-plots"] + SMALL
    assert cli.main(argv) == 0
    run = tmp_path / "points-realnvp"
    assert torchnf.load(run).event_shape == (3,)
    assert not (run / "density.png").exists()


def test_train_with_bfloat16_conditioners(tmp_path):
    argv = ["train", "--data", "moons", "--model", "MAF", "--out", str(tmp_path), "--no-plots"]
    assert cli.main(argv + ["--conditioner-dtype", "bfloat16"] + SMALL) == 0
    flow = torchnf.load(tmp_path / "moons-maf")
    assert all(getattr(m, "compute_dtype", None) is None for m in flow.modules())


def test_help_runs_as_a_module():
    result = subprocess.run(
        [sys.executable, "-m", "torchnf", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0
    assert all(word in result.stdout for word in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=COMMANDS)
def test_help_explains_every_option(command):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    for action in sub._actions:
        assert action.help, f"{command} {action.option_strings or action.dest} has no help"


def _error_cases(run_dir: str, tmp: str) -> dict[str, list[str]]:
    return {
        "unknown-data": ["train", "--data", "nope", "--out", tmp],
        "missing-data-file": ["train", "--data", f"{tmp}/missing.npy", "--out", tmp],
        "unknown-model": ["train", "--model", "Nope", "--out", tmp] + SMALL,
        "layer-not-model": ["train", "--model", "Reverse", "--out", tmp] + SMALL,
        "missing-run": ["sample", f"{tmp}/no-run", "-n", "5", "-o", f"{tmp}/s.npy"],
        "bad-output": ["sample", run_dir, "-n", "5", "-o", f"{tmp}/s.txt"],
        "corrupt-run": ["sample", f"{tmp}/corrupt", "-n", "5", "-o", f"{tmp}/s.npy"],
        "wrong-dimension": ["evaluate", run_dir, "--data", f"{tmp}/three.npy"],
        "nan-data": ["evaluate", run_dir, "--data", f"{tmp}/nan.csv"],
        "bad-device": ["train", "--device", "gpu", "--out", tmp] + SMALL,
        "missing-gpu": ["sample", run_dir, "--device", "cuda:7", "-o", f"{tmp}/s.npy"],
    }


ERRORS = {
    "unknown-data": "unknown data set 'nope'",
    "missing-data-file": "missing.npy: no such data file",
    "unknown-model": "unknown layer or model 'Nope'",
    "layer-not-model": "Reverse is a layer, not a model",
    "missing-run": "no-run: no such checkpoint directory",
    "bad-output": r"s.txt: expected a .npy, .csv or .png output file",
    "corrupt-run": "model.safetensors: corrupt checkpoint weights",
    "wrong-dimension": r"expected data in .*three.npy of shape \(N, 2\), got \(4, 3\)",
    "nan-data": r"nan\.csv: .*finite",
    "bad-device": "expected --device cpu, cuda or cuda:N, got 'gpu'",
    "missing-gpu": r"--device cuda:7: (CUDA is not available here|this machine has \d+ CUDA)",
}


@pytest.mark.parametrize("name", list(ERRORS), ids=list(ERRORS))
def test_errors_are_one_line(run, tmp_path, capsys, name):
    (tmp_path / "corrupt").mkdir()
    for file in ("config.json", "model.safetensors"):
        (tmp_path / "corrupt" / file).write_bytes((run / file).read_bytes())
    (tmp_path / "corrupt" / "model.safetensors").write_bytes(b"garbage")
    np.save(tmp_path / "three.npy", np.zeros((4, 3)))
    (tmp_path / "nan.csv").write_text("1,2\nnan,3\n")
    argv = _error_cases(str(run), str(tmp_path))[name]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"torchnf {argv[0]}: error: ")
    assert re.search(ERRORS[name], err), err
