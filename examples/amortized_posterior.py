"""An amortized posterior q(theta | x) with a bounded prior and an embedding net, trained on
simulations with torchnf.fit (simulation-based inference without sbi).

The simulator: theta = (mu, sigma) with prior mu ~ U(-3, 3), sigma ~ U(0.1, 2); x is a set of
5 to 20 i.i.d. trials N(mu, sigma^2), NaN-padded to 20 rows. A DeepSets embedding summarizes
the set (permutation-invariant, any number of trials) jointly with an NSF over theta whose
support is the prior's box (`bounds`), so posterior samples never leave it. The exact
posterior on a grid (the prior is flat) is drawn next to the flow's for three observations.

Run: python examples/amortized_posterior.py  (about a minute on one CPU thread)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import torchnf
from torchnf.models import NSF

FIGURES = Path(__file__).parent / "figures"
BOUNDS = [(-3.0, 3.0), (0.1, 2.0)]
MAX_TRIALS = 20


def simulate(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` draws of theta from the prior and their NaN-padded sets of trials."""
    low = torch.tensor([b[0] for b in BOUNDS])
    high = torch.tensor([b[1] for b in BOUNDS])
    theta = low + (high - low) * torch.rand(n, 2, generator=generator)
    trials = theta[:, :1] + theta[:, 1:] * torch.randn(n, MAX_TRIALS, generator=generator)
    counts = torch.randint(5, MAX_TRIALS + 1, (n,), generator=generator)
    trials[torch.arange(MAX_TRIALS) >= counts[:, None]] = float("nan")
    return theta, trials[..., None]


def exact_log_posterior(grid: torch.Tensor, trials: torch.Tensor) -> torch.Tensor:
    """Unnormalized log posterior of grid points ``(G, 2)`` given one set ``(MAX_TRIALS, 1)``."""
    y = trials[~trials.isnan()].double()
    mu, sigma = grid[:, :1], grid[:, 1:]
    return (-0.5 * ((y - mu) / sigma) ** 2 - sigma.log()).sum(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulations", type=int, default=20000)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=FIGURES / "amortized_posterior.png")
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(args.seed)
    theta, x = simulate(args.simulations, g)
    torch.manual_seed(args.seed)
    embedding = {"name": "DeepSets", "input_size": 1, "output_size": 16, "n_trials": MAX_TRIALS}
    flow = NSF(
        2, n_layers=4, hidden_sizes=(64, 64), bounds=BOUNDS, embedding=embedding, activation="relu"
    )
    history = torchnf.fit(flow, theta, x, steps=args.steps, lr=2e-3, seed=args.seed)
    print(f"validation NLL of theta given x: {history['val_nll'][-1]:.3f} nats")

    truths, observations = simulate(3, torch.Generator().manual_seed(args.seed + 1))
    xs = torch.linspace(*BOUNDS[0], 200, dtype=torch.float64)
    ys = torch.linspace(*BOUNDS[1], 200, dtype=torch.float64)
    grid = torch.cartesian_prod(xs, ys)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 6), layout="constrained")
    axes = fig.subplots(2, 3)
    extent = (*BOUNDS[0], *BOUNDS[1])
    for k in range(3):
        with torch.no_grad():
            samples = flow.sample(4000, observations[k])
        inside = all(
            bool(((samples[:, i] > lo) & (samples[:, i] < hi)).all())
            for i, (lo, hi) in enumerate(BOUNDS)
        )
        log_p = exact_log_posterior(grid, observations[k])
        weights = (log_p - log_p.logsumexp(0)).exp()
        exact_mean = (weights[:, None] * grid).sum(0)
        n = int((~observations[k].isnan()).sum())
        print(
            f"observation {k} ({n} trials; theta = {truths[k].tolist()}): posterior mean "
            f"{samples.mean(0).tolist()} (exact {exact_mean.tolist()}), samples inside the "
            f"prior's box: {inside}"
        )
        density = weights.reshape(200, 200).T.numpy()
        axes[0, k].imshow(density, origin="lower", extent=extent, aspect="auto")
        axes[0, k].set_title(f"exact posterior, {n} trials")
        axes[1, k].hist2d(
            samples[:, 0].numpy(), samples[:, 1].numpy(), bins=80, range=[BOUNDS[0], BOUNDS[1]]
        )
        axes[1, k].set_title("torchnf NSF + DeepSets")
        for ax in axes[:, k]:
            ax.plot(*truths[k].tolist(), "r+", markersize=10)
            ax.set_xlabel("mu")
        axes[0, k].set_ylabel("sigma")
        axes[1, k].set_ylabel("sigma")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
