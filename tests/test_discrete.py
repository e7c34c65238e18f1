"""Discrete and mixed columns: the dequantization bounds against exact discrete likelihoods,
variational against uniform dequantization, categorical columns as bits, the command."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from torchnf import Flow, cli
from torchnf.models import Dequantized
from torchnf.models.discrete import check_columns, check_integers, discrete_nll
from torchnf.train import fit

GRID = 200  # midpoints per axis of a unit bin: exact bin masses to ~1e-5 for these flows


def _flow(dequantizer: str, perturb: float = 0.2) -> Dequantized:
    """A 2-column all-discrete model in float64, away from its initialization."""
    torch.manual_seed(0)
    config = {"n_layers": 2, "hidden_sizes": [8]}
    flow = Dequantized(2, "RealNVP", config, dequantizer=dequantizer, hidden_sizes=[8], n_bins=4)
    flow = flow.double()
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in flow.parameters():
            p.add_(perturb * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return flow.eval()


def _bin_log_mass(log_prob, k: torch.Tensor) -> torch.Tensor:
    """``log`` of the integral of ``exp(log_prob)`` over the unit bin of each row of ``k``
    (midpoint rule on a GRID x GRID grid)."""
    t = (torch.arange(GRID, dtype=torch.float64) + 0.5) / GRID
    u = torch.cartesian_prod(t, t)
    with torch.no_grad():
        values = torch.stack([log_prob(row + u) for row in k])
    return torch.logsumexp(values, 1) - math.log(len(u))


K = torch.tensor([[0.0, 0.0], [-1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)


def test_the_variational_map_keeps_each_bins_mass():
    flow = _flow("variational")
    inner = Flow(flow.bijector[-1], flow.base)  # the density p before the dequantizer
    torch.testing.assert_close(
        _bin_log_mass(flow.log_prob, K), _bin_log_mass(inner.log_prob, K), atol=1e-3, rtol=0
    )


def test_the_uniform_bound_is_jensens_inequality_over_the_bin():
    flow = _flow("uniform")
    t = (torch.arange(GRID, dtype=torch.float64) + 0.5) / GRID
    with torch.no_grad():
        elbo = torch.stack([flow.log_prob(row + torch.cartesian_prod(t, t)).mean() for row in K])
        draws = flow.log_weights(K, n_samples=4000, generator=torch.Generator().manual_seed(2))
    assert (elbo < _bin_log_mass(flow.log_prob, K)).all()
    torch.testing.assert_close(draws.mean(0), elbo, atol=0.02, rtol=0)


def test_elbo_below_importance_weighted_below_exact():
    flow = _flow("variational")
    exact = _bin_log_mass(Flow(flow.bijector[-1], flow.base).log_prob, K)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        weights = flow.log_weights(K, n_samples=4000, generator=g)  # (4000, 3)
    elbo = weights.mean(0)
    pairs = weights.reshape(1000, 4, len(K))  # 1000 importance-weighted estimates with S = 4
    importance = (torch.logsumexp(pairs, 1) - math.log(4)).mean(0)
    assert (elbo < importance - 0.05).all() and (importance < exact - 0.01).all()
    many = torch.logsumexp(weights, 0) - math.log(4000)  # S = 4000: close to exact
    torch.testing.assert_close(many, exact, atol=0.05, rtol=0)


def test_discrete_nll_reports_both_bounds_from_the_same_draws():
    flow = _flow("variational")
    elbo, importance = discrete_nll(
        flow, K, n_samples=64, generator=torch.Generator().manual_seed(0)
    )
    exact = -float(_bin_log_mass(Flow(flow.bijector[-1], flow.base).log_prob, K).mean())
    assert exact < importance < elbo


def test_variational_beats_uniform_and_both_bound_the_discrete_nll():
    """Correlated binary pairs, P = [[0.4, 0.1], [0.1, 0.4]]: a smooth density cannot be flat
    on the unit bins, so uniform dequantization pays for it; q(u | x) need not. ``fit`` adds
    the noise on the flow's own columns (its ``dequantize`` default)."""
    g = torch.Generator().manual_seed(0)
    first = (torch.rand(1000, generator=g) < 0.5).double()
    x = torch.stack([first, torch.where(torch.rand(1000, generator=g) < 0.8, first, 1 - first)], 1)
    entropy = -(2 * 0.4 * math.log(0.4) + 2 * 0.1 * math.log(0.1))  # 1.19 nats
    bounds = {}
    for dequantizer in ("uniform", "variational"):
        torch.manual_seed(0)
        config = {"n_layers": 4, "hidden_sizes": [8]}
        flow = Dequantized(2, "RealNVP", config, dequantizer=dequantizer, hidden_sizes=[8])
        flow = flow.double()
        fit(flow, flow.encode(x), steps=100, batch_size=100, lr=1e-2, progress=False)
        g = torch.Generator().manual_seed(1)
        bounds[dequantizer], _ = discrete_nll(flow, x[:500], n_samples=8, generator=g)
    assert entropy - 0.05 < bounds["variational"] < bounds["uniform"] - 0.1


def test_categories_are_bits_recovered_by_their_bins():
    flow = Dequantized(
        3,
        "RealNVP",
        {"hidden_sizes": [4]},
        discrete_columns=[0],
        categorical_columns=[2],
        n_categories=[5],
    ).double()
    x = torch.tensor([[3.0, 0.5, 0.0], [-2.0, 1.5, 4.0], [7.0, -0.1, 2.0]], dtype=torch.float64)
    v = flow.encode(x)  # 5 categories: 3 bits, low bit first
    assert v.shape == (3, 5) and v[:, 2:].tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 0]]
    assert flow.dequantize_columns == [0, 2, 3, 4]
    noise = torch.rand(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(flow.decode(v.index_add(1, torch.tensor([0, 2, 3, 4]), noise)), x)
    unused = torch.tensor([[0.0, 0.0, 1.2, 0.3, 1.9]], dtype=torch.float64)  # bits 1, 0, 1: 5
    assert flow.decode(unused)[0, 2] == 1  # code 5 >= K loses its top bit
    codes = flow.sample_discrete(200)[:, 2]
    assert ((codes >= 0) & (codes < 5) & (codes == codes.round())).all()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: check_columns(3, [0, 3]), r"discrete column indices in \[0, 3\).*got 3"),
        (lambda: check_columns(3, [0], [-1]), r"categorical column indices in \[0, 3\)"),
        (lambda: check_columns(3, [1, 1]), "distinct discrete columns"),
        (lambda: check_columns(3, [0, 2], [2]), r"columns \[2\] are both discrete and categorical"),
        (
            lambda: check_integers(torch.tensor([[1.0, 2.0], [3.0, 4.5]]), [0, 1]),
            "discrete column 1 holds 4.5 at row 1",
        ),
        (
            lambda: Dequantized(2, categorical_columns=[1], n_categories=[3]).encode(
                torch.tensor([[0.0, 3.0]])
            ),
            r"categorical column 1 holds 3.0 at row 0; expected codes 0 .. 2",
        ),
        (lambda: Dequantized(2, dequantizer="argmax"), "expected dequantizer in"),
        (lambda: Dequantized(2, categorical_columns=[1]), "one n_categories >= 2 per"),
    ],
    ids=["range", "negative", "repeated", "overlap", "fraction", "code", "dequantizer", "k"],
)
def test_bad_columns_are_refused_in_one_line(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def _mixed_csv(path, fraction: bool = False) -> str:
    rng = np.random.default_rng(0)
    counts, codes = rng.poisson(3.0, 400), rng.choice(3, 400, p=[0.5, 0.3, 0.2])
    x = np.stack([rng.normal(size=400) + 0.5 * counts, counts, codes], 1).astype(np.float64)
    if fraction:
        x[7, 1] = 2.5
    np.savetxt(path, x, delimiter=",")
    return str(path)


SMALL = ["--model", "RealNVP", "--n-layers", "2", "--hidden-sizes", "8", "--batch-size", "64"]
SMALL += ["--steps", "10", "--log-every", "5", "--quiet", "--no-plots", "--threads", "1"]


def test_train_then_evaluate_and_sample_on_the_discrete_scale(tmp_path, capsys):
    data = _mixed_csv(tmp_path / "mixed.csv")
    argv = ["train", "--data", data, "--out", str(tmp_path), "--name", "run", *SMALL]
    assert (
        cli.main(
            [
                *argv,
                "--discrete-columns",
                "1",
                "--categorical-columns",
                "2",
                "--dequantizer",
                "variational",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert cli.main(["evaluate", str(tmp_path / "run"), "--data", data, "--iw-samples", "4"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("discrete-scale NLL over 400 points") and "importance-weighted" in line
    elbo, importance = (float(line.split(s)[1].split()[0]) for s in ("ELBO bound ", "draws) "))
    assert importance < elbo
    samples = tmp_path / "samples.npy"
    assert cli.main(["sample", str(tmp_path / "run"), "-n", "50", "-o", str(samples)]) == 0
    rows = np.load(samples)  # raw rows: counts and category codes, decoded from the bits
    assert rows.shape == (50, 3) and (rows[:, 1:] == np.round(rows[:, 1:])).all()
    assert ((rows[:, 2] >= 0) & (rows[:, 2] <= 2)).all()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--discrete-columns", "1"], "discrete column 1 holds 2.5 at row 7; expected integer"),
        (["--discrete-columns", "3"], r"discrete column indices in \[0, 3\)"),
        (
            ["--discrete-columns", "1", "--categorical-columns", "1"],
            "both discrete and categorical",
        ),
        (["--categorical-columns", "0"], "categorical column 0 holds"),
        (["--dequantizer", "variational"], "--dequantizer needs --discrete-columns"),
    ],
    ids=["fraction", "range", "overlap", "category", "no-columns"],
)
def test_train_refuses_bad_columns_in_one_line(tmp_path, capsys, options, message):
    data = _mixed_csv(tmp_path / "bad.csv", fraction=options[:2] == ["--discrete-columns", "1"])
    argv = ["train", "--data", data, "--out", str(tmp_path), *SMALL, *options]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0]), err


def test_an_image_run_with_variational_dequantization(tmp_path, capsys):
    argv = ["train", "--data", "digits", "--out", str(tmp_path), "--name", "run", *SMALL]
    argv += ["--model", "RealNVP2d", "--n-levels", "1", "--hidden-channels", "4"]
    assert cli.main([*argv, "--dequantizer", "variational", "--discrete-columns", "0"]) == 1
    assert "images take --dequantizer alone" in capsys.readouterr().err
    assert cli.main([*argv, "--dequantizer", "variational"]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", str(tmp_path / "run"), "--data", "digits"]) == 0
    assert "bits/dim over the 360 test images" in capsys.readouterr().out
    grid = tmp_path / "grid.png"
    assert cli.main(["sample", str(tmp_path / "run"), "-n", "4", "-o", str(grid)]) == 0
    assert grid.stat().st_size > 0


def test_fit_on_raw_rows_names_encode():
    flow = Dequantized(2, categorical_columns=[1], n_categories=[5])
    x = torch.stack([torch.randn(300), torch.randint(0, 5, (300,)).float()], 1)
    with pytest.raises(ValueError, match=r"got raw rows \(300, 2\): fit\(flow, flow.encode\(x\)\)"):
        fit(flow, x, steps=1, progress=False)
