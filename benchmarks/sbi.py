"""torchnf's NSF and MAF against sbi's own "maf" and "nsf" inside sbi's NPE, scored by C2ST.

Every method trains under sbi's own NPE loop on the *same* simulations (one seeded set per
task), with the same ``training_batch_size``, ``max_num_epochs``, early stopping
(``stop_after_epochs``), learning rate and seed; only the density estimator differs:

- ``sbi maf`` / ``sbi nsf``: ``NPE(prior, density_estimator="maf" / "nsf")``, sbi's defaults
  (5 transforms, 50 hidden features, 10 bins for the spline), z-scored theta and x;
- ``torchnf MAF`` / ``torchnf NSF``: ``density_estimator("MAF" / "NSF", n_layers=5,
  hidden_sizes=(50, 50))`` (``n_bins=10`` for NSF) from :mod:`torchnf.integrations.sbi`, the
  same sizes; for box priors the torchnf models take the prior's ``bounds``, so their samples
  never leave the support (sbi's estimators rely on sbi's rejection of leaked samples).

Tasks, each with a posterior that can be sampled exactly:

- ``linear-gaussian-10d``: theta ~ N(0, I_10), x ~ N(theta + 1, 0.1 I)
  (``sbi.simulators.linear_gaussian``); reference: the analytic posterior
  (``true_posterior_linear_gaussian_mvn_prior``).
- ``gaussian-mixture-2d``: theta ~ U[-10, 10]^2, x ~ 0.5 N(theta, I) + 0.5 N(theta, 0.01 I).
  The likelihood is symmetric in x and theta, so the posterior is the same mixture around
  x_o truncated to the box; reference: exact samples of the mixture centred at x_o, those
  outside the box rejected.
- ``bounded-2d``: theta ~ U[0, 1]^2, x ~ N((theta_1 + theta_2, theta_1 theta_2), 0.05^2 I): a
  posterior symmetric under swapping theta_1 and theta_2 (two modes when they differ) that
  presses against the box; reference: exact rejection sampling from the prior, accepting
  with probability L(theta) / max L = exp(-|x_o - f(theta)|^2 / (2 0.05^2)).

Observations: ``--n-obs`` simulations at parameters drawn from the prior (seeded). C2ST
(``sbi.utils.metrics.c2st``, its default random-forest classifier, 5 folds; 0.5 is perfect)
between ``--n-samples`` posterior samples and as many reference samples, per observation;
the table gives its mean over observations +- their standard deviation, the training wall
time (sbi's ``train``) and the epochs trained. Runs on one CPU thread. Not run in CI (a
``--quick`` smoke run is, in ``tests/test_benchmarks.py``). Examples (the first about 6.5
minutes on one thread of a 2-core CPU)::

    python benchmarks/sbi.py
    python benchmarks/sbi.py --tasks bounded-2d --methods "torchnf NSF" "sbi nsf"
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, where this file would shadow
# the sbi package: drop it.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from torchnf.integrations.sbi import density_estimator  # noqa: E402

METHODS = ("torchnf MAF", "torchnf NSF", "sbi maf", "sbi nsf")


@dataclass
class Task:
    """A prior, a simulator and an exact sampler of the reference posterior."""

    prior: torch.distributions.Distribution
    simulate: Callable[[Tensor], Tensor]
    reference: Callable[[Tensor, int], Tensor]  # (x_o of shape (D_x,), n) -> (n, D_theta)
    bounds: list[tuple[float, float]] | None


def linear_gaussian_task(dim: int = 10, noise: float = 0.1) -> Task:
    from sbi.simulators.linear_gaussian import (
        linear_gaussian,
        true_posterior_linear_gaussian_mvn_prior,
    )

    prior = torch.distributions.MultivariateNormal(torch.zeros(dim), torch.eye(dim))
    shift, cov = torch.ones(dim), noise * torch.eye(dim)

    def reference(x_o: Tensor, n: int) -> Tensor:
        true = true_posterior_linear_gaussian_mvn_prior(
            x_o, shift, cov, prior.mean, prior.covariance_matrix
        )
        return true.sample((n,))

    return Task(prior, lambda theta: linear_gaussian(theta, shift, cov), reference, None)


def gaussian_mixture_task(half_width: float = 10.0) -> Task:
    from sbi.utils import BoxUniform

    low, high = -half_width * torch.ones(2), half_width * torch.ones(2)
    prior = BoxUniform(low, high)

    def mixture(center: Tensor) -> Tensor:  # 0.5 N(center, I) + 0.5 N(center, 0.01 I), rows
        scale = torch.where(torch.rand(len(center), 1) < 0.5, 1.0, 0.1)
        return center + scale * torch.randn_like(center)

    def reference(x_o: Tensor, n: int) -> Tensor:
        kept: list[Tensor] = []
        while sum(map(len, kept)) < n:  # the posterior: the mixture around x_o, in the box
            draws = mixture(x_o.expand(2 * n, 2))
            kept.append(draws[((draws > low) & (draws < high)).all(-1)])
        return torch.cat(kept)[:n]

    bounds = [(-half_width, half_width)] * 2
    return Task(prior, mixture, reference, bounds)


def bounded_task(noise: float = 0.05) -> Task:
    from sbi.utils import BoxUniform

    prior = BoxUniform(torch.zeros(2), torch.ones(2))

    def mean(theta: Tensor) -> Tensor:
        return torch.stack([theta[:, 0] + theta[:, 1], theta[:, 0] * theta[:, 1]], -1)

    def reference(x_o: Tensor, n: int) -> Tensor:
        kept: list[Tensor] = []
        while sum(map(len, kept)) < n:  # rejection from the prior, exact
            theta = prior.sample((100_000,))
            accept = (-((x_o - mean(theta)) ** 2).sum(-1) / (2 * noise**2)).exp()
            kept.append(theta[torch.rand(len(theta)) < accept])
        return torch.cat(kept)[:n]

    simulate = lambda theta: mean(theta) + noise * torch.randn(len(theta), 2)  # noqa: E731
    return Task(prior, simulate, reference, [(0.0, 1.0), (0.0, 1.0)])


TASKS = {
    "linear-gaussian-10d": linear_gaussian_task,
    "gaussian-mixture-2d": gaussian_mixture_task,
    "bounded-2d": bounded_task,
}


def builder(method: str, task: Task, n_layers: int, hidden: int, n_bins: int):
    library, model = method.split()
    if library == "sbi":
        return model  # NPE's own builder, its defaults
    options = dict(n_layers=n_layers, hidden_sizes=(hidden, hidden))
    if model == "NSF":
        options["n_bins"] = n_bins
        options["activation"] = "relu"  # sbi's nets use ReLU (and the README rows were measured so)
    if task.bounds is not None:
        options["bounds"] = task.bounds
    return density_estimator(model, **options)


Row = tuple[str, str, list[float], float, int]  # task, method, C2STs, seconds, epochs


def run(args: argparse.Namespace) -> list[Row]:
    from sbi.inference import NPE
    from sbi.utils.metrics import c2st

    rows = []
    for name in args.tasks:
        task = TASKS[name]()
        torch.manual_seed(args.seed)
        theta = task.prior.sample((args.n_sims,))
        x = task.simulate(theta)
        theta_o = task.prior.sample((args.n_obs,))
        x_o = task.simulate(theta_o)
        references = [task.reference(x_o[i], args.n_samples) for i in range(args.n_obs)]
        for method in args.methods:
            estimator = builder(method, task, args.n_layers, args.hidden, args.n_bins)
            torch.manual_seed(args.seed)
            inference = NPE(task.prior, density_estimator=estimator, show_progress_bars=False)
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # sbi's "converged after" note
                inference.append_simulations(theta, x).train(
                    training_batch_size=args.batch_size,
                    max_num_epochs=args.max_epochs,
                    stop_after_epochs=args.stop_after_epochs,
                )
            seconds = time.perf_counter() - start
            epochs = inference._summary["epochs_trained"][-1]
            posterior = inference.build_posterior()
            scores = []
            for i in range(args.n_obs):
                samples = posterior.sample(
                    (args.n_samples,), x=x_o[i : i + 1], show_progress_bars=False
                )
                scores.append(float(c2st(samples, references[i], seed=args.seed)))
            rows.append((name, method, scores, seconds, epochs))
            spread = torch.tensor(scores).std().item() if len(scores) > 1 else 0.0
            print(
                f"# {name} {method}: C2ST {sum(scores) / len(scores):.3f} +- {spread:.3f}, "
                f"{seconds:.1f} s, {epochs} epochs",
                flush=True,
            )
    return rows


def table(rows: list[Row]) -> str:
    lines = ["| task | method | C2ST (0.5 best) | train s | epochs |", "|---|---|---|---|---|"]
    for name, method, scores, seconds, epochs in rows:
        mean = sum(scores) / len(scores)
        spread = (
            math.sqrt(sum((s - mean) ** 2 for s in scores) / (len(scores) - 1))
            if len(scores) > 1
            else 0.0
        )
        score = f"{mean:.3f} ± {spread:.3f}"
        lines.append(f"| {name} | {method} | {score} | {seconds:.1f} | {epochs} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--n-sims", type=int, default=5000)
    parser.add_argument("--n-obs", type=int, default=3)
    parser.add_argument("--n-samples", type=int, default=1000)
    parser.add_argument("--max-epochs", type=int, default=200)
    parser.add_argument("--stop-after-epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--n-layers", type=int, default=5, help="torchnf models (sbi: 5)")
    parser.add_argument("--hidden", type=int, default=50, help="torchnf widths (sbi: 50)")
    parser.add_argument("--n-bins", type=int, default=10, help="torchnf NSF bins (sbi: 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--quick", action="store_true", help="tiny settings, a smoke run of every row"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.n_sims, args.n_obs, args.n_samples, args.max_epochs = 200, 1, 100, 2
        args.n_layers, args.hidden = 2, 8
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # sbi's notes on max epochs, leakage and the like
    print(
        f"# {args.n_sims} simulations, batch {args.batch_size}, at most {args.max_epochs} "
        f"epochs (stop after {args.stop_after_epochs} without improvement), seed {args.seed}, "
        f"{args.n_obs} observations x {args.n_samples} samples, {args.threads} thread(s)"
    )
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as logs:  # sbi writes TensorBoard logs to ./sbi-logs
        here = os.getcwd()
        os.chdir(logs)
        try:
            rows = run(args)
        finally:
            os.chdir(here)
    print(table(rows))
    print(f"# total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
