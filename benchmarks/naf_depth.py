"""NAF with one sigmoidal-mixture map per transformer against stacked ones (DSF depth).

The README's KL protocol (``torchnf bench``: 5 layers, hidden [64, 64], 1000 steps of batch
256, lr 2e-3 with cosine decay, 20000 points of seed 0, 10% held out, KL on 20000 fresh points
of seed 1 by :func:`torchnf.diagnostics.kl.kl_divergence`), one thread, for NAF with
``n_dsf_layers`` 1 and 2: the same ``K = 8`` sigmoids per map (twice the conditioner outputs)
and the same budget, ``K = 4`` per map (``3 K L = 24`` outputs per feature, as the default).
Prints a markdown table of KL ± s.e. and training steps per second.

Run: ``python benchmarks/naf_depth.py [--targets moons ring banana funnel]``.
"""

from __future__ import annotations

import argparse
import time

import torch

from torchnf import fit
from torchnf.data import get_target
from torchnf.diagnostics.kl import kl_divergence
from torchnf.models import NAF

#: label -> (n_components, n_dsf_layers)
CONFIGS = {"L = 1, K = 8": (8, 1), "L = 2, K = 8": (8, 2), "L = 2, K = 4": (4, 2)}
STEPS = 1000


def run(target_name: str, n_components: int, n_dsf_layers: int) -> tuple[str, float]:
    """Train NAF on the target's points as ``torchnf bench`` does; 'KL ± s.e.' and steps/s."""
    target = get_target(target_name)
    data = target.sample(20000, seed=0)
    torch.manual_seed(0)
    flow = NAF(
        target.dim,
        n_layers=5,
        hidden_sizes=(64, 64),
        n_components=n_components,
        n_dsf_layers=n_dsf_layers,
    )
    tic = time.perf_counter()
    fit(flow, data, steps=STEPS, batch_size=256, lr=2e-3, seed=0, progress=False)
    rate = STEPS / (time.perf_counter() - tic)
    flow.eval()
    kl = kl_divergence(flow, target, 20000, seed=1)
    return f"{kl.value:.4f} ± {kl.stderr:.4f}", rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", default=["moons", "ring", "banana", "funnel"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"| NAF | {' | '.join(args.targets)} | steps/s |\n|---|{'---|' * len(args.targets)}---|")
    for label, (n_components, n_dsf_layers) in CONFIGS.items():
        cells, rates = [], []
        for target in args.targets:
            kl, rate = run(target, n_components, n_dsf_layers)
            cells.append(kl)
            rates.append(rate)
        print(f"| {label} | {' | '.join(cells)} | {sum(rates) / len(rates):.0f} |", flush=True)


if __name__ == "__main__":
    main()
