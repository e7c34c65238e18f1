"""``torchnf vi`` (a built-in energy or a user's FILE.py:FUNCTION) and ``torchnf evaluate
--importance``: a run folder like train's, log Z recovered within its standard errors."""

from __future__ import annotations

import json
import re
import textwrap

import pytest
import torch

from torchnf import cli

SMALL = ["--model", "RealNVP", "--n-layers", "2", "--hidden-sizes", "16", "--batch-size", "256"]
SMALL += ["--lr", "5e-3", "--log-every", "100", "--quiet"]


def log_z_line(text: str) -> tuple[float, float, float]:
    """(estimate, standard error, exact) from a summary line."""
    found = re.search(r"log Z = (\S+) \+- (\S+),.*exact log Z = ([-\d.]+)", text)
    assert found, text
    return tuple(float(v.rstrip(",;")) for v in found.groups())


@pytest.fixture(scope="module")
def banana_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vi")
    argv = ["vi", "--target", "banana", "--steps", "600", *SMALL, "--out", str(out)]
    assert cli.main([*argv, "--name", "run", "--importance", "4000"]) == 0
    return out / "run"


def test_vi_writes_a_run_folder(banana_run):
    names = {p.name for p in banana_run.iterdir()}
    assert {"model.safetensors", "config.json", "metrics.jsonl", "loss.png", "density.png"} <= names
    config = json.loads((banana_run / "config.json").read_text())
    assert config["target"] == "banana" and config["model"] == "RealNVP"
    records = [json.loads(line) for line in (banana_run / "metrics.jsonl").open()]
    assert {"train_reverse_kl", "val_reverse_kl", "ess"} <= set(records[-1])


def test_evaluate_importance_recovers_log_z(banana_run, capsys):
    capsys.readouterr()
    assert cli.main(["evaluate", str(banana_run), "--importance", "20000"]) == 0
    out = capsys.readouterr().out
    estimate, stderr, exact = log_z_line(out)
    assert abs(estimate - exact) < 3 * stderr + 1e-3
    assert re.search(r"ESS \d+ of 20000, k-hat -?[\d.]+", out), out


def test_vi_refuses_an_existing_run(banana_run, capsys):
    argv = ["vi", "--target", "banana", "--steps", "5", *SMALL, "--out", str(banana_run.parent)]
    capsys.readouterr()
    assert cli.main([*argv, "--name", "run"]) == 1
    assert "already holds a run" in capsys.readouterr().err


def test_vi_on_a_users_function(tmp_path, capsys):
    source = tmp_path / "model.py"
    source.write_text(
        textwrap.dedent(
            """
            import torch

            def log_density(x):  # N((1, -1), 0.5^2 I), unnormalized
                return -((x - torch.tensor([1.0, -1.0])) ** 2).sum(-1) / (2 * 0.25)
            """
        )
    )
    argv = ["vi", "--target", f"{source}:log_density", "--dim", "2", "--steps", "300", *SMALL]
    assert cli.main([*argv, "--out", str(tmp_path), "--no-plots"]) == 0
    assert (
        cli.main(["evaluate", str(tmp_path / "vi-log_density-realnvp"), "--importance", "4000"])
        == 0
    )
    out = capsys.readouterr().out
    found = re.search(r"log Z = (\S+) \+- (\S+),", out.splitlines()[-1])
    estimate, stderr = float(found.group(1)), float(found.group(2).rstrip(","))
    exact = torch.log(torch.tensor(2 * torch.pi * 0.25)).item()  # the Gaussian's constant
    assert abs(estimate - exact) < 3 * stderr + 1e-3


@pytest.mark.parametrize(
    "argv, message",
    [
        (["vi", "--target", "nope"], "unknown energy 'nope'"),
        (["vi", "--target", "missing.py:f", "--dim", "2"], "missing.py: no such Python file"),
        (["vi", "--target", "u1", "--dim", "3"], "is 2-dimensional"),
    ],
    ids=["unknown-energy", "missing-file", "wrong-dim"],
)
def test_bad_targets_get_one_line(tmp_path, capsys, argv, message):
    assert cli.main([*argv, "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0]), err


def test_evaluate_needs_data_or_importance(banana_run, capsys):
    assert cli.main(["evaluate", str(banana_run)]) == 1
    assert "expected --data (an NLL) or --importance N" in capsys.readouterr().err


def test_a_file_target_needs_its_dimension(tmp_path, capsys):
    (tmp_path / "f.py").write_text("def f(x):\n    return -(x**2).sum(-1)\n")
    assert cli.main(["vi", "--target", f"{tmp_path / 'f.py'}:f", "--out", str(tmp_path)]) == 1
    assert "give --dim" in capsys.readouterr().err
