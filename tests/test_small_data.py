"""Small data: early stopping on by default with a validation split, and the overfitting
warning (issue 17, item 2; measured in benchmarks/small_data.py)."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from torchnf import fit
from torchnf.models import MAF
from torchnf.train.hooks import OverfittingWarning

#: A flow of 2 x 2 x 32 x 32 hidden units on 8 training points memorizes them within tens of
#: steps: its validation NLL rises by tens of nats while its training NLL falls.
MEMORIZING = dict(steps=200, batch_size=8, lr=2e-2, val_fraction=0.5, log_every=5, progress=False)


def memorizing_fit(**options) -> tuple[object, list[str]]:
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    flow = MAF(2, n_layers=2, hidden_sizes=(32, 32))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", OverfittingWarning)
        history = fit(flow, x, **(MEMORIZING | options))
    return history, [str(w.message) for w in caught if w.category is OverfittingWarning]


def test_the_warning_fires_once_on_a_memorizing_flow_and_names_the_fixes() -> None:
    history, messages = memorizing_fit(patience=None)
    assert history.stopped is None and history["step"][-1] == MEMORIZING["steps"]
    assert len(messages) == 1
    assert "overfitting" in messages[0] and "use early stopping (patience)" in messages[0]
    assert "more data" in messages[0] and "weight decay" in messages[0]


def test_early_stopping_is_on_by_default_with_a_validation_split() -> None:
    history, messages = memorizing_fit()
    assert history.stopped is not None and history.stopped.startswith("early stopping")
    assert "for 10 log intervals" in history.stopped
    assert history["step"][-1] < MEMORIZING["steps"]
    assert len(messages) == 1 and "keeps the best validation weights" in messages[0]


def test_without_a_validation_split_training_runs_all_steps() -> None:
    history, messages = memorizing_fit(val_fraction=0.0, steps=30)
    assert history.stopped is None and history["step"][-1] == 30 and not messages


def test_the_warning_stays_silent_on_a_well_fitting_flow() -> None:
    x = torch.randn(400, 2, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(1)
    flow = MAF(2, n_layers=1, hidden_sizes=(2,))
    with warnings.catch_warnings():
        warnings.simplefilter("error", OverfittingWarning)
        history = fit(flow, x, steps=100, batch_size=200, lr=1e-2, log_every=10, progress=False)
    assert history.stopped is None
    assert abs(history["val_nll"][-1] - history["train_nll"][-1]) < 0.3


@pytest.mark.parametrize(
    "patience", ["soon", 0, -1, 2.5], ids=["word", "zero", "negative", "float"]
)
def test_fit_refuses_a_bad_patience(patience) -> None:
    with pytest.raises(ValueError, match="expected patience >= 1 log intervals, 'auto' or None"):
        fit(MAF(2, n_layers=1, hidden_sizes=(2,)), torch.randn(20, 2), patience=patience)


def test_the_command_prints_the_warning_as_one_line(tmp_path) -> None:
    data = tmp_path / "tiny.npy"
    np.save(data, np.random.default_rng(0).standard_normal((16, 2)).astype(np.float32))
    argv = [sys.executable, "-m", "torchnf", "train", "--data", str(data), "--model", "maf"]
    argv += ["--n-layers", "2", "--hidden-sizes", "32", "32", "--steps", "60", "--lr", "0.02"]
    argv += ["--batch-size", "8", "--val-fraction", "0.5", "--log-every", "5", "--patience"]
    argv += ["none", "--no-plots", "--quiet", "--out", str(tmp_path / "runs")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=True)
    lines = [line for line in done.stderr.splitlines() if "warning" in line]
    assert len(lines) == 1 and lines[0].startswith("torchnf train: warning: the validation NLL")
    assert "use early stopping (patience)" in lines[0]
