"""A 1-D mixture of Gaussians mapped to a unit Gaussian (the seed's 1-D demonstration).

Fits a neural spline flow to the built-in ``mixture1d`` data set and draws, side by side:
the data density with the learned one, the map ``z = f(x)``, and the histogram of the
transformed data against N(0, 1). Writes ``examples/figures/mixture_1d.png``.

Run: ``python examples/mixture_1d.py`` (well under a minute on 2 CPU cores).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from matplotlib.figure import Figure

from torchnf import fit
from torchnf.data import get_target
from torchnf.diagnostics import kl_divergence
from torchnf.models import NSF

OUT = Path(__file__).parent / "figures" / "mixture_1d.png"


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    target = get_target("mixture1d")
    data = target.sample(20000, seed=0)
    flow = NSF(1, n_layers=2, hidden_sizes=(8,), n_bins=8)
    fit(flow, data, steps=1500, batch_size=256, lr=5e-3, progress=False)
    flow.eval()
    kl = kl_divergence(flow, target, n=20000, seed=1)
    print(f"KL(mixture1d || flow) = {kl} nats")

    grid = torch.linspace(-4.5, 5.5, 500).unsqueeze(-1)
    with torch.no_grad():
        learned = flow.log_prob(grid).exp()
        curve, _ = flow(grid)
        z, _ = flow(data)
    exact = target.log_prob(grid).exp()

    fig = Figure(figsize=(10.5, 3.1), layout="constrained")
    ax = fig.subplots(1, 3)
    ax[0].hist(data[:, 0], bins=120, density=True, color="0.8", label="data")
    ax[0].plot(grid, exact, "k--", lw=1.2, label="true density")
    ax[0].plot(grid, learned, "C3", lw=1.5, label="learned density")
    ax[0].set_title(f"data x (KL = {kl.value:.4f} ± {kl.stderr:.4f} nats)")
    ax[0].legend(fontsize="small")
    ax[1].plot(grid, curve, "C0")
    ax[1].set_title("the learned map z = f(x)")
    ax[1].set_xlabel("x")
    ax[1].set_ylabel("z")
    ax[1].grid(alpha=0.3)
    u = torch.linspace(-4, 4, 300)
    ax[2].hist(z[:, 0], bins=80, range=(-4, 4), density=True, color="C0", alpha=0.5, label="f(x)")
    ax[2].plot(u, torch.exp(-0.5 * u**2) / math.sqrt(2 * math.pi), "k", label="N(0, 1)")
    ax[2].set_title("transformed data against N(0, 1)")
    ax[2].legend(fontsize="small")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=80)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
