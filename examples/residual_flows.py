"""Fit planar, radial, Sylvester and generalized Sylvester flows to the two-moons toy set.

Writes one figure per model to ``examples/figures/residual_<model>.png``: the data, the learned
density, and samples drawn through the model's exact numerical inverse. About 30 s of CPU
time; test NLLs with these seeds: planar 1.63, radial 1.47, Sylvester 1.35, generalized
Sylvester 1.07 nats::

    python examples/residual_flows.py
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from matplotlib.figure import Figure

import torchnf
from torchnf.data import get_target
from torchnf.models import GeneralizedSylvesterNet, PlanarFlow, RadialFlow, SylvesterNet

FIGURES = Path(__file__).parent / "figures"
STEPS = 600
MODELS = {
    "planar": lambda: PlanarFlow(2, n_layers=16),
    "radial": lambda: RadialFlow(2, n_layers=16),
    "sylvester": lambda: SylvesterNet(
        n_layers=8, input_size=2, hidden_size=2, init="random", actnorm=False
    ),
    "generalized_sylvester": lambda: GeneralizedSylvesterNet(
        n_layers=6, input_size=2, hidden_sizes=(32, 32), init="random", actnorm=False
    ),
}


@torch.no_grad()
def figure(name: str, flow: torchnf.Flow, data: torch.Tensor, nll: float, path: Path) -> None:
    low, high = data.min(0).values - 0.5, data.max(0).values + 0.5
    extent = (float(low[0]), float(high[0]), float(low[1]), float(high[1]))
    gx, gy = torch.meshgrid(
        torch.linspace(extent[0], extent[1], 150),
        torch.linspace(extent[2], extent[3], 150),
        indexing="xy",
    )
    density = flow.log_prob(torch.stack([gx, gy], -1).reshape(-1, 2)).exp().reshape(150, 150)
    samples = flow.sample(2000)
    fig = Figure(figsize=(9, 3.1), dpi=80, layout="constrained")
    axes = fig.subplots(1, 3)
    axes[0].scatter(*data[:2000].T, s=1, alpha=0.4)
    axes[0].set_title("data")
    axes[1].imshow(density, origin="lower", extent=extent, aspect="auto", cmap="viridis")
    axes[1].set_title(f"density (test NLL {nll:.2f})")
    axes[2].scatter(*samples.T, s=1, alpha=0.4, color="tab:orange")
    axes[2].set_title("samples (exact inverse)")
    for ax in axes:
        ax.set_xlim(extent[:2])
        ax.set_ylim(extent[2:])
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(name.replace("_", " "))
    fig.savefig(path)


def main() -> None:
    FIGURES.mkdir(exist_ok=True)
    target = get_target("moons")
    data, test = target.sample(20_000, seed=0), target.sample(5_000, seed=1)
    for name, make in MODELS.items():
        torch.manual_seed(0)
        flow = make()
        start = time.perf_counter()
        torchnf.fit(flow, data, steps=STEPS, batch_size=256, lr=5e-3, progress=False)
        with torch.no_grad():
            nll = float(-flow.log_prob(test).mean())
        path = FIGURES / f"residual_{name}.png"
        figure(name, flow, data, nll, path)
        print(f"{name:>22}: test NLL {nll:.3f} nats, {time.perf_counter() - start:.0f} s -> {path}")


if __name__ == "__main__":
    main()
