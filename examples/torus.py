"""Circular splines on the torus: CircularNSF against NSF on the ``torus`` target.

The target (``torchnf.data.torus``) is a mixture on [-pi, pi)^2 with one component across both
seams and a band winding around the torus. CircularNSF (circular splines, a uniform base on the
angles; Rezende et al. 2020, arXiv:2002.02428) and NSF (splines on the real line) are trained
on the same 4000 points, scored by KL(p || q) on 10000 fresh ones. The figure shows each density
on [-1.5 pi, 1.5 pi)^2, i.e. the torus's square (outlined) with half a period of its periodic
copy around it: the circular flow's density runs across the square's edges without a seam, as
a density on the torus must; NSF's is a density on the box, cut at its edges. Last column:
samples. Writes ``examples/figures/torus.png``.

Run: ``python examples/torus.py [--seeds 0 1 2]`` (about 40 s a seed, one thread).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

import torch
from matplotlib.figure import Figure

from torchnf import Flow, fit
from torchnf.data import get_target
from torchnf.diagnostics import kl_divergence
from torchnf.layers import wrap_angle
from torchnf.models import NSF, CircularNSF

OUT = Path(__file__).parent / "figures" / "torus.png"
TARGET = get_target("torus")
MODELS: dict[str, Callable[[], Flow]] = {
    "CircularNSF": lambda: CircularNSF(2, n_layers=4, hidden_sizes=(32, 32), n_bins=8),
    "NSF": lambda: NSF(2, n_layers=4, hidden_sizes=(32, 32), n_bins=8, activation="relu"),
}


def train(name: str, seed: int, steps: int) -> Flow:
    torch.manual_seed(seed)
    flow = MODELS[name]()
    data = TARGET.sample(4000, seed=seed)
    fit(flow, data, steps=steps, batch_size=256, lr=5e-3, val_fraction=0, seed=seed, progress=False)
    return flow.eval()


def main(seeds: list[int], out: Path = OUT, steps: int = 600) -> dict[str, list[float]]:
    torch.set_num_threads(1)
    kls: dict[str, list[float]] = {name: [] for name in MODELS}
    shown = {}
    for seed in seeds:
        for name in MODELS:
            flow = train(name, seed, steps)
            kl = kl_divergence(flow, TARGET, n=10000, seed=seed + 100)
            kls[name].append(kl.value)
            print(f"seed {seed} {name}: KL {kl} nats")
            if seed == seeds[0]:
                shown[name] = (flow, kl.value)
    for name, values in kls.items():
        print(f"{name}: mean KL {sum(values) / len(values):.4f} nats over {len(values)} seeds")
    figure(shown, out)
    return kls


def figure(shown: dict[str, tuple[Flow, float]], out: Path) -> None:
    """Rows: the target, then each flow; columns: density on the extended square, samples."""
    n, half = 300, 1.5 * math.pi
    ticks = torch.linspace(-half, half, n)
    grid = torch.stack(torch.meshgrid(ticks, ticks, indexing="xy"), -1).reshape(-1, 2)
    on_torus = wrap_angle(grid)  # each point read as its angle in [-pi, pi)
    rows = [("target", TARGET.log_prob, TARGET.sample(2000, seed=1), None)]
    for name, (flow, kl) in shown.items():
        with torch.no_grad():
            rows.append((name, flow.log_prob, flow.sample(2000), kl))
    fig = Figure(figsize=(7.5, 3.4 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), 2)
    for ax, (name, log_prob, samples, kl) in zip(axes, rows, strict=True):
        with torch.no_grad():
            density = log_prob(on_torus).exp().reshape(n, n)
        extent = (-half, half, -half, half)
        ax[0].imshow(density.numpy(), extent=extent, origin="lower", cmap="magma")
        score = "" if kl is None else f", KL {kl:.3f} nats"
        ax[0].set_title(f"{name}{score}: density")
        ax[1].scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.4, color="C2")
        ax[1].set_title(f"{name}: samples")
        for a in ax:
            a.add_patch(_square(a))
            a.set(xlim=(-half, half), ylim=(-half, half), aspect="equal")
            a.set_xticks([-math.pi, 0, math.pi], ["-π", "0", "π"])
            a.set_yticks([-math.pi, 0, math.pi], ["-π", "0", "π"])
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


def _square(ax):
    from matplotlib.patches import Rectangle

    corner = (-math.pi, -math.pi)
    return Rectangle(corner, 2 * math.pi, 2 * math.pi, fill=False, ls="--", lw=1, ec="0.6")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    main(parser.parse_args().seeds)
