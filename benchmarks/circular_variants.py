"""CircularNSF with coupling layers against autoregressive ones on the torus and the cylinder.

``torchnf bench``'s protocol for each variant and seed (5 layers, hidden [64, 64], 1000 steps
of batch 256, lr 2e-3 with cosine decay, 20000 points of the seed, 10% held out, KL on 20000
fresh points of seed + 1); prints KL ± s.e. per seed, the mean, and the training steps/s.
Seed 0's coupling row is what ``torchnf bench --models CircularNSF --targets torus cylinder``
prints.

Run: ``python benchmarks/circular_variants.py [--seeds 0 1 2]`` (one thread; about 5
minutes on one CPU core).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from torchnf import fit
from torchnf.data import get_target
from torchnf.diagnostics.kl import KLEstimate, kl_divergence
from torchnf.models import CircularNSF

VARIANTS = {"couplings": False, "autoregressive": True}


def kl(target_name: str, autoregressive: bool, seed: int) -> tuple[KLEstimate, float]:
    """Train one variant as ``torchnf bench`` does; return its KL and training steps/s (the
    median over the log intervals)."""
    target = get_target(target_name)
    data = target.sample(20000, seed=seed)
    torch.manual_seed(seed)
    flow = CircularNSF(target.dim, target.circular, 5, (64, 64), autoregressive=autoregressive)
    history = fit(flow, data, steps=1000, batch_size=256, lr=2e-3, seed=seed, progress=False)
    flow.eval()
    return kl_divergence(flow, target, 20000, seed=seed + 1), statistics.median(
        history["steps_per_s"]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| target | variant | KL per seed | mean | steps/s |\n|---|---|---|---|---|")
    for target in ("torus", "cylinder"):
        for name, autoregressive in VARIANTS.items():
            runs = [kl(target, autoregressive, seed) for seed in args.seeds]
            cells = ", ".join(f"{e.value:.4f} ± {e.stderr:.4f}" for e, _ in runs)
            mean = statistics.mean(e.value for e, _ in runs)
            speed = statistics.median(s for _, s in runs)
            print(f"| {target} | {name} | {cells} | {mean:.4f} | {speed:.0f} |", flush=True)


if __name__ == "__main__":
    main()
