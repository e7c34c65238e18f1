"""Amortized posteriors from the command: `torchnf train --data theta.npy --context x.npy` and
`torchnf sample RUN --context FILE -n N` (issue 13, item 6 without sbi)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from torchnf import cli

torch.set_num_threads(1)

#: theta ~ N(0, I_2), x = theta + 0.5 e: the posterior is N(0.8 x, 0.2 I_2). The simulator's
#: outputs are shown at a scale of 1e6, which the flow's context standardization absorbs.
SCALE = 1e6
N_SIMULATIONS = 3000


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("conditional")
    rng = np.random.default_rng(0)
    theta = rng.standard_normal((N_SIMULATIONS, 2))
    x = theta + 0.5 * rng.standard_normal((N_SIMULATIONS, 2))
    np.save(tmp / "theta.npy", theta)
    np.save(tmp / "x.npy", SCALE * x)
    argv = ["train", "--data", str(tmp / "theta.npy"), "--context", str(tmp / "x.npy")]
    argv += ["--model", "RealNVP", "--n-layers", "4", "--hidden-sizes", "32", "--steps", "400"]
    argv += ["--batch-size", "256", "--lr", "3e-3", "--out", str(tmp), "--name", "post"]
    assert cli.main([*argv, "--quiet", "--no-plots"]) == 0
    return tmp


def test_the_run_records_a_conditional_model(run) -> None:
    config = json.loads((run / "post" / "config.json").read_text())
    assert config["config"]["context_size"] == 2
    assert config["context"].endswith("x.npy")


def test_samples_per_context_row_follow_the_posterior(run, capsys) -> None:
    observations = np.array([[0.0, 0.0], [1.0, -1.0], [-1.5, 0.5]])
    np.save(run / "obs.npy", SCALE * observations)
    argv = ["sample", str(run / "post"), "--context", str(run / "obs.npy"), "-n", "2000"]
    assert cli.main([*argv, "-o", str(run / "samples.npy"), "--batch-size", "1500"]) == 0
    assert "for each of 3 context rows" in capsys.readouterr().out
    samples = np.load(run / "samples.npy")
    assert samples.shape == (3 * 2000, 2)
    per_row = samples.reshape(3, 2000, 2)  # the samples of row 0 first, then row 1, ...
    np.testing.assert_allclose(per_row.mean(1), 0.8 * observations, atol=0.15)
    np.testing.assert_allclose(per_row.std(1), np.sqrt(0.2), rtol=0.25)


def test_the_same_seed_gives_the_same_samples(run) -> None:
    np.savetxt(run / "obs.csv", SCALE * np.array([[0.5, 0.5]]), delimiter=",")
    for name in ("a.npy", "b.npy"):
        argv = ["sample", str(run / "post"), "--context", str(run / "obs.csv"), "-n", "10"]
        assert cli.main([*argv, "-o", str(run / name), "--seed", "3"]) == 0
    assert np.array_equal(np.load(run / "a.npy"), np.load(run / "b.npy"))


def _error_cases(tmp) -> dict[str, list[str]]:
    post = str(tmp / "post")
    train = ["train", "--data", str(tmp / "theta.npy"), "--steps", "1", "--quiet", "--no-plots"]
    train += ["--out", str(tmp / "errors")]
    return {
        "context-rows-mismatch": [*train, "--context", str(tmp / "short.npy")],
        "context-missing-file": [*train, "--context", str(tmp / "missing.npy")],
        "context-nan": [*train, "--context", str(tmp / "nan.npy")],
        "model-without-context": [*train, "--model", "PlanarFlow", "--context", str(tmp / "x.npy")],
        "sample-without-context": ["sample", post, "-o", str(tmp / "s.npy")],
        "sample-wrong-width": ["sample", post, "--context", str(tmp / "three.npy"), "-o", "s.npy"],
        "sample-grid": ["sample", post, "--context", str(tmp / "obs2.npy"), "-o", "g.png"],
    }


ERRORS = {
    "context-rows-mismatch": r"short.npy: expected one context row per data row, shape \(3000, k\)",
    "context-missing-file": "missing.npy: no such data file",
    "context-nan": "finite",
    "model-without-context": "--context: PlanarFlow takes no context",
    "sample-without-context": r"the model is conditional; give --context FILE .* \(2,\)",
    "sample-wrong-width": r"expected contexts of shape \(M, 2\) for this run, got \(4, 3\)",
    "sample-grid": "a .png image grid is for unconditional image runs",
}


@pytest.mark.parametrize("name", list(ERRORS), ids=list(ERRORS))
def test_errors_are_one_line(run, capsys, name) -> None:
    np.save(run / "short.npy", np.zeros((10, 2)))
    np.save(run / "three.npy", np.zeros((4, 3)))
    np.save(run / "obs2.npy", np.zeros((4, 2)))
    nan = np.zeros((N_SIMULATIONS, 2))
    nan[5, 1] = np.nan
    np.save(run / "nan.npy", nan)
    argv = _error_cases(run)[name]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"torchnf {argv[0]}: error: ")
    assert re.search(ERRORS[name], err), err


def test_unconditional_run_refuses_a_context(tmp_path, capsys) -> None:
    argv = ["train", "--data", "moons", "--n-points", "300", "--steps", "1", "--model", "RealNVP"]
    assert cli.main([*argv, "--out", str(tmp_path), "--name", "u", "--quiet", "--no-plots"]) == 0
    np.save(tmp_path / "c.npy", np.zeros((3, 2)))
    argv = ["sample", str(tmp_path / "u"), "--context", str(tmp_path / "c.npy")]
    assert cli.main([*argv, "-o", str(tmp_path / "s.npy")]) == 1
    assert "the model is unconditional; drop --context" in capsys.readouterr().err
