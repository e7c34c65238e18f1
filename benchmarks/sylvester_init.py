"""Sylvester flows on the 2-D targets: the old start (random rotations, no ActNorm between
blocks) against the current defaults (``init="permutation"``, ``actnorm=True``).

The protocol of ``torchnf bench`` (README, "How good is it"): 5 blocks, 20000 training points,
1000 steps of batch 256, lr 2e-3 with cosine decay, KL(p || q) on 20000 fresh samples, seed 0,
one thread. Prints a Markdown table::

    python benchmarks/sylvester_init.py [--targets moons ring banana funnel]
"""

from __future__ import annotations

import argparse

import torch

from torchnf import fit
from torchnf.data import get_target
from torchnf.diagnostics import kl_divergence
from torchnf.models import GeneralizedSylvesterNet, SylvesterNet

STARTS = {"old": {"init": "random", "actnorm": False}, "new": {}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", default=["moons", "ring", "banana", "funnel"])
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| model | target | old start KL | new defaults KL |")
    print("|---|---|---|---|")
    for cls in (SylvesterNet, GeneralizedSylvesterNet):
        for name in args.targets:
            target = get_target(name)
            kls = []
            for options in STARTS.values():
                torch.manual_seed(0)
                flow = cls(n_layers=5, input_size=2, **options)
                fit(flow, target.sample(20000, seed=0), steps=args.steps, lr=2e-3, progress=False)
                kls.append(kl_divergence(flow.eval(), target, 20000, seed=1))  # fresh points
            print(f"| {cls.__name__} | {name} | {kls[0]} | {kls[1]} |", flush=True)


if __name__ == "__main__":
    main()
